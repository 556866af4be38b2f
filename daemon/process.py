"""The adaptation daemon's process: the configured method on the live stream, deployed into the
engine store.

Started by the supervisor as ``python -m iapc.daemon.process --config RUN/config.json``. It
receives sampled frames from the inference process, keeps a buffer of recent ones
(:mod:`iapc.daemon.buffer`), runs the configured method (:mod:`iapc.adapt.methods`; by default
streaming IAPC) on batches drawn from it, and every N steps or T seconds deploys the adapted
network (:func:`iapc.export.deploy.deploy`: export, parity, health gate of
:mod:`iapc.daemon.health`, store) and announces the new version. A candidate that fails a gate, or a step with a non-finite loss, is not deployed:
the adaptation state rolls back to the last deployed version. Every decision is sent as an event
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
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from iapc.adapt.checkpoint import load_model, read_checkpoint_file, save_checkpoint
from iapc.adapt.method import AdaptConfig
from iapc.adapt.methods import deployed, make_adapter
from iapc.errors import UserError, run_cli
from iapc.daemon.buffer import FrameBuffer
from iapc.daemon.domains import DomainBank, Shift
from iapc.daemon.engine_health import score_engine
from iapc.daemon.health import check_health
from iapc.export.deploy import Candidate, DeployOptions, deploy
from iapc.export.engines import engine_target
from iapc.export.parity import min_agreement_for
from iapc.export.runner_base import Runner
from iapc.export.store import EngineStore
from iapc.runtime.config import RuntimeConfig
from iapc.runtime.events import EventType
from iapc.runtime.handoff import EventSender, FrameReceiver
from iapc.runtime import run_folder
from iapc.runtime.run_folder import ipc_address

log = logging.getLogger("iapc.daemon")

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
        # the engine the inference process will serve: built, gated and stored here
        self.target = engine_target(cfg.backend, cfg.precision)
        self.min_agreement = min_agreement_for(cfg.adaptation.min_agreement,
                                               self.target.reduced_precision)
        model, self.meta = load_model(checkpoint, cfg.model, cfg.num_classes)
        self.device = adaptation_device(cfg)
        self.method = method_config(cfg, self.device)
        self.adapter = make_adapter(self.method.method, model.to(self.device), self.method)
        # On a GPU the daemon's kernels go to a stream of the lowest priority (0), so the
        # inference engine's work (on a higher-priority stream) is scheduled first.
        self.stream = (torch.cuda.Stream(device=self.device, priority=0)
                       if self.device.type == "cuda" else None)
        # recent frames to adapt on, and apart from them the held-out ones of the health gate
        self.frames = FrameBuffer(cfg.adaptation.buffer_size,
                                  cfg.health.holdout_size if cfg.health.enabled else 0,
                                  cfg.adaptation.holdout_every, seed=self.method.seed)
        # the weights of the engine in service (one more model copy in memory)
        self.serving = copy.deepcopy(self.adapter.deployable()).eval()
        self.heartbeat_path = self.run_dir / run_folder.HEARTBEAT
        self.last_heartbeat = 0.0
        self.updates_since_deploy = 0  # gradient steps and statistics updates
        # received frames left during which updates move only BatchNorm statistics (after a
        # domain change or a fresh start), and such updates since the state left the source
        self.statistics_frames_left = 0
        self.statistics_updates = 0
        self.statistics_received = 0  # frames received at the last statistics update
        self.last_export = time.monotonic()
        self.stopping = False
        self.losses: dict = {}
        self.bank, self.tracker, self.domain_order = self._domain_bank()

    def _domain_bank(self):
        """(bank, tracker, recency order) when the bank is on and the method adapts, else Nones."""
        a = self.cfg.adaptation
        if not (a.domain_bank and a.enabled and self.adapter.updates_weights):
            return None, None, []
        bank = DomainBank(self.store.root, a.domain_bank_size)
        tracker, order = bank.load_tracker(z_threshold=a.shift_z, window=a.shift_window,
                                           min_frames=a.domain_min_frames,
                                           match_factor=a.shift_match_factor,
                                           return_window=a.shift_return_window)
        return bank, tracker, order

    @property
    def step_count(self) -> int:
        return self.adapter.step_count

    # persistence -------------------------------------------------------------------------------
    def write_state(self, path: Path, version: int | None) -> None:
        """The adaptation state as an ordinary checkpoint of the deployed network (read by
        ``iapc evaluate``, ``iapc export`` and ``iapc adapt --resume``), plus the method's state."""
        save_checkpoint(path, self.cfg.model, self.adapter.deployable(),
                        {"adapt": self.method.to_dict(), "runtime": self.cfg.to_dict()},
                        step=self.step_count, input_size=list(self.cfg.input_size),
                        method=self.method.method, version=version,
                        domain=self.tracker.current if self.tracker else None,
                        **self.adapter.state_dict())

    def load_state(self, path: Path) -> dict:
        payload = read_checkpoint_file(path)
        if payload.get("method", "iapc") != self.method.method:
            raise UserError(f"it was made by --method {payload.get('method')}")
        self.adapter.deployable().load_state_dict(payload["state_dict"])
        self.adapter.load_state_dict(payload)
        return payload

    def save_state(self, version: int) -> None:
        self.write_state(self.state_path, int(version))
        self.updates_since_deploy = 0
        self.serving.load_state_dict(self.adapter.deployable().state_dict())

    def resume(self) -> bool:
        """Load the last deployed adaptation state, if any; False when starting fresh."""
        if not self.state_path.is_file():
            return False
        try:
            payload = self.load_state(self.state_path)
        except Exception as err:  # a damaged or foreign state file: start from the source model
            log.error("cannot resume from %s (%s): starting from the source model",
                      self.state_path, err)
            self.adapter.reset()
            return False
        self.updates_since_deploy = 0
        self.serving.load_state_dict(self.adapter.deployable().state_dict())
        log.info("resumed adaptation at step %d (engine v%s)", self.step_count, payload.get("version"))
        return True

    def rollback(self, reason: str) -> None:
        """Back to the last deployed state (or the source model if none was saved); tell why."""
        step = self.step_count
        if not self.resume():
            self.adapter.reset()
            self.updates_since_deploy = self.statistics_updates = 0
        log.warning("rolled back from step %d to step %d: %s", step, self.step_count, reason)
        self.events.send(EventType.ROLLBACK, step=step, to_step=self.step_count, reason=reason)

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

    # deployment --------------------------------------------------------------------------------
    def reject(self, gate: str, reason: str, figures: dict | None = None) -> None:
        log.warning("%s gate rejected step %d: %s", gate, self.step_count, reason)
        self.events.send(EventType.REJECTED, gate=gate, step=self.step_count, reason=reason,
                         **({"health": figures} if figures else {}))
        self.rollback(f"{gate} gate: {reason}")

    def export_version(self) -> int | None:
        """Deploy the adapted network (:func:`~iapc.export.deploy.deploy`: export, parity,
        health, store); the new version, or None (rejected and rolled back; or the export
        failed, the engine in service stays and the export is retried later)."""
        started = time.perf_counter()
        options = DeployOptions(frame_size=self.cfg.input_size, confidence=self.cfg.confidence,
                                min_agreement=self.min_agreement, target=self.target,
                                parity_source="stream")
        try:
            # eval mode: export the running BN statistics, not batch statistics
            with deployed(self.adapter.deployable()) as network, \
                    tempfile.TemporaryDirectory(prefix=EXPORT_PREFIX, dir=self.run_dir) as tmp:
                result = deploy(self.candidate(network), self.store,
                                self.frames.parity_frames(self.cfg.input_size), options, Path(tmp),
                                health_gate=self.health_gate, beat=self.beat)
        except OSError as err:  # disk full, read-only store: keep the engine in service
            reason = (f"{errno.errorcode.get(err.errno, 'OSError')}: {err.strerror or err}")
            log.error("export at step %d failed, keeping the engine in service: %s",
                      self.step_count, reason)
            self.events.send(EventType.EXPORT_FAILED, step=self.step_count, reason=reason)
            return None
        if result.rejected_by is not None:
            self.reject(result.rejected_by, result.reason, result.health)
            return None
        version = result.version
        self.save_state(version.number)
        seconds = time.perf_counter() - started
        self.events.send(EventType.VERSION, version=version.number, step=self.step_count,
                         parity=result.parity.agreement, health=result.health,
                         export_s=round(seconds, 3), statistics_updates=self.statistics_updates)
        log.info("published engine %s at step %d (%.2f s)", version.name, self.step_count, seconds)
        return version.number

    def candidate(self, network: torch.nn.Module) -> Candidate:
        return Candidate(network, model=self.cfg.model, num_classes=self.cfg.num_classes,
                         method=self.method.method, step=self.step_count,
                         config=self.cfg.to_dict(), extra={"losses": self.losses})

    def health_gate(self, network: torch.nn.Module, engine: Runner):
        """The health report of the candidate's weights and of its ``engine`` (the one to be
        served, :mod:`iapc.daemon.engine_health`), or None when the gate is off or has no
        frames."""
        frames = self.frames.health_frames()
        untouched = self.step_count == 0 and self.statistics_updates == 0
        if not self.cfg.health.enabled or frames is None or untouched:
            return None  # the source model itself (at most recalibrated): nothing to compare
        with deployed(self.adapter.memory_network()) as memory:
            report = check_health(network, self.serving, self.adapter.source, memory, frames,
                                  self.cfg.health)
        return score_engine(report, engine, network, frames, self.cfg.health, self.min_agreement)

    def export_due(self) -> bool:
        a = self.cfg.adaptation
        by_steps = self.updates_since_deploy >= a.export_every_steps
        by_time = (a.export_every_seconds is not None
                   and time.monotonic() - self.last_export >= a.export_every_seconds
                   and self.updates_since_deploy > 0)
        return by_steps or by_time

    # adaptation --------------------------------------------------------------------------------
    def statistics_phase_frames(self) -> int:
        """Frames of the statistics phase of a new domain; none for a method whose steps move
        only the statistics anyway (``bn``: the phase would only slow it down)."""
        if not self.adapter.takes_gradient_steps:
            return 0
        return self.cfg.adaptation.shift_statistics_frames

    def can_adapt(self) -> bool:
        """Adaptation is on and the buffer holds a batch; in the statistics phase a frame must
        also have arrived since the last statistics update (more updates on the same frames
        would move nothing and only deploy engines that do not differ)."""
        if (not self.cfg.adaptation.enabled or not self.adapter.updates_weights
                or len(self.frames) < self.cfg.adaptation.batch_size):
            return False
        return self.statistics_frames_left == 0 or self.frames.received > self.statistics_received

    def adapt_once(self) -> None:
        """A statistics update while the current domain's statistics are still following its
        frames, else a gradient step of the method."""
        if self.statistics_frames_left > 0:
            self.follow_statistics()
        else:
            self.step()
        self.updates_since_deploy += 1

    def on_sampled_batch(self, work: Callable[[torch.Tensor], Any]) -> Any:
        """``work`` on a batch drawn from the buffer, on the daemon's CUDA stream (if any),
        then idle for the duty cycle."""
        started = time.perf_counter()
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            result = work(self.frames.sample(self.cfg.adaptation.batch_size))
        self.yield_duty_cycle(time.perf_counter() - started)
        return result

    def follow_statistics(self) -> None:
        self.on_sampled_batch(self.adapter.follow_statistics)
        self.statistics_updates += 1
        self.statistics_received = self.frames.received

    def step(self) -> None:
        losses = self.on_sampled_batch(self.adapter.step)
        if self.adapter.skipped(losses):
            self.rollback("non-finite loss")
            return
        self.losses = {k: round(float(v), 5) for k, v in losses.items() if k != "skipped"}
        if self.step_count % 5 == 0:
            self.events.send(EventType.STATS, step=self.step_count, new_steps=5,
                             buffer=len(self.frames), **self.losses)

    def yield_duty_cycle(self, busy_seconds: float) -> None:
        """Idle so that computing takes at most ``duty_cycle`` of the daemon's wall time."""
        duty = self.cfg.adaptation.duty_cycle
        if 0 < duty < 1:
            time.sleep(busy_seconds * (1 - duty) / duty)

    def keep(self, image: np.ndarray) -> None:
        """A received frame goes to the training buffer, or every k-th to the held-out one;
        with the domain bank it may also reveal that the stream changed domain."""
        self.frames.keep(image)
        self.statistics_frames_left = max(0, self.statistics_frames_left - 1)
        shift = self.tracker.observe(image) if self.tracker is not None else None
        if shift is not None:
            self.switch_domain(shift)

    # domain changes ----------------------------------------------------------------------------
    def switch_domain(self, shift: Shift) -> None:
        """Bank the state of the domain left; resume the one entered from its banked state, or
        start a new one from the source model with its own BatchNorm statistics; deploy it now."""
        self.bank.folder.mkdir(parents=True, exist_ok=True)
        self.write_state(self.bank.state_path(shift.came_from), None)
        # frames of the old domain must not train the new one's state
        latest = self.frames.keep_only_latest(self.cfg.adaptation.shift_window)
        restored = shift.known and self.bank.has(shift.to)
        if restored:
            self.load_state(self.bank.state_path(shift.to))
        else:
            self.adapter.reset()
            self.statistics_updates = 0
            if latest is not None:
                self.adapter.recalibrate(latest)
        # a banked state's statistics already follow its domain; a new one's come from a dozen
        # frames
        self.statistics_frames_left = 0 if restored else self.statistics_phase_frames()
        self.domain_order = [d for d in self.domain_order if d != shift.to] + [shift.to]
        self.domain_order = self.bank.evict(self.tracker, self.domain_order)
        self.bank.save_tracker(self.tracker, self.domain_order)
        # the engine this domain was last served with is the health gate's reference
        self.serving.load_state_dict(self.adapter.deployable().state_dict())
        log.info("domain shift %d -> %d (%s, score %.2f)", shift.came_from, shift.to,
                 "banked state" if restored else "new: source model, own BN statistics",
                 shift.score)
        self.events.send(EventType.DOMAIN_SHIFT, domain=shift.to, known=restored,
                         score=round(shift.score, 3), step=self.step_count,
                         **{"from": shift.came_from})
        self.export_version()
        self.last_export = time.monotonic()

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
                self.updates_since_deploy = 0
            if not resumed:  # a fresh start: the first domain's statistics come first
                self.statistics_frames_left = self.statistics_phase_frames()
            while not self.stopping:
                self.beat()
                for _meta, image in frames.receive_all(0 if self.can_adapt() else 100):
                    self.keep(image)
                if not self.can_adapt():
                    continue
                self.adapt_once()
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
