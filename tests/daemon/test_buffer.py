"""The daemon's frame buffer: training and held-out frames, and what a domain shift keeps."""

from __future__ import annotations

import numpy as np
import torch

from iapc.daemon.buffer import FrameBuffer


def numbered(count: int) -> list[np.ndarray]:
    """``count`` (8, 8, 3) frames whose every pixel is the frame's number (from 1)."""
    return [np.full((8, 8, 3), number, np.uint8) for number in range(1, count + 1)]


def numbers(buffer: FrameBuffer) -> list[int]:
    return [int(frame[0, 0, 0]) for frame in buffer.train]


def test_every_kth_received_frame_is_held_out():
    buffer = FrameBuffer(size=64, holdout_size=4, holdout_every=4)
    for frame in numbered(10):
        buffer.keep(frame)
    assert numbers(buffer) == [1, 2, 3, 5, 6, 7, 9, 10]
    assert [int(f[0, 0, 0]) for f in buffer.holdout] == [4, 8]


def test_a_shift_keeps_the_latest_training_frames_and_no_held_out_one():
    buffer = FrameBuffer(size=64, holdout_size=4, holdout_every=4)
    for frame in numbered(10):
        buffer.keep(frame)
    kept = buffer.keep_only_latest(4)
    assert kept.shape == (4, 3, 8, 8) and kept.dtype == torch.uint8
    assert numbers(buffer) == [6, 7, 9, 10] and len(buffer.holdout) == 0
    assert buffer.keep_only_latest(100).shape[0] == 4  # no more than it holds


def test_a_shift_on_an_empty_buffer_keeps_nothing():
    buffer = FrameBuffer(size=64, holdout_size=4, holdout_every=4)
    assert buffer.keep_only_latest(12) is None and len(buffer) == 0
