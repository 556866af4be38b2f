"""The adaptation daemon: IAPC on the live stream, exported into the engine store.

Started by the supervisor as ``python -m iapc.runtime.daemon --config RUN/config.json``. It
receives sampled frames from the inference process, keeps a buffer of recent ones, runs the
streaming variant of IAPC (pseudo-labels from the source model on the fly, batches drawn from the
buffer, constant learning rate after warm-up), and every N steps or T seconds exports the target
network, checks parity and health (:mod:`iapc.runtime.health`), publishes a new engine version
and announces it. A candidate that fails a gate, or a step with a non-finite loss, is not deployed:
the adaptation state rolls back to the last deployed version. Every decision is sent as an event
to the inference process, which republishes it on the status topic. A failed export (disk full)
is reported and retried at the next export; the engine in service stays.

Every second or so it touches ``RUN/daemon.heartbeat`` (holding its pid): the supervisor kills and
restarts a daemon whose heartbeat stops.

It must not starve inference: torch threads are capped and the process runs at a lower CPU
priority. Everything it needs to resume (target, memory, optimiser, class-balance state, step) is
written to ``RUN/adaptation.pt`` after every deployed version.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import errno
import json
import logging
import os
import signal
import shutil
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from iapc.adapt.checkpoint import load_model, read_checkpoint_file, save_checkpoint
from iapc.adapt.method import AdaptConfig
from iapc.adapt.methods import deployed, make_adapter
from iapc.adapt.preprocessing import camera_to_rgb
from iapc.errors import UserError, run_cli
from iapc.export.manifest import engine_manifest
from iapc.export.onnx_export import export_onnx
from iapc.export.parity import check_parity
from iapc.export.runners import make_runner
from iapc.export.store import EngineStore
from iapc.runtime.config import RuntimeConfig
from iapc.runtime.handoff import EventSender, FrameReceiver
from iapc.runtime.health import check_health
from iapc.runtime import run_folder
from iapc.runtime.run_folder import ipc_address

log = logging.getLogger("iapc.runtime.daemon")

EXPORT_PREFIX = "export-"  # temporary export folders in RUN/; a killed daemon's are removed


def method_config(cfg: RuntimeConfig, device: torch.device) -> AdaptConfig:
    """The configured method, its crop fitted to the engine's frames and autocast only on CUDA."""
    width, height = cfg.input_size
    method = cfg.method.fitted_to(width, height)  # frames arrive at the engine's size
    if device.type != "cuda" and method.amp_dtype is not None:
        method = dataclasses.replace(method, amp_dtype=None)
    return method.resolved()


def adaptation_device(cfg: RuntimeConfig) -> torch.device:
    name = cfg.adaptation.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("adaptation.device is cuda but PyTorch sees no CUDA GPU: use auto or cpu")
    return torch.device(name)


def parity_agreement(manifest: dict) -> float | None:
    return (manifest.get("parity") or {}).get("agreement")


def lower_priority(nice: int, threads: int) -> None:
    """Leave the CPU to the inference loop: fewer threads, lower scheduling priority."""
    torch.set_num_threads(max(1, threads))
    torch.set_num_interop_threads(1)
    if nice > 0:
        os.nice(nice)


class AdaptationDaemon:
    def __init__(self, cfg: RuntimeConfig, checkpoint: str):
        self.cfg = cfg
        self.run_dir = cfg.resolved_run_dir()
        self.state_path = self.run_dir / run_folder.ADAPTATION_STATE
        self.store = EngineStore(cfg.resolved_store(), keep=cfg.keep_versions)
        model, self.meta = load_model(checkpoint, cfg.model, cfg.num_classes)
        self.device = adaptation_device(cfg)
        self.method = method_config(cfg, self.device)
        self.adapter = make_adapter(self.method.method, model.to(self.device), self.method)
        # On a GPU the daemon's kernels go to a stream of the lowest priority (0), so the
        # inference engine's work (on a higher-priority stream) is scheduled first.
        self.stream = (torch.cuda.Stream(device=self.device, priority=0)
                       if self.device.type == "cuda" else None)
        self.buffer: deque[np.ndarray] = deque(maxlen=cfg.adaptation.buffer_size)
        # frames never trained on, for the health gate
        self.holdout: deque[np.ndarray] = deque(maxlen=cfg.health.holdout_size)
        self.received = 0
        # the weights of the engine in service (one more model copy in memory)
        self.serving = copy.deepcopy(self.adapter.deployable()).eval()
        self.heartbeat_path = self.run_dir / run_folder.HEARTBEAT
        self.last_heartbeat = 0.0
        self.rng = np.random.default_rng(self.method.seed)
        self.deployed_step = 0
        self.last_export = time.monotonic()
        self.stopping = False
        self.losses: dict = {}

    @property
    def step_count(self) -> int:
        return self.adapter.step_count

    # persistence -------------------------------------------------------------------------------
    def save_state(self, version: int) -> None:
        """The adaptation state as an ordinary checkpoint of the deployed network (read by
        ``iapc evaluate``, ``iapc export`` and ``iapc adapt --resume``), plus the method's state."""
        save_checkpoint(self.state_path, self.cfg.model, self.adapter.deployable(),
                        {"adapt": self.method.to_dict(), "runtime": self.cfg.to_dict()},
                        step=self.step_count, input_size=list(self.cfg.input_size),
                        method=self.method.method, version=int(version),
                        **self.adapter.state_dict())
        self.deployed_step = self.step_count
        self.serving.load_state_dict(self.adapter.deployable().state_dict())

    def resume(self) -> bool:
        """Load the last deployed adaptation state, if any; False when starting fresh."""
        if not self.state_path.is_file():
            return False
        try:
            payload = read_checkpoint_file(self.state_path)
            if payload.get("method", "iapc") != self.method.method:
                raise UserError(f"it was made by --method {payload.get('method')}")
            self.adapter.deployable().load_state_dict(payload["state_dict"])
            self.adapter.load_state_dict(payload)
        except Exception as err:  # a damaged or foreign state file: start from the source model
            log.error("cannot resume from %s (%s): starting from the source model",
                      self.state_path, err)
            self.adapter.reset()
            return False
        self.deployed_step = self.step_count
        self.serving.load_state_dict(self.adapter.deployable().state_dict())
        log.info("resumed adaptation at step %d (engine v%s)", self.step_count, payload.get("version"))
        return True

    def rollback(self, reason: str) -> None:
        """Back to the last deployed state (or the source model if none was saved); tell why."""
        step = self.step_count
        if not self.resume():
            self.adapter.reset()
            self.deployed_step = 0
        log.warning("rolled back from step %d to step %d: %s", step, self.step_count, reason)
        self.events.send({"type": "rollback", "step": step, "to_step": self.step_count,
                          "reason": reason})

    def beat(self, force: bool = False) -> None:
        """Tell the supervisor this daemon is alive (mtime of RUN/daemon.heartbeat)."""
        now = time.monotonic()
        if not force and now - self.last_heartbeat < self.cfg.adaptation.heartbeat_every:
            return
        self.last_heartbeat = now
        if not force:
            try:
                os.utime(self.heartbeat_path)
                return
            except FileNotFoundError:
                pass
        # the pid, written atomically: the supervisor and tools may read it at any time
        tmp = self.heartbeat_path.with_name(self.heartbeat_path.name + ".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.heartbeat_path)

    # export ------------------------------------------------------------------------------------
    def parity_frames(self) -> np.ndarray:
        """uint8 (N, H, W, 3) BGR: recent frames, or mid-grey when none have arrived yet."""
        width, height = self.cfg.input_size
        if not self.buffer:
            return np.full((1, height, width, 3), 128, dtype=np.uint8)
        picks = list(self.buffer)[-4:]
        return np.stack(picks)

    def health_frames(self) -> np.ndarray | None:
        """uint8 (N, H, W, 3) BGR held-out frames, or None before any have arrived."""
        return np.stack(list(self.holdout)) if self.holdout else None

    def reject(self, gate: str, reason: str, figures: dict | None = None) -> None:
        log.warning("%s gate rejected step %d: %s", gate, self.step_count, reason)
        self.events.send({"type": "rejected", "gate": gate, "step": self.step_count,
                          "reason": reason, **({"health": figures} if figures else {})})
        self.rollback(f"{gate} gate: {reason}")

    def export_version(self) -> int | None:
        """Export the deployable network, check parity and health, publish to the store; the
        new version or None (rejected, rolled back; or the export failed and is retried later)."""
        started = time.perf_counter()
        try:
            # eval mode: export the running BN statistics, not batch statistics
            with deployed(self.adapter.deployable()) as network, \
                    tempfile.TemporaryDirectory(prefix=EXPORT_PREFIX, dir=self.run_dir) as tmp:
                version, health = self._export_checked(network, Path(tmp))
        except OSError as err:  # disk full, read-only store: keep the engine in service
            reason = (f"{errno.errorcode.get(err.errno, 'OSError')}: {err.strerror or err}")
            log.error("export at step %d failed, keeping the engine in service: %s",
                      self.step_count, reason)
            self.events.send({"type": "export_failed", "step": self.step_count, "reason": reason})
            return None
        if version is None:
            return None
        self.save_state(version.number)
        seconds = time.perf_counter() - started
        self.events.send({"type": "version", "version": version.number, "step": self.step_count,
                          "parity": parity_agreement(version.manifest), "health": health,
                          "export_s": round(seconds, 3)})
        log.info("published engine %s at step %d (%.2f s)", version.name, self.step_count, seconds)
        return version.number

    def _export_checked(self, network: torch.nn.Module, tmp: Path):
        """(published Version, health figures), or (None, None) when a gate rejects."""
        onnx_path = export_onnx(network, tmp / "model.onnx", frame_size=self.cfg.input_size,
                                confidence=self.cfg.confidence)
        self.beat()
        runner = make_runner("onnxruntime", onnx_path=onnx_path, threads=1)
        with runner:
            parity = check_parity(runner, network, self.parity_frames(),
                                  self.cfg.adaptation.min_agreement)
        if not parity.passed:
            self.reject("parity", parity.message)
            return None, None
        self.beat()
        health = self._health_figures(network)
        if health is not None and not health.passed:
            self.reject("health", health.message, health.figures)
            return None, None
        self.beat()
        figures = health.figures if health is not None else None
        version = self.store.publish(onnx_path, manifest_extra=engine_manifest(
            model=self.cfg.model, num_classes=self.cfg.num_classes, method=self.method.method,
            step=self.step_count, input_size=self.cfg.input_size, config=self.cfg.to_dict(),
            parity={"agreement": parity.agreement, "min_agreement": parity.min_agreement,
                    "frames": parity.frames, "source": "stream"},
            health=figures, confidence=self.cfg.confidence, losses=self.losses))
        return version, figures

    def _health_figures(self, network: torch.nn.Module):
        """The health report of the candidate, or None when the gate is off or has no frames."""
        frames = self.health_frames()
        if not self.cfg.health.enabled or frames is None or self.step_count == 0:
            return None  # step 0 is the source model itself: nothing to compare
        with deployed(self.adapter.memory_network()) as memory:
            return check_health(network, self.serving, self.adapter.source, memory, frames,
                                self.cfg.health)

    def export_due(self) -> bool:
        a = self.cfg.adaptation
        by_steps = self.step_count - self.deployed_step >= a.export_every_steps
        by_time = (a.export_every_seconds is not None
                   and time.monotonic() - self.last_export >= a.export_every_seconds
                   and self.step_count > self.deployed_step)
        return by_steps or by_time

    # adaptation --------------------------------------------------------------------------------
    def sample_batch(self) -> torch.Tensor:
        """uint8 (N, 3, H, W) RGB drawn from the buffer of recent frames."""
        picks = self.rng.choice(len(self.buffer), size=self.cfg.adaptation.batch_size,
                                replace=len(self.buffer) < self.cfg.adaptation.batch_size)
        frames = np.stack([self.buffer[i] for i in picks])  # (N, H, W, 3) BGR
        return camera_to_rgb(torch.from_numpy(frames))

    def step(self) -> None:
        started = time.perf_counter()
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            losses = self.adapter.step(self.sample_batch())
        self.yield_duty_cycle(time.perf_counter() - started)
        if self.adapter.skipped(losses):
            self.rollback("non-finite loss")
            return
        self.losses = {k: round(float(v), 5) for k, v in losses.items() if k != "skipped"}
        if self.step_count % 5 == 0:
            self.events.send({"type": "stats", "step": self.step_count, "new_steps": 5,
                              "buffer": len(self.buffer), **self.losses})

    def yield_duty_cycle(self, busy_seconds: float) -> None:
        """Idle so that computing takes at most ``duty_cycle`` of the daemon's wall time."""
        duty = self.cfg.adaptation.duty_cycle
        if 0 < duty < 1:
            time.sleep(busy_seconds * (1 - duty) / duty)

    def keep(self, image: np.ndarray) -> None:
        """A received frame goes to the training buffer, or every k-th to the held-out one."""
        self.received += 1
        every = self.cfg.adaptation.holdout_every
        if self.cfg.health.enabled and every > 0 and self.received % every == 0:
            self.holdout.append(image)
        else:
            self.buffer.append(image)

    def remove_leftovers(self) -> None:
        """Export folders of a daemon that was killed mid-export."""
        for leftover in self.run_dir.glob(EXPORT_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def run(self) -> int:
        self.events = EventSender(ipc_address(self.run_dir, run_folder.EVENTS_SOCKET))
        frames = FrameReceiver(ipc_address(self.run_dir, run_folder.FRAMES_SOCKET))
        self.beat(force=True)
        self.remove_leftovers()
        try:
            resumed = self.resume()
            if self.store.current() is None:
                self.export_version()  # the first engine: the source weights
            elif not resumed:
                self.deployed_step = self.step_count
            while not self.stopping:
                self.beat()
                wait_ms = 0 if len(self.buffer) >= self.cfg.adaptation.batch_size else 100
                for _meta, image in frames.receive_all(wait_ms):
                    self.keep(image)
                if (not self.cfg.adaptation.enabled or not self.adapter.updates_weights
                        or len(self.buffer) < self.cfg.adaptation.batch_size):
                    continue
                self.step()
                if self.export_due():
                    self.export_version()
                    self.last_export = time.monotonic()
        finally:
            frames.close()
            self.events.close()
        return 0

    def main(self) -> int:
        """Run until SIGTERM/SIGINT."""
        def stop(*_):
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        return self.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iapc-runtime daemon")
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s daemon %(levelname)s %(message)s")
    cfg = RuntimeConfig.from_dict(json.loads(Path(args.config).read_text()))
    lower_priority(cfg.adaptation.nice, cfg.adaptation.threads)
    return run_cli("iapc-runtime daemon", lambda: AdaptationDaemon(cfg, args.checkpoint).main())


if __name__ == "__main__":
    sys.exit(main())
