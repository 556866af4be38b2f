"""Cityscapes label tables, taken from ``cityscapesscripts`` (never retyped here).

- ``ID_TO_TRAIN_ID``: uint8 lookup table of 256 entries, label id -> train id (255 = ignore).
- ``CLASS_NAMES`` / ``PALETTE``: the 19 train classes and their RGB colours, by train id.
- ``SYNTHIA16`` / ``SYNTHIA13``: the train ids evaluated for SYNTHIA-trained models (mIoU, mIoU*).
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

IGNORE_INDEX = 255
NUM_CLASSES = 19

_TRAIN_LABELS = sorted((l for l in _CS_LABELS if 0 <= l.trainId < 255), key=lambda l: l.trainId)
assert len(_TRAIN_LABELS) == NUM_CLASSES, "cityscapesscripts changed its train-id table"

CLASS_NAMES: tuple[str, ...] = tuple(l.name for l in _TRAIN_LABELS)
PALETTE: np.ndarray = np.array([l.color for l in _TRAIN_LABELS], dtype=np.uint8)  # (19, 3) RGB
TRAIN_ID_TO_ID: np.ndarray = np.array([l.id for l in _TRAIN_LABELS], dtype=np.uint8)  # (19,)
NAME_TO_TRAIN_ID: dict[str, int] = {n: i for i, n in enumerate(CLASS_NAMES)}
NAME_TO_ID: dict[str, int] = {l.name: l.id for l in _CS_LABELS if l.id >= 0}


def _id_to_train_id_table() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in _CS_LABELS:
        if 0 <= label.id < 256 and 0 <= label.trainId < 255:
            table[label.id] = label.trainId
    return table


ID_TO_TRAIN_ID: np.ndarray = _id_to_train_id_table()

# SYNTHIA has no terrain, truck or train: 16 classes; mIoU* further drops wall, fence and pole.
SYNTHIA16: tuple[int, ...] = tuple(
    NAME_TO_TRAIN_ID[n] for n in CLASS_NAMES if n not in ("terrain", "truck", "train")
)
SYNTHIA13: tuple[int, ...] = tuple(
    i for i in SYNTHIA16 if CLASS_NAMES[i] not in ("wall", "fence", "pole")
)
CLASS_SUBSETS: dict[str, tuple[int, ...]] = {
    "19": tuple(range(NUM_CLASSES)),
    "16": SYNTHIA16,
    "13": SYNTHIA13,
}


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes ``*_labelIds.png`` array (any shape, uint8) to train ids (255 = ignore)."""
    return ID_TO_TRAIN_ID[label_ids]


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """(H, W) train ids -> (H, W, 3) RGB in the Cityscapes palette; ignore is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = PALETTE
    return lut[train_ids]
