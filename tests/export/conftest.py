"""Shared fixtures: a seeded tiny model and its ONNX export at a small frame size."""

from __future__ import annotations

import pytest
import torch

from iapc.adapt.models import build_model
from iapc.export.onnx_export import export_onnx
from iapc.synth import sample_frames

FRAME_SIZE = (128, 64)  # (W, H)


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    return build_model("tiny", num_classes=19).eval()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_model):
    """Exported with the confidence output, batch 1, 128x64."""
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return export_onnx(tiny_model, path, frame_size=FRAME_SIZE, confidence=True, model_name="tiny")


@pytest.fixture(scope="session")
def frames():
    """uint8 (3, 64, 128, 3) BGR street-like frames."""
    return sample_frames(3, FRAME_SIZE, seed=1)
