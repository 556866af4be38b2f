"""The interface every inference backend shares (after Polygraphy's ``BaseRunner``).

A runner touches no GPU and imports no heavy library until :meth:`Runner.activate`; the public
methods do the guards and the timing, subclasses implement the ``*_impl`` methods.

``infer`` takes camera frames, uint8 (N, H, W, 3) BGR, and returns
``{"mask": uint8 (N, H, W)}`` plus ``"confidence": uint8 (N, H, W)`` when the graph has it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from iapc.errors import UserError


class Runner:
    """Base class: ``with runner: runner.infer(frames)``."""

    def __init__(self, name: str):
        self.name = name
        self.is_active = False
        self.last_inference_time: float | None = None  # seconds, of the latest infer()

    # Public API: guards and timing --------------------------------------------------------
    def activate(self) -> None:
        """Load the model/engine and allocate what inference needs (may be slow)."""
        if self.is_active:
            return  # idempotent, so a runner shared by several `with` blocks stays valid
        self.activate_impl()
        self.is_active = True

    def infer(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (N, H, W, 3) BGR frames -> {"mask": uint8 (N, H, W), ["confidence": ...]}."""
        if not self.is_active:
            raise RuntimeError(f"{self.name} is not active: call activate() or use 'with runner:'")
        check_frames(frames)
        start = time.perf_counter()
        outputs = self.infer_impl(frames)
        self.last_inference_time = time.perf_counter() - start
        return outputs

    def deactivate(self) -> None:
        """Release the engine and its memory; the runner can be activated again."""
        if not self.is_active:
            return
        try:
            self.deactivate_impl()
        finally:
            self.is_active = False

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    # To implement ---------------------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError


def check_frames(frames: Any) -> None:
    """Raise a :class:`UserError` unless ``frames`` is a uint8 (N, H, W, 3) numpy array."""
    if not isinstance(frames, np.ndarray):
        raise UserError(f"frames must be a numpy array, got {type(frames).__name__}: "
                        "pass uint8 (N, H, W, 3) BGR frames as OpenCV reads them")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise UserError(f"frames must be uint8 (N, H, W, 3) BGR, got {frames.dtype} "
                        f"{tuple(frames.shape)}: stack frames with np.stack and keep uint8")
