"""ConfusionMatrix against cityscapesscripts' own pixel-level evaluation."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from support import cityscapes_eval_args
from iapc.labels import CLASS_NAMES, ID_TO_TRAIN_ID, TRAIN_ID_TO_ID, label_ids_to_train_ids
from iapc.metrics import ConfusionMatrix, format_table, mean_interval
from iapc.errors import UserError


def _random_label_ids(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Blocky Cityscapes label ids, void ids (0..6, ...) included; classes 16..18 never appear."""
    valid_ids = [int(TRAIN_ID_TO_ID[k]) for k in range(16)]
    void_ids = [i for i in range(34) if ID_TO_TRAIN_ID[i] == 255]
    blocks = rng.choice(valid_ids + void_ids[:4], size=(shape[0] // 8, shape[1] // 8))
    return cv2.resize(blocks.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def _noisy_prediction(rng: np.random.Generator, train_ids: np.ndarray) -> np.ndarray:
    """Train ids (0..18): the ground truth with 30 % of pixels replaced by random classes."""
    pred = np.where(train_ids == 255, rng.integers(0, 19, train_ids.shape), train_ids)
    flip = rng.random(train_ids.shape) < 0.3
    pred[flip] = rng.integers(0, 18, int(flip.sum()))  # class 18 is never predicted
    return pred.astype(np.uint8)


def test_miou_matches_cityscapesscripts(tmp_path):
    rng = np.random.default_rng(0)
    gt_files, pred_files = [], []
    metric = ConfusionMatrix(19)
    for i in range(3):
        label_ids = _random_label_ids(rng, (64, 128))
        pred = _noisy_prediction(rng, label_ids_to_train_ids(label_ids))
        gt_file, pred_file = tmp_path / f"gt{i}_gtFine_labelIds.png", tmp_path / f"pred{i}.png"
        cv2.imwrite(str(gt_file), label_ids)
        cv2.imwrite(str(pred_file), TRAIN_ID_TO_ID[pred])  # cityscapesscripts reads label ids
        gt_files.append(str(gt_file))
        pred_files.append(str(pred_file))
        metric.update(torch.from_numpy(pred), label_ids_to_train_ids(label_ids))  # torch + numpy

    cs_eval, args = cityscapes_eval_args(tmp_path)
    reference = cs_eval.evaluateImgLists(pred_files, gt_files, args)
    scores = metric.compute("19")

    assert scores.miou == pytest.approx(reference["averageScoreClasses"], abs=1e-6)
    for k, name in enumerate(CLASS_NAMES):
        expected = reference["classScores"][name]
        if np.isnan(expected):
            assert np.isnan(scores.iou[k]), name
        else:
            assert scores.iou[k] == pytest.approx(expected, abs=1e-6), name
    assert np.isnan(scores.iou[18])  # never predicted nor present: excluded from the mean
    assert not (tmp_path / "result.json").exists()


def test_ignore_subsets_reset_and_table():
    metric = ConfusionMatrix(19)
    target = np.array([[0, 1, 255], [13, 13, 255]], dtype=np.uint8)
    pred = torch.tensor([[0, 2, 5], [13, 1, 0]])
    metric.update(pred, target)
    assert int(metric.mat.sum()) == 4  # the two ignore pixels count nowhere
    iou = metric.iou()
    assert iou[0] == 1.0 and iou[1] == 0.0 and iou[2] == 0.0 and iou[13] == 0.5
    assert np.isnan(iou[3])
    assert metric.compute("19").miou == pytest.approx((1.0 + 0 + 0 + 0.5) / 4)
    # SYNTHIA-16 keeps the same classes here; 13 drops none of {road, sidewalk, building, car}.
    assert metric.compute("16").miou == pytest.approx((1.0 + 0 + 0 + 0.5) / 4)
    assert metric.compute("13").classes == tuple(k for k in metric.compute("16").classes
                                                 if CLASS_NAMES[k] not in ("wall", "fence", "pole"))
    table = format_table(metric.compute("19"))
    assert "road" in table and "mIoU" in table and "37.50" in table
    metric.reset()
    assert int(metric.mat.sum()) == 0


def test_bad_input_is_a_user_error():
    metric = ConfusionMatrix(19)
    with pytest.raises(UserError, match="upsample"):
        metric.update(torch.zeros(2, 4), torch.zeros(4, 2))
    with pytest.raises(UserError, match="subset"):
        metric.compute("7")
    with pytest.raises(UserError, match="--classes"):
        ConfusionMatrix(5).compute("19")


def test_mean_interval_is_the_95_percent_t_interval_of_the_mean():
    mean, half = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert mean_interval([5.0, 5.0])[1] == 0.0
    assert math.isnan(mean_interval([4.0])[1])  # one run: no interval
    # 12 runs (dof 11) and 13 (dof 12, between table entries: the wider dof-11 quantile)
    assert mean_interval([0.0, 1.0] * 6)[1] == pytest.approx(2.201 * math.sqrt(3 / 11) / math.sqrt(12))
    assert mean_interval([0.0, 1.0] * 6 + [0.5])[1] > 0
