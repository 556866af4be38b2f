"""An independent, loop-based transcription of the IAPC loss computation (``docs/METHOD.md``).

Written the way the released training code reads: per image and per class loops, explicit
bilinear (align_corners=True) and nearest resampling built from index arithmetic, the logit
ratio, the entropy with ``+1e-5``, the ``often`` class-balance EMA, and the
``view(N, K, h, w)`` of the (pixels x K) similarity matrix. ``layout="correct"`` with the
paper's importance/IM/weights gives the paper reading. Everything runs in float64 and shares
no code with ``iapc.adapt.losses``; it is slow on purpose and only meant for small tests.
"""

from __future__ import annotations

import math

import torch

IGNORE = 255


def bilinear_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """(out, in) interpolation weights of 1-D linear resampling with align_corners=True."""
    a = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        src = i * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        i0 = min(int(math.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        frac = src - i0
        a[i, i0] += 1.0 - frac
        a[i, i1] += frac
    return a


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, H, W), separable bilinear, align_corners=True."""
    ah = bilinear_matrix(size[0], x.shape[2])
    aw = bilinear_matrix(size[1], x.shape[3])
    return torch.einsum("Hh,nchw,Ww->ncHW", ah, x.double(), aw)


def resize_nearest(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) -> (N, H, W): PyTorch 'nearest', source index floor(dst * in / out)."""
    n, h, w = label.shape
    out = torch.empty(n, size[0], size[1], dtype=torch.long)
    for y in range(size[0]):
        for x in range(size[1]):
            sy = min(int(math.floor(y * h / size[0])), h - 1)
            sx = min(int(math.floor(x * w / size[1])), w - 1)
            out[:, y, x] = label[:, sy, sx]
    return out


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Over dim 1, written out."""
    e = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def class_balance(label: torch.Tensor, num_classes: int, often: list[float]) -> list[float]:
    """Released class_balance: rare classes weight 7, ``often`` EMA updated in place."""
    n = label.shape[0]
    weights = []
    for k in range(num_classes):
        count = int((label == k).sum())
        weight = 7.0 if count < 64 * 64 * n else 1.0
        often_k = 7.0 if count == 0 else 1.0
        often[k] = 0.9 * often[k] + 0.1 * often_k
        weights.append(weight * often[k])
    return weights


def pixel_ce(logits: torch.Tensor, label: torch.Tensor, weights: list[float] | None) -> torch.Tensor:
    """(N, K, H, W), (N, H, W) -> per-pixel weighted CE, 0 where ignored (reduction none)."""
    n, k_count = logits.shape[:2]
    log_p = torch.log(softmax(logits))
    loss = torch.zeros(label.shape, dtype=torch.float64)
    for i in range(n):
        for k in range(k_count):
            mask = label[i] == k
            w = 1.0 if weights is None else weights[k]
            loss[i][mask] = -w * log_p[i, k][mask]
    return loss


def plain_ce(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Unweighted mean CE over the non-ignored pixels."""
    valid = label != IGNORE
    return pixel_ce(logits, label, None)[valid].sum() / valid.sum()


def importance(s: torch.Tensor, mode: str) -> torch.Tensor:
    scores = softmax(s) if mode == "probability" else s.double()
    top = scores.sort(dim=1, descending=True).values
    return 1.0 - top[:, 1] / top[:, 0]


def information_maximisation(t: torch.Tensor, mode: str) -> torch.Tensor:
    p = softmax(t)
    if mode == "entropy":
        return (-(p * torch.log(p + 1e-5)).sum(dim=1)).mean()
    mean_entropy = (-(p * torch.log(p)).sum(dim=1)).mean()
    p_bar = p.mean(dim=(0, 2, 3))
    return mean_entropy - (-(p_bar * torch.log(p_bar)).sum())


def image_prototypes(feats: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One image: (C, h, w), (h, w) -> (K, C) class means, zero for absent classes."""
    protos = torch.zeros(num_classes, feats.shape[0], dtype=torch.float64)
    for k in range(num_classes):
        mask = label == k
        if mask.any():
            protos[k] = feats[:, mask].double().mean(dim=1)
    return protos


def l2_normalise_rows(x: torch.Tensor) -> torch.Tensor:
    norms = torch.sqrt((x * x).sum(dim=1, keepdim=True))
    return x / torch.clamp(norms, min=1e-12)


def reference_losses(target_logits, target_feats, source_logits, memory_logits, memory_feats,
                     pseudo_label, often: list[float], importance_mode: str, im_mode: str,
                     layout: str, weights: dict[str, float]) -> dict[str, float]:
    """The weighted IAPC terms as Python floats; ``often`` is updated in place."""
    n, k_count, h, w = target_logits.shape
    crop = tuple(pseudo_label.shape[1:])
    label = pseudo_label.long()
    t = upsample_bilinear(target_logits, crop)
    s = upsample_bilinear(source_logits, crop)
    m = upsample_bilinear(memory_logits, crop)

    class_weights = class_balance(label, k_count, often)
    loss_ia = (importance(s, importance_mode) * pixel_ce(t, label, class_weights)).mean()
    loss_im = information_maximisation(t, im_mode)

    memory_label = resize_nearest(m.argmax(dim=1), tuple(memory_feats.shape[2:]))
    correct_maps, ps_maps = [], []
    for i in range(n):
        protos = l2_normalise_rows(image_prototypes(memory_feats[i], memory_label[i], k_count))
        pixels = target_feats[i].double().reshape(target_feats.shape[1], h * w).t()  # (hw, C)
        sim = l2_normalise_rows(pixels) @ protos.t()  # (hw, K)
        correct = sim.t().reshape(k_count, h, w)
        correct_maps.append(correct)
        ps_maps.append(sim.reshape(k_count, h, w) if layout == "view" else correct)
    proto_label = resize_nearest(torch.stack(correct_maps).argmax(dim=1), crop)
    ps_map = upsample_bilinear(torch.stack(ps_maps), crop)

    loss_ps = plain_ce(t, proto_label) + plain_ce(ps_map, t.argmax(dim=1))

    pe_label = proto_label.clone()
    for i in range(n):
        for y in range(crop[0]):
            for x in range(crop[1]):
                if proto_label[i, y, x] != label[i, y, x]:
                    pe_label[i, y, x] = IGNORE
    loss_pe = pixel_ce(t, pe_label, class_weights).mean()

    terms = {"ia": weights["ia"] * float(loss_ia), "im": weights["im"] * float(loss_im),
             "ps": weights["ps"] * float(loss_ps), "pe": weights["pe"] * float(loss_pe)}
    terms["total"] = terms["ia"] + terms["im"] + terms["ps"] + terms["pe"]
    return terms


RELEASED = dict(importance_mode="logit", im_mode="entropy", layout="view",
                weights={"ia": 0.2, "im": 2.0, "ps": 0.04, "pe": 0.5})
PAPER = dict(importance_mode="probability", im_mode="entropy_diversity", layout="correct",
             weights={"ia": 0.2, "im": 0.5, "ps": 0.04, "pe": 2.0})
