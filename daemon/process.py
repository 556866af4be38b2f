"""The adaptation daemon's process: the configured method on the live stream, deployed into the
engine store.

Started by the supervisor as ``python -m iapc.daemon.process --config RUN/config.json``. It
receives sampled frames from the inference process, keeps a buffer of recent ones
(:mod:`iapc.daemon.buffer`), runs the configured method (:mod:`iapc.adapt.adapters`; by default
streaming IAPC) on batches drawn from it, and every N steps or T seconds deploys the adapted
network (:func:`iapc.export.deploy.deploy`: export, the engine of the runtime's target,
parity, health gate of :mod:`iapc.daemon.health`, store) and announces the new version. A
candidate that fails a gate, or a step with a non-finite loss, is not deployed: the adaptation
state rolls back to the last deployed version. Every decision is sent as an event
to the inference process, which republishes it on the status topic. A failed export (disk full)
is reported and retried at the next export; the engine in service stays.

After a change to a new domain (:mod:`iapc.daemon.domains`) and at a fresh start, the next
``adaptation.shift_statistics_frames`` received frames bring one no-gradient update each of the
BatchNorm statistics instead of gradient steps; they count towards the export cadence.

Every second or so it touches ``RUN/daemon.heartbeat`` (holding its pid): the supervisor kills and
restarts a daemon whose heartbeat stops.

It must not starve inference: torch threads are capped and the process runs at a lower CPU
priority. Everything it needs to resume is written to ``RUN/adaptation.pt`` after every deployed
version, as an ordinary checkpoint of the deployed network plus the method's state.

Its jobs are modules of their own, wired together here with what each depends on: stepping
(:mod:`iapc.daemon.stepping`), deploying (:mod:`iapc.daemon.deployer`), domain tracking
(:mod:`iapc.daemon.domain_switch`), persistence (:mod:`iapc.daemon.state`), counters and
heartbeat (:mod:`iapc.daemon.progress`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from iapc.adapt.checkpoint import load_model
from iapc.adapt.iapc_step import AdaptConfig
from iapc.adapt.adapters import make_adapter
from iapc.daemon.buffer import FrameBuffer
from iapc.daemon.deployer import EXPORT_PREFIX, Deployer, ExportCancelled
from iapc.daemon.domain_switch import DomainSwitcher
from iapc.daemon.progress import Heartbeat, Progress
from iapc.daemon.state import StateKeeper
from iapc.daemon.stepping import Stepper
from iapc.errors import UserError, run_cli
from iapc.engines.store import EngineStore
from iapc.contracts import run_folder
from iapc.runtime.config import RuntimeConfig
from iapc.contracts.handoff import EventSender, FrameReceiver
from iapc.contracts.run_folder import ipc_address

log = logging.getLogger("iapc.daemon")


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


def lower_priority(nice: int, threads: int, idle: bool = False) -> str:
    """Leave the CPU to the inference loop: fewer threads, lower scheduling priority (the idle
    class where asked and the OS has it, else ``nice``). Returns the one used: "idle" or
    "nice N". Call it before the daemon starts threads: they inherit it."""
    torch.set_num_threads(max(1, threads))
    torch.set_num_interop_threads(1)
    if idle and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        except OSError as err:  # a container may forbid it: fall back to nice
            log.warning("cannot use the idle scheduling class (%s): using nice %d", err, nice)
    if nice > 0:
        os.nice(nice)
    return f"nice {nice}"


class AdaptationDaemon:
    """The daemon's jobs wired together, each given what it depends on: stepping
    (:class:`~iapc.daemon.stepping.Stepper`), deploying (:class:`~iapc.daemon.deployer.Deployer`),
    domain tracking (:class:`~iapc.daemon.domain_switch.DomainSwitcher`), persistence
    (:class:`~iapc.daemon.state.StateKeeper`) and the heartbeat; ``events`` is the
    :class:`~iapc.contracts.handoff.EventSender` to the inference process."""

    def __init__(self, cfg: RuntimeConfig, checkpoint: str, events):
        self.cfg, self.events = cfg, events
        self.run_dir = cfg.resolved_run_dir()
        self.store = EngineStore(cfg.resolved_store(), keep=cfg.keep_versions)
        model, self.meta = load_model(checkpoint, cfg.model, cfg.num_classes)
        device = adaptation_device(cfg)
        self.method_config = method_config(cfg, device)
        self.adapter = make_adapter(self.method_config.method, model.to(device), self.method_config)
        # recent frames to adapt on, and apart from them the held-out ones of the health gate
        self.frames = FrameBuffer(cfg.adaptation.buffer_size,
                                  cfg.health.holdout_size if cfg.health.enabled else 0,
                                  cfg.adaptation.holdout_every, seed=self.method_config.seed)
        self.progress = Progress()
        self.beat = Heartbeat(self.run_dir / run_folder.HEARTBEAT, cfg.adaptation.heartbeat_every)
        self.state = StateKeeper(cfg, self.method_config, self.adapter,
                                 self.run_dir / run_folder.ADAPTATION_STATE, self.progress, events,
                                 domain=lambda: self.domains.current)
        self.stepper = Stepper(cfg, self.adapter, self.frames, self.progress, events,
                               self.state.rollback, device, idle=self.receive_while_idle)
        self.deployer = Deployer(cfg, self.store, self.adapter, self.frames, self.state,
                                 self.progress, events, self.run_dir,
                                 losses=lambda: self.stepper.losses, beat=self.between_stages)
        self.domains = DomainSwitcher(cfg, self.adapter, self.frames, self.state, self.progress,
                                      events, self.store, self.stepper.statistics_phase_frames,
                                      self.export_version)
        self.receiver: FrameReceiver | None = None  # set by run()
        self.stopping = False

    # what the jobs show (the tests drive the daemon through these) ------------------------------
    @property
    def step_count(self) -> int:
        return self.adapter.step_count

    @property
    def serving(self) -> torch.nn.Module:
        return self.state.serving

    @property
    def tracker(self):
        return self.domains.tracker

    @property
    def target(self):
        return self.deployer.target

    @property
    def min_agreement(self) -> float:
        return self.deployer.min_agreement

    @property
    def statistics_frames_left(self) -> int:
        return self.progress.statistics_frames_left

    @property
    def statistics_updates(self) -> int:
        return self.progress.statistics_updates

    def keep(self, image: np.ndarray, defer_shift: bool = False) -> None:
        """A received frame goes to the training buffer, or every k-th to the held-out one;
        with the domain bank it may also reveal that the stream changed domain (``defer_shift``:
        switched after the export under way)."""
        self.frames.keep(image)
        self.progress.statistics_frames_left = max(0, self.progress.statistics_frames_left - 1)
        self.domains.observe(image, defer=defer_shift)

    def receive_while_idle(self, seconds: float) -> None:
        """The duty cycle's pause after a step, spent taking the frames that come in (they
        would otherwise wait at the hand-off, which keeps only the latest few); a domain shift
        among them is switched before the next step."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.receiver is None:
                time.sleep(left)
                return
            for _meta, image in self.receiver.receive_all(max(1, int(left * 1000))):
                self.keep(image, defer_shift=True)

    def between_stages(self) -> None:
        """Called between an export's slow stages: the heartbeat, and the frames that came in
        meanwhile; a domain shift among them abandons the export (:class:`ExportCancelled`), so
        the new domain is served without waiting for an engine of the one left."""
        self.beat()
        if self.receiver is None or self.domains.tracker is None or self.domains.pending:
            return
        for _meta, image in self.receiver.receive_all(0):
            self.keep(image, defer_shift=True)
            if self.domains.pending is not None:
                raise ExportCancelled(f"domain shift to {self.domains.pending.to}")

    def can_adapt(self) -> bool:
        return self.stepper.can_adapt()

    def adapt_once(self) -> None:
        self.stepper.adapt_once()

    def step(self) -> None:
        self.stepper.step()

    def export_due(self) -> bool:
        return self.deployer.export_due()

    def export_version(self, source: bool = False) -> int | None:
        """Deploy the adapted network (``source``: it is the source network); the new version
        is banked as the current domain's engine."""
        version = self.deployer.export_version()
        if version is None:
            return None
        self.domains.published(version, source)
        return version.number

    # the process -------------------------------------------------------------------------------
    def remove_leftovers(self) -> None:
        """Export folders of a daemon that was killed mid-export."""
        for leftover in self.run_dir.glob(EXPORT_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def start(self) -> None:
        """Resume the last deployed state, or deploy the source weights as the first engine;
        a fresh start begins with the first domain's statistics phase."""
        self.beat(force=True)
        self.remove_leftovers()
        resumed = self.state.resume()
        if self.store.current() is None:
            self.export_version(source=True)  # the first engine: the source weights
        elif not resumed:
            self.progress.updates_since_deploy = 0
        if not resumed:
            self.progress.statistics_frames_left = self.stepper.statistics_phase_frames()

    def run(self, frames: FrameReceiver) -> int:
        """Adapt on the frames ``frames`` receives until :attr:`stopping`."""
        self.start()
        self.receiver = frames
        while not self.stopping:
            self.beat()
            self.domains.switch_pending()
            for _meta, image in frames.receive_all(0 if self.can_adapt() else 100):
                self.keep(image)
            if not self.can_adapt():
                continue
            self.adapt_once()
            if self.export_due():
                self.export_version()
        return 0

    def main(self, frames: FrameReceiver) -> int:
        """Run until SIGTERM/SIGINT."""
        def stop(*_):
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        return self.run(frames)


def serve(cfg: RuntimeConfig, checkpoint: str) -> int:
    """The daemon of the run folder's runtime: its sockets, then the daemon until stopped."""
    run_dir = cfg.resolved_run_dir()
    events = EventSender(ipc_address(run_dir, run_folder.EVENTS_SOCKET))
    frames = FrameReceiver(ipc_address(run_dir, run_folder.FRAMES_SOCKET))
    try:
        return AdaptationDaemon(cfg, checkpoint, events).main(frames)
    finally:
        frames.close()
        events.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iapc-runtime daemon")
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s daemon %(levelname)s %(message)s")
    cfg = RuntimeConfig.from_dict(json.loads(Path(args.config).read_text()))
    priority = lower_priority(cfg.adaptation.nice, cfg.adaptation.threads,
                              cfg.adaptation.idle_priority)
    log.info("daemon priority: %s", priority)
    return run_cli("iapc-runtime daemon", lambda: serve(cfg, args.checkpoint))


if __name__ == "__main__":
    sys.exit(main())
