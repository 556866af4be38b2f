"""Reading labelled and unlabelled driving images from disk (Cityscapes and GTA5 layouts).

Cityscapes layout::

    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png      (optional)
    ROOT/leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png  (optional)

GTA5 layout: ``ROOT/images/*.png`` with ``ROOT/labels/*.png`` (Cityscapes label ids).

Images are returned as OpenCV reads them, uint8 (H, W, 3) BGR; labels as uint8 (H, W) train ids
(255 = ignore), already mapped with the ``cityscapesscripts`` table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from iapc.labels import IGNORE_INDEX, label_ids_to_train_ids
from iapc.errors import UserError


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path | None  # a *_labelIds.png, or None for unlabelled frames
    name: str  # e.g. "aachen_000001_000019"


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


def find_samples(root: str | os.PathLike, split: str = "train") -> list[Sample]:
    """Cityscapes layout if ``root/leftImg8bit`` exists, else GTA5 layout."""
    root = Path(root)
    if (root / "leftImg8bit").is_dir():
        return find_cityscapes(root, split)
    if (root / "images").is_dir():
        return find_gta5(root)
    raise UserError(f"{root} is neither a Cityscapes-layout (leftImg8bit/) nor a GTA5-layout "
                    "(images/, labels/) root")


def read_image_bgr(path: str | os.PathLike) -> np.ndarray:
    """uint8 (H, W, 3) BGR; a :class:`UserError` names the file if it cannot be decoded."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read image {path}: is it a valid PNG/JPEG?")
    return image


def read_train_ids(path: str | os.PathLike) -> np.ndarray:
    """uint8 (H, W) train ids from a Cityscapes ``*_labelIds.png``."""
    label_ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label_ids is None or label_ids.ndim != 2:
        raise UserError(f"cannot read label map {path}: expected a single-channel labelIds PNG")
    return label_ids_to_train_ids(label_ids)


def load_sample(sample: Sample, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image BGR (H, W, 3), train ids (H, W)); resized to ``size`` = (width, height) if given.

    Images resize bilinearly, labels by nearest neighbour; an unlabelled sample gets all-255.
    """
    image = read_image_bgr(sample.image)
    if sample.label is not None:
        label = read_train_ids(sample.label)
    else:
        label = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
    if size is not None and (image.shape[1], image.shape[0]) != tuple(size):
        image = cv2.resize(image, tuple(size), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, tuple(size), interpolation=cv2.INTER_NEAREST)
    return image, label


class SegmentationDataset:
    """A ``torch.utils.data.Dataset`` of ``(image BGR uint8 (H, W, 3), train ids uint8 (H, W))``
    numpy pairs; batch them with the default collate and convert with
    :func:`iapc.adapt.preprocessing.camera_to_rgb`."""

    def __init__(self, samples: list[Sample], size: tuple[int, int] | None = None):
        self.samples = samples
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return load_sample(self.samples[index], self.size)
