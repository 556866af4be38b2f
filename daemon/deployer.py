"""Deploying: every N updates or T seconds the adapted network goes through
:func:`iapc.export.deploy.deploy` (export, the runtime's engine built for its target, parity and
health gates on that engine, store) and the new version is announced; a candidate a gate refuses
is not deployed and the state rolls back; a failed export (disk full) is reported and retried at
the next one, the engine in service stays."""

from __future__ import annotations

import errno
import logging
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from iapc.adapt.adapters import deployed
from iapc.daemon.buffer import FrameBuffer
from iapc.daemon.engine_health import score_engine
from iapc.daemon.health import check_health
from iapc.daemon.progress import Progress
from iapc.daemon.state import StateKeeper
from iapc.export.deploy import Candidate, DeployOptions, deploy
from iapc.engines.targets import engine_target
from iapc.export.parity import min_agreement_for
from iapc.engines.runner_base import Runner
from iapc.engines.store import EngineStore, Version
from iapc.runtime.config import RuntimeConfig
from iapc.contracts.events import EventType

log = logging.getLogger("iapc.daemon")

EXPORT_PREFIX = "export-"  # temporary export folders in RUN/; a killed daemon's are removed


class ExportCancelled(Exception):
    """Raised by the ``beat`` callback to abandon an export: the frames have changed domain, and
    what the candidate was adapted for is no longer what the camera sees."""


class Deployer:
    """Deploys ``adapter``'s network into ``store``; ``losses`` gives the last step's figures for
    the manifest, ``beat`` is called between the slow stages (the heartbeat, and a look at the
    frames that came in meanwhile: it raises :class:`ExportCancelled` on a domain shift)."""

    def __init__(self, cfg: RuntimeConfig, store: EngineStore, adapter, frames: FrameBuffer,
                 state: StateKeeper, progress: Progress, events, work_dir: Path,
                 losses: Callable[[], dict], beat: Callable[[], None]):
        self.cfg, self.store, self.adapter, self.frames = cfg, store, adapter, frames
        self.state, self.progress, self.events, self.work_dir = state, progress, events, work_dir
        self.losses, self.beat = losses, beat
        # the engine the inference process will serve: built, gated and stored here
        self.target = engine_target(cfg.backend, cfg.precision)
        self.min_agreement = min_agreement_for(cfg.adaptation.min_agreement,
                                               self.target.reduced_precision)
        self.last_export = time.monotonic()

    def export_due(self) -> bool:
        a, p = self.cfg.adaptation, self.progress
        by_steps = p.updates_since_deploy >= a.export_every_steps
        by_time = (a.export_every_seconds is not None
                   and time.monotonic() - self.last_export >= a.export_every_seconds
                   and p.updates_since_deploy > 0)
        return by_steps or by_time

    def export_version(self) -> Version | None:
        """Deploy the adapted network; the new version, or None (rejected and rolled back;
        abandoned for a domain shift; or the export failed, the engine in service stays and the
        export is retried later). The time cadence counts from the end of this export, whatever
        its outcome."""
        try:
            return self._export()
        finally:
            self.last_export = time.monotonic()

    def choose_source_share(self) -> float | None:
        """The adapter's label-free choice of the statistics' source share on the latest
        training frames (never the held-out ones the health gate judges on); the share chosen,
        or None when the method makes no such choice."""
        frames = self.frames.latest(self.cfg.health.holdout_size)
        entropies = self.adapter.choose_source_share(frames) if frames is not None else {}
        if not entropies:
            return None
        share = self.adapter.cfg.source_statistics_weight
        log.info("source share of the statistics: %.2f (mean entropy by share: %s)", share,
                 ", ".join(f"{k:.2f}: {v:.4f}" for k, v in entropies.items()))
        return share

    def _export(self) -> Version | None:
        started = time.perf_counter()
        share = self.choose_source_share()
        options = DeployOptions(frame_size=self.cfg.input_size, confidence=self.cfg.confidence,
                                min_agreement=self.min_agreement, target=self.target,
                                parity_source="stream")
        try:
            self.beat()
            # eval mode: export the running BN statistics, not batch statistics
            with deployed(self.adapter.deployable()) as network, \
                    tempfile.TemporaryDirectory(prefix=EXPORT_PREFIX, dir=self.work_dir) as tmp:
                result = deploy(self.candidate(network), self.store,
                                self.frames.parity_frames(self.cfg.input_size), options, Path(tmp),
                                health_gate=self.health_gate, beat=self.beat)
        except ExportCancelled as why:  # the state is kept: banked with the domain it left
            log.info("export at step %d abandoned: %s", self.adapter.step_count, why)
            return None
        except OSError as err:  # disk full, read-only store: keep the engine in service
            reason = f"{errno.errorcode.get(err.errno, 'OSError')}: {err.strerror or err}"
            log.error("export at step %d failed, keeping the engine in service: %s",
                      self.adapter.step_count, reason)
            self.events.send(EventType.EXPORT_FAILED, step=self.adapter.step_count, reason=reason)
            return None
        if result.rejected_by is not None:
            self.reject(result.rejected_by, result.reason, result.health)
            return None
        version = result.version
        self.state.save(version.number)
        seconds = time.perf_counter() - started
        self.events.send(EventType.VERSION, version=version.number, step=self.adapter.step_count,
                         parity=result.parity.agreement, health=result.health,
                         export_s=round(seconds, 3),
                         statistics_updates=self.progress.statistics_updates,
                         **({"source_share": share} if share is not None else {}))
        log.info("published engine %s at step %d (%.2f s)", version.name,
                 self.adapter.step_count, seconds)
        return version

    def reject(self, gate: str, reason: str, figures: dict | None = None) -> None:
        step = self.adapter.step_count
        log.warning("%s gate rejected step %d: %s", gate, step, reason)
        self.events.send(EventType.REJECTED, gate=gate, step=step, reason=reason,
                         **({"health": figures} if figures else {}))
        self.state.rollback(f"{gate} gate: {reason}")

    def candidate(self, network: torch.nn.Module) -> Candidate:
        return Candidate(network, model=self.cfg.model, num_classes=self.cfg.num_classes,
                         method=self.state.method_config.method, step=self.adapter.step_count,
                         config=self.cfg.to_dict(), extra={"losses": self.losses()})

    def health_gate(self, network: torch.nn.Module, engine: Runner):
        """The health report of the candidate's weights and of its ``engine`` (the one to be
        served, :mod:`iapc.daemon.engine_health`), or None when the gate is off or has no
        frames."""
        frames = self.frames.health_frames()
        untouched = self.adapter.step_count == 0 and self.progress.statistics_updates == 0
        if not self.cfg.health.enabled or frames is None or untouched:
            return None  # the source model itself (at most recalibrated): nothing to compare
        with deployed(self.adapter.memory_network()) as memory:
            report = check_health(network, self.state.serving, self.adapter.source, memory,
                                  frames, self.cfg.health, beat=self.beat)
        self.beat()
        return score_engine(report, engine, network, frames, self.cfg.health, self.min_agreement)
