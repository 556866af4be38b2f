"""One entry point for every backend, for tools and checks: :func:`make_runner`.

The inference process does not use it: it serves a store version through
:func:`iapc.engines.targets.serving_runner`, which never builds an engine. Importing this module
imports neither torch nor tensorrt; each runner imports its library in ``activate()``. ``auto``
picks TensorRT when it is installed and a GPU exists, then ONNX Runtime on CUDA, then ONNX
Runtime on the CPU (the embedded default on a machine without a GPU).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from iapc.errors import UserError
from iapc.engines.targets import BACKENDS, resolve_backend
from iapc.engines.runner_base import Runner
from iapc.engines.runner_onnxrt import OnnxRuntimeRunner, ort_cuda_available
from iapc.engines.runner_tensorrt import EngineFromOnnx, TensorRTRunner
from iapc.export.runner_torch import TorchRunner

if TYPE_CHECKING:
    from torch import nn

__all__ = ["BACKENDS", "OnnxRuntimeRunner", "Runner", "TensorRTRunner", "TorchRunner",
           "make_runner", "resolve_backend"]


def make_runner(backend: str = "auto", onnx_path: str | os.PathLike | None = None,
                engine_path: str | os.PathLike | None = None, model: "nn.Module | None" = None,
                threads: int | None = None, confidence: bool = False) -> Runner:
    """A (not yet active) runner for ``backend``.

    tensorrt: ``engine_path``, or ``onnx_path`` to build the engine on activation;
    onnxruntime: ``onnx_path`` (``threads`` = intra-op threads); torch: ``model``.
    """
    backend = resolve_backend(backend)
    if backend == "tensorrt":
        if engine_path is not None:
            return TensorRTRunner(engine_path)
        if onnx_path is None:
            raise UserError("the tensorrt backend needs an engine file or an ONNX file to build one from")
        return TensorRTRunner(EngineFromOnnx(onnx_path))
    if backend == "onnxruntime":
        if onnx_path is None:
            raise UserError("the onnxruntime backend needs an ONNX file: export one with 'iapc export'")
        providers = "auto" if ort_cuda_available() else "cpu"
        return OnnxRuntimeRunner(onnx_path, providers=providers, intra_op_threads=threads)
    if model is None:
        raise UserError("the torch backend needs the model itself: load a checkpoint first")
    return TorchRunner(model, confidence=confidence)
