"""The inference process: capture thread, engine manager, loop, publisher. No torch import.

Started by the supervisor as ``python -m iapc.runtime.inference --config RUN/config.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import uuid
from pathlib import Path


from iapc.errors import UserError, run_cli
from iapc.contracts import run_folder
from iapc.runtime.config import RuntimeConfig
from iapc.contracts.handoff import EventReceiver, FrameHandoff
from iapc.runtime.live_score import LiveScore
from iapc.runtime.loop import InferenceLoop
from iapc.contracts.run_folder import ipc_address
from iapc.runtime.sources import CaptureThread, make_source
from iapc.runtime.swap import EngineManager

log = logging.getLogger("iapc.runtime.inference")


def make_runner_loader(cfg: RuntimeConfig):
    """Store version -> inactive runner of the engine stored in it, for this process's engine
    target (backend, precision, device). A version built for another target, or a TensorRT
    version without its engine, raises: the engine manager rejects it. Nothing is built here."""
    from iapc.engines.targets import engine_target, serving_runner

    target = engine_target(cfg.backend, cfg.precision)

    def load(version):
        return serving_runner(version, target, threads=cfg.inference_threads)

    return load


def source_runner(store, load_runner):
    """An inactive runner of the store's source-weights engine (its first version, step 0), or
    None when the store no longer holds it (a restart after old versions were pruned) or holds
    it for another engine target (then the live comparison is left out, with a warning)."""
    version = next((v for v in store.versions() if v.manifest.get("step") == 0), None)
    if version is None:
        return None
    try:
        return load_runner(version)
    except UserError as err:
        log.warning("no live comparison with the source engine: %s", err)
        return None


def new_boot_id() -> str:
    """A random id for this start of the runtime, in every header (docs/PROTOCOL.md)."""
    return uuid.uuid4().hex[:16]


def curve_keys(cfg: RuntimeConfig):
    """The CURVE server keys of ``--curve-keys DIR``, or None."""
    if cfg.curve_keys is None:
        return None
    from iapc.runtime.security import load_server_keys

    return load_server_keys(cfg.curve_keys)


def run_inference(cfg: RuntimeConfig) -> int:
    from iapc.engines.store import EngineStore
    from iapc.runtime.metrics import RuntimeMetrics
    from iapc.runtime.publisher import CLOSE_LINGER_MS, MaskPublisher

    run_dir = cfg.resolved_run_dir()
    store = EngineStore(cfg.resolved_store(), keep=cfg.keep_versions)
    source = make_source(cfg.source.kind, cfg.source.location, cfg.input_size, cfg.source.seed,
                         faults=cfg.source.faults)
    source.open()
    capture = CaptureThread(source, cfg.source.fps, cfg.source.max_frames, cfg.source.loop,
                            retry_max_s=cfg.source.retry_max_s)
    engines = EngineManager(store, make_runner_loader(cfg), cfg.input_size)
    publisher = MaskPublisher(cfg.publish, sndhwm=cfg.publish_hwm, allow_remote=cfg.insecure,
                              curve=curve_keys(cfg), boot_id=new_boot_id())
    metrics = RuntimeMetrics(port=cfg.metrics_port) if cfg.metrics_port is not None else None
    events = EventReceiver(ipc_address(run_dir, run_folder.EVENTS_SOCKET))
    handoff = (FrameHandoff(ipc_address(run_dir, run_folder.FRAMES_SOCKET))
               if cfg.adaptation.enabled else None)
    score = LiveScore(cfg.num_classes, metrics=metrics)
    loop = InferenceLoop(capture, publisher, engines, cfg.input_size, cfg.num_classes,
                         handoff=handoff, sample_every=cfg.adaptation.sample_every,
                         metrics=metrics, events=events, status_every=cfg.status_every,
                         confidence=cfg.confidence, frame_observer=score)
    loop.extra_status = score.status
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: loop.stop())
    try:
        if not engines.load_initial(timeout=600, stop=loop.stopped):
            if loop.stopped.is_set():
                return 0
            raise UserError(f"no usable engine in {store.root} after 600 s: run 'iapc export' "
                            "or check the adaptation daemon's log")
        if metrics is not None:  # the first engine is in service before any swap is counted
            metrics.engine_version.set(engines.version)
        if cfg.adaptation.enabled:  # the source engine beside the adapted ones, when labelled
            score.compare_with(source_runner(store, make_runner_loader(cfg)))
        engines.start()
        publisher.let_early_subscribers_join()
        capture.start()
        stats = loop.run()
    finally:
        capture.stop()
        engines.close()
        score.close()
        for part in (handoff, events, metrics):
            if part is not None:
                part.close()
        publisher.close(linger_ms=CLOSE_LINGER_MS)  # let the end-of-stream status go out
        source.close()
    summary = {"frames_in": stats.frames_in, "frames_published": stats.frames_published,
               "frames_failed": stats.frames_failed, "capture_dropped": capture.dropped,
               "frames_unreadable": capture.unreadable, "boot_id": publisher.boot_id,
               "handoff_dropped": handoff.dropped if handoff else 0,
               "publish_dropped": stats.publish_dropped, "swaps": stats.swap_log,
               "engine_version": engines.version, "miou": score.miou(),
               "decisions": stats.decisions, "source_outages": capture.outages,
               "faults_injected": getattr(source, "injected", None),
               "engines_rejected": engines.rejected, "finished_ns": time.time_ns(),
               # the inference process must never load PyTorch (the tests check this)
               "torch_loaded": "torch" in sys.modules}
    (run_dir / run_folder.INFERENCE_SUMMARY).write_text(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iapc-runtime inference")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s inference %(levelname)s %(message)s")
    cfg = RuntimeConfig.from_dict(json.loads(Path(args.config).read_text()))
    return run_cli("iapc-runtime", lambda: run_inference(cfg))


if __name__ == "__main__":
    sys.exit(main())
