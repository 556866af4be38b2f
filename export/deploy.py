"""The deployment pipeline, one for ``iapc export`` and the adaptation daemon:

    network -> ONNX -> engine (TensorRT, or the ONNX file for ONNX Runtime) -> parity gate
            -> health gate (the daemon's) -> engine store (one manifest schema) -> Deployment

Nothing reaches the store unless both gates pass; the caller announces a published version
(the daemon to the inference process, ``iapc export`` on the terminal) or reports the rejection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch import nn

from iapc.export.manifest import engine_manifest
from iapc.export.onnx_export import export_onnx
from iapc.export.parity import ParityReport, check_parity


@dataclass
class Candidate:
    """The weights to deploy and what the manifest says about them."""

    network: nn.Module  # in eval mode
    model: str
    num_classes: int
    method: str
    step: int
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # more manifest keys (losses, checkpoint)


@dataclass
class DeployOptions:
    frame_size: tuple[int, int]  # (W, H) the engine takes
    min_agreement: float
    backend: str = "onnxruntime"  # "tensorrt" builds an engine; anything else ships the ONNX file
    fp16: bool = True  # TensorRT precision
    confidence: bool = False
    dynamic_batch: bool = False
    threads: int | None = 1  # ONNX Runtime intra-op threads of the parity check
    parity_source: str = "synthetic"  # where the parity frames came from, for the manifest


@dataclass
class Deployment:
    version: Any | None  # the published store Version, or None when a gate rejected
    parity: ParityReport | None
    health: dict[str, Any] | None = None  # the health gate's figures, when it ran
    rejected_by: str | None = None  # "parity" or "health"
    reason: str = ""
    timing: dict[str, float] = field(default_factory=dict)


# (network) -> HealthReport-like (``passed``, ``message``, ``figures``) or None (gate not run)
HealthGate = Callable[[nn.Module], Any]


def deploy(candidate: Candidate, store, frames: np.ndarray, options: DeployOptions, work: Path,
           health_gate: HealthGate | None = None, beat: Callable[[], None] = lambda: None
           ) -> Deployment:
    """Export ``candidate`` into ``work``, gate it on ``frames`` (uint8 (N, H, W, 3) BGR) and
    publish it to ``store``. ``beat`` is called between the slow stages (the daemon's
    heartbeat)."""
    started = time.perf_counter()
    onnx_path = export_onnx(candidate.network, work / "model.onnx", frame_size=options.frame_size,
                            dynamic_batch=options.dynamic_batch, confidence=options.confidence,
                            model_name=candidate.model)
    export_s = time.perf_counter() - started
    beat()
    engine_path = (build_engine(onnx_path, work, store.root, options.fp16)
                   if options.backend == "tensorrt" else None)
    with make_gate_runner(onnx_path, engine_path, options) as runner:
        ready_s = time.perf_counter() - started  # session creation / engine load included
        parity = check_parity(runner, candidate.network, frames, options.min_agreement)
    timing = {"export_s": round(export_s, 3), "ready_s": round(ready_s, 3),
              "latency_ms": round(parity.runner_ms, 3)}
    if not parity.passed:
        return Deployment(None, parity, rejected_by="parity", reason=parity.message, timing=timing)
    beat()
    health = health_gate(candidate.network) if health_gate is not None else None
    figures = health.figures if health is not None else None
    if health is not None and not health.passed:
        return Deployment(None, parity, figures, "health", health.message, timing)
    beat()
    version = store.publish(onnx_path, engine_path, manifest_extra=engine_manifest(
        model=candidate.model, num_classes=candidate.num_classes, method=candidate.method,
        step=candidate.step, input_size=options.frame_size, config=candidate.config,
        parity={"agreement": parity.agreement, "min_agreement": parity.min_agreement,
                "frames": parity.frames, "source": options.parity_source},
        health=figures, backend=options.backend,
        precision="fp16" if options.backend == "tensorrt" and options.fp16 else "fp32",
        confidence=options.confidence, dynamic_batch=options.dynamic_batch, timing=timing,
        **candidate.extra))
    return Deployment(version, parity, figures, timing=timing)


def build_engine(onnx_path: Path, work: Path, store_root: Path, fp16: bool) -> Path:
    """A TensorRT engine of ``onnx_path`` (the store's timing cache speeds up rebuilds)."""
    from iapc.export.runner_tensorrt import EngineFromOnnx, SaveEngine

    engine_path = work / "model.engine"
    SaveEngine(EngineFromOnnx(onnx_path, fp16=fp16, timing_cache=store_root / "timing.cache"),
               engine_path)()
    return engine_path


def make_gate_runner(onnx_path: Path, engine_path: Path | None, options: DeployOptions):
    """The runner the parity gate checks: the engine that will be served."""
    from iapc.export.runners import OnnxRuntimeRunner, TensorRTRunner

    if engine_path is not None:
        return TensorRTRunner(engine_path)
    # onnxruntime and torch both deploy the ONNX file: the gate checks that file
    return OnnxRuntimeRunner(onnx_path, intra_op_threads=options.threads)
