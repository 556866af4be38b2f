"""Synthetic domains on disk, in the Cityscapes layout (``leftImg8bit``, ``gtFine``,
``leftImg8bit_sequence``) plus ``synth_config.json``, the settings they were made with."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from iapc.errors import UserError
from iapc.labels import colorize, label_ids_to_train_ids
from iapc.synth.layout import ANNOTATED_FRAME, SEQUENCE_FPS, SEQUENCE_LENGTH, sample_layout, scene_key, scene_rng
from iapc.synth.rendering import check_size, render_scene
from iapc.synth.styles import DomainStyle, get_domain

def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise UserError(f"cannot write {path}: check that the output folder is writable")


def _gt_folder(root: Path, split: str, name: str) -> Path:
    return root / "gtFine" / split / name.split("_")[0]  # the city is the name's first part


def _write_label_ids(root: Path, split: str, name: str, label: np.ndarray) -> None:
    _write_png(_gt_folder(root, split, name) / f"{name}_gtFine_labelIds.png", label)


def _write_labelled(root: Path, split: str, name: str, image: np.ndarray, label: np.ndarray) -> None:
    city = name.split("_")[0]
    _write_png(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", image)
    _write_label_ids(root, split, name, label)
    color_rgb = colorize(label_ids_to_train_ids(label))
    _write_png(_gt_folder(root, split, name) / f"{name}_gtFine_color.png", color_rgb[..., ::-1])


def labelled_sequence_frames(label_every: int | None) -> set[int]:
    """The sequence frames that get a gtFine label: the annotated one (Cityscapes), and with
    ``label_every`` = k every k-th frame either side of it (k = 5: frames 4, 9, 14, 19, 24, 29)."""
    if label_every is None:
        return {ANNOTATED_FRAME}
    return {f for f in range(SEQUENCE_LENGTH) if (f - ANNOTATED_FRAME) % label_every == 0}


def _write_scene(root: Path, style: DomainStyle, domain: str, split: str, index: int,
                size: tuple[int, int], with_sequence: bool, seed: int,
                label_every: int | None = None) -> None:
    """Write scene ``index`` of ``split``: its annotated frame (the 20th of its sequence) and,
    if ``with_sequence``, all 30 frames under ``leftImg8bit_sequence``, with gtFine labels for
    the frames of :func:`labelled_sequence_frames` (only frame 19 is under ``leftImg8bit``)."""
    rng = scene_rng(seed, domain, split, index)
    layout = sample_layout(rng, style)
    frames = range(SEQUENCE_LENGTH) if with_sequence else [ANNOTATED_FRAME]
    extra_labels = labelled_sequence_frames(label_every) - {ANNOTATED_FRAME} if with_sequence else set()
    for frame in frames:
        # per-frame effects (noise, rain) drawn from the scene's key and the frame number
        frame_rng = np.random.default_rng(scene_key(seed, domain, split, index) + [1 + frame])
        image, label = render_scene(frame_rng, style, size, frame / SEQUENCE_FPS, layout)
        name = f"{style.city}_{index:06d}_{frame:06d}"
        if with_sequence:
            _write_png(root / "leftImg8bit_sequence" / split / style.city
                       / f"{name}_leftImg8bit.png", image)
        if frame == ANNOTATED_FRAME:
            _write_labelled(root, split, name, image, label)
        elif frame in extra_labels:
            _write_label_ids(root, split, name, label)


def _write_config(root: Path, domain: str, style: DomainStyle, split_sizes: dict[str, int],
                  size: tuple[int, int], sequences: int, seed: int,
                  label_every: int | None) -> None:
    """``root/synth_config.json``: everything needed to regenerate the tree."""
    config = {"domain": domain, "seed": seed, "size": list(size), "split_sizes": split_sizes,
              "sequences": sequences, "label_every": label_every, "style": asdict(style)}
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / "synth_config.json").write_text(json.dumps(config, indent=1))
    except OSError as err:
        raise UserError(f"cannot write {root}: {err.strerror}; choose a writable output folder")


def write_domain(root: str | os.PathLike, domain: str, split_sizes: dict[str, int] | None = None,
                 size: tuple[int, int] = (256, 128), sequences: int = 0, seed: int = 0,
                 progress=None, label_every: int | None = None) -> int:
    """Write ``domain`` under ``root`` in the Cityscapes layout (plus ``synth_config.json``, the
    settings and style it was made with); returns the number of images written.

    ``split_sizes`` maps split -> number of annotated frames (default train 100, val 20).
    The first ``sequences`` scenes of each split (all of them if the split is smaller) also get
    their 30-frame ``leftImg8bit_sequence`` snippet, the annotated frame being frame 19;
    ``label_every`` = k also labels every k-th snippet frame around it (denser scoring of
    replays; Cityscapes itself labels only frame 19).
    A scene is the same whatever ``sequences`` is: it depends only on (seed, domain, split, index).
    ``progress``: optional callable(n) told after each scene (e.g. a tqdm bar's ``update``).
    """
    style = get_domain(domain)
    check_size(size)
    split_sizes = {"train": 100, "val": 20} if split_sizes is None else split_sizes
    if any(n < 0 for n in split_sizes.values()) or sequences < 0:
        raise UserError("split sizes and --sequences must be zero or positive")
    if label_every is not None and label_every < 1:
        raise UserError("--label-every must be a positive number of frames")
    root = Path(root)
    _write_config(root, domain, style, split_sizes, size, sequences, seed, label_every)
    written = 0
    for split, count in split_sizes.items():
        for index in range(count):
            with_sequence = index < sequences
            _write_scene(root, style, domain, split, index, size, with_sequence, seed, label_every)
            written += SEQUENCE_LENGTH + 1 if with_sequence else 1
            if progress is not None:
                progress(1)
    return written
