"""The frames the daemon keeps: a buffer of recent ones to adapt on and, apart, a few held out
for the health gate, which are never trained on."""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from iapc.adapt.preprocessing import camera_to_rgb


class FrameBuffer:
    """Received uint8 (H, W, 3) BGR frames: every ``holdout_every``-th goes to the held-out
    deque (when ``holdout_size`` > 0), the others to the training deque."""

    def __init__(self, size: int, holdout_size: int, holdout_every: int, seed: int = 0):
        self.train: deque[np.ndarray] = deque(maxlen=size)
        self.holdout: deque[np.ndarray] = deque(maxlen=max(1, holdout_size))
        self.holdout_every = holdout_every if holdout_size > 0 else 0
        self.received = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.train)

    def keep(self, image: np.ndarray) -> None:
        self.received += 1
        if self.holdout_every > 0 and self.received % self.holdout_every == 0:
            self.holdout.append(image)
        else:
            self.train.append(image)

    def sample(self, batch_size: int) -> torch.Tensor:
        """uint8 (N, 3, H, W) RGB drawn from the recent frames (with replacement only while
        fewer than ``batch_size`` have arrived)."""
        picks = self.rng.choice(len(self.train), size=batch_size, replace=len(self.train) < batch_size)
        frames = np.stack([self.train[i] for i in picks])  # (N, H, W, 3) BGR
        return camera_to_rgb(torch.from_numpy(frames))

    def latest(self, count: int) -> torch.Tensor | None:
        """The ``count`` latest training frames as uint8 (N, 3, H, W) RGB, None if there are none."""
        latest = list(self.train)[-count:]
        return camera_to_rgb(torch.from_numpy(np.stack(latest))) if latest else None

    def keep_only_latest(self, count: int) -> torch.Tensor | None:
        """Forget all but the ``count`` latest training frames and every held-out one (after a
        domain shift); returns those frames as uint8 (N, 3, H, W) RGB, None if there are none."""
        latest = list(self.train)[-count:]
        self.train.clear()
        self.train.extend(latest)
        self.holdout.clear()
        return camera_to_rgb(torch.from_numpy(np.stack(latest))) if latest else None

    def parity_frames(self, frame_size: tuple[int, int]) -> np.ndarray:
        """uint8 (N, H, W, 3) BGR: the latest frames, or mid-grey when none have arrived yet."""
        width, height = frame_size
        if not self.train:
            return np.full((1, height, width, 3), 128, dtype=np.uint8)
        return np.stack(list(self.train)[-4:])

    def health_frames(self) -> np.ndarray | None:
        """uint8 (N, H, W, 3) BGR held-out frames, or None before any have arrived."""
        return np.stack(list(self.holdout)) if self.holdout else None
