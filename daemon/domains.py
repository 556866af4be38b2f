"""Label-free recognition of the domain the frames come from, and a bank of adapted states per
recognised domain, kept in the engine store (``STORE/domains/``).

Each frame is summarised by a 12-number descriptor of its appearance (:func:`describe`: colour
means and spreads, edge energy, saturation, a 4-bin luminance histogram, on a 64x32 thumbnail).
A domain is the running mean and spread of the descriptors of its frames. A frame is *far* from
a domain when the mean over the 12 dimensions of ``|d - mean| / (spread + 0.01)`` (a z-score)
exceeds ``z_threshold``; when most (``FAR_SHARE``) of the last ``window`` frames are far, the
stream has shifted. Measured on the project's
synthetic domains (statistics from 60 frames, windows of other scenes): frames of the domain
itself score up to 1.6, frames of another domain 1.7 to 13. On streams of every second frame
(what the daemon receives), the runtime's defaults (threshold 1.6, 9 of the last 12 frames, 64
frames before a domain can be left) made 1 false shift in 1800 single-domain frames and
recognised every change of the city -> night -> fog -> rain cycle, 9 frames after it, except
rain, which they take for city (a similar domain whose state is then shared); requiring 12 far
frames *in a row* took up to 7 s to notice a change in the runtime, and 1.2 / 8 / 32 made 7
false shifts.
After a shift the new frames go to the *nearest* banked domain when it scores under
``match_factor`` (1.5) times the threshold (a return: a similar domain's adapted state is a
better start than the source model, and its statistics then follow the frames), else they start
a new one. On bench_continual's cycle (``benchmarks/domain_tracking.py``) a return's first
window scores 0.5 (night) to 1.7 (fog) against its own domain, and fog's first visit 3.0 against
city: a factor of 2 took that visit for city; 1.5 gives it its own domain. Rain scores about 1.0
against city, so rain and city share one domain and state with either factor. A domain needs
``min_frames`` frames before it can be left or recognised, so a few odd frames never flap
between domains.

A clear return does not wait for the window: when the last ``return_window`` (4) frames are all
far and their mean scores under the threshold against a banked domain and at most half its
score against the current one, the stream is back in that domain. On bench_continual's cycle
this takes returns 7.5 frames after the change instead of 16, with no false shift over 10
rounds on three renderings of the cycle; without the "half" condition a night scene that
resembles city went to city's state every round.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from iapc.engines.store import CorruptVersion, Version, verified_manifest
from iapc.runtime.config import DaemonConfig

log = logging.getLogger("iapc.daemon")
_DEFAULTS = DaemonConfig()  # the tracker's settings are the daemon's (adaptation: in the config)

DESCRIPTOR_SIZE = 12
SPREAD_FLOOR = 0.01  # added to every spread: flat dimensions (a black sky) do not explode
THUMBNAIL = (64, 32)
FAR_SHARE = 0.75  # a shift: at least this share of the last ``window`` frames are far
# An early return needs the latest frames to be at least 1 / RETURN_RATIO times as close (in
# z-score) to a banked domain as to the current one.
RETURN_RATIO = 0.5


def describe(image_bgr: np.ndarray) -> np.ndarray:
    """(12,) float32 appearance descriptor of a uint8 (H, W, 3) BGR frame, every value in [0, 1]."""
    small = cv2.resize(image_bgr, THUMBNAIL, interpolation=cv2.INTER_AREA)
    pixels = small.reshape(-1, 3).astype(np.float32) / 255
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255
    edges = np.abs(np.diff(gray, axis=1)).mean() + np.abs(np.diff(gray, axis=0)).mean()
    saturation = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)[..., 1].astype(np.float32).mean() / 255
    histogram = np.histogram(gray, bins=4, range=(0.0, 1.0))[0] / gray.size
    return np.concatenate([pixels.mean(0), pixels.std(0), [edges, saturation], histogram]
                          ).astype(np.float32)


@dataclass
class DomainStats:
    """Running mean and spread of one domain's descriptors (Welford, then slow EMA).

    A domain split off another starts with that one's variance as a prior worth
    ``prior_frames`` frames (``prior_var``), which its own frames outweigh as they come: a
    spread estimated from a young domain's first frames alone is too narrow (a real sequence's
    scenes change faster than its light), and its later frames would then look far from it."""

    count: int = 0
    mean: np.ndarray = field(default_factory=lambda: np.zeros(DESCRIPTOR_SIZE, np.float32))
    m2: np.ndarray = field(default_factory=lambda: np.zeros(DESCRIPTOR_SIZE, np.float32))
    prior_var: np.ndarray = field(default_factory=lambda: np.zeros(DESCRIPTOR_SIZE, np.float32))
    prior_frames: int = 0

    FOLLOW = 0.01  # after 200 frames the statistics follow slow drift with this EMA factor

    def add(self, descriptor: np.ndarray) -> None:
        self.count += 1
        if self.count <= 200:
            delta = descriptor - self.mean
            self.mean = self.mean + delta / self.count
            self.m2 = self.m2 + delta * (descriptor - self.mean)
        else:
            variance = self.m2 / 200
            self.mean = (1 - self.FOLLOW) * self.mean + self.FOLLOW * descriptor
            variance = (1 - self.FOLLOW) * variance + self.FOLLOW * (descriptor - self.mean) ** 2
            self.m2 = variance * 200

    @property
    def variance(self) -> np.ndarray:
        own = max(0, min(self.count, 200) - 1)  # degrees of freedom of the frames' own estimate
        return (self.m2 + self.prior_frames * self.prior_var) / max(1, own + self.prior_frames)

    @property
    def spread(self) -> np.ndarray:
        return np.sqrt(self.variance)

    def score(self, descriptor: np.ndarray) -> float:
        """Mean z-score of ``descriptor`` (or of a window's mean descriptor) against this domain."""
        return float(np.mean(np.abs(descriptor - self.mean) / (self.spread + SPREAD_FLOOR)))

    def to_json(self) -> dict:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist(),
                "prior_var": self.prior_var.tolist(), "prior_frames": self.prior_frames}

    @classmethod
    def from_json(cls, data: dict) -> "DomainStats":
        prior = data.get("prior_var", [0.0] * DESCRIPTOR_SIZE)  # banks written before priors
        return cls(int(data["count"]), np.asarray(data["mean"], np.float32),
                   np.asarray(data["m2"], np.float32), np.asarray(prior, np.float32),
                   int(data.get("prior_frames", 0)))


@dataclass
class Shift:
    """The stream moved to domain ``to`` (``known``: seen before, its state is banked)."""

    to: int
    came_from: int
    known: bool
    score: float  # the window's score against the domain it left


class DomainTracker:
    """Which domain the recent frames belong to; reports a :class:`Shift` when it changes."""

    def __init__(self, z_threshold: float = _DEFAULTS.shift_z, window: int = _DEFAULTS.shift_window,
                 min_frames: int = _DEFAULTS.domain_min_frames,
                 match_factor: float = _DEFAULTS.shift_match_factor,
                 return_window: int = _DEFAULTS.shift_return_window,
                 domains: dict[int, DomainStats] | None = None, current: int = 0):
        self.z_threshold, self.window, self.min_frames = z_threshold, window, min_frames
        self.match_factor = match_factor
        self.return_window = min(return_window, window)  # 0: returns wait for the full window
        self.domains = domains or {0: DomainStats()}
        self.current = current
        # (descriptor, far from the current domain?) of the last ``window`` frames
        self.recent: deque[tuple[np.ndarray, bool]] = deque(maxlen=window)

    def observe(self, image_bgr: np.ndarray) -> Shift | None:
        return self.observe_descriptor(describe(image_bgr))

    def observe_descriptor(self, descriptor: np.ndarray) -> Shift | None:
        """The next frame's (12,) descriptor; a :class:`Shift` when it completes one."""
        domain = self.domains[self.current]
        ready = domain.count >= self.min_frames
        far = ready and domain.score(descriptor) > self.z_threshold
        self.recent.append((descriptor, far))
        if not far:
            domain.add(descriptor)
        far_frames = [d for d, is_far in self.recent if is_far]
        # most of the window far (a similar new domain has some frames that look like the old)
        if len(far_frames) >= FAR_SHARE * self.window:
            return self._shift(np.stack(far_frames))
        return self._early_return()

    def _early_return(self) -> Shift | None:
        """A return noticed before the window fills: the last ``return_window`` frames are all
        far from the current domain and, together, no farther from one banked domain than its
        own frames are (their mean descriptor scores under ``z_threshold`` against it) and at
        most ``RETURN_RATIO`` times as far from it as from the current domain. Positive evidence
        of a known domain needs fewer frames than evidence of "somewhere else"."""
        if self.return_window <= 0 or len(self.recent) < self.return_window:
            return None
        latest = list(self.recent)[-self.return_window:]
        if not all(is_far for _, is_far in latest):
            return None
        frames = np.stack([d for d, _ in latest])  # (return_window, 12)
        centre = frames.mean(axis=0)
        best, score = self._nearest_banked(centre)
        if best is None or score > min(self.z_threshold,
                                       RETURN_RATIO * self.domains[self.current].score(centre)):
            return None
        return self._shift(frames)

    def _nearest_banked(self, centre: np.ndarray) -> tuple[int | None, float]:
        """The banked domain (other than the current one, with ``min_frames`` frames) nearest to
        the (12,) ``centre``, and its score; (None, inf) when there is none."""
        scores = {i: d.score(centre) for i, d in self.domains.items()
                  if i != self.current and d.count >= self.min_frames}
        if not scores:
            return None, float("inf")
        best = min(scores, key=scores.get)
        return best, scores[best]

    def _shift(self, window: np.ndarray) -> Shift:
        """The far frames of ``window`` (N, 12) belong to a banked domain or to a new one."""
        centre = window.mean(axis=0)
        left = self.current
        best, score = self._nearest_banked(centre)
        known = best is not None and score <= self.match_factor * self.z_threshold
        target = best if known else max(self.domains) + 1
        if not known:  # its spread starts from the one it left's, worth min_frames frames
            self.domains[target] = DomainStats(prior_var=self.domains[left].variance,
                                               prior_frames=self.min_frames)
        for descriptor in window:
            self.domains[target].add(descriptor)
        shift = Shift(to=target, came_from=left, known=known,
                      score=self.domains[left].score(centre))
        self.current = target
        self.recent.clear()
        return shift


SOURCE_ENGINE = "source"  # the bank's key of the source network's engine


class DomainBank:
    """Adapted states per domain in ``STORE/domains/``: ``<id>.pt`` checkpoints (any method's,
    the daemon's checkpoint format), ``domains.json`` (descriptor statistics, current id) and
    ``engines/<id>/`` (a copy of the version folder last served in that domain, and
    ``engines/source/`` the source network's: what a change of domain serves at once)."""

    def __init__(self, store_root: Path, size: int):
        self.folder = Path(store_root) / "domains"
        self.size = size  # domains kept; the least recently seen other one is dropped

    def state_path(self, domain: int) -> Path:
        return self.folder / f"{domain}.pt"

    def has(self, domain: int) -> bool:
        return self.state_path(domain).is_file()

    def save_tracker(self, tracker: DomainTracker, order: list[int]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = {"current": tracker.current, "order": order,
                "domains": {str(i): d.to_json() for i, d in tracker.domains.items()}}
        tmp = self.folder / "domains.json.tmp"
        tmp.write_text(json.dumps(data))
        tmp.replace(self.folder / "domains.json")

    def load_tracker(self, **settings) -> tuple[DomainTracker, list[int]]:
        """The saved tracker (a restart keeps its domains), or a fresh one."""
        path = self.folder / "domains.json"
        if not path.is_file():
            return DomainTracker(**settings), [0]
        data = json.loads(path.read_text())
        domains = {int(i): DomainStats.from_json(d) for i, d in data["domains"].items()}
        return DomainTracker(domains=domains, current=int(data["current"]), **settings), \
            [int(i) for i in data["order"]]

    def evict(self, tracker: DomainTracker, order: list[int]) -> list[int]:
        """Drop the least recently seen domains beyond ``size`` (statistics, state and engine)."""
        while len(order) > self.size:
            dropped = order.pop(0)
            tracker.domains.pop(dropped, None)
            self.state_path(dropped).unlink(missing_ok=True)
            shutil.rmtree(self.engine_folder(dropped), ignore_errors=True)
        return order

    def engine_folder(self, key: int | str) -> Path:
        return self.folder / "engines" / str(key)

    def keep_engine(self, key: int | str, version: Version) -> None:
        """Copy ``version``'s folder as ``key``'s engine (a domain id, or :data:`SOURCE_ENGINE`),
        replacing the one kept before; a crash leaves the old copy or the new one."""
        target = self.engine_folder(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}-{uuid.uuid4().hex[:8]}")
        shutil.copytree(version.path, staging)
        if target.exists():
            trash = target.with_name(f".trash-{target.name}-{uuid.uuid4().hex[:8]}")
            target.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        staging.rename(target)

    def banked_engine(self, key: int | str) -> Path | None:
        """The folder of ``key``'s kept engine when its files match their manifest, else None
        (never kept, or damaged: logged)."""
        folder = self.engine_folder(key)
        if not folder.is_dir():
            return None
        try:
            verified_manifest(folder)
        except CorruptVersion as err:
            log.warning("banked engine of %s cannot be served again: %s", key, err)
            return None
        return folder
