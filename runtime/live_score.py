"""Live mIoU when the source has labels (synthetic stream, Cityscapes with gtFine): of every
published mask, and over a recent window for the engine in service *and* for the source engine
on the same frames, so that a user sees whether adapting pays.

Scoring runs in its own thread: the loop only appends (frame, mask) to a bounded queue, so a
labelled source costs the hot path nothing; when scoring falls behind, the oldest pairs are
skipped (``skipped`` counts them). The source engine runs on at most one frame per
``source_every`` seconds (it is a second inference, on the scoring thread's time).
"""

from __future__ import annotations

import threading
import time
from collections import deque

import cv2
import numpy as np

RECENT_FRAMES = 100  # window of the serving-vs-source comparison


class LiveScore:
    def __init__(self, num_classes: int, backlog: int = 8, source_every: float = 0.5,
                 metrics=None):
        from iapc.metrics import ConfusionMatrix

        self.num_classes = num_classes
        self.matrix = ConfusionMatrix(num_classes)
        self.frames = 0
        self.skipped = 0
        self.source_every = source_every
        self.metrics = metrics
        self._source = None  # active runner of the source engine, or None
        self._last_source = 0.0
        # per compared frame: ((K, K) confusion of the engine in service, of the source engine),
        # and their running sums over the window (added on arrival, taken off on eviction)
        self._recent: deque[tuple[np.ndarray, np.ndarray]] = deque()
        self._recent_sums = np.zeros((2, num_classes, num_classes), dtype=np.int64)
        self._pending: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=backlog)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._score_forever, name="live-score", daemon=True)
        self._thread.start()

    def compare_with(self, source_runner) -> None:
        """Also score ``source_runner`` (inactive; activated here) on recent labelled frames."""
        if source_runner is None:
            return
        source_runner.activate()
        self._source = source_runner

    def __call__(self, frame, mask: np.ndarray, version: int, batch: np.ndarray | None = None) -> None:
        if frame.label is None:
            return
        if len(self._pending) == self._pending.maxlen:
            self.skipped += 1
        # the mask and the batch are only read, never written
        self._pending.append((mask, frame.label, batch))
        self._wake.set()

    def _score_forever(self) -> None:
        while not self._closed.is_set() or self._pending:
            try:
                mask, label, batch = self._pending.popleft()
            except IndexError:
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            if label.shape != mask.shape:
                label = cv2.resize(label, (mask.shape[1], mask.shape[0]),
                                   interpolation=cv2.INTER_NEAREST)
            served = self._confusion(mask, label)
            compared = self._source_confusion(batch, label)
            with self._lock:
                self.matrix.mat += served
                self.frames += 1
                if compared is not None:
                    self._remember(served, compared)
            self._export_metrics()

    def _remember(self, served: np.ndarray, compared: np.ndarray) -> None:
        """Add one compared frame to the window (under the lock), dropping the oldest."""
        self._recent.append((served, compared))
        self._recent_sums[0] += served
        self._recent_sums[1] += compared
        if len(self._recent) > RECENT_FRAMES:
            old_served, old_compared = self._recent.popleft()
            self._recent_sums[0] -= old_served
            self._recent_sums[1] -= old_compared

    def _confusion(self, mask: np.ndarray, label: np.ndarray) -> np.ndarray:
        from iapc.metrics import ConfusionMatrix

        one = ConfusionMatrix(self.num_classes)
        one.update(mask, label)
        return one.mat

    def _source_confusion(self, batch, label: np.ndarray) -> np.ndarray | None:
        """The source engine's confusion on this frame, when it is due; else None."""
        now = time.monotonic()
        if self._source is None or batch is None or now - self._last_source < self.source_every:
            return None
        self._last_source = now
        mask = self._source.infer(batch)["mask"][0]
        return self._confusion(mask, label)

    def _miou(self, mat: np.ndarray) -> float | None:
        from iapc.metrics import ConfusionMatrix

        metric = ConfusionMatrix(self.num_classes)
        metric.mat = mat
        value = metric.compute().miou
        return None if value != value else float(value) * 100

    def miou(self) -> float | None:
        with self._lock:
            return self._miou(self.matrix.mat.copy()) if self.frames else None

    def recent(self) -> dict | None:
        """``{"frames", "serving", "source", "gain"}`` over the recent compared frames."""
        with self._lock:
            if not self._recent:
                return None
            served, source = self._recent_sums.copy()
            frames = len(self._recent)
        serving_miou, source_miou = self._miou(served), self._miou(source)
        gain = (serving_miou - source_miou
                if serving_miou is not None and source_miou is not None else None)
        return {"frames": frames, "serving": serving_miou, "source": source_miou, "gain": gain}

    def status(self) -> dict:
        """The heartbeat's label-based fields."""
        return {"miou": self.miou(), "miou_recent": self.recent()}

    def _export_metrics(self) -> None:
        if self.metrics is None:
            return
        recent = self.recent()
        if recent is not None:
            self.metrics.observe_live_miou(recent["serving"], recent["source"])

    def close(self) -> None:
        """Score what is queued, then stop the thread (and the source engine)."""
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=5.0)
        if self._source is not None:
            self._source.deactivate()
