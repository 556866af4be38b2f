"""ONNX export: checker, metadata, in-graph preprocessing, ORT == PyTorch for every model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from iapc.adapt.models import MODELS, build_model
from iapc.errors import UserError
from iapc.export.onnx_export import (SegmentationGraph, export_onnx, importance_uint8,
                                     read_metadata)
from iapc.export.parity import check_parity
from iapc.synth import sample_frames
from iapc.engines.runner_onnxrt import OnnxRuntimeRunner

SMALL = (64, 64)
_LARGE = pytest.mark.slow  # ResNet backbones: a few seconds each even at 64x64


@pytest.mark.parametrize("name", [
    "tiny",
    "small",
    "espnetv2",
    pytest.param("deeplabv3_mobilenet_v3_large", marks=_LARGE),
    pytest.param("deeplabv3_resnet50", marks=_LARGE),
    pytest.param("deeplabv2_resnet101", marks=_LARGE),
])
def test_every_registered_model_exports_and_matches_pytorch(tmp_path, name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=19).eval()
    path = export_onnx(model, tmp_path / f"{name}.onnx", frame_size=SMALL, model_name=name)
    onnx.checker.check_model(onnx.load(str(path)))
    report = check_parity(OnnxRuntimeRunner(path), model, sample_frames(2, SMALL), 0.995)
    assert report.passed, report.message
    assert report.agreement >= 0.995


def test_registry_is_covered():
    assert set(MODELS) == {"tiny", "small", "espnetv2", "deeplabv3_mobilenet_v3_large",
                           "deeplabv3_resnet50", "deeplabv2_resnet101"}


def test_graph_io_and_metadata(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    (graph_input,) = model.graph.input
    assert graph_input.name == "frames"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [1, 64, 128, 3]
    assert [o.name for o in model.graph.output] == ["mask", "confidence"]
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.UINT8 for o in model.graph.output)
    meta = read_metadata(tiny_onnx)
    assert (meta.model, meta.num_classes, meta.frame_width, meta.frame_height) == ("tiny", 19, 128, 64)
    assert meta.input_name == "frames" and meta.output_names == ("mask", "confidence")
    assert meta.preprocessing["channel_order"] == "RGB" and meta.preprocessing["scale"] == pytest.approx(1 / 255)


def _reference_masks(model, frames: np.ndarray) -> np.ndarray:
    """Preprocessing written out independently in numpy: BGR->RGB, /255, ImageNet mean/std."""
    rgb = frames[..., ::-1].astype(np.float32) / 255.0
    x = (rgb - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        logits, _ = model(x)
        logits = F.interpolate(logits, size=frames.shape[1:3], mode="bilinear", align_corners=True)
    return logits.argmax(1).numpy().astype(np.uint8), logits


def test_in_graph_preprocessing_matches_the_training_definition(tiny_onnx, tiny_model, frames):
    expected, logits = _reference_masks(tiny_model, frames)
    with OnnxRuntimeRunner(tiny_onnx) as runner:
        got = [runner.infer(frames[i:i + 1]) for i in range(len(frames))]
    masks = np.concatenate([g["mask"] for g in got])
    assert masks.shape == (3, 64, 128) and masks.dtype == np.uint8
    assert (masks == expected).mean() >= 0.999
    confidence = np.concatenate([g["confidence"] for g in got]).astype(int)
    assert np.abs(confidence - importance_uint8(logits).numpy().astype(int)).max() <= 1


def test_importance_is_one_minus_ratio_of_top_two_probabilities():
    probs = torch.tensor([0.8, 0.2, 0.0001]).view(1, 3, 1, 1)
    assert importance_uint8(probs.log()).item() == round(255 * (1 - 0.2 / 0.8))  # 191
    tie = torch.zeros(1, 4, 2, 2)
    assert importance_uint8(tie).eq(0).all()


def test_dynamic_batch(tmp_path, tiny_model, frames):
    path = export_onnx(tiny_model, tmp_path / "dyn.onnx", frame_size=(128, 64), dynamic_batch=True)
    assert read_metadata(path).batch is None
    with OnnxRuntimeRunner(path) as runner:
        batched = runner.infer(frames)["mask"]
        single = np.concatenate([runner.infer(frames[i:i + 1])["mask"] for i in range(len(frames))])
    assert batched.shape == (3, 64, 128)
    np.testing.assert_array_equal(batched, single)


def test_export_restores_training_mode(tmp_path):
    model = build_model("tiny").train()
    export_onnx(model, tmp_path / "t.onnx", frame_size=(64, 32))
    assert model.training


def test_segmentation_graph_out_size():
    graph = SegmentationGraph(build_model("tiny").eval(), out_size=(16, 24))
    mask = graph(torch.zeros(2, 32, 64, 3, dtype=torch.uint8))
    assert mask.shape == (2, 16, 24) and mask.dtype == torch.uint8


def test_read_metadata_of_foreign_onnx(tmp_path):
    model = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    with pytest.raises(UserError, match="iapc export"):
        read_metadata(tmp_path / "foreign.onnx")
