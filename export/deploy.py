"""The deployment pipeline, one for ``iapc export`` and the adaptation daemon:

    network -> ONNX -> the target's engine (:mod:`iapc.engines.targets`: a TensorRT engine, or the
            ONNX file ONNX Runtime serves) -> parity gate on that engine -> health gate (the
            daemon's, given that engine too) -> engine store (one manifest schema, naming the
            target) -> Deployment

The engine that is gated is the engine that is stored and served: it is built here, in the
daemon's process or ``iapc export``'s, never in the inference process. Nothing reaches the store
unless both gates pass; the caller announces a published version (the daemon to the inference
process, ``iapc export`` on the terminal) or reports the rejection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch import nn

from iapc.engines.targets import EngineTarget, build_engine, gate_runner
from iapc.engines.manifest import engine_manifest
from iapc.export.onnx_export import export_onnx
from iapc.export.parity import ParityReport, check_parity
from iapc.engines.runner_base import Runner

TIMING_CACHE = "timing.cache"  # in the store's root: TensorRT rebuilds after adaptation reuse it


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
    min_agreement: float  # the parity gate's bound for this target's precision
    target: EngineTarget  # the engine built, gated and stored (iapc.engines.targets.engine_target)
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


# (network, the active runner of the engine to be served) -> HealthReport-like (``passed``,
# ``message``, ``figures``) or None (gate not run)
HealthGate = Callable[[nn.Module, Runner], Any]


def deploy(candidate: Candidate, store, frames: np.ndarray, options: DeployOptions, work: Path,
           health_gate: HealthGate | None = None, beat: Callable[[], None] = lambda: None
           ) -> Deployment:
    """Export ``candidate`` into ``work``, build the target's engine, gate it on ``frames``
    (uint8 (N, H, W, 3) BGR) and publish it to ``store``. ``beat`` is called between the slow
    stages (the daemon's heartbeat)."""
    started = time.perf_counter()
    onnx_path = export_onnx(candidate.network, work / "model.onnx", frame_size=options.frame_size,
                            dynamic_batch=options.dynamic_batch, confidence=options.confidence,
                            model_name=candidate.model)
    export_s = time.perf_counter() - started
    beat()
    built = build_engine(onnx_path, work, options.target, timing_cache=store.root / TIMING_CACHE)
    build_s = time.perf_counter() - started - export_s
    beat()
    with gate_runner(built, threads=options.threads) as runner:
        ready_s = time.perf_counter() - started  # build and session creation / engine load
        parity = check_parity(runner, candidate.network, frames, options.min_agreement)
        timing = {"export_s": round(export_s, 3), "build_s": round(build_s, 3),
                  "ready_s": round(ready_s, 3), "latency_ms": round(parity.runner_ms, 3)}
        if not parity.passed:
            return Deployment(None, parity, rejected_by="parity", reason=parity.message,
                              timing=timing)
        beat()
        health = health_gate(candidate.network, runner) if health_gate is not None else None
    figures = health.figures if health is not None else None
    if health is not None and not health.passed:
        return Deployment(None, parity, figures, "health", health.message, timing)
    beat()
    version = store.publish(built.onnx_path, built.engine_path, manifest_extra=engine_manifest(
        model=candidate.model, num_classes=candidate.num_classes, method=candidate.method,
        step=candidate.step, input_size=options.frame_size, config=candidate.config,
        parity={"agreement": parity.agreement, "min_agreement": parity.min_agreement,
                "frames": parity.frames, "source": options.parity_source},
        health=figures, **options.target.manifest_fields(), confidence=options.confidence,
        dynamic_batch=options.dynamic_batch, timing=timing, **candidate.extra))
    return Deployment(version, parity, figures, timing=timing)
