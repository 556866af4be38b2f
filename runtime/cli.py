"""``iapc-runtime``: camera to masks, with live IAPC adaptation and engine hot-swap.

With no source and no checkpoint it runs the embedded default: the synthetic driving stream, a
small source model trained on the synthetic source domain on first use (cached), ONNX Runtime on
the CPU, and live figures in the terminal.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from iapc.errors import UserError, run_cli
from iapc.method_config import AdaptConfig
from iapc.options import DEFAULT_INPUT_SIZE, input_size_for
from iapc.runtime.config import DaemonConfig, RuntimeConfig, SourceConfig, load_yaml_config
from iapc.settings import add_flags, apply_flags

SOURCE_FLAGS = {"camera": "camera", "video": "video", "images": "images",
                "cityscapes_sequence": "cityscapes", "camvid_sequence": "camvid",
                "synthetic": "synthetic"}


class OneLineParser(argparse.ArgumentParser):
    """Bad options end as one ``iapc-runtime: error: ...`` line (exit 2), like every user error."""

    def error(self, message: str):
        raise UserError(f"{message}; see iapc-runtime --help")


def build_parser() -> argparse.ArgumentParser:
    """Source flags by hand (one of them picks the kind); every other option is derived from
    the config classes' declarations (:mod:`iapc.settings`): one definition per setting."""
    p = OneLineParser(prog="iapc-runtime", description=__doc__.splitlines()[0])
    src = p.add_argument_group("frame source (one of)").add_mutually_exclusive_group()
    src.add_argument("--camera", metavar="DEVICE", help="V4L2 camera, e.g. /dev/video0")
    src.add_argument("--video", metavar="FILE", help="a video file")
    src.add_argument("--images", metavar="DIR", help="a folder of images, in name order")
    src.add_argument("--cityscapes-sequence", metavar="DIR",
                     help="a Cityscapes root or leftImg8bit_sequence folder, in order")
    src.add_argument("--camvid-sequence", metavar="ROOT[:SEQ,...]",
                     help="CamVid sequences in turn, each in frame order with its labels, e.g. "
                          "CamVid:0016E5,0001TP,Seq05VD (SEQ/SPLIT: one split of it)")
    src.add_argument("--synthetic", metavar="DOMAIN",
                     help="the generated driving stream of DOMAIN (default: fog)")
    add_flags(p, SourceConfig, "source__", "frame pacing")
    add_flags(p, RuntimeConfig, "", "model, engine and publishing")
    add_flags(p, AdaptConfig, "method__", "adaptation method (docs/METHOD.md)",
              defaults=RuntimeConfig().method)
    a = p.add_argument_group("adaptation daemon")
    a.add_argument("--no-adapt", dest="adapt", action="store_false", default=None,
                   help="serve the engine of the source checkpoint, unadapted (the store's "
                        "adapted versions are kept, not served)")
    a.add_argument("--resume-latest", action="store_true",
                   help="with --no-adapt: serve the store's latest (adapted) version instead")
    add_flags(a, DaemonConfig, "adaptation__")
    p.add_argument("--config", metavar="FILE.yaml", help="config file; options given here override it")
    p.add_argument("--quiet", action="store_true", help="no live figures")
    return p


def config_from_args(args: argparse.Namespace) -> RuntimeConfig:
    """Defaults <- YAML config file <- command-line options actually given; ranges checked."""
    cfg = load_yaml_config(args.config) if args.config else RuntimeConfig()
    for flag, kind in SOURCE_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            cfg.source.kind, cfg.source.location = kind, value
            if kind == "camera":
                cfg.source.fps = None  # a camera sets its own pace
    apply_flags(args, cfg)
    apply_flags(args, cfg.source, "source__")
    apply_flags(args, cfg.method, "method__")
    apply_flags(args, cfg.adaptation, "adaptation__")
    if args.video is not None and args.source__fps is None:
        # a video plays at its own rate unless --fps says otherwise
        cfg.source.fps = video_fps(args.video) or cfg.source.fps
    if args.adapt is not None:
        cfg.adaptation.enabled = args.adapt
    cfg.check()
    if cfg.source.fps == 0:
        cfg.source.fps = None  # 0: as fast as possible
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
    # the size only shapes frames here; the engine's is settled once the checkpoint is read
    size = cfg.input_size or DEFAULT_INPUT_SIZE
    source = make_source(cfg.source.kind, cfg.source.location, size, cfg.source.seed,
                         faults=cfg.source.faults)
    if cfg.source.kind in ("video", "camera"):
        source.open()
        source.close()


def embedded_checkpoint(cfg: RuntimeConfig) -> str:
    """The synthetic source model that ships with the package, else the cached one, trained in
    a child process on first use (:func:`iapc.shipped.default_checkpoint`)."""
    from iapc.shipped import default_checkpoint

    return str(default_checkpoint(cfg.model))


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
        from iapc.runtime.protocol import StatusKind

        try:
            while True:
                status = self.subscriber.receive_status(timeout=0)
                if status.get("kind") == StatusKind.HEARTBEAT:
                    print(format_heartbeat(status), file=sys.stderr)
                elif status.get("kind") == StatusKind.SWAP:
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
    recent = status.get("miou_recent") or {}
    if recent.get("serving") is not None and recent.get("source") is not None:
        parts.append(f"last {recent['frames']}: serving {recent['serving']:.1f} vs source "
                     f"{recent['source']:.1f} ({recent['gain']:+.1f})")
    return " | ".join(parts)


def checkpoint_facts(checkpoint: str, cfg: RuntimeConfig) -> dict:
    """Model, classes and training size of ``checkpoint``, read by a child process (this one
    stays free of torch); a file it cannot use ends the runtime here with the child's line."""
    cmd = [sys.executable, "-m", "iapc.adapt.checkpoint", checkpoint, "--model", cfg.model,
           "--num-classes", str(cfg.num_classes)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise UserError(lines[-1].removeprefix("iapc-runtime: error: "))
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_store_fits(cfg: RuntimeConfig) -> None:
    """A store whose engines take another input size, or were built for another engine target
    (backend, precision, device), would be refused version after version by the inference
    process: refuse it here, once, with what to do."""
    from iapc.engines.targets import engine_target, misfit
    from iapc.engines.manifest import manifest_input_size
    from iapc.engines.store import EngineStore

    store = cfg.resolved_store()
    if not store.is_dir():
        return
    current = EngineStore(store).current()
    if current is None:
        return
    size = manifest_input_size(current.manifest)
    if size is not None and tuple(size) != tuple(cfg.input_size):
        raise UserError(f"engine store {store} serves {current.name} for {size[0]}x{size[1]} "
                        f"input, the runtime runs at {cfg.input_size[0]}x{cfg.input_size[1]}: pass "
                        f"--input-size {size[0]}x{size[1]}, or a new --store (or --run-dir)")
    target = engine_target(cfg.backend, cfg.precision)
    reason = misfit(current.manifest, target)
    if reason is not None:
        built = current.manifest.get("backend") or "onnxruntime"
        precision = current.manifest.get("precision") or "fp32"
        same_kind = (built, precision) == (target.backend, target.precision)
        serve_it = "" if same_kind else f"--backend {built} --precision {precision} to serve it, or "
        raise UserError(f"engine store {store} serves {current.name}, {reason}: pass {serve_it}"
                        "a new --store (or --run-dir) to build this runtime's engines")


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
    # the checkpoint's training size unless --input-size says otherwise (then a warning)
    cfg.input_size = input_size_for(checkpoint_facts(checkpoint, cfg), cfg.input_size,
                                    "--input-size", prog="iapc-runtime")
    if cfg.adaptation.enabled or args.resume_latest:  # --no-adapt serves its own source engine
        check_store_fits(cfg)
    live = None if args.quiet else LiveFigures(cfg.publish, cfg.curve_keys)
    try:
        return Supervisor(cfg, checkpoint, on_status=live, serve_store=args.resume_latest).run()
    finally:
        if live is not None:
            live.close()


def main(argv: list[str] | None = None) -> int:
    sys.exit(run_cli("iapc-runtime", lambda: _main(argv)))
