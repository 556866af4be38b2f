"""Segmentation metrics: a confusion matrix with per-class IoU and mIoU; the 95% interval of a
mean over a few runs (:func:`mean_interval`, for benchmarks).

Follows torchvision's ``references/segmentation`` ``ConfusionMatrix`` (update / compute / reset)
and gives the same numbers as ``cityscapesscripts``' pixel-level evaluation: pixels whose ground
truth is ignore (255) count nowhere, a class's IoU is ``tp / (tp + fp + fn)``, NaN when the class
appears in neither prediction nor ground truth, and mIoU is the mean over the non-NaN classes.

CamVid's 11 classes (:func:`camvid_matrix`, :func:`update_camvid`, :func:`camvid_scores`): the
train ids a network predicts go through :data:`iapc.labels.TRAIN_ID_TO_CAMVID`; void labels are
ignored; a prediction with no CamVid class is a twelfth "void" column, wrong wherever it falls.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace

import numpy as np

from iapc.labels import (CAMVID_CLASS_NAMES, CAMVID_IGNORE, CAMVID_NUM_CLASSES, CLASS_NAMES,
                         CLASS_SUBSETS, IGNORE_INDEX, train_ids_to_camvid)
from iapc.errors import UserError


def _as_int64_array(values) -> np.ndarray:
    """Flat int64 numpy array from a numpy array or a torch tensor (on any device).

    The module stays numpy-only so the inference process (no torch) can score live masks.
    """
    return _as_numpy(values).reshape(-1).astype(np.int64, copy=False)


def _as_numpy(values) -> np.ndarray:
    """A numpy array from a numpy array or a torch tensor, shape kept."""
    if hasattr(values, "detach"):  # a torch tensor: the one host copy, done by the caller's data
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def resolve_class_subset(classes: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """``"19"``/``"16"``/``"13"`` (Cityscapes, SYNTHIA mIoU, SYNTHIA mIoU*) or explicit train ids."""
    if isinstance(classes, str):
        if classes not in CLASS_SUBSETS:
            raise UserError(f"unknown class subset {classes!r}: choose one of "
                            f"{', '.join(CLASS_SUBSETS)}")
        return CLASS_SUBSETS[classes]
    return tuple(int(c) for c in classes)


@dataclass(frozen=True)
class SegmentationScores:
    """What :meth:`ConfusionMatrix.compute` returns."""

    iou: np.ndarray  # (K,) float64 per-class IoU in [0, 1], NaN where undefined
    accuracy: float  # overall pixel accuracy over non-ignored pixels
    classes: tuple[int, ...]  # the train ids averaged into ``miou``
    miou: float  # nan-mean of ``iou[classes]``
    names: tuple[str, ...] | None = None  # class names by index (None: the Cityscapes ones)
    camvid11: "SegmentationScores | None" = None  # CamVid's 11 classes, on CamVid labels

    def class_names(self) -> tuple[str, ...]:
        return self.names or _class_names(len(self.iou))

    def to_dict(self) -> dict[str, object]:
        names = self.class_names()
        plain = {"miou": self.miou, "accuracy": self.accuracy, "classes": list(self.classes),
                 "iou": {names[k]: (None if np.isnan(v) else float(v))
                         for k, v in enumerate(self.iou)}}
        if self.camvid11 is not None:
            plain["camvid11"] = self.camvid11.to_dict()
        return plain


class ConfusionMatrix:
    """Accumulates a (K, K) matrix, rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred, target) -> None:
        """Add a batch: ``pred`` and ``target`` hold class ids of the same shape (any layout).

        Target pixels equal to ``ignore_index`` (or outside [0, K)) are skipped.
        """
        if tuple(pred.shape) != tuple(target.shape):
            raise UserError(f"prediction shape {tuple(pred.shape)} differs from label shape "
                            f"{tuple(target.shape)}: upsample logits to the label size first")
        pred, target = _as_int64_array(pred), _as_int64_array(target)
        k = self.num_classes
        valid = (target >= 0) & (target < k) & (target != self.ignore_index)
        # One bincount over the joint index gt*K + pred gives the whole matrix at once.
        joint = target[valid] * k + np.clip(pred[valid], 0, k - 1)
        self.mat += np.bincount(joint, minlength=k * k).reshape(k, k)

    def reset(self) -> None:
        self.mat[:] = 0

    def iou(self) -> np.ndarray:
        """(K,) per-class IoU; NaN where a class is in neither prediction nor ground truth."""
        mat = self.mat.astype(np.float64)
        tp = np.diag(mat)
        denom = mat.sum(0) + mat.sum(1) - tp
        return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def compute(self, classes: str | tuple[int, ...] | None = None) -> SegmentationScores:
        """Scores with mIoU over ``classes`` (a subset name or train ids; ``None``: all K)."""
        subset = tuple(range(self.num_classes)) if classes is None else resolve_class_subset(classes)
        if max(subset) >= self.num_classes:
            raise UserError(f"class subset {classes!r} needs {max(subset) + 1} classes, the "
                            f"model predicts {self.num_classes}: pick a smaller --classes")
        iou = self.iou()
        selected = iou[list(subset)]
        miou = float(np.nanmean(selected)) if not np.all(np.isnan(selected)) else float("nan")
        total = int(self.mat.sum())
        accuracy = float(np.diag(self.mat).sum()) / total if total else float("nan")
        return SegmentationScores(iou=iou, accuracy=accuracy, classes=subset, miou=miou)


def _class_names(num_classes: int) -> tuple[str, ...]:
    return CLASS_NAMES if num_classes == len(CLASS_NAMES) else tuple(f"class{k}" for k in range(num_classes))


def camvid_matrix() -> ConfusionMatrix:
    """A confusion matrix of CamVid's 11 classes, with a column for void predictions."""
    return ConfusionMatrix(CAMVID_NUM_CLASSES + 1, ignore_index=CAMVID_IGNORE)


def update_camvid(matrix: ConfusionMatrix, pred_train_ids, camvid_labels) -> None:
    """Add predicted train ids (numpy or torch, any shape) against CamVid labels (0..10, 11 void)."""
    matrix.update(train_ids_to_camvid(_as_numpy(pred_train_ids)), _as_numpy(camvid_labels))


def camvid_scores(matrix: ConfusionMatrix) -> SegmentationScores:
    """The 11-class scores of a :func:`camvid_matrix` (the void column counts in no mIoU)."""
    scores = matrix.compute(tuple(range(CAMVID_NUM_CLASSES)))
    return replace(scores, iou=scores.iou[:CAMVID_NUM_CLASSES], names=CAMVID_CLASS_NAMES)


def camvid_from_train_id_matrix(mat) -> ConfusionMatrix:
    """The CamVid matrix of a (19, 19) train-id confusion matrix whose ground truth came from
    CamVid labels (one representative train id per CamVid class, :data:`CAMVID_TO_TRAIN_ID`):
    rows and columns both go through :data:`TRAIN_ID_TO_CAMVID`, so the result equals scoring the
    same pixels with :func:`update_camvid` exactly."""
    from iapc.labels import TRAIN_ID_TO_CAMVID

    matrix = camvid_matrix()
    mat = np.asarray(mat, dtype=np.int64)
    to_camvid = np.minimum(TRAIN_ID_TO_CAMVID[:mat.shape[0]].astype(np.int64), CAMVID_NUM_CLASSES)
    rows, cols = np.nonzero(mat)
    np.add.at(matrix.mat, (to_camvid[rows], to_camvid[cols]), mat[rows, cols])
    matrix.mat[CAMVID_IGNORE, :] = 0  # a void label counts nowhere
    return matrix


def scores_of_matrix(mat, classes: str) -> SegmentationScores:
    """Scores of a train-id confusion matrix over ``classes``: a Cityscapes subset ("19", "16",
    "13") or "camvid11" (the matrix's labels came from CamVid)."""
    if classes == CAMVID11:
        return camvid_scores(camvid_from_train_id_matrix(mat))
    metric = ConfusionMatrix(len(mat))
    metric.mat = np.asarray(mat, dtype=np.int64)
    return metric.compute(classes)


CAMVID11 = "camvid11"  # the class-set name of CamVid's 11 classes, beside CLASS_SUBSETS'


def format_table(scores: SegmentationScores) -> str:
    """A per-class IoU table (percent) followed by the mIoU line, for printing."""
    names = scores.class_names()
    width = max(len(n) for n in names)
    lines = [f"{'class':<{width}}  IoU (%)"]
    for k in scores.classes:
        value = scores.iou[k]
        lines.append(f"{names[k]:<{width}}  {'   n/a' if np.isnan(value) else f'{100 * value:6.2f}'}")
    lines.append(f"{'mIoU':<{width}}  {100 * scores.miou:6.2f}  ({len(scores.classes)} classes)")
    return "\n".join(lines)


# Two-sided 95% quantiles of Student's t by degrees of freedom (a table: the package does not
# depend on scipy); a dof between two entries uses the smaller one's (a wider interval).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 11: 2.201, 15: 2.131, 20: 2.086, 30: 2.042}


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval of ``values`` (runs, seeds or paired
    differences); the half-width is NaN for a single value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    dof = len(values) - 1
    t = T_975.get(dof) or T_975[max(k for k in T_975 if k <= dof)]
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))
