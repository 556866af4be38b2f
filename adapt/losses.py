"""The IAPC losses (see ``docs/METHOD.md``): importance-aware pseudo-label loss (IA), information
maximisation (IM), prototype-symmetric (PS) and prototype-enhanced (PE) cross-entropy.

Two presets say where the paper and the authors' released training code disagree:

- ``paper``: importance from the top-two *probabilities*, IM = mean H(p) - H(p_bar), Table IV
  weights (IA 0.2, IM 0.5, PS 0.04, PE 2.0), correct prototype-map layout;
- ``released``: importance from the top-two raw *logits*, entropy-only IM with
  ``-sum p log(p + 1e-5)``, the code's default weights (IA 0.2, IM 2.0, PS 0.04, PE 0.5) and its
  ``view(N, K, h, w)`` reshape of the (pixels x K) similarity matrix in the second PS term.

Every function here is vectorised over images, pixels and classes: no Python loop over classes
and no host round trip, so a step can be queued on a GPU without a sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iapc.errors import UserError
from iapc.method_config import (BN_STATISTICS, PRESETS, TEACHERS, LossWeights, Preset,  # noqa: F401
                                 get_preset)

IGNORE_INDEX = 255
# Class-balance constants of the released code: a class with fewer than 64*64 pixels per image
# in the batch's pseudo-label is "rare" and weighted by MAX_CLASS_WEIGHT; absent classes push
# the `often` EMA towards MAX_CLASS_WEIGHT.
RARE_PIXELS_PER_IMAGE = 64 * 64
MAX_CLASS_WEIGHT = 7.0
OFTEN_MOMENTUM = 0.9
# The released entropy adds this inside the log.
RELEASED_ENTROPY_EPS = 1e-5


class ClassBalanceState:
    """The released code's ``often`` vector: an EMA, kept across steps, of how often each class
    is missing from the batch's pseudo-label (1 = always present, up to 7 = always absent)."""

    def __init__(self, num_classes: int, device: torch.device | str | None = None):
        self.often = torch.ones(num_classes, dtype=torch.float32, device=device)  # (K,)

    @property
    def num_classes(self) -> int:
        return self.often.numel()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors only, so it fits in a ``weights_only`` checkpoint."""
        return {"often": self.often.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        often = torch.as_tensor(state["often"], dtype=torch.float32)
        if often.shape != self.often.shape:
            raise UserError(f"class-balance state has {often.numel()} classes, the model has "
                            f"{self.num_classes}: resume with a checkpoint of the same model")
        self.often = often.to(self.often.device)


def class_pixel_counts(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixels per class in a label map of any shape: (K,) long; labels >= K are not counted.

    A scatter-add rather than ``torch.bincount``, whose CUDA version reads the input's min and
    max back to the host; this one queues without a sync.
    """
    # Labels >= K (the ignore index) land in an extra bin that is dropped.
    index = label.reshape(-1).long().clamp(max=num_classes)
    counts = torch.zeros(num_classes + 1, dtype=torch.long, device=label.device)
    counts.scatter_add_(0, index, torch.ones_like(index))
    return counts[:num_classes]


def class_balance_weights(pseudo_label: torch.Tensor, num_classes: int,
                          state: ClassBalanceState, rare_fraction: float | None = None) -> torch.Tensor:
    """Per-class cross-entropy weights from one batch's pseudo-label, as the released code.

    ``pseudo_label``: (N, H, W) long, ignore index 255. Returns (K,) float32:
    ``weight_k * often_k`` where ``weight_k`` = 7 if class k has fewer than 64*64*N pixels in
    the batch (``rare_fraction * H * W * N`` when given) else 1, and ``often`` is first updated
    in place:
    ``often <- 0.9 * often + 0.1 * (7 if class k is absent else 1)``.
    """
    if state.num_classes != num_classes:
        raise UserError(f"class-balance state has {state.num_classes} classes, the logits have "
                        f"{num_classes}: use one ClassBalanceState per model")
    n, h, w = pseudo_label.shape
    counts = class_pixel_counts(pseudo_label, num_classes)  # (K,)
    rare_pixels = RARE_PIXELS_PER_IMAGE if rare_fraction is None else rare_fraction * h * w
    rare = counts < rare_pixels * n
    weight = torch.where(rare, MAX_CLASS_WEIGHT, 1.0).to(torch.float32)
    absent = torch.where(counts == 0, MAX_CLASS_WEIGHT, 1.0).to(torch.float32)
    state.often = state.often.to(counts.device)
    state.often.mul_(OFTEN_MOMENTUM).add_(absent, alpha=1.0 - OFTEN_MOMENTUM)
    return weight * state.often


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, align_corners=True, as every logit map in the method: (N, C, h, w) -> (N, C, H, W)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PyTorch ``nearest`` (not ``nearest-exact``) resize of a (N, H, W) label map."""
    resized = F.interpolate(label[:, None].float(), size=size, mode="nearest")
    return resized[:, 0].long()


def importance(source_logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Eq. 4, ``w = 1 - q2 / q1`` from the two largest scores per pixel: (N, K, H, W) -> (N, H, W).

    ``mode="probability"`` (paper): scores are ``softmax(source_logits)``, so w in [0, 1).
    ``mode="logit"`` (released code): scores are the raw logits, so w is unbounded.
    ``mode="none"`` (ablation row P, plain pseudo-label CE): w = 1 everywhere.
    """
    if mode == "none":
        n, _, h, w = source_logits.shape
        return torch.ones(n, h, w, dtype=torch.float32, device=source_logits.device)
    if mode == "probability":
        scores = source_logits.float().softmax(dim=1)
    elif mode == "logit":
        scores = source_logits.float()
    else:
        raise UserError(f"unknown importance mode {mode!r}: use 'probability', 'logit' or 'none'")
    top2 = scores.topk(2, dim=1).values  # (N, 2, H, W), descending
    return 1.0 - top2[:, 1] / top2[:, 0]


def prototypes(memory_feats: torch.Tensor, memory_label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 7, per-image class means of the memory features, all images and classes at once.

    ``memory_feats``: (N, C, h, w); ``memory_label``: (N, h, w) long at the same resolution
    (values >= K are ignored). Returns (N, K, C); a class absent from an image gets zeros.
    """
    n, c, h, w = memory_feats.shape
    # (N, h*w, K) one-hot built by scatter (F.one_hot may check its input on the host); the
    # extra column catches ignored labels and is dropped.
    index = memory_label.reshape(n, h * w, 1).long().clamp(max=num_classes)
    one_hot = torch.zeros(n, h * w, num_classes + 1, dtype=memory_feats.dtype, device=memory_feats.device)
    one_hot = one_hot.scatter_(2, index, 1.0)[..., :num_classes]
    sums = torch.bmm(memory_feats.reshape(n, c, h * w), one_hot)  # (N, C, K)
    counts = one_hot.sum(dim=1)  # (N, K)
    return (sums / counts.clamp(min=1)[:, None, :]).transpose(1, 2)  # (N, K, C)


def prototype_similarity(target_feats: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every target feature with every (detached) prototype.

    ``target_feats``: (N, C, h, w); ``protos``: (N, K, C). Returns the (N, h*w, K) matrix the
    released code builds per image. Zero prototypes give similarity 0.
    """
    n, c, h, w = target_feats.shape
    feats = F.normalize(target_feats.reshape(n, c, h * w).transpose(1, 2), dim=2)  # (N, hw, C)
    centres = F.normalize(protos.detach(), dim=2)  # (N, K, C)
    return torch.bmm(feats, centres.transpose(1, 2))  # (N, hw, K)


def prototype_logits(target_feats: torch.Tensor, protos: torch.Tensor,
                     reshape_quirk: bool = False) -> torch.Tensor:
    """Eq. 8, the prototype similarity map (N, K, h, w) (cosine, no temperature).

    ``reshape_quirk=True`` lays the (N, h*w, K) matrix out with a plain ``view(N, K, h, w)`` as
    the released code does, which scrambles pixels and classes; False gives the correct layout.
    """
    n, _, h, w = target_feats.shape
    sim = prototype_similarity(target_feats, protos)  # (N, hw, K)
    return _layout(sim, n, h, w, reshape_quirk)


def _layout(sim: torch.Tensor, n: int, h: int, w: int, reshape_quirk: bool) -> torch.Tensor:
    """(N, h*w, K) similarity matrix -> (N, K, h, w) map, correctly or as the released view()."""
    k = sim.shape[2]
    if reshape_quirk:
        return sim.reshape(n, k, h, w)
    return sim.transpose(1, 2).reshape(n, k, h, w)


def entropy_released(prob: torch.Tensor) -> torch.Tensor:
    """Released IM: mean over pixels of ``-sum_k p log(p + 1e-5)``; ``prob`` (N, K, H, W)."""
    return -(prob * torch.log(prob + RELEASED_ENTROPY_EPS)).sum(dim=1).mean()


def entropy_diversity(logits: torch.Tensor) -> torch.Tensor:
    """Paper IM (Eq. 6): ``mean H(p) - H(p_bar)``, p_bar averaged over batch and pixels.

    ``logits`` (N, K, H, W). H(p) uses log_softmax (exact, no epsilon); p_bar is a mean of
    softmaxes, so it is positive unless a class underflows everywhere, which the clamp covers.
    """
    log_p = logits.log_softmax(dim=1)
    mean_entropy = -(log_p.exp() * log_p).sum(dim=1).mean()
    p_bar = log_p.exp().mean(dim=(0, 2, 3))  # (K,)
    diversity = -(p_bar * p_bar.clamp(min=1e-30).log()).sum()
    return mean_entropy - diversity


def balanced_pixel_ce(logits: torch.Tensor, label: torch.Tensor,
                      class_weight: torch.Tensor | None) -> torch.Tensor:
    """Class-weighted per-pixel CE with reduction none: (N, K, H, W), (N, H, W) -> (N, H, W).

    Ignored pixels are 0; callers take ``.mean()`` over *all* pixels, as the released code.
    """
    return F.cross_entropy(logits, label, weight=class_weight, ignore_index=IGNORE_INDEX,
                           reduction="none")


def iapc_losses(target_logits: torch.Tensor, target_feats: torch.Tensor,
                source_logits: torch.Tensor, memory_logits: torch.Tensor,
                memory_feats: torch.Tensor, pseudo_label: torch.Tensor,
                preset: str | Preset = "paper", state: ClassBalanceState | None = None,
                class_balance: bool = True) -> dict[str, torch.Tensor]:
    """The IAPC loss of one batch, ``L = l_IA L_IA + l_IM L_IM + l_PS L_PS + l_PE L_PE``.

    Inputs are raw network outputs at network resolution:

    - ``target_logits`` (N, K, h, w), ``target_feats`` (N, C, h, w): ``T(x2)``, the only inputs
      that receive gradients (through both);
    - ``source_logits`` (N, K, h, w): the teacher on ``x1`` (``S(x1)``, or ``M(x1)`` when the
      preset's teacher is the memory network), used for the importance ``w``;
    - ``memory_logits`` (N, K, h', w'), ``memory_feats`` (N, C, h', w'): ``M(x0)``, used for the
      per-image prototypes;
    - ``pseudo_label`` (N, H, W) long: ``y_hat`` at crop resolution (ignore index 255). Its size
      is the crop size every logit map is upsampled to (bilinear, align_corners=True).

    Source and memory inputs are constants (detached here). Everything is computed in float32,
    so bf16/fp16 network outputs are safe.

    Steps, per ``docs/METHOD.md``:

    1. ``t = up(target_logits)``, ``s = up(source_logits)``, ``m = up(memory_logits)``;
    2. class weights from ``pseudo_label`` (:func:`class_balance_weights`, updating
       ``state.often``; ``state=None`` uses a fresh state, ``class_balance=False`` weights 1);
    3. IA: ``mean(w * CE_cb(t, y_hat))`` with ``w`` from :func:`importance`;
    4. IM: :func:`entropy_diversity` (paper) or :func:`entropy_released` (released);
    5. prototypes from ``M``: ``y_M = argmax m`` resized (nearest) to the feature size,
       per-image class means; ``r`` = cosine similarity of ``target_feats`` with them;
       ``y_P = argmax r`` (correct layout) resized (nearest) to the crop size;
    6. PS: ``CE(t, y_P) + CE(up(r), argmax t)``, plain means; with the released preset the
       second term's ``r`` uses the ``view(N, K, h, w)`` layout;
    7. PE: ``mean CE_cb(t, y_P where y_P == y_hat else 255)`` over all pixels.

    Returns ``{"ia", "im", "ps", "pe", "total"}``: 0-dim float32 tensors, the four terms
    already multiplied by the preset's weights, ``total`` their sum.
    """
    preset = get_preset(preset)
    crop = tuple(pseudo_label.shape[-2:])
    num_classes = target_logits.shape[1]
    pseudo_label = pseudo_label.long()

    t = upsample(target_logits.float(), crop)  # (N, K, H, W)
    s = upsample(source_logits.detach().float(), crop)  # (N, K, H, W)
    m = upsample(memory_logits.detach().float(), crop)  # (N, K, H, W)

    if class_balance:
        state = state if state is not None else ClassBalanceState(num_classes, pseudo_label.device)
        class_weight = class_balance_weights(pseudo_label, num_classes, state,
                                             preset.rare_fraction)  # (K,)
    else:
        class_weight = None

    w = importance(s, preset.importance)  # (N, H, W)
    loss_ia = (w * balanced_pixel_ce(t, pseudo_label, class_weight)).mean()

    if preset.im == "entropy":
        loss_im = entropy_released(t.softmax(dim=1))
    else:
        loss_im = entropy_diversity(t)

    feats_t = target_feats.float()  # (N, C, h, w)
    feats_m = memory_feats.detach().float()  # (N, C, h', w')
    memory_label = resize_label(m.argmax(dim=1), tuple(feats_m.shape[-2:]))  # (N, h', w')
    protos = prototypes(feats_m, memory_label, num_classes)  # (N, K, C)
    n, _, h, w_ = feats_t.shape
    sim = prototype_similarity(feats_t, protos)  # (N, hw, K)
    proto_map = _layout(sim, n, h, w_, reshape_quirk=False)  # (N, K, h, w)
    proto_label = resize_label(proto_map.argmax(dim=1), crop)  # (N, H, W), no gradient
    ps_map = _layout(sim, n, h, w_, reshape_quirk=preset.ps_reshape_quirk)

    loss_ps = (F.cross_entropy(t, proto_label, ignore_index=IGNORE_INDEX)
               + F.cross_entropy(upsample(ps_map, crop), t.detach().argmax(dim=1),
                                 ignore_index=IGNORE_INDEX))

    agreeing = torch.where(proto_label == pseudo_label, proto_label, IGNORE_INDEX)  # (N, H, W)
    loss_pe = balanced_pixel_ce(t, agreeing, class_weight).mean()

    lam = preset.weights
    terms = {"ia": lam.ia * loss_ia, "im": lam.im * loss_im,
             "ps": lam.ps * loss_ps, "pe": lam.pe * loss_pe}
    terms["total"] = terms["ia"] + terms["im"] + terms["ps"] + terms["pe"]
    return terms
