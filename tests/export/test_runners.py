"""Runners: shared interface, guards, lazy imports, backend selection."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from iapc.errors import UserError
from iapc.engines.runner_onnxrt import OnnxRuntimeRunner, ort_cuda_available
from iapc.engines.runner_tensorrt import tensorrt_available
from iapc.export.runners import TorchRunner, make_runner, resolve_backend

TRT_OK, TRT_WHY = tensorrt_available()


def test_importing_runners_pulls_in_no_heavy_library():
    code = ("import sys, iapc.export.runners, iapc.engines.store, iapc.engines.runner_tensorrt; "
            "print(sorted(m for m in ('torch', 'tensorrt', 'onnxruntime', 'cuda') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_onnxruntime_runner_lifecycle_and_outputs(tiny_onnx, frames):
    runner = OnnxRuntimeRunner(tiny_onnx, providers="cpu", intra_op_threads=1, inter_op_threads=1)
    assert not runner.is_active and runner.last_inference_time is None
    with pytest.raises(RuntimeError, match="activate"):
        runner.infer(frames[:1])
    with runner:
        assert runner.is_active and not runner.uses_cuda
        assert runner.session.get_session_options().intra_op_num_threads == 1
        assert '"model": "tiny"' in runner.metadata["iapc"]
        out = runner.infer(frames[:1])
        assert runner.last_inference_time > 0
    assert not runner.is_active and runner.session is None
    assert set(out) == {"mask", "confidence"}
    assert out["mask"].shape == (1, 64, 128) and out["mask"].dtype == np.uint8
    assert out["mask"].max() < 19
    runner.activate()  # a runner can be activated again
    runner.activate()  # and activating twice is harmless
    runner.deactivate()


def test_bad_frames_are_user_errors(tiny_onnx, frames):
    with OnnxRuntimeRunner(tiny_onnx, providers="cpu") as runner:
        with pytest.raises(UserError, match="uint8"):
            runner.infer(frames[:1].astype(np.float32))
        with pytest.raises(UserError, match=r"\(N, H, W, 3\)"):
            runner.infer(frames[0])
        with pytest.raises(UserError, match="re-export with --input-size"):
            runner.infer(np.zeros((1, 32, 128, 3), np.uint8))
    with pytest.raises(UserError, match="does not exist"):
        OnnxRuntimeRunner("missing.onnx").activate()


def test_torch_runner_equals_onnxruntime(tiny_onnx, tiny_model, frames):
    with TorchRunner(tiny_model, confidence=True) as torch_runner, \
            OnnxRuntimeRunner(tiny_onnx, providers="cpu") as ort_runner:
        for i in range(len(frames)):
            a, b = torch_runner.infer(frames[i:i + 1]), ort_runner.infer(frames[i:i + 1])
            assert (a["mask"] == b["mask"]).mean() >= 0.999
            assert np.abs(a["confidence"].astype(int) - b["confidence"].astype(int)).max() <= 1


def test_torch_runner_restores_training_mode(tiny_model):
    tiny_model.train()
    try:
        with TorchRunner(tiny_model):
            assert not tiny_model.training
        assert tiny_model.training
    finally:
        tiny_model.eval()


@pytest.mark.skipif(TRT_OK, reason="TensorRT is available here: auto picks it")
def test_make_runner_auto_without_tensorrt_uses_onnxruntime(tiny_onnx):
    assert resolve_backend("auto") == "onnxruntime"
    assert isinstance(make_runner("auto", onnx_path=tiny_onnx), OnnxRuntimeRunner)
    with pytest.raises(UserError, match="--backend tensorrt needs the tensorrt package.*use --backend onnxruntime"):
        make_runner("tensorrt", onnx_path=tiny_onnx)


def test_make_runner_errors_and_choices(tiny_onnx, tiny_model):
    with pytest.raises(UserError, match="unknown backend 'tflite'"):
        make_runner("tflite", onnx_path=tiny_onnx)
    with pytest.raises(UserError, match="needs an ONNX file"):
        make_runner("onnxruntime")
    with pytest.raises(UserError, match="needs the model"):
        make_runner("torch", onnx_path=tiny_onnx)
    runner = make_runner("onnxruntime", onnx_path=tiny_onnx, threads=1)
    assert isinstance(runner, OnnxRuntimeRunner) and runner.options.intra_op_threads == 1
    assert isinstance(make_runner("torch", model=tiny_model), TorchRunner)


@pytest.mark.skipif(ort_cuda_available(), reason="the ONNX Runtime CUDA provider is present here")
def test_cuda_provider_request_without_cuda_is_a_user_error(tiny_onnx):
    with pytest.raises(UserError, match="install onnxruntime-gpu"):
        OnnxRuntimeRunner(tiny_onnx, providers="cuda").activate()
