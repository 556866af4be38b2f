"""The health gate's look at the engine itself.

:func:`iapc.daemon.health.check_health` judges the candidate's weights in PyTorch (it needs the
logits). The engine that will be served (a TensorRT fp16 engine, an ONNX Runtime session) then
segments the same held-out frames, and the report fails when that engine's masks are not those
weights' masks (pixel agreement under the parity gate's bound for the engine's precision) or
collapse to one class the way the health gate refuses for the weights. Its figures go into the
report under ``engine``: ``agreement``, ``largest_class_share``, ``class``, ``frames``.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from iapc.daemon.health import HealthReport
from iapc.export.parity import compare_masks
from iapc.engines.runner_base import Runner
from iapc.runtime.config import HealthConfig

IGNORE = 255  # not a class


def score_engine(report: HealthReport, engine: Runner, network: nn.Module, frames: np.ndarray,
                 cfg: HealthConfig, min_agreement: float) -> HealthReport:
    """``report`` (of the weights) with the engine's figures and reasons added."""
    comparison = compare_masks(engine, network, frames)
    counts = np.bincount(np.concatenate([m.ravel() for m in comparison.got]), minlength=256)
    counts[IGNORE] = 0
    share = float(counts.max() / max(1, counts.sum()))
    largest = int(counts.argmax())
    agreement = comparison.agreement
    figures = {**report.figures, "engine": {"agreement": round(agreement, 5),
                                            "largest_class_share": round(share, 5),
                                            "class": largest, "frames": len(comparison.got)}}
    reasons = list(report.reasons)
    if agreement < min_agreement:
        reasons.append(f"the engine's masks agree with PyTorch's on {agreement:.2%} of the "
                       f"held-out pixels < required {min_agreement:.2%}")
    source_share = (report.figures.get("largest_class_share") or {}).get("source")
    said = any(r.startswith("collapse") for r in reasons)  # already, of the weights
    if not said and share > cfg.max_class_share and (source_share is None
                                                     or share > source_share + cfg.collapse_margin):
        reasons.append(f"collapse in the engine: class {largest} takes {share:.0%} of the pixels")
    return HealthReport(not reasons, reasons, figures)
