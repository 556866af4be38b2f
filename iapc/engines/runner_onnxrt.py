"""ONNX Runtime runner: CUDA execution provider with IOBinding when available, else the CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from iapc.errors import UserError
from iapc.engines.runner_base import Runner


@dataclass(frozen=True)
class OrtOptions:
    """Session settings; ``None`` lets ONNX Runtime choose."""

    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    # Idle worker threads spin by default, burning CPU the adaptation process (and anything
    # measured beside them) needs; off unless asked for.
    allow_spinning: bool = False


def ort_cuda_available() -> bool:
    """Whether onnxruntime-gpu with a usable CUDA provider is installed."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def resolve_providers(providers: str | Sequence[str]) -> list[str]:
    """``"auto"`` -> CUDA then CPU if present; ``"cpu"``/``"cuda"`` -> that one (CPU as fallback)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if not isinstance(providers, str):
        missing = [p for p in providers if p not in available]
        if missing:
            raise UserError(f"ONNX Runtime providers {missing} are not available "
                            f"(have {available}): install onnxruntime-gpu or use 'cpu'")
        return list(providers)
    if providers == "auto":
        return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + \
            ["CPUExecutionProvider"]
    if providers == "cpu":
        return ["CPUExecutionProvider"]
    if providers == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise UserError("the ONNX Runtime CUDA provider is not available: install "
                            "onnxruntime-gpu on a machine with an NVIDIA GPU, or use 'cpu'")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise UserError(f"unknown providers {providers!r}: use auto, cpu, cuda or a list")


def session_options(options: OrtOptions):
    """Full graph optimisation, sequential execution, the requested thread counts."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if options.intra_op_threads is not None:
        so.intra_op_num_threads = int(options.intra_op_threads)
    if options.inter_op_threads is not None:
        so.inter_op_num_threads = int(options.inter_op_threads)
    spinning = "1" if options.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    so.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    return so


class OnnxRuntimeRunner(Runner):
    """Runs an exported graph (see :mod:`iapc.export.onnx_export`) with ONNX Runtime."""

    def __init__(self, onnx_path: str | os.PathLike, providers: str | Sequence[str] = "auto",
                 intra_op_threads: int | None = None, inter_op_threads: int | None = None):
        super().__init__(name=f"onnxruntime:{Path(onnx_path).name}")
        self.onnx_path = Path(onnx_path)
        self.providers = providers
        self.options = OrtOptions(intra_op_threads, inter_op_threads)
        self.session = None
        self.uses_cuda = False
        self._input_name = ""
        self._input_shape: list[int | str | None] = []
        self._output_names: list[str] = []

    def activate_impl(self) -> None:
        import onnxruntime as ort

        if not self.onnx_path.is_file():
            raise UserError(f"ONNX file {self.onnx_path} does not exist: export one with 'iapc export'")
        providers = resolve_providers(self.providers)
        self.session = ort.InferenceSession(str(self.onnx_path), sess_options=session_options(self.options),
                                            providers=providers)
        self.uses_cuda = "CUDAExecutionProvider" in self.session.get_providers()
        (graph_input,) = self.session.get_inputs()
        self._input_name, self._input_shape = graph_input.name, list(graph_input.shape)
        self._output_names = [o.name for o in self.session.get_outputs()]

    @property
    def metadata(self) -> dict[str, str]:
        """The ONNX file's custom metadata (``"iapc"`` holds the JSON GraphMetadata)."""
        return dict(self.session.get_modelmeta().custom_metadata_map) if self.session else {}

    def _check_shape(self, frames: np.ndarray) -> None:
        for axis, (want, got) in enumerate(zip(self._input_shape, frames.shape)):
            if isinstance(want, int) and want != got:
                raise UserError(f"{self.onnx_path.name} takes frames of shape {self._input_shape}, got "
                                f"{tuple(frames.shape)} (axis {axis}): resize the frames or "
                                "re-export with --input-size/--dynamic-batch")

    def infer_impl(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        self._check_shape(frames)
        frames = np.ascontiguousarray(frames)
        if self.uses_cuda:
            outputs = self._infer_iobinding(frames)
        else:
            outputs = self.session.run(self._output_names, {self._input_name: frames})
        return dict(zip(self._output_names, outputs))

    def _infer_iobinding(self, frames: np.ndarray) -> list[np.ndarray]:
        # The uint8 frame is copied to the GPU once; outputs come back as small uint8 maps.
        binding = self.session.io_binding()
        binding.bind_cpu_input(self._input_name, frames)
        for name in self._output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def deactivate_impl(self) -> None:
        self.session = None
        self.uses_cuda = False
