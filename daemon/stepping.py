"""Stepping: the method's gradient steps, or BatchNorm statistics updates while a new domain's
statistics follow its frames, on batches drawn from the frame buffer, on the daemon's CUDA
stream (if any), within the duty cycle."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import torch

from iapc.daemon.buffer import FrameBuffer
from iapc.daemon.progress import Progress
from iapc.runtime.config import RuntimeConfig
from iapc.contracts.events import EventType

STATS_EVERY = 5  # steps between the adaptation figures sent to the inference process


class Stepper:
    """Adapts ``adapter`` on ``frames``; a non-finite loss calls ``rollback`` with the reason."""

    def __init__(self, cfg: RuntimeConfig, adapter, frames: FrameBuffer, progress: Progress,
                 events, rollback: Callable[[str], None], device: torch.device,
                 idle: Callable[[float], None] = time.sleep):
        self.cfg, self.adapter, self.frames, self.progress = cfg, adapter, frames, progress
        self.events, self.rollback = events, rollback
        self.idle = idle  # the duty cycle's pause, seconds (the daemon takes frames meanwhile)
        # On a GPU the daemon's kernels go to a stream of the lowest priority (0), so the
        # inference engine's work (on a higher-priority stream) is scheduled first.
        self.stream = (torch.cuda.Stream(device=device, priority=0)
                       if device.type == "cuda" else None)
        self.losses: dict = {}  # the last step's, rounded (also in the engine manifest)

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
        p = self.progress
        return p.statistics_frames_left == 0 or self.frames.received > p.statistics_received

    def adapt_once(self) -> None:
        """A statistics update while the current domain's statistics are still following its
        frames, else a gradient step of the method."""
        if self.progress.statistics_frames_left > 0:
            self.follow_statistics()
        else:
            self.step()
        self.progress.updates_since_deploy += 1

    def on_sampled_batch(self, work: Callable[[torch.Tensor], Any]) -> Any:
        """``work`` on a batch drawn from the buffer, on the daemon's CUDA stream (if any),
        then idle for the duty cycle."""
        started = time.perf_counter()
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            result = work(self.frames.sample(self.cfg.adaptation.batch_size))
        self.yield_duty_cycle(time.perf_counter() - started)
        return result

    def follow_statistics(self) -> None:
        seen = self.frames.received  # frames that come in during the pause after it are new
        self.on_sampled_batch(self.adapter.follow_statistics)
        self.progress.statistics_updates += 1
        self.progress.statistics_received = seen

    def step(self) -> None:
        losses = self.on_sampled_batch(self.adapter.step)
        if self.adapter.skipped(losses):
            self.rollback("non-finite loss")
            return
        self.losses = {k: round(float(v), 5) for k, v in losses.items() if k != "skipped"}
        if self.adapter.step_count % STATS_EVERY == 0:
            self.events.send(EventType.STATS, step=self.adapter.step_count,
                             new_steps=STATS_EVERY, buffer=len(self.frames), **self.losses)

    def yield_duty_cycle(self, busy_seconds: float) -> None:
        """Idle so that computing takes at most ``duty_cycle`` of the daemon's wall time."""
        duty = self.cfg.adaptation.duty_cycle
        if 0 < duty < 1:
            self.idle(busy_seconds * (1 - duty) / duty)
