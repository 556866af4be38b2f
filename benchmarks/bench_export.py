"""Inference latency of the exported graph per backend, and "new weights -> engine ready" time.

Backends are measured side by side in one run, interleaved frame by frame (so a noisy neighbour
slows them all alike), and reported against PyTorch eager as a ratio (goal on the CPU: ONNX
Runtime <= 0.7x PyTorch).

    python benchmarks/bench_export.py --model tiny --frame-size 512x256
    python benchmarks/bench_export.py --model deeplabv3_mobilenet_v3_large --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from iapc.adapt.models import build_model
from iapc.engines.runner_onnxrt import OnnxRuntimeRunner, ort_cuda_available
from iapc.engines.runner_tensorrt import tensorrt_available
from iapc.export.onnx_export import export_onnx
from iapc.export.runners import TorchRunner
from iapc.options import parse_size
from iapc.synth import sample_frames

GOAL_RATIO = 0.7


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--frame-size", default="512x256", help="WIDTHxHEIGHT")
    parser.add_argument("--iters", type=int, default=30, help="timed frames per backend")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch and ORT")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: PyTorch on the GPU, ORT CUDA and TensorRT where present")
    return parser.parse_args(argv)


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.array(seconds) * 1000.0, q))


def make_runners(model, onnx_path: Path, args) -> dict[str, object]:
    """name -> inactive runner; the first one is the baseline."""
    if args.device == "cuda":
        runners = {"pytorch-cuda": TorchRunner(model, device="cuda")}
        if ort_cuda_available():
            runners["ort-cuda"] = OnnxRuntimeRunner(onnx_path, providers="cuda")
        if tensorrt_available()[0]:
            from iapc.engines.runner_tensorrt import EngineFromOnnx, TensorRTRunner
            runners["tensorrt-fp16"] = TensorRTRunner(EngineFromOnnx(onnx_path, fp16=True))
        return runners
    return {
        "pytorch-eager": TorchRunner(model),
        "ort-cpu default": OnnxRuntimeRunner(onnx_path, providers="cpu"),
        f"ort-cpu intra={args.threads}": OnnxRuntimeRunner(onnx_path, providers="cpu",
                                                            intra_op_threads=args.threads,
                                                            inter_op_threads=1),
    }


def measure_interleaved(runners: dict[str, object], frames: np.ndarray, iters: int,
                        warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(warmup + iters):
        frame = frames[i % len(frames)][None]  # (1, H, W, 3)
        for name, runner in runners.items():
            runner.infer(frame)
            if i >= warmup:
                times[name].append(runner.last_inference_time)
    return times


def time_to_ready(model, work: Path, frame_size, args) -> list[tuple[str, float]]:
    """Seconds from weights in memory to an engine that can infer."""
    rows = []
    start = time.perf_counter()
    onnx_path = export_onnx(model, work / "ready.onnx", frame_size=frame_size)
    exported = time.perf_counter() - start
    with OnnxRuntimeRunner(onnx_path, providers="cpu", intra_op_threads=args.threads):
        rows.append(("export + ORT session", time.perf_counter() - start))
    rows.insert(0, ("export ONNX", exported))
    if args.device == "cuda" and tensorrt_available()[0]:
        from iapc.engines.runner_tensorrt import EngineFromOnnx, refit_engine_from_onnx
        start = time.perf_counter()
        engine = EngineFromOnnx(onnx_path, fp16=True, timing_cache=work / "timing.cache")()
        rows.append(("TensorRT build (fp16)", time.perf_counter() - start))
        start = time.perf_counter()
        export_onnx(model, work / "refit.onnx", frame_size=frame_size)
        refit_engine_from_onnx(engine, work / "refit.onnx", fp16=True)
        rows.append(("export + TensorRT refit", time.perf_counter() - start))
    elif args.device == "cuda":
        rows.append(("TensorRT build / refit", float("nan")))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: --device cuda needs a CUDA GPU for PyTorch", file=sys.stderr)
        return 0
    torch.set_num_threads(args.threads)
    frame_size = parse_size(args.frame_size)
    torch.manual_seed(0)
    model = build_model(args.model).eval()
    if args.device == "cuda":
        model = model.cuda()
    frames = sample_frames(4, frame_size)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx_path = export_onnx(model, work / "model.onnx", frame_size=frame_size)
        runners = make_runners(model, onnx_path, args)
        for runner in runners.values():
            runner.activate()
        try:
            times = measure_interleaved(runners, frames, args.iters, args.warmup)
        finally:
            for runner in runners.values():
                runner.deactivate()
        ready = time_to_ready(model, work, frame_size, args)

    print(f"\n{args.model} {frame_size[0]}x{frame_size[1]}, {args.device}, {args.threads} threads, "
          f"{args.iters} interleaved frames each")
    baseline_name = next(iter(times))
    baseline = statistics.median(times[baseline_name])
    print(f"{'backend':<22}{'median ms':>11}{'p90 ms':>9}{'ratio':>8}")
    for name, seconds in times.items():
        ratio = statistics.median(seconds) / baseline
        print(f"{name:<22}{percentile_ms(seconds, 50):>11.2f}{percentile_ms(seconds, 90):>9.2f}"
              f"{ratio:>8.2f}")
    if args.device == "cpu":
        best = min(statistics.median(s) for n, s in times.items() if n != baseline_name) / baseline
        print(f"best ORT/PyTorch ratio {best:.2f} (goal <= {GOAL_RATIO}): "
              f"{'met' if best <= GOAL_RATIO else 'not met'}")
    elif not tensorrt_available()[0]:
        print("tensorrt: skipped: no TensorRT")
    print(f"\n{'new weights -> engine ready':<28}{'seconds':>9}")
    for name, seconds in ready:
        shown = "skipped: no TensorRT" if seconds != seconds else f"{seconds:.2f}"  # NaN: skipped
        print(f"{name:<28}{shown:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
