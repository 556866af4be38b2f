"""``iapc export``: checkpoint -> ONNX -> the backend's engine -> parity gate -> engine store.

    iapc export --checkpoint run/source.pth --store run/engines --input-size 1024x512

The engine built for ``--backend`` and ``--precision`` here (:mod:`iapc.engines.targets`) is the one
gated and stored; it is published only if its masks agree with the PyTorch model's on recorded frames
(``--frames DIR``) or on generated street-like frames (``--frames synthetic``, the default).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from iapc.engines.targets import BACKENDS, PRECISIONS

PARITY_FRAMES = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (iapc or released IAPC/AdvEnt)")
    parser.add_argument("--model", default=None, help="architecture, if the checkpoint does not record it")
    parser.add_argument("--backend", default="auto",
                        help=f"one of {', '.join(BACKENDS)} (default auto: TensorRT if present, "
                             "else ONNX Runtime)")
    parser.add_argument("--store", required=True, help="engine store folder (created if missing)")
    parser.add_argument("--input-size", "--frame-size", dest="frame_size", default=None, metavar="WxH",
                        help="camera frame WIDTHxHEIGHT (default: the size the checkpoint was "
                             "trained at, else 1024x512)")
    parser.add_argument("--confidence", action="store_true", help="also output a uint8 confidence map")
    parser.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch axis")
    parser.add_argument("--min-agreement", type=float, default=None,
                        help="parity gate threshold, 0..1 (default 0.995, or 0.99 for fp16 engines)")
    parser.add_argument("--frames", default="synthetic",
                        help="folder of recorded images for the parity gate, or 'synthetic' (default)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="engine precision (default auto: fp16 with TensorRT, fp32 with ONNX "
                             "Runtime)")
    parser.add_argument("--fp32", action="store_true", help="the same as --precision fp32")
    parser.add_argument("--keep", type=int, default=5, help="versions kept in the store (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")


def _parity_frames(spec: str, frame_size: tuple[int, int]):
    from iapc.export.parity import load_frames
    from iapc.synth import sample_frames

    if spec == "synthetic":
        return sample_frames(PARITY_FRAMES, frame_size)
    return load_frames(spec, frame_size, limit=PARITY_FRAMES * 2)


def _check_arguments(args: argparse.Namespace) -> None:
    from iapc.errors import UserError

    if args.min_agreement is not None and not 0.0 < args.min_agreement <= 1.0:
        raise UserError(f"--min-agreement must be in (0, 1], e.g. 0.995, got {args.min_agreement}")
    if args.keep < 1:
        raise UserError(f"--keep must be at least 1, got {args.keep}")
    if not Path(args.checkpoint).is_file():
        raise UserError(f"checkpoint {args.checkpoint} does not exist: give the path of a .pth/.pt file")


def run(args: argparse.Namespace) -> int:
    from iapc.adapt.checkpoint import load_model
    from iapc.options import input_size_for
    from iapc.errors import UserError
    from iapc.export.deploy import Candidate, DeployOptions, deploy
    from iapc.export.parity import default_min_agreement
    from iapc.engines.targets import engine_target
    from iapc.engines.store import EngineStore
    from iapc.options import parse_size

    _check_arguments(args)
    target = engine_target(args.backend, "fp32" if args.fp32 else args.precision)
    model, meta = load_model(args.checkpoint, args.model)
    frame_size = input_size_for(meta, parse_size(args.frame_size) if args.frame_size else None,
                                "--input-size")
    frames = _parity_frames(args.frames, frame_size)
    model.eval()
    store = EngineStore(args.store, keep=args.keep)
    options = DeployOptions(frame_size=frame_size, target=target,
                            confidence=args.confidence, dynamic_batch=args.dynamic_batch,
                            threads=args.threads, parity_source=args.frames,
                            min_agreement=args.min_agreement or default_min_agreement(
                                target.reduced_precision))
    candidate = Candidate(model, model=meta["model"], num_classes=meta["num_classes"],
                          method=meta.get("method") or "none", step=meta["step"],
                          config=meta["config"],
                          extra={"checkpoint": str(Path(args.checkpoint).resolve())})
    with tempfile.TemporaryDirectory(prefix="iapc-export-") as tmp:
        result = deploy(candidate, store, frames, options, Path(tmp))
    if result.rejected_by is not None:
        raise UserError(f"parity gate failed, nothing published: {result.reason}; check the "
                        "checkpoint and export, or lower --min-agreement")
    version, report, timing = result.version, result.parity, result.timing
    print(f"published {version.name} to {store.root}: {meta['model']} {frame_size[0]}x{frame_size[1]}, "
          f"{target.describe()}, {report.message} on {report.frames} frames, "
          f"export {timing['export_s']:.2f} s, engine ready {timing['ready_s']:.2f} s, "
          f"{report.runner_ms:.1f} ms/frame")
    return 0
