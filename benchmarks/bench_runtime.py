"""Runtime figures, each a ratio measured side by side in one run on one machine.

1. throughput: the whole runtime (capture thread, engine, publish) on recorded frames as fast as
   possible, vs the bare engine (the same ONNX file, same runner, same threads) called back to
   back on the same frames. Goal >= 0.95.
2. p99 capture->publish latency with adaptation running vs without, on a paced stream.
   Goal <= 1.25.
3. the largest frame interval around a hot swap vs the median interval. Goal <= 1.5.

Mask delivery to several subscribers is measured by ``bench_delivery.py``.

    .venv/bin/python benchmarks/bench_runtime.py --frames 400 --input-size 256x128

On a real network and real frames (the paced runs play the video at its own rate, looping):

    .venv/bin/python benchmarks/bench_runtime.py --model espnetv2 --input-size 512x256 \
        --checkpoint ../shared/real/models/espnetv2/espnetv2_s_2.0_city_512x256.pth \
        --video ../shared/real/video/solidWhiteRight.mp4 --fps 25 --threads 2
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


def read_video_frames(video: Path, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """The first ``count`` frames of ``video`` (looping), resized to ``size`` = (W, H): what the
    runtime's engine receives from the same file."""
    capture = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            if not frames:
                raise SystemExit(f"bench_runtime: cannot read frames from {video}")
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR))
    capture.release()
    return frames


def runtime_config(base: Path | None, threads: int, folder: Path) -> Path:
    """``base`` (a runtime YAML, optional) with the engine's intra-op threads set to ``threads``:
    the runtime's engine and the bare engine then run with the same threads."""
    import yaml

    config = yaml.safe_load(base.read_text()) if base else {}
    config = {**(config or {}), "inference_threads": threads}
    path = folder / "runtime.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def bare_engine_fps(onnx_path: Path, frames: list[np.ndarray], threads: int) -> float:
    from iapc.export.runners import make_runner

    with make_runner("onnxruntime", onnx_path=onnx_path, threads=threads) as runner:
        for frame in frames[:10]:
            runner.infer(frame[None])
        start = time.perf_counter()
        for frame in frames:
            runner.infer(frame[None])
        return len(frames) / (time.perf_counter() - start)


def run_runtime(args: list[str], port: int, timeout: float = 600,
                masks: dict[int, np.ndarray] | None = None) -> list:
    """Run iapc-runtime to the end of its source; every mask header it published (and, into
    ``masks`` when given, every mask by frame id)."""
    from iapc.runtime.client import MaskSubscriber

    headers = []
    with MaskSubscriber(f"tcp://127.0.0.1:{port}", newest_wins=False) as sub:
        process = subprocess.Popen([*runtime_executable(), *args, "--publish", f"tcp://127.0.0.1:{port}",
                                                   "--quiet"], stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                header, mask = sub.receive(timeout=0.5)
                header.extra["received_ns"] = time.time_ns()
                headers.append(header)
                if masks is not None:
                    masks[header.frame_id] = mask.copy()
            except TimeoutError:
                if process.poll() is not None:
                    break
        _, err = process.communicate(timeout=60)
        if process.returncode != 0:
            raise RuntimeError(err.decode()[-2000:])
    return headers


def latencies_ms(headers) -> np.ndarray:
    return np.array([(h.publish_ns - h.capture_ns) / 1e6 for h in headers])


def paced_figures(headers, expected: int, run_dir: Path) -> dict:
    """Rate, frames lost and what the runtime's own summary counted, for one paced run."""
    from iapc.contracts import run_folder

    span = (headers[-1].publish_ns - headers[0].publish_ns) / 1e9
    summary = json.loads((run_dir / run_folder.INFERENCE_SUMMARY).read_text())
    return {"fps": (len(headers) - 1) / span, "received": len(headers),
            "missing": expected - len(headers),
            "published": summary.get("frames_published"), "failed": summary.get("frames_failed"),
            "swaps": len({h.engine_version for h in headers}) - 1}


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
                        help="source checkpoint (default: the runtime's tiny one, shipped with the package)")
    parser.add_argument("--model", default="tiny", help="architecture of --checkpoint")
    parser.add_argument("--video", type=Path,
                        help="real frames from this video instead of the synthetic 'fog' stream")
    parser.add_argument("--threads", type=int, default=1,
                        help="ONNX Runtime threads of the runtime's engine and of the bare engine")
    parser.add_argument("--config", type=Path, help="runtime YAML for every run (e.g. a duty cycle)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    checkpoint = args.checkpoint or embedded_checkpoint("tiny")
    results = {"model": args.model, "input_size": list(args.input_size), "threads": args.threads,
               "source": str(args.video) if args.video else "synthetic fog"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.video:
            frames = read_video_frames(args.video, args.frames, args.input_size)
            recorded = ["--video", str(args.video), "--max-frames", str(args.frames), "--loop"]
        else:
            frames = write_frames(tmp / "frames", args.frames, args.input_size)
            recorded = ["--images", str(tmp / "frames")]
        model, _ = load_model(checkpoint, args.model)
        onnx_path = export_onnx(model.eval(), tmp / "bare.onnx", frame_size=args.input_size)
        common = ["--config", str(runtime_config(args.config, args.threads, tmp))]
        common += ["--checkpoint", str(checkpoint), "--model", args.model,
                   "--input-size", f"{args.input_size[0]}x{args.input_size[1]}"]

        # 1. throughput, runtime vs bare engine (adaptation off: the bare engine has none either)
        bare = bare_engine_fps(onnx_path, frames, threads=args.threads)
        headers = run_runtime([*recorded, "--fps", "0", "--no-adapt",
                               "--run-dir", str(tmp / "run_tp"), *common], free_loopback_port())
        span = (headers[-1].publish_ns - headers[0].publish_ns) / 1e9
        runtime_fps = (len(headers) - 1) / span
        results["throughput"] = {"bare_fps": bare, "runtime_fps": runtime_fps,
                                 "frames": len(headers), "ratio": runtime_fps / bare}

        # 2. + 3. paced stream with and without adaptation
        stream = (["--video", str(args.video), "--loop"] if args.video else ["--synthetic", "fog"])
        paced = [*stream, "--fps", str(args.fps), "--max-frames", str(int(args.fps * args.seconds)),
                 *common]
        without = run_runtime([*paced, "--no-adapt", "--run-dir", str(tmp / "run_off")], free_loopback_port())
        with_adapt = run_runtime([*paced, "--export-every-steps", "10",
                                  "--run-dir", str(tmp / "run_on")], free_loopback_port())
        expected = int(args.fps * args.seconds)
        results["paced"] = {"off": paced_figures(without, expected, tmp / "run_off"),
                            "on": paced_figures(with_adapt, expected, tmp / "run_on")}
        p99_off = float(np.percentile(latencies_ms(without), 99))
        p99_on = float(np.percentile(latencies_ms(with_adapt), 99))
        results["latency"] = {"p50_off_ms": float(np.median(latencies_ms(without))),
                              "p99_off_ms": p99_off,
                              "p50_on_ms": float(np.median(latencies_ms(with_adapt))),
                              "p99_on_ms": p99_on, "ratio_p99": p99_on / p99_off}
        ratio, swaps = swap_interval_ratio(with_adapt)
        results["swap"] = {"swaps": swaps, "max_interval_over_median": ratio}

    t, l, s = results["throughput"], results["latency"], results["swap"]
    off, on = results["paced"]["off"], results["paced"]["on"]
    print(f"| figure | measured | goal |\n|---|---|---|\n"
          f"| runtime / bare engine throughput | {t['runtime_fps']:.1f} / {t['bare_fps']:.1f} fps = "
          f"{t['ratio']:.3f} | >= 0.95 |\n"
          f"| paced at {args.fps:g} fps, not adapting / adapting | {off['fps']:.1f} / "
          f"{on['fps']:.1f} fps, {off['missing']} / {on['missing']} frames missing | |\n"
          f"| p50 latency, adapting / not | {l['p50_on_ms']:.2f} / {l['p50_off_ms']:.2f} ms | |\n"
          f"| p99 latency, adapting / not | {l['p99_on_ms']:.2f} / {l['p99_off_ms']:.2f} ms = "
          f"{l['ratio_p99']:.3f} | <= 1.25 |\n"
          f"| max interval at a swap / median ({s['swaps']} swaps) | "
          f"{s['max_interval_over_median']:.3f} | <= 1.5 |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
