"""What an engine version is built for, and the one way each side turns it into a runner.

An engine is built, gated and stored for one :class:`EngineTarget`: backend, precision and
device. The adaptation daemon and ``iapc export`` build the target's engine (never the
inference process), the parity gate compares *that* engine's masks with PyTorch's and the
version's manifest names the target. The inference process serves a stored version only when it
was built for the target it would build itself (:func:`misfit`), and only the stored file
(:func:`serving_runner`): it never builds an engine.

- ``tensorrt``: ``model.engine``, built by TensorRT for one GPU and TensorRT version (the device
  is ``"<GPU name> sm_<major><minor>, TensorRT <version>"``); fp16 unless fp32 is asked for.
- ``onnxruntime``: the stored ``model.onnx``, run as it is; the device is the execution
  provider, ``cpu`` or ``cuda``; fp32 unless fp16 is asked for. ONNX Runtime ``fp16`` stores the
  weights in half precision and casts them back to fp32 inside the graph (:func:`cast_weights_to_fp16`):
  the file is half the size and the masks carry fp16's weight rounding, the arithmetic stays fp32.

A manifest that names no device (a version published by hand, or by an older release) holds a
plain ONNX file: ONNX Runtime fp32 serves it, TensorRT does not.

Free of torch; importing this module imports no engine library.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from iapc.errors import UserError

# What --backend accepts (torch only for ``iapc export`` checks: the inference loop has no torch).
BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
ENGINE_BACKENDS = ("tensorrt", "onnxruntime")  # what an engine store version is built for
PRECISIONS = ("auto", "fp16", "fp32")
REDUCED_PRECISION = "fp16"


@dataclass(frozen=True)
class EngineTarget:
    """The backend, precision and device an engine is built for."""

    backend: str  # "tensorrt" | "onnxruntime"
    precision: str  # "fp16" | "fp32"
    device: str  # "cpu", "cuda", or the GPU and TensorRT version of a TensorRT engine

    @property
    def reduced_precision(self) -> bool:
        return self.precision == REDUCED_PRECISION

    def describe(self) -> str:
        return f"{self.backend} {self.precision} on {self.device}"

    def key(self) -> str:
        """A file-name-safe key, e.g. ``onnxruntime-fp32-cpu``."""
        device = re.sub(r"[^A-Za-z0-9.]+", "_", self.device).strip("_")
        return f"{self.backend}-{self.precision}-{device}"

    def manifest_fields(self) -> dict[str, str]:
        return {"backend": self.backend, "precision": self.precision, "device": self.device}


def built_for(manifest: Mapping[str, Any]) -> EngineTarget:
    """The target a version's manifest names; ``device`` is ``""`` when it names none."""
    return EngineTarget(str(manifest.get("backend") or "onnxruntime"),
                        str(manifest.get("precision") or "fp32"), str(manifest.get("device") or ""))


def misfit(manifest: Mapping[str, Any], target: EngineTarget) -> str | None:
    """Why a version with ``manifest`` must not be served for ``target``; None when it may be."""
    built = built_for(manifest)
    if built.device == "" and (built.backend, built.precision) == ("onnxruntime", "fp32") \
            and (target.backend, target.precision) == ("onnxruntime", "fp32"):
        return None  # a plain ONNX file: ONNX Runtime runs it on any device
    if built != target:
        shown = built.describe() if built.device else f"{built.backend} {built.precision}"
        return f"built for {shown}, this runtime serves {target.describe()}"
    return None


def resolve_backend(backend: str) -> str:
    """``auto`` -> the best backend present; a named one is checked to be usable here."""
    from iapc.engines.runner_tensorrt import tensorrt_available

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "tensorrt" if tensorrt_available()[0] else "onnxruntime"
    if backend == "tensorrt":
        ok, why = tensorrt_available()
        if not ok:
            raise UserError(f"--backend tensorrt needs the tensorrt package and an NVIDIA GPU ({why} "
                            "here); use --backend onnxruntime")
    if backend == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
        raise UserError("--backend onnxruntime needs the onnxruntime package: pip install onnxruntime")
    if backend == "torch" and importlib.util.find_spec("torch") is None:
        raise UserError("--backend torch needs PyTorch: pip install torch, or use --backend onnxruntime")
    return backend


def engine_target(backend: str = "auto", precision: str = "auto") -> EngineTarget:
    """The target this machine builds and serves for ``--backend`` and ``--precision``."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    backend = resolve_backend(backend)
    if backend not in ENGINE_BACKENDS:
        raise UserError(f"--backend {backend} builds no engine to store: use --backend auto, "
                        "onnxruntime or tensorrt")
    if precision == "auto":
        precision = REDUCED_PRECISION if backend == "tensorrt" else "fp32"
    if backend == "tensorrt":
        from iapc.engines.runner_tensorrt import tensorrt_device

        return EngineTarget(backend, precision, tensorrt_device())
    from iapc.engines.runner_onnxrt import ort_cuda_available

    return EngineTarget(backend, precision, "cuda" if ort_cuda_available() else "cpu")


# Building (daemon and iapc export) ------------------------------------------------------------
@dataclass(frozen=True)
class BuiltEngine:
    """The files a version stores: the ONNX file (the one ONNX Runtime serves) and the TensorRT
    engine, if any."""

    onnx_path: Path
    engine_path: Path | None
    target: EngineTarget


def build_engine(onnx_path: Path, work: Path, target: EngineTarget,
                 timing_cache: Path | None = None) -> BuiltEngine:
    """The engine of ``target`` from the exported ``onnx_path``, written under ``work``."""
    if target.backend == "tensorrt":
        from iapc.engines.runner_tensorrt import EngineFromOnnx, SaveEngine

        engine_path = work / "model.engine"
        SaveEngine(EngineFromOnnx(onnx_path, fp16=target.reduced_precision,
                                  timing_cache=timing_cache), engine_path)()
        return BuiltEngine(onnx_path, engine_path, target)
    if target.reduced_precision:
        converted = cast_weights_to_fp16(onnx_path, work / "model.fp16.onnx")
        return BuiltEngine(converted, None, target)
    return BuiltEngine(onnx_path, None, target)


def cast_weights_to_fp16(src: Path, dst: Path) -> Path:
    """``src`` with every float32 weight stored as float16 and cast back to float32 in the
    graph (a ``Cast`` node per weight): ONNX Runtime's fp16 stand-in (module docstring)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    casts, kept = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16),
                                       init.name + "_fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "_to_fp32"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return dst


def gate_runner(built: BuiltEngine, threads: int | None = 1):
    """The runner the parity gate checks: the very engine the version will store and serve."""
    return _runner(built.target, built.onnx_path, built.engine_path, threads)


# Serving (inference process) -----------------------------------------------------------------
def serving_runner(version, target: EngineTarget, threads: int | None = None):
    """An inactive runner of a store ``version`` as it was gated; a version built for another
    target, or a TensorRT version without its engine, is refused (:class:`UserError`)."""
    reason = misfit(version.manifest, target)
    if reason is not None:
        raise UserError(f"{version.name} was {reason}")
    if target.backend == "tensorrt" and version.engine_path is None:
        raise UserError(f"{version.name} holds no TensorRT engine (the inference process never "
                        "builds one)")
    return _runner(target, version.onnx_path, version.engine_path, threads)


def _runner(target: EngineTarget, onnx_path: str | os.PathLike, engine_path, threads):
    if target.backend == "tensorrt":
        from iapc.engines.runner_tensorrt import TensorRTRunner

        return TensorRTRunner(engine_path)
    from iapc.engines.runner_onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner(onnx_path, providers=target.device, intra_op_threads=threads)
