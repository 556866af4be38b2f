"""``iapc-runtime``: camera to masks, with live IAPC adaptation and engine hot-swap.

With no source and no checkpoint it runs the embedded default: the synthetic driving stream, a
small source model trained on the synthetic source domain on first use (cached), ONNX Runtime on
the CPU, and live figures in the terminal.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from iapc.errors import UserError, run_cli
from iapc.runtime.config import (RuntimeConfig, default_cache_dir, load_yaml_config, parse_size)

SOURCE_FLAGS = {"camera": "camera", "video": "video", "images": "images",
                "cityscapes_sequence": "cityscapes", "synthetic": "synthetic"}


class OneLineParser(argparse.ArgumentParser):
    """Bad options end as one ``iapc-runtime: error: ...`` line (exit 2), like every user error."""

    def error(self, message: str):
        raise UserError(f"{message}; see iapc-runtime --help")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="iapc-runtime", description=__doc__.splitlines()[0])
    src = p.add_argument_group("frame source (one of)").add_mutually_exclusive_group()
    src.add_argument("--camera", metavar="DEVICE", help="V4L2 camera, e.g. /dev/video0")
    src.add_argument("--video", metavar="FILE", help="a video file")
    src.add_argument("--images", metavar="DIR", help="a folder of images, in name order")
    src.add_argument("--cityscapes-sequence", metavar="DIR",
                     help="a Cityscapes root or leftImg8bit_sequence folder, in order")
    src.add_argument("--synthetic", metavar="DOMAIN",
                     help="the generated driving stream of DOMAIN (default: fog)")
    p.add_argument("--fps", type=float, help="pace file/synthetic sources at this rate (0: as fast as possible)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--loop", action="store_true", default=None, help="restart file sources at the end")
    m = p.add_argument_group("model and engine")
    m.add_argument("--model", help="architecture of the checkpoint (default: tiny)")
    m.add_argument("--checkpoint", help="source checkpoint (default: the embedded synthetic one)")
    m.add_argument("--num-classes", type=int)
    m.add_argument("--backend", choices=("auto", "tensorrt", "onnxruntime", "torch"))
    m.add_argument("--input-size", type=parse_size, metavar="WxH", help="engine input, e.g. 1024x512")
    m.add_argument("--store", help="engine store folder (default: RUN_DIR/store)")
    m.add_argument("--run-dir", help="runtime state folder (default: ~/.cache/iapc/run)")
    m.add_argument("--confidence", action="store_true", default=None, help="also publish confidence maps")
    o = p.add_argument_group("publishing")
    o.add_argument("--publish", metavar="ADDRESS", help="ZeroMQ PUB address (default tcp://127.0.0.1:5555)")
    o.add_argument("--publish-hwm", type=int, metavar="N",
                   help="masks queued per slow subscriber before its masks are dropped (default 8)")
    o.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    o.add_argument("--curve-keys", metavar="DIR",
                   help="encrypt with CURVE and admit only the clients in DIR/authorized "
                        "(make keys with 'iapc keys --out DIR'); needed for non-loopback addresses")
    o.add_argument("--insecure", action="store_true", default=None,
                   help="allow binding a non-loopback address without CURVE")
    a = p.add_argument_group("adaptation")
    a.add_argument("--no-adapt", dest="adapt", action="store_false", default=None,
                   help="serve the engine of the source checkpoint, unadapted (the store's "
                        "adapted versions are kept, not served)")
    a.add_argument("--resume-latest", action="store_true",
                   help="with --no-adapt: serve the store's latest (adapted) version instead")
    a.add_argument("--preset", choices=("paper", "released"))
    a.add_argument("--export-every-steps", type=int, metavar="N")
    a.add_argument("--export-every-seconds", type=float, metavar="T")
    p.add_argument("--config", metavar="FILE.yaml", help="config file; options given here override it")
    p.add_argument("--quiet", action="store_true", help="no live figures")
    return p


def config_from_args(args: argparse.Namespace) -> RuntimeConfig:
    """Defaults <- YAML config file <- command-line options actually given."""
    cfg = load_yaml_config(args.config) if args.config else RuntimeConfig()
    for flag, kind in SOURCE_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            cfg.source.kind, cfg.source.location = kind, value
            if kind == "camera":
                cfg.source.fps = None  # a camera sets its own pace
    if args.fps is not None:
        cfg.source.fps = args.fps or None
    elif args.video is not None:  # a video plays at its own rate unless --fps says otherwise
        cfg.source.fps = video_fps(args.video) or cfg.source.fps
    for name in ("max_frames", "loop"):
        if getattr(args, name) is not None:
            setattr(cfg.source, name, getattr(args, name))
    for name in ("model", "checkpoint", "num_classes", "backend", "input_size", "store", "run_dir",
                 "confidence", "publish", "publish_hwm", "metrics_port", "curve_keys", "insecure"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.adapt is not None:
        cfg.adaptation.enabled = args.adapt
    for name in ("preset", "export_every_steps", "export_every_seconds"):
        if getattr(args, name) is not None:
            setattr(cfg.adaptation, name, getattr(args, name))
    return cfg


def video_fps(path: str) -> float | None:
    """The frame rate a video file records (cv2.CAP_PROP_FPS); None if unreadable or unset."""
    from iapc.runtime.sources import CaptureSource

    if not Path(path).is_file():
        return None  # check_config says what is wrong with it
    source = CaptureSource(path, camera=False)
    try:
        source.open()
    except UserError:
        return None
    try:
        return source.native_fps()
    finally:
        source.close()


def check_config(cfg: RuntimeConfig) -> None:
    """Catch user mistakes here, before any process starts."""
    from iapc.runtime.publisher import check_bind_address
    from iapc.runtime.sources import make_source

    if cfg.curve_keys is not None:
        from iapc.runtime.security import load_server_keys

        load_server_keys(cfg.curve_keys)
    check_bind_address(cfg.publish, allow_remote=cfg.insecure or cfg.curve_keys is not None)
    if cfg.backend == "torch":
        raise UserError("the inference loop runs without PyTorch: use --backend auto, "
                        "onnxruntime or tensorrt (the torch runner is for 'iapc export' checks)")
    if cfg.checkpoint is not None:  # before any process starts: a bad file must not loop
        from iapc.checkpoint_file import check_checkpoint_file

        check_checkpoint_file(cfg.checkpoint)
    source = make_source(cfg.source.kind, cfg.source.location, cfg.input_size, cfg.source.seed,
                         faults=cfg.source.faults)
    if cfg.source.kind in ("video", "camera"):
        source.open()
        source.close()


def embedded_checkpoint(cfg: RuntimeConfig) -> str:
    """The cached synthetic source model, trained in a child process on first use."""
    path = default_cache_dir() / "embedded" / f"source_{cfg.model}.pt"  # as iapc.adapt.embedded
    if not path.is_file():
        print(f"first use: training the embedded {cfg.model} source model on the synthetic source "
              f"domain into {path} (a few minutes, once)", file=sys.stderr)
        code = subprocess.call([sys.executable, "-m", "iapc.adapt.embedded", "--model", cfg.model,
                                "--out", str(path)])
        if code != 0 or not path.is_file():
            raise UserError(f"training the embedded source model failed (exit {code}); pass "
                            "--checkpoint FILE to use your own")
    return str(path)


class LiveFigures:
    """Prints the runtime's heartbeat as one line a second."""

    def __init__(self, address: str, curve_keys: str | None = None):
        from iapc.runtime.client import MaskSubscriber

        curve = {}
        if curve_keys is not None:  # the runtime admits its own first client key
            from iapc.runtime.security import load_client_keys, load_public_key

            curve = {"curve_server_key": load_public_key(Path(curve_keys) / "server.key"),
                     "curve_client_keys": load_client_keys(Path(curve_keys) / "client.key_secret")}
        self.subscriber = MaskSubscriber(address, topics=(b"status",), newest_wins=False, **curve)

    def __call__(self) -> None:
        try:
            while True:
                status = self.subscriber.receive_status(timeout=0)
                if status.get("kind") == "heartbeat":
                    print(format_heartbeat(status), file=sys.stderr)
                elif status.get("kind") == "swap":
                    print(f"  hot-swap v{status['from']} -> v{status['to']} at frame "
                          f"{status['at_frame']}", file=sys.stderr)
        except TimeoutError:
            return

    def close(self) -> None:
        self.subscriber.close()


def format_heartbeat(status: dict) -> str:
    lat = status.get("latency_ms") or {}
    adapt = status.get("adaptation") or {}
    miou = status.get("miou")
    parts = [f"fps {status.get('fps', 0):5.1f}",
             f"latency p50 {lat.get('p50') or 0:6.1f} ms p99 {lat.get('p99') or 0:6.1f} ms",
             f"engine v{status.get('engine_version')}", f"swaps {status.get('swaps', 0)}",
             f"frames {status.get('frames_published', 0)}"]
    if "total" in adapt:
        parts.append(f"loss {adapt['total']:.3f} @ step {adapt.get('step')}")
    if miou is not None:
        parts.append(f"mIoU {miou:5.1f}")
    return " | ".join(parts)


def _main(argv: list[str] | None) -> int:
    from iapc.runtime.supervisor import Supervisor

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="iapc-runtime: %(message)s")
    cfg = config_from_args(args)
    if args.resume_latest and cfg.adaptation.enabled:
        raise UserError("--resume-latest goes with --no-adapt (with adaptation on, the runtime "
                        "always resumes from the store's latest version)")
    check_config(cfg)
    checkpoint = cfg.checkpoint or embedded_checkpoint(cfg)
    live = None if args.quiet else LiveFigures(cfg.publish, cfg.curve_keys)
    try:
        return Supervisor(cfg, checkpoint, on_status=live, serve_store=args.resume_latest).run()
    finally:
        if live is not None:
            live.close()


def main(argv: list[str] | None = None) -> int:
    sys.exit(run_cli("iapc-runtime", lambda: _main(argv)))
