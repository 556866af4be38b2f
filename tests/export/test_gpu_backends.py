"""TensorRT and CUDA backends. Skipped, with the reason, where TensorRT or a GPU is missing."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch

from iapc.export.onnx_export import export_onnx
from iapc.export.parity import REDUCED_PRECISION_MIN_AGREEMENT, check_parity
from iapc.engines.runner_onnxrt import OnnxRuntimeRunner, ort_cuda_available
from iapc.engines.runner_tensorrt import tensorrt_available
from iapc.export.runners import TorchRunner, make_runner

TRT_OK, TRT_WHY = tensorrt_available()
needs_trt = pytest.mark.skipif(not TRT_OK, reason=f"TensorRT tests need tensorrt and a GPU: {TRT_WHY}")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for PyTorch")


def _shifted(model):
    """The same architecture with different weights (classifier perturbed)."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        torch.manual_seed(7)
        for conv in other.classifier:
            conv.weight.add_(torch.randn_like(conv.weight) * conv.weight.std())
    return other


@pytest.fixture(scope="module")
def engine(tiny_onnx):
    from iapc.engines.runner_tensorrt import EngineFromOnnx

    return EngineFromOnnx(tiny_onnx, fp16=True)()


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
def test_tensorrt_fp16_engine_passes_the_gate(engine, tiny_model, frames):
    from iapc.engines.runner_tensorrt import TensorRTRunner

    report = check_parity(TensorRTRunner(engine), tiny_model, frames, REDUCED_PRECISION_MIN_AGREEMENT)
    assert report.passed, report.message


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
def test_saved_engine_and_timing_cache(tmp_path, tiny_onnx, tiny_model, frames):
    from iapc.engines.runner_tensorrt import EngineFromOnnx, SaveEngine, TensorRTRunner

    cache = tmp_path / "timing.cache"
    SaveEngine(EngineFromOnnx(tiny_onnx, fp16=False, timing_cache=cache), tmp_path / "m.engine")()
    assert cache.stat().st_size > 0
    with TensorRTRunner(tmp_path / "m.engine") as runner:
        out = runner.infer(frames[:1])
    assert out["mask"].shape == (1, 64, 128) and out["mask"].dtype == np.uint8
    assert out["confidence"].dtype == np.uint8
    assert check_parity(TensorRTRunner(tmp_path / "m.engine"), tiny_model, frames).passed


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
def test_refit_standby_engine_with_new_weights(tmp_path, tiny_onnx, tiny_model, frames):
    from iapc.engines.runner_tensorrt import EngineFromOnnx, TensorRTRunner, refit_engine_from_onnx

    standby = EngineFromOnnx(tiny_onnx, fp16=False)()
    new_model = _shifted(tiny_model).eval()
    new_onnx = export_onnx(new_model, tmp_path / "new.onnx", frame_size=(128, 64), confidence=True)
    runner = TensorRTRunner(standby)
    with runner:  # an engine with work in flight is never refitted
        with pytest.raises(RuntimeError, match="standby"):
            refit_engine_from_onnx(standby, new_onnx, fp16=False)
    refit_engine_from_onnx(standby, new_onnx, fp16=False)
    assert check_parity(TensorRTRunner(standby), new_model, frames).passed


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
def test_make_runner_auto_picks_tensorrt(tiny_onnx):
    from iapc.engines.runner_tensorrt import TensorRTRunner

    assert isinstance(make_runner("auto", onnx_path=tiny_onnx), TensorRTRunner)


@pytest.mark.gpu
@pytest.mark.skipif(not (importlib.util.find_spec("onnxruntime") and ort_cuda_available()),
                    reason="needs onnxruntime-gpu with the CUDA provider")
def test_onnxruntime_cuda_with_iobinding(tiny_onnx, tiny_model, frames):
    runner = OnnxRuntimeRunner(tiny_onnx, providers="cuda")
    with runner:
        assert runner.uses_cuda
    assert check_parity(runner, tiny_model, frames).passed


@pytest.mark.gpu
@needs_cuda
def test_torch_runner_on_cuda(tiny_model, frames):
    model = copy.deepcopy(tiny_model).cuda()
    cpu = TorchRunner(tiny_model)
    gpu = TorchRunner(model, device="cuda")
    with cpu, gpu:
        a, b = cpu.infer(frames)["mask"], gpu.infer(frames)["mask"]
    assert (a == b).mean() >= 0.995
