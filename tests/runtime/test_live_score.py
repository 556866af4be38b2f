"""Live mIoU of the inference process, scored off the loop's thread."""

import numpy as np

from iapc.runtime.inference import LiveScore
from iapc.runtime.sources import Frame


def test_scores_every_labelled_frame_after_close():
    score = LiveScore(num_classes=3, backlog=1000)
    rng = np.random.default_rng(0)
    for index in range(50):
        mask = rng.integers(0, 3, (8, 16), dtype=np.uint8)
        label = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)  # labels at twice the size
        score(Frame(np.zeros((16, 32, 3), np.uint8), index, 0, label), mask, version=1)
    score(Frame(np.zeros((16, 32, 3), np.uint8), 50, 0, None), mask, version=1)  # unlabelled
    score.close()
    assert score.frames == 50 and score.skipped == 0
    assert score.miou() == 100.0


def test_a_wrong_mask_scores_zero_and_nothing_before_a_frame():
    score = LiveScore(num_classes=2)
    assert score.miou() is None
    label = np.zeros((4, 4), np.uint8)
    score(Frame(np.zeros((4, 4, 3), np.uint8), 0, 0, label), np.ones((4, 4), np.uint8), version=1)
    score.close()
    assert score.miou() == 0.0
