"""Runtime figures, each a ratio measured side by side in one run on one machine.

1. throughput: the whole runtime (capture thread, engine, publish) on recorded frames as fast as
   possible, vs the bare engine (the same ONNX file, same runner, same threads) called back to
   back on the same frames. Goal >= 0.95.
2. p99 capture->publish latency with adaptation running vs without, on a paced stream.
   Goal <= 1.25.
3. the largest frame interval around a hot swap vs the median interval. Goal <= 1.5.

Mask delivery to several subscribers is measured by ``bench_delivery.py``.

    .venv/bin/python benchmarks/bench_runtime.py --frames 400 --input-size 256x128
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from iapc.replay.launch import free_loopback_port, runtime_executable


def write_frames(folder: Path, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Synthetic 'fog' frames as PNG files (the recorded stream) and in memory."""
    from iapc import synth

    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for index, (image, _label) in zip(range(count), synth.stream("fog", size, seed=1)):
        cv2.imwrite(str(folder / f"frame_{index:06d}.png"), image)
        frames.append(image)
    return frames


def bare_engine_fps(onnx_path: Path, frames: list[np.ndarray], threads: int) -> float:
    from iapc.export.runners import make_runner

    with make_runner("onnxruntime", onnx_path=onnx_path, threads=threads) as runner:
        for frame in frames[:10]:
            runner.infer(frame[None])
        start = time.perf_counter()
        for frame in frames:
            runner.infer(frame[None])
        return len(frames) / (time.perf_counter() - start)


def run_runtime(args: list[str], port: int, timeout: float = 600) -> list:
    """Run iapc-runtime to the end of its source; every mask header it published."""
    from iapc.runtime.client import MaskSubscriber

    headers = []
    with MaskSubscriber(f"tcp://127.0.0.1:{port}", newest_wins=False) as sub:
        process = subprocess.Popen([*runtime_executable(), *args, "--publish", f"tcp://127.0.0.1:{port}",
                                                   "--quiet"], stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                header, _mask = sub.receive(timeout=0.5)
                header.extra["received_ns"] = time.time_ns()
                headers.append(header)
            except TimeoutError:
                if process.poll() is not None:
                    break
        _, err = process.communicate(timeout=60)
        if process.returncode != 0:
            raise RuntimeError(err.decode()[-2000:])
    return headers


def latencies_ms(headers) -> np.ndarray:
    return np.array([(h.publish_ns - h.capture_ns) / 1e6 for h in headers])


def swap_interval_ratio(headers) -> tuple[float, int]:
    """Largest publish interval within 2 frames of a version change / median interval."""
    publish = np.array([h.publish_ns for h in headers], dtype=np.float64)
    intervals = np.diff(publish)
    versions = [h.engine_version for h in headers]
    swaps = [i for i in range(1, len(versions)) if versions[i] != versions[i - 1]]
    if not swaps:
        return float("nan"), 0
    around = [intervals[j] for i in swaps for j in range(max(0, i - 2), min(len(intervals), i + 2))]
    return float(max(around) / np.median(intervals)), len(swaps)


def main() -> int:
    from iapc.adapt.checkpoint import load_model
    from iapc.replay.run import embedded_checkpoint
    from iapc.export.onnx_export import export_onnx
    from iapc.runtime.config import parse_size

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--input-size", type=parse_size, default=(256, 128))
    parser.add_argument("--fps", type=float, default=15.0, help="rate of the paced latency runs")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each paced run")
    parser.add_argument("--checkpoint", type=Path,
                        help="a 'tiny' source checkpoint (default: the runtime's, shipped with the package)")
    parser.add_argument("--config", type=Path, help="runtime YAML for every run (e.g. a duty cycle)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    checkpoint = args.checkpoint or embedded_checkpoint("tiny")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = write_frames(tmp / "frames", args.frames, args.input_size)
        model, _ = load_model(checkpoint)
        onnx_path = export_onnx(model.eval(), tmp / "bare.onnx", frame_size=args.input_size)
        common = ["--config", str(args.config)] if args.config else []
        common += ["--checkpoint", str(checkpoint), "--model", "tiny",
                  "--input-size", f"{args.input_size[0]}x{args.input_size[1]}"]

        # 1. throughput, runtime vs bare engine (adaptation off: the bare engine has none either)
        bare = bare_engine_fps(onnx_path, frames, threads=1)
        headers = run_runtime(["--images", str(tmp / "frames"), "--fps", "0", "--no-adapt",
                               "--run-dir", str(tmp / "run_tp"), *common], free_loopback_port())
        span = (headers[-1].publish_ns - headers[0].publish_ns) / 1e9
        runtime_fps = (len(headers) - 1) / span
        results["throughput"] = {"bare_fps": bare, "runtime_fps": runtime_fps,
                                 "frames": len(headers), "ratio": runtime_fps / bare}

        # 2. + 3. paced stream with and without adaptation
        paced = ["--synthetic", "fog", "--fps", str(args.fps),
                 "--max-frames", str(int(args.fps * args.seconds)), *common]
        without = run_runtime([*paced, "--no-adapt", "--run-dir", str(tmp / "run_off")], free_loopback_port())
        with_adapt = run_runtime([*paced, "--export-every-steps", "10",
                                  "--run-dir", str(tmp / "run_on")], free_loopback_port())
        p99_off = float(np.percentile(latencies_ms(without), 99))
        p99_on = float(np.percentile(latencies_ms(with_adapt), 99))
        results["latency"] = {"p50_off_ms": float(np.median(latencies_ms(without))),
                              "p99_off_ms": p99_off,
                              "p50_on_ms": float(np.median(latencies_ms(with_adapt))),
                              "p99_on_ms": p99_on, "ratio_p99": p99_on / p99_off}
        ratio, swaps = swap_interval_ratio(with_adapt)
        results["swap"] = {"swaps": swaps, "max_interval_over_median": ratio}

    t, l, s = results["throughput"], results["latency"], results["swap"]
    print(f"| figure | measured | goal |\n|---|---|---|\n"
          f"| runtime / bare engine throughput | {t['runtime_fps']:.1f} / {t['bare_fps']:.1f} fps = "
          f"{t['ratio']:.3f} | >= 0.95 |\n"
          f"| p99 latency, adapting / not | {l['p99_on_ms']:.2f} / {l['p99_off_ms']:.2f} ms = "
          f"{l['ratio_p99']:.3f} | <= 1.25 |\n"
          f"| max interval at a swap / median ({s['swaps']} swaps) | "
          f"{s['max_interval_over_median']:.3f} | <= 1.5 |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
