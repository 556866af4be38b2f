"""PyTorch runner: the same graph as the export, in eager mode (development and comparison)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from iapc.engines.runner_base import Runner

if TYPE_CHECKING:  # torch is imported in activate_impl only
    from torch import nn


class TorchRunner(Runner):
    """Runs :class:`~iapc.export.onnx_export.SegmentationGraph` around ``model``.

    ``device`` None: the device the model's parameters are on.
    """

    def __init__(self, model: "nn.Module", confidence: bool = False, device: str | None = None):
        super().__init__(name=f"torch:{type(model).__name__}")
        self.model = model
        self.confidence = confidence
        self.device = device
        self._graph = None
        self._torch = None

    def activate_impl(self) -> None:
        import torch

        from iapc.export.onnx_export import SegmentationGraph

        device = self.device or next(self.model.parameters()).device
        self._was_training = self.model.training  # restored on deactivate
        self._graph = SegmentationGraph(self.model, confidence=self.confidence).to(device).eval()
        self._device = torch.device(device)
        self._torch = torch

    def infer_impl(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(frames)).to(self._device)  # (N, H, W, 3) uint8
            out = self._graph(x)
        # .cpu() is a CPU-GPU sync point on CUDA
        if self.confidence:
            mask, confidence = out
            return {"mask": mask.cpu().numpy(), "confidence": confidence.cpu().numpy()}
        return {"mask": out.cpu().numpy()}

    def deactivate_impl(self) -> None:
        self._graph = None
        self.model.train(self._was_training)
