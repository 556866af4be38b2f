"""The health gate: a candidate engine is deployed only if it looks no worse than what it replaces.

Run by the adaptation daemon after the parity gate, on a held-out buffer of recent unlabelled
frames (frames the daemon never trained on). Three networks segment the same frames: the
*candidate* (the adapted target about to be exported), the *serving* weights (the engine in
service) and the *source* model; the *memory* network (IAPC's EMA teacher) is the reference for
agreement. A candidate is rejected for:

- non-finite weights or outputs;
- collapse: one class takes more than ``max_class_share`` of the pixels, and ``collapse_margin``
  more than it does under the source model (a source that already sees mostly road is fine);
- a sudden distribution jump: Jensen-Shannon divergence of the predicted class histograms above
  ``max_js_vs_serving`` (against the engine in service) or ``max_js_vs_source``;
- rising uncertainty: mean normalised entropy ``max_entropy_rise`` above the engine in service;
- drifting away from the memory network: pixel agreement below ``min_memory_agreement``.

Thresholds live in :class:`~iapc.runtime.config.HealthConfig`; the figures go into the store
manifest and onto the status topic. Torch is needed: this runs in the daemon only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from iapc.adapt.iapc_step import borrowed_statistics
from iapc.adapt.preprocessing import camera_to_rgb, normalize
from iapc.runtime.config import HealthConfig


@dataclass(frozen=True)
class Predictions:
    """What one network says about the held-out frames."""

    labels: torch.Tensor  # int64 (N, h, w) argmax class ids
    histogram: np.ndarray  # float64 (K,) share of pixels per class, sums to 1
    mean_confidence: float  # mean max softmax probability, 0..1
    mean_entropy: float  # mean softmax entropy / ln K, 0..1
    finite: bool  # every logit finite


@dataclass
class HealthReport:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "healthy"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def non_finite_tensors(model: nn.Module) -> list[str]:
    """Names of parameters and buffers holding NaN or Inf (floating point ones only)."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return [name for name, t in tensors if t.is_floating_point() and not torch.isfinite(t).all()]


@torch.inference_mode()
def predict(model: nn.Module, frames_bgr: np.ndarray) -> Predictions:
    """Run ``model`` (in eval mode, restored after) on uint8 (N, H, W, 3) BGR frames."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device  # the daemon may adapt on a GPU
        x = normalize(camera_to_rgb(torch.from_numpy(frames_bgr).to(device)), model.norm)  # (N, 3, H, W)
        logits, _ = model(x)  # (N, K, h, w) at the output stride: enough to judge shares
    finally:
        model.train(was_training)
    logits = logits.float()
    finite = bool(torch.isfinite(logits).all())
    logits = torch.nan_to_num(logits, nan=0.0, posinf=1e4, neginf=-1e4)
    probs = logits.softmax(dim=1)  # (N, K, h, w)
    num_classes = probs.shape[1]
    labels = probs.argmax(dim=1)  # (N, h, w)
    counts = torch.bincount(labels.flatten(), minlength=num_classes).double()
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)  # (N, h, w) nats
    return Predictions(labels=labels, histogram=(counts / counts.sum()).cpu().numpy(),
                       mean_confidence=float(probs.amax(dim=1).mean()),
                       mean_entropy=float(entropy.mean() / math.log(num_classes)),
                       finite=finite)


@dataclass(frozen=True)
class LabelFreeQuality:
    """Two label-free estimates of how right a network is on some frames (each 0..1): the
    share of pixels whose class survives a horizontal flip of the input, and the share whose
    class is also their feature's nearest class prototype (soft centroids of the features,
    weighted by the predicted probabilities). A shift that breaks the network breaks both."""

    flip_agreement: float
    prototype_agreement: float


@torch.inference_mode()
def label_free_quality(model: nn.Module, frames_bgr: np.ndarray) -> LabelFreeQuality:
    """:class:`LabelFreeQuality` of ``model`` (eval mode for the call) on uint8 (N, H, W, 3)
    BGR frames: two forwards, the frames and their mirror images."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x = normalize(camera_to_rgb(torch.from_numpy(frames_bgr).to(device)), model.norm)  # (N, 3, H, W)
        logits, features = model(x)  # (N, K, h, w), (N, C, h', w')
        mirrored, _ = model(x.flip(-1))
    finally:
        model.train(was_training)
    labels = logits.argmax(dim=1)  # (N, h, w)
    flip = float((labels == mirrored.flip(-1).argmax(dim=1)).double().mean())
    return LabelFreeQuality(flip, _prototype_agreement(logits.float(), features.float()))


def _prototype_agreement(logits: torch.Tensor, features: torch.Tensor) -> float:
    """Share of pixels whose argmax class is also the nearest (cosine) soft class centroid of
    the unit-length features; logits (N, K, h, w) are resized to the features' (N, C, h', w')."""
    probs = nn.functional.interpolate(logits, size=features.shape[-2:], mode="bilinear",
                                      align_corners=False).softmax(dim=1)  # (N, K, h', w')
    feats = nn.functional.normalize(features, dim=1).flatten(2)  # (N, C, P)
    probs = probs.flatten(2)  # (N, K, P)
    centroids = torch.einsum("nkp,ncp->kc", probs, feats)  # (K, C) probability-weighted sums
    centroids = nn.functional.normalize(centroids, dim=1)
    nearest = torch.einsum("kc,ncp->nkp", centroids, feats).argmax(dim=1)  # (N, P)
    return float((nearest == probs.argmax(dim=1)).double().mean())


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence of two histograms in nats (0 .. ln 2)."""
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nonzero = a > 0
        return float((a[nonzero] * np.log(a[nonzero] / m[nonzero])).sum())

    return max(0.0, (kl(p) + kl(q)) / 2)


def agreement(a: Predictions, b: Predictions) -> float:
    """Fraction of pixels where both predict the same class."""
    return float((a.labels == b.labels).double().mean())


def _figures(candidate: Predictions, serving: Predictions, source: Predictions,
             memory: Predictions) -> dict[str, Any]:
    def r(value: float) -> float:
        return round(float(value), 5)

    return {
        "confidence": {"candidate": r(candidate.mean_confidence),
                       "serving": r(serving.mean_confidence), "source": r(source.mean_confidence)},
        "entropy": {"candidate": r(candidate.mean_entropy), "serving": r(serving.mean_entropy),
                    "source": r(source.mean_entropy)},
        "largest_class_share": {"candidate": r(candidate.histogram.max()),
                                "serving": r(serving.histogram.max()),
                                "source": r(source.histogram.max())},
        "js_vs_serving": r(js_divergence(candidate.histogram, serving.histogram)),
        "js_vs_source": r(js_divergence(candidate.histogram, source.histogram)),
        "memory_agreement": r(agreement(candidate, memory)),
        "serving_agreement": r(agreement(candidate, serving)),
    }


def _reasons(candidate: Predictions, source: Predictions, figures: dict[str, Any],
             cfg: HealthConfig) -> list[str]:
    reasons = []
    if not candidate.finite:
        reasons.append("non-finite outputs")
    share, source_share = candidate.histogram.max(), source.histogram.max()
    if share > cfg.max_class_share and share > source_share + cfg.collapse_margin:
        reasons.append(f"collapse: class {int(candidate.histogram.argmax())} takes {share:.0%} of "
                       f"the pixels (source model: {source_share:.0%})")
    if figures["js_vs_serving"] > cfg.max_js_vs_serving:
        reasons.append(f"class distribution jumped: JS {figures['js_vs_serving']:.3f} vs the "
                       f"engine in service > {cfg.max_js_vs_serving}")
    if figures["js_vs_source"] > cfg.max_js_vs_source:
        reasons.append(f"class distribution drifted: JS {figures['js_vs_source']:.3f} vs the "
                       f"source model > {cfg.max_js_vs_source}")
    rise = figures["entropy"]["candidate"] - figures["entropy"]["serving"]
    if rise > cfg.max_entropy_rise:
        reasons.append(f"entropy rose by {rise:.3f} > {cfg.max_entropy_rise}")
    if figures["memory_agreement"] < cfg.min_memory_agreement:
        reasons.append(f"agreement with the memory network {figures['memory_agreement']:.2%} < "
                       f"{cfg.min_memory_agreement:.0%}")
    return reasons


def check_health(candidate: nn.Module, serving: nn.Module, source: nn.Module, memory: nn.Module,
                 frames_bgr: np.ndarray, cfg: HealthConfig,
                 beat: Callable[[], None] = lambda: None) -> HealthReport:
    """Judge ``candidate`` on held-out uint8 (N, H, W, 3) BGR frames; see the module docstring.
    ``beat`` is called after each network's forwards (the daemon's heartbeat, and its look at
    the frames that came in meanwhile)."""
    bad_tensors = non_finite_tensors(candidate)
    if bad_tensors:
        return HealthReport(False, [f"non-finite weights in {', '.join(bad_tensors[:3])}"],
                            {"non_finite_tensors": len(bad_tensors)})
    preds = {}
    for name, model in (("candidate", candidate), ("serving", serving), ("source", source),
                        ("memory", memory)):
        preds[name] = predict(model, frames_bgr)
        beat()
    figures = _figures(preds["candidate"], preds["serving"], preds["source"], preds["memory"])
    figures["frames"] = int(len(frames_bgr))
    reasons = _reasons(preds["candidate"], preds["source"], figures, cfg)
    figures["source_agreement"] = round(agreement(preds["candidate"], preds["source"]), 5)
    if cfg.max_quality_drop < 1:
        quality = weights_quality(candidate, source, frames_bgr)
        figures["label_free"] = {name: {"flip": round(q.flip_agreement, 5),
                                        "prototype": round(q.prototype_agreement, 5)}
                                 for name, q in quality.items()}
        reasons += _quality_reasons(quality["candidate"], quality["source_weights"],
                                    cfg.max_quality_drop)
    return HealthReport(not reasons, reasons, figures)


def weights_quality(candidate: nn.Module, source: nn.Module,
                    frames_bgr: np.ndarray) -> dict[str, LabelFreeQuality]:
    """:class:`LabelFreeQuality` of the ``candidate`` and of the source weights normalised with
    the candidate's BatchNorm statistics (``"source_weights"``): the two differ only by what
    self-training did to the weights (the statistics have their own label-free choice,
    :meth:`~iapc.adapt.adapters.Adapter.choose_source_share`)."""
    quality = label_free_quality(candidate, frames_bgr)
    if same_parameters(candidate, source):  # statistics-only updates: the same network twice
        return {"candidate": quality, "source_weights": quality}
    with borrowed_statistics(source, candidate):
        reference = label_free_quality(source, frames_bgr)
    return {"candidate": quality, "source_weights": reference}


def same_parameters(a: nn.Module, b: nn.Module) -> bool:
    """Whether two networks of one architecture hold equal parameters (buffers aside)."""
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def _quality_reasons(candidate: LabelFreeQuality, reference: LabelFreeQuality,
                     max_drop: float) -> list[str]:
    """The guard against weights that self-training made worse than the source's: the
    candidate's label-free quality may not fall more than ``max_drop`` below that of the
    source weights under the same statistics."""
    reasons = []
    for what, got, ref in (("flip agreement", candidate.flip_agreement, reference.flip_agreement),
                           ("prototype agreement", candidate.prototype_agreement,
                            reference.prototype_agreement)):
        if got < ref - max_drop:
            reasons.append(f"adapted weights worse than the source weights by their {what}: "
                           f"{got:.3f} < {ref:.3f} - {max_drop}")
    return reasons
