"""Domain tracking in the daemon: the frames' domain is followed (:mod:`iapc.daemon.domains`);
on a change the adapted state of the domain left is banked, the one entered is restored from
the bank (a domain seen before) or starts from the source model with its own BatchNorm
statistics and a statistics phase (a new one).

What is served changes at once, without an export (which takes 7 to 40 s on two shared CPU
cores for ESPNetv2, longer than half of CamVid's dusk sequence): a domain seen before gets its
banked engine again, a new one the source network's engine, the safe choice for frames nothing
was adapted on. The state entered is then exported as usual (a shift seen meanwhile abandons
that export, :class:`~iapc.daemon.deployer.ExportCancelled`)."""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from iapc.daemon.buffer import FrameBuffer
from iapc.daemon.domains import SOURCE_ENGINE, DomainBank, Shift
from iapc.daemon.progress import Progress
from iapc.daemon.state import StateKeeper
from iapc.engines.store import EngineStore, Version
from iapc.runtime.config import RuntimeConfig
from iapc.contracts.events import EventType

log = logging.getLogger("iapc.daemon")


class DomainSwitcher:
    """Off (``tracker`` None) unless the domain bank is on and the method adapts weights."""

    def __init__(self, cfg: RuntimeConfig, adapter, frames: FrameBuffer, state: StateKeeper,
                 progress: Progress, events, store: EngineStore,
                 statistics_phase_frames: Callable[[], int], deploy: Callable[[], object]):
        self.cfg, self.adapter, self.frames, self.state = cfg, adapter, frames, state
        self.progress, self.events, self.store = progress, events, store
        self.statistics_phase_frames, self.deploy = statistics_phase_frames, deploy
        a = cfg.adaptation
        self.bank, self.tracker, self.order = None, None, []
        self.pending: Shift | None = None  # a shift seen during an export, switched after it
        if a.domain_bank and a.enabled and adapter.updates_weights:
            self.bank = DomainBank(store.root, a.domain_bank_size)
            self.tracker, self.order = self.bank.load_tracker(
                z_threshold=a.shift_z, window=a.shift_window, min_frames=a.domain_min_frames,
                match_factor=a.shift_match_factor, return_window=a.shift_return_window)

    @property
    def current(self) -> int | None:
        return self.tracker.current if self.tracker is not None else None

    def published(self, version: Version, source: bool = False) -> None:
        """``version`` is now served in the current domain: bank a copy of it (``source``: it is
        also the source network's engine)."""
        if self.bank is None:
            return
        try:
            self.bank.keep_engine(self.tracker.current, version)
            if source:
                self.bank.keep_engine(SOURCE_ENGINE, version)
        except OSError as err:  # disk full: the bank only loses the instant switch
            log.error("cannot bank engine %s: %s", version.name, err)

    def observe(self, image: np.ndarray, defer: bool = False) -> None:
        """A received frame, which may reveal that the stream changed domain: switch now, or
        (``defer``, while the state is in use) at :meth:`switch_pending`."""
        if self.tracker is None or self.pending is not None:  # one deferred shift at a time
            return
        shift = self.tracker.observe(image)
        if shift is None:
            return
        if defer:
            self.pending = shift
        else:
            self.switch(shift)

    def switch_pending(self) -> None:
        """Make the switch a deferred observation found, if any."""
        shift, self.pending = self.pending, None
        if shift is not None:
            self.switch(shift)

    def switch(self, shift: Shift) -> None:
        """Bank the state of the domain left; resume the one entered from its banked state, or
        start a new one from the source model with its own BatchNorm statistics; deploy it now."""
        self.bank.folder.mkdir(parents=True, exist_ok=True)
        self.state.write(self.bank.state_path(shift.came_from), None)
        # frames of the old domain must not train the new one's state
        latest = self.frames.keep_only_latest(self.cfg.adaptation.shift_window)
        restored = shift.known and self.bank.has(shift.to)
        if restored:
            self.state.load(self.bank.state_path(shift.to))
        else:
            self.adapter.reset()
            self.progress.statistics_updates = 0
            if latest is not None:
                self.adapter.recalibrate(latest)
        # a banked state's statistics already follow its domain; a new one's come from a dozen
        # frames
        self.progress.statistics_frames_left = 0 if restored else self.statistics_phase_frames()
        self.order = [d for d in self.order if d != shift.to] + [shift.to]
        self.order = self.bank.evict(self.tracker, self.order)
        self.bank.save_tracker(self.tracker, self.order)
        # the engine this domain was last served with is the health gate's reference
        self.state.follow_service()
        log.info("domain shift %d -> %d (%s, score %.2f)", shift.came_from, shift.to,
                 "banked state" if restored else "new: source model, own BN statistics",
                 shift.score)
        self.events.send(EventType.DOMAIN_SHIFT, domain=shift.to, known=restored,
                         score=round(shift.score, 3), step=self.adapter.step_count,
                         **{"from": shift.came_from})
        self.serve_banked(shift.to if restored else SOURCE_ENGINE)
        # then the state entered: a new domain's recalibrated network, or a banked state, whose
        # statistics followed the domain for longer than the engine it was last served with
        self.deploy()

    def serve_banked(self, key: int | str) -> None:
        """Publish the banked engine of ``key`` (a domain, or :data:`SOURCE_ENGINE`) again as the
        newest version, without an export; nothing when there is none or it cannot be stored."""
        folder = self.bank.banked_engine(key)
        if folder is None:
            return
        try:
            version = self.store.publish_copy(folder, {"domain": self.tracker.current})
        except OSError as err:
            log.error("cannot serve the banked engine of %s again: %s", key, err)
            return
        self.state.save(version.number)
        self.published(version)
        republished_from = version.manifest["republished_from"]
        log.info("serving %s's banked engine %s again as %s", key, republished_from, version.name)
        self.events.send(EventType.VERSION, version=version.number, step=self.adapter.step_count,
                         republished_from=self.store.version_number(republished_from),
                         domain=self.tracker.current)
