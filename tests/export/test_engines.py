"""The engine that is served is the one that was built, gated and stored (iapc.engines.targets):
deploy builds the target's engine, the parity gate runs that engine, the manifest names the
target, and a version built for another target is never served. On the CPU the reduced-precision
engine is ONNX Runtime's fp16 stand-in (weights stored in fp16); an engine whose masks disagree
with PyTorch's is rejected before it reaches the store."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from support import disagreeing_fp16

from iapc.errors import UserError
from iapc.engines import targets as engines
from iapc.export.deploy import Candidate, DeployOptions, deploy
from iapc.engines.targets import EngineTarget, misfit, serving_runner
from iapc.export.onnx_export import export_onnx
from iapc.export.parity import REDUCED_PRECISION_MIN_AGREEMENT, min_agreement_for
from iapc.engines.runner_onnxrt import OnnxRuntimeRunner
from iapc.engines.store import EngineStore

FP32 = EngineTarget("onnxruntime", "fp32", "cpu")
FP16 = EngineTarget("onnxruntime", "fp16", "cpu")


def _deploy(tmp_path, model, frames, target, min_agreement=None):
    store = EngineStore(tmp_path / "store")
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    bound = min_agreement or min_agreement_for(0.995, target.reduced_precision)
    options = DeployOptions(frame_size=(128, 64), min_agreement=bound, target=target)
    candidate = Candidate(model, model="tiny", num_classes=19, method="none", step=0, config={})
    return store, deploy(candidate, store, frames, options, work)


def test_the_fp16_stand_in_engine_is_gated_and_stored_with_its_target(tmp_path, tiny_model,
                                                                        frames):
    store, result = _deploy(tmp_path, tiny_model, frames, FP16)
    assert result.rejected_by is None, result.reason
    assert result.parity.min_agreement == REDUCED_PRECISION_MIN_AGREEMENT  # the stated fp16 bound
    version = store.current()
    manifest = version.manifest
    assert (manifest["backend"], manifest["precision"], manifest["device"]) == \
        ("onnxruntime", "fp16", "cpu")
    assert manifest["parity"]["agreement"] >= REDUCED_PRECISION_MIN_AGREEMENT
    # the stored file is the converted one the gate ran: fp16 weights
    stored = onnx.load(str(version.onnx_path))
    kinds = {init.data_type for init in stored.graph.initializer}
    assert TensorProto.FLOAT16 in kinds and TensorProto.FLOAT not in kinds
    with serving_runner(version, FP16, threads=1) as runner:
        assert runner.infer(frames[:1])["mask"].shape == (1, 64, 128)


def test_an_engine_whose_masks_disagree_is_rejected_and_nothing_is_stored(
        tmp_path, tiny_model, frames, monkeypatch):
    monkeypatch.setattr(engines, "cast_weights_to_fp16", disagreeing_fp16)
    store, result = _deploy(tmp_path, tiny_model, frames, FP16)
    assert result.rejected_by == "parity" and result.version is None
    assert result.parity.agreement < REDUCED_PRECISION_MIN_AGREEMENT
    assert "short by" in result.reason
    assert store.current() is None and store.versions() == []


def test_the_honest_fp16_cast_keeps_every_weight_within_fp16_rounding(tmp_path, tiny_onnx):
    converted = engines.cast_weights_to_fp16(tiny_onnx, tmp_path / "half.onnx")
    original = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tiny_onnx)).graph.initializer
                if i.data_type == TensorProto.FLOAT}
    half = {i.name.removesuffix("_fp16"): numpy_helper.to_array(i)
            for i in onnx.load(str(converted)).graph.initializer}
    assert original and set(original) <= set(half)
    for name, value in original.items():
        np.testing.assert_allclose(half[name].astype(np.float32), value, rtol=1e-3, atol=1e-4)
    with OnnxRuntimeRunner(converted, providers="cpu") as runner:  # a valid graph
        runner.infer(np.zeros((1, 64, 128, 3), np.uint8))


def test_a_version_built_for_another_target_is_never_served(tmp_path, tiny_onnx):
    store = EngineStore(tmp_path / "store")
    plain = store.publish(tiny_onnx)  # by hand: no target, a plain ONNX file
    half = store.publish(tiny_onnx, manifest_extra=FP16.manifest_fields())
    tensorrt = EngineTarget("tensorrt", "fp16", "NVIDIA Orin sm_87, TensorRT 10.3.0")
    assert misfit(plain.manifest, FP32) is None
    assert misfit(plain.manifest, FP16) is not None
    assert "built for onnxruntime fp16 on cpu, this runtime serves onnxruntime fp32 on cpu" == \
        misfit(half.manifest, FP32)
    assert misfit(half.manifest, FP16) is None
    assert misfit(half.manifest, EngineTarget("onnxruntime", "fp16", "cuda")) is not None
    with pytest.raises(UserError, match="built for onnxruntime fp16 on cpu"):
        serving_runner(half, FP32)
    with pytest.raises(UserError, match="built for onnxruntime fp32, this runtime serves tensorrt"):
        serving_runner(plain, tensorrt)
    foreign = store.publish(tiny_onnx, manifest_extra=tensorrt.manifest_fields())
    with pytest.raises(UserError, match="holds no TensorRT engine"):
        serving_runner(foreign, tensorrt)  # never built in the inference process
    assert isinstance(serving_runner(plain, FP32), OnnxRuntimeRunner)


def test_targets_name_backend_precision_and_device():
    target = engines.engine_target("onnxruntime")
    assert target == EngineTarget("onnxruntime", "fp32", target.device)
    assert target.device in ("cpu", "cuda")
    assert engines.engine_target("onnxruntime", "fp16").reduced_precision
    assert EngineTarget("tensorrt", "fp16", "NVIDIA Orin sm_87, TensorRT 10.3.0").key() == \
        "tensorrt-fp16-NVIDIA_Orin_sm_87_TensorRT_10.3.0"
    with pytest.raises(UserError, match="builds no engine"):
        engines.engine_target("torch")
    with pytest.raises(UserError, match="unknown precision 'int8'"):
        engines.engine_target("onnxruntime", "int8")


def test_export_cli_stores_the_target(tmp_path, tiny_model, capsys):
    from iapc.adapt.checkpoint import save_checkpoint
    from iapc.cli import _main

    checkpoint = tmp_path / "tiny.pth"
    save_checkpoint(checkpoint, "tiny", tiny_model)
    assert _main(["export", "--checkpoint", str(checkpoint), "--store", str(tmp_path / "s"),
                  "--input-size", "128x64", "--backend", "onnxruntime", "--precision", "fp16"]) == 0
    assert "onnxruntime fp16 on cpu" in capsys.readouterr().out
    manifest = EngineStore(tmp_path / "s").current().manifest
    assert manifest["precision"] == "fp16" and manifest["parity"]["min_agreement"] == 0.99


def test_export_onnx_fixture_still_plain(tiny_model, tmp_path):
    """The exported graph itself stays fp32: conversion is the engine build's job."""
    path = export_onnx(tiny_model, tmp_path / "m.onnx", frame_size=(128, 64))
    assert all(i.data_type != TensorProto.FLOAT16 for i in onnx.load(str(path)).graph.initializer)
