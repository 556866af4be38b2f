"""The parity gate: an engine is published only if its masks agree with PyTorch's.

The reference is the PyTorch model run through the very graph that was exported
(:class:`~iapc.export.onnx_export.SegmentationGraph`), so the comparison covers pre- and
post-processing as well as the network. Frames come from a folder of recorded images or, when
none are given, from :func:`iapc.synth.sample_frames` (the synthetic driving world).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from iapc.errors import UserError
from iapc.engines.runner_base import Runner, check_frames
from iapc.export.runner_torch import TorchRunner

if TYPE_CHECKING:
    from torch import nn

FP32_MIN_AGREEMENT = 0.995
REDUCED_PRECISION_MIN_AGREEMENT = 0.99  # fp16 engines flip a few boundary pixels
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class ParityReport:
    agreement: float  # fraction of pixels whose class ids are equal, 0..1
    passed: bool
    min_agreement: float
    frames: int
    message: str
    runner_ms: float = 0.0  # median per-frame latency of the runner under test


def default_min_agreement(reduced_precision: bool) -> float:
    return REDUCED_PRECISION_MIN_AGREEMENT if reduced_precision else FP32_MIN_AGREEMENT


def min_agreement_for(configured: float, reduced_precision: bool) -> float:
    """The bound an engine must meet: ``configured``, and for a reduced-precision (fp16) engine
    at most :data:`REDUCED_PRECISION_MIN_AGREEMENT` (fp16 flips a few boundary pixels)."""
    return min(configured, REDUCED_PRECISION_MIN_AGREEMENT) if reduced_precision else configured


def _report(agreement: float, min_agreement: float, frames: int, runner_ms: float) -> ParityReport:
    passed = agreement >= min_agreement
    if passed:
        message = f"pixel agreement {agreement:.2%} >= required {min_agreement:.2%}"
    else:
        short = (min_agreement - agreement) * 100
        message = (f"pixel agreement {agreement:.2%} < required {min_agreement:.2%} "
                   f"(short by {short:.2f} points)")
    return ParityReport(agreement, passed, min_agreement, frames, message, runner_ms)


def _masks(runner: Runner, frames: np.ndarray) -> tuple[list[np.ndarray], float]:
    """One frame at a time, so engines built for batch 1 work too.

    Returns the uint8 (H, W) masks and the median latency in ms.
    """
    masks, times = [], []
    for i in range(len(frames)):
        masks.append(runner.infer(frames[i:i + 1])["mask"][0])
        times.append(runner.last_inference_time)
    return masks, float(np.median(times)) * 1000.0


@dataclass(frozen=True)
class MaskComparison:
    """PyTorch's masks and a runner's on the same frames."""

    expected: list[np.ndarray]  # PyTorch's uint8 (H, W) masks
    got: list[np.ndarray]  # the runner's
    runner_ms: float  # median per-frame latency of the runner

    @property
    def agreement(self) -> float:
        """Fraction of pixels whose class ids are equal, 0..1."""
        equal = sum(int((a == b).sum()) for a, b in zip(self.expected, self.got))
        return equal / sum(a.size for a in self.expected)


def compare_masks(runner: Runner, model: "nn.Module",
                  frames: np.ndarray | Iterable[np.ndarray]) -> MaskComparison:
    """``runner``'s masks and PyTorch's on ``frames`` (uint8 (N, H, W, 3) BGR); ``runner`` is
    activated (and deactivated afterwards) if it is not active yet."""
    frames = frames if isinstance(frames, np.ndarray) else np.stack(list(frames))
    check_frames(frames)
    if len(frames) == 0:
        raise UserError("the parity gate needs at least one frame")
    with TorchRunner(model) as reference:
        expected, _ = _masks(reference, frames)
    was_active = runner.is_active
    runner.activate()
    try:
        got, runner_ms = _masks(runner, frames)
    finally:
        if not was_active:
            runner.deactivate()
    return MaskComparison(expected, got, runner_ms)


def check_parity(runner: Runner, model: "nn.Module", frames: np.ndarray | Iterable[np.ndarray],
                 min_agreement: float = FP32_MIN_AGREEMENT) -> ParityReport:
    """Compare ``runner``'s masks with PyTorch's on ``frames`` (uint8 (N, H, W, 3) BGR).

    ``runner`` is activated (and deactivated afterwards) if it is not active yet.
    """
    comparison = compare_masks(runner, model, frames)
    return _report(comparison.agreement, min_agreement, len(comparison.expected),
                   comparison.runner_ms)


def load_frames(folder: str | os.PathLike, frame_size: tuple[int, int], limit: int = 8) -> np.ndarray:
    """Up to ``limit`` images under ``folder`` (sorted), resized to (W, H): uint8 (N, H, W, 3) BGR."""
    import cv2

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"frames folder {folder} does not exist: give a folder of recorded images "
                        "or 'synthetic'")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    frames = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # (h, w, 3) BGR
        if image is None:
            raise UserError(f"{path} could not be read as an image")
        frames.append(cv2.resize(image, frame_size, interpolation=cv2.INTER_AREA))
    return np.stack(frames)
