"""A picture a reader can judge at a glance: source and adapted masks over the same video frames.

The runtime plays ``--video`` twice, paced and looping for ``--loops`` passes: once serving the
source engine (``--no-adapt``), once adapting. From the last pass, ``--picks`` frames are drawn
as rows of [frame | source mask overlaid | adapted mask overlaid] (Cityscapes palette) into one
PNG; the masks are the ones the runtime published over ZeroMQ.

    .venv/bin/python benchmarks/overlay_video.py --model espnetv2 --input-size 512x256 \\
        --checkpoint ../shared/real/models/espnetv2/espnetv2_s_2.0_city_512x256.pth \\
        --video ../shared/real/video/solidWhiteRight.mp4 --out docs/real_video_masks.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from bench_runtime import run_runtime
from iapc.replay.launch import free_loopback_port

OVERLAY_ALPHA = 0.55  # weight of the mask colours over the frame


def video_frames(video: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    if not frames:
        raise SystemExit(f"overlay_video: cannot read frames from {video}")
    return frames


def overlay(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) BGR frame with the (h, w) train-id mask's colours blended over it."""
    from iapc.labels import colorize

    mask = cv2.resize(mask, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
    colours = cv2.cvtColor(colorize(mask), cv2.COLOR_RGB2BGR)
    return cv2.addWeighted(frame, 1 - OVERLAY_ALPHA, colours, OVERLAY_ALPHA, 0)


def label(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    cv2.putText(out, text, (12, 34), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2, cv2.LINE_AA)
    return out


def main() -> int:
    from iapc.runtime.config import parse_size

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--model", default="espnetv2")
    parser.add_argument("--input-size", type=parse_size, default=(512, 256))
    parser.add_argument("--fps", type=float, default=8.0, help="pace of both runs")
    parser.add_argument("--loops", type=int, default=3, help="passes over the video")
    parser.add_argument("--picks", type=int, default=3, help="frames drawn from the last pass")
    parser.add_argument("--export-every-steps", type=int, default=20,
                        help="adaptation updates between engine exports in the adapted run")
    parser.add_argument("--scale", type=float, default=0.5, help="size of the picture's tiles")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    for path in (args.video, args.checkpoint):
        if not path.is_file():
            raise SystemExit(f"overlay_video: {path} does not exist")

    frames = video_frames(args.video)
    total = len(frames) * args.loops
    common = ["--video", str(args.video), "--loop", "--fps", str(args.fps), "--max-frames",
              str(total), "--checkpoint", str(args.checkpoint), "--model", args.model,
              "--input-size", f"{args.input_size[0]}x{args.input_size[1]}"]
    source, adapted = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        run_runtime([*common, "--no-adapt", "--run-dir", f"{tmp}/source"], free_loopback_port(),
                    timeout=3 * total / args.fps + 300, masks=source)
        headers = run_runtime([*common, "--export-every-steps", str(args.export_every_steps),
                               "--run-dir", f"{tmp}/adapted"], free_loopback_port(),
                              timeout=3 * total / args.fps + 300, masks=adapted)
    last_pass = total - len(frames)
    picks = [last_pass + int(len(frames) * (k + 1) / (args.picks + 1)) for k in range(args.picks)]
    version = {h.frame_id: h.engine_version for h in headers}
    rows = []
    for frame_id in picks:
        index = frame_id % len(frames)
        frame = frames[index]
        rows.append(np.hstack([
            label(frame, f"video frame {index}"),
            label(overlay(frame, source[index]), "source engine"),
            label(overlay(frame, adapted[frame_id]),
                  f"adapted engine v{version[frame_id]}, pass {args.loops}"),
        ]))
    picture = np.vstack(rows)
    picture = cv2.resize(picture, None, fx=args.scale, fy=args.scale, interpolation=cv2.INTER_AREA)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), picture)
    changed = [float(np.mean(source[f % len(frames)] != adapted[f])) for f in picks]
    print(f"wrote {args.out}: frames {[f % len(frames) for f in picks]}, engine versions "
          f"{[version[f] for f in picks]}, pixels that differ from the source mask "
          f"{[round(100 * c, 1) for c in changed]} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
