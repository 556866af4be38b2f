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

from iapc.adapt.checkpoint import load_model
from iapc.adapt.method import (AdaptConfig, AdaptState, adaptation_step, make_networks,
                               make_optimizer)
from iapc.adapt.preprocessing import camera_to_rgb
from iapc.errors import UserError, run_cli
from iapc.export.onnx_export import export_onnx
from iapc.export.parity import check_parity
from iapc.export.runners import make_runner
from iapc.export.store import EngineStore
from iapc.runtime.config import RuntimeConfig
from iapc.runtime.handoff import EventSender, FrameReceiver
from iapc.runtime.health import check_health
from iapc.runtime.inference import ipc_address

log = logging.getLogger("iapc.runtime.daemon")

HEARTBEAT_FILE = "daemon.heartbeat"
EXPORT_PREFIX = "export-"  # temporary export folders in RUN/; a killed daemon's are removed


def method_config(cfg: RuntimeConfig) -> AdaptConfig:
    """The streaming IAPC settings: constant lr after warm-up, EMA and crop from the config."""
    a = cfg.adaptation
    width, height = cfg.input_size
    crop = (min(a.crop[0], height), min(a.crop[1], width))  # frames arrive at the engine's size
    return AdaptConfig(preset=a.preset, lr=a.lr, warmup_iters=a.warmup_iters,
                       ema_alpha=a.ema_alpha, crop=crop, schedule="constant", seed=a.seed,
                       amp_dtype=a.amp_dtype if adaptation_device(cfg).type == "cuda" else None)


def adaptation_device(cfg: RuntimeConfig) -> torch.device:
    name = cfg.adaptation.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("adaptation.device is cuda but PyTorch sees no CUDA GPU: use auto or cpu")
    return torch.device(name)


def stochastic_restore(target: torch.nn.Module, source: torch.nn.Module, probability: float,
                       generator: torch.Generator) -> None:
    """CoTTA's stochastic restore: each weight element of ``target`` returns to its ``source``
    value with ``probability`` (BN statistics are left alone: they track the target domain)."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            restore = torch.rand(t.shape, generator=generator, device=t.device) < probability
            t.copy_(torch.where(restore, s, t))


def lower_priority(nice: int, threads: int) -> None:
    """Leave the CPU to the inference loop: fewer threads, lower scheduling priority."""
    torch.set_num_threads(max(1, threads))
    torch.set_num_interop_threads(1)
    if nice > 0:
        os.nice(nice)


class AdaptationDaemon:
    def __init__(self, cfg: RuntimeConfig, checkpoint: str):
        self.cfg = cfg
        self.method = method_config(cfg)
        self.run_dir = cfg.resolved_run_dir()
        self.state_path = self.run_dir / "adaptation.pt"
        self.store = EngineStore(cfg.resolved_store(), keep=cfg.keep_versions)
        model, self.meta = load_model(checkpoint, cfg.model, cfg.num_classes)
        self.device = adaptation_device(cfg)
        self.source, self.memory, self.target = make_networks(model.to(self.device))
        # On a GPU the daemon's kernels go to a stream of the lowest priority (0), so the
        # inference engine's work (on a higher-priority stream) is scheduled first.
        self.stream = (torch.cuda.Stream(device=self.device, priority=0)
                       if self.device.type == "cuda" else None)
        self.optimizer = make_optimizer(self.target, self.method)
        self.state = AdaptState.new(model.num_classes)
        self.generator = torch.Generator().manual_seed(cfg.adaptation.seed)
        self.buffer: deque[np.ndarray] = deque(maxlen=cfg.adaptation.buffer_size)
        # frames never trained on, for the health gate
        self.holdout: deque[np.ndarray] = deque(maxlen=cfg.health.holdout_size)
        self.received = 0
        # the weights of the engine in service (one more model copy in memory)
        self.serving = copy.deepcopy(self.target).eval()
        self.heartbeat_path = self.run_dir / HEARTBEAT_FILE
        self.last_heartbeat = 0.0
        self.rng = np.random.default_rng(cfg.adaptation.seed)
        self.deployed_step = 0
        self.last_export = time.monotonic()
        self.stopping = False
        self.losses: dict = {}

    # persistence -------------------------------------------------------------------------------
    def save_state(self, version: int) -> None:
        payload = {"target": self.target.state_dict(), "memory": self.memory.state_dict(),
                   "optimizer": self.optimizer.state_dict(), "adapt_state": self.state.state_dict(),
                   "version": int(version), "config": self.method.to_dict()}
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.state_path)
        self.deployed_step = self.state.step
        self.serving.load_state_dict(self.target.state_dict())

    def resume(self) -> bool:
        """Load the last deployed adaptation state, if any; False when starting fresh."""
        if not self.state_path.is_file():
            return False
        try:
            payload = torch.load(self.state_path, map_location="cpu", weights_only=True)
            self.target.load_state_dict(payload["target"])
            self.memory.load_state_dict(payload["memory"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.state.load_state_dict(payload["adapt_state"])
        except Exception as err:  # a damaged state file: start again from the source model
            log.error("cannot resume from %s (%s): starting from the source model",
                      self.state_path, err)
            return False
        self.deployed_step = self.state.step
        self.serving.load_state_dict(self.target.state_dict())
        log.info("resumed adaptation at step %d (engine v%s)", self.state.step, payload["version"])
        return True

    def rollback(self, reason: str) -> None:
        """Back to the last deployed state (or the source model if none was saved); tell why."""
        step = self.state.step
        if not self.resume():
            self.target.load_state_dict(self.source.state_dict())
            self.memory.load_state_dict(self.source.state_dict())
            self.optimizer = make_optimizer(self.target, self.method)
            self.state = AdaptState.new(self.target.num_classes)
            self.deployed_step = 0
        self.target.train()
        log.warning("rolled back from step %d to step %d: %s", step, self.state.step, reason)
        self.events.send({"type": "rollback", "step": step, "to_step": self.state.step,
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
        log.warning("%s gate rejected step %d: %s", gate, self.state.step, reason)
        self.events.send({"type": "rejected", "gate": gate, "step": self.state.step,
                          "reason": reason, **({"health": figures} if figures else {})})
        self.rollback(f"{gate} gate: {reason}")

    def export_version(self) -> int | None:
        """Export the target, check parity and health, publish to the store; the new version or
        None (rejected, rolled back; or the export failed and is retried later)."""
        started = time.perf_counter()
        self.target.eval()  # export the running BN statistics, not batch statistics
        try:
            with tempfile.TemporaryDirectory(prefix=EXPORT_PREFIX, dir=self.run_dir) as tmp:
                version, health = self._export_checked(Path(tmp))
        except OSError as err:  # disk full, read-only store: keep the engine in service
            reason = (f"{errno.errorcode.get(err.errno, 'OSError')}: {err.strerror or err}")
            log.error("export at step %d failed, keeping the engine in service: %s",
                      self.state.step, reason)
            self.events.send({"type": "export_failed", "step": self.state.step, "reason": reason})
            return None
        finally:
            self.target.train()
        if version is None:
            return None
        self.save_state(version.number)
        seconds = time.perf_counter() - started
        self.events.send({"type": "version", "version": version.number, "step": self.state.step,
                          "parity": version.manifest.get("parity"), "health": health,
                          "export_s": round(seconds, 3)})
        log.info("published engine %s at step %d (%.2f s)", version.name, self.state.step, seconds)
        return version.number

    def _export_checked(self, tmp: Path):
        """(published Version, health figures), or (None, None) when a gate rejects."""
        onnx_path = export_onnx(self.target, tmp / "model.onnx", frame_size=self.cfg.input_size,
                                confidence=self.cfg.confidence)
        self.beat()
        runner = make_runner("onnxruntime", onnx_path=onnx_path, threads=1)
        with runner:
            parity = check_parity(runner, self.target, self.parity_frames(),
                                  self.cfg.adaptation.min_agreement)
        if not parity.passed:
            self.reject("parity", parity.message)
            return None, None
        self.beat()
        health = self._health_figures()
        if health is not None and not health.passed:
            self.reject("health", health.message, health.figures)
            return None, None
        self.beat()
        figures = health.figures if health is not None else None
        version = self.store.publish(onnx_path, manifest_extra={
            "model": self.cfg.model, "step": self.state.step, "parity": parity.agreement,
            "health": figures, "losses": self.losses, "config": self.cfg.to_dict()})
        return version, figures

    def _health_figures(self):
        """The health report of the target, or None when the gate is off or has no frames."""
        frames = self.health_frames()
        if not self.cfg.health.enabled or frames is None or self.state.step == 0:
            return None  # step 0 is the source model itself: nothing to compare
        return check_health(self.target, self.serving, self.source, self.memory, frames,
                            self.cfg.health)

    def export_due(self) -> bool:
        a = self.cfg.adaptation
        by_steps = self.state.step - self.deployed_step >= a.export_every_steps
        by_time = (a.export_every_seconds is not None
                   and time.monotonic() - self.last_export >= a.export_every_seconds
                   and self.state.step > self.deployed_step)
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
            losses = adaptation_step(self.source, self.memory, self.target, self.sample_batch(),
                                     self.optimizer, self.state, self.method,
                                     generator=self.generator)
        self.yield_duty_cycle(time.perf_counter() - started)
        if losses.get("skipped"):
            self.rollback("non-finite loss")
            return
        if self.cfg.adaptation.restore_probability > 0:
            stochastic_restore(self.target, self.source, self.cfg.adaptation.restore_probability,
                               self.generator)
        self.losses = {k: round(float(v), 5) for k, v in losses.items() if k != "skipped"}
        if self.state.step % 5 == 0:
            self.events.send({"type": "stats", "step": self.state.step, "new_steps": 5,
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
        self.events = EventSender(ipc_address(self.run_dir, "events.sock"))
        frames = FrameReceiver(ipc_address(self.run_dir, "frames.sock"))
        self.beat(force=True)
        self.remove_leftovers()
        try:
            resumed = self.resume()
            if self.store.current() is None:
                self.export_version()  # the first engine: the source weights
            elif not resumed:
                self.deployed_step = self.state.step
            while not self.stopping:
                self.beat()
                wait_ms = 0 if len(self.buffer) >= self.cfg.adaptation.batch_size else 100
                for _meta, image in frames.receive_all(wait_ms):
                    self.keep(image)
                if not self.cfg.adaptation.enabled or len(self.buffer) < self.cfg.adaptation.batch_size:
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
