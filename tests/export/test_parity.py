"""Parity gate: passes a faithful export, rejects a broken one and says by how much."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch

from iapc.errors import UserError
from iapc.export.onnx_export import export_onnx
from iapc.export.parity import (FP32_MIN_AGREEMENT, REDUCED_PRECISION_MIN_AGREEMENT, _report,
                                check_parity, default_min_agreement, load_frames)
from iapc.engines.runner_onnxrt import OnnxRuntimeRunner


def test_faithful_export_passes(tiny_onnx, tiny_model, frames):
    runner = OnnxRuntimeRunner(tiny_onnx, providers="cpu")
    report = check_parity(runner, tiny_model, frames)
    assert report.passed and report.agreement >= FP32_MIN_AGREEMENT
    assert report.frames == 3 and report.runner_ms > 0
    assert "pixel agreement" in report.message and ">= required 99.50%" in report.message
    assert not runner.is_active  # activated for the check only


def test_export_of_perturbed_weights_is_rejected_with_shortfall(tmp_path, tiny_model, frames):
    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():  # swap the classes' output channels: every class id shifts by one
        for conv in broken.classifier:
            conv.weight.copy_(conv.weight.roll(1, dims=0))
            conv.bias.copy_(conv.bias.roll(1, dims=0))
    path = export_onnx(broken, tmp_path / "broken.onnx", frame_size=(128, 64))
    report = check_parity(OnnxRuntimeRunner(path, providers="cpu"), tiny_model, frames)
    assert not report.passed and report.agreement < 0.9
    short = (FP32_MIN_AGREEMENT - report.agreement) * 100
    assert f"< required 99.50% (short by {short:.2f} points)" in report.message


def test_message_format():
    report = _report(0.971, 0.995, 4, 1.0)
    assert report.message == "pixel agreement 97.10% < required 99.50% (short by 2.40 points)"
    assert not report.passed
    assert default_min_agreement(False) == 0.995 and default_min_agreement(True) == REDUCED_PRECISION_MIN_AGREEMENT


def test_active_runner_stays_active(tiny_onnx, tiny_model, frames):
    with OnnxRuntimeRunner(tiny_onnx, providers="cpu") as runner:
        check_parity(runner, tiny_model, frames[:1])
        assert runner.is_active


def test_load_frames_resizes_recorded_images(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((50, 70, 3), i * 40, np.uint8))
    frames = load_frames(tmp_path, (32, 16), limit=2)
    assert frames.shape == (2, 16, 32, 3) and frames[1].mean() == 40
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        load_frames(tmp_path / "empty", (32, 16))
    with pytest.raises(UserError, match="does not exist"):
        load_frames(tmp_path / "missing", (32, 16))
