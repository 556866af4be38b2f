"""One IAPC adaptation step and the pieces around it: the three networks, the optimiser, the
learning-rate schedule, the EMA memory and offline pseudo-labels (see ``docs/METHOD.md``).

Typical use::

    source, memory, target = make_networks(build_model("tiny"))
    optimizer = make_optimizer(target, cfg)
    state = AdaptState.new(target.num_classes)
    for batch in frames:  # uint8 (N, 3, H, W) RGB
        stats = adaptation_step(source, memory, target, batch, optimizer, state, cfg)

Memory cost: three copies of the model's weights (source, memory, target) plus the SGD
momentum buffer of the target's trainable parameters, i.e. about 4x the model size.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from iapc.adapt.augment import photometric_augment, random_rescale_crop
from iapc.adapt.losses import IGNORE_INDEX, ClassBalanceState, get_preset, iapc_losses, upsample
from iapc.adapt.preprocessing import normalize
from iapc.errors import UserError
from iapc.method_config import SCHEDULES, AdaptConfig  # noqa: F401 (re-exported)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LOSS_KEYS = ("ia", "im", "ps", "pe", "total")


@dataclass
class AdaptState:
    """What a step carries to the next besides the weights: the step counter (drives the
    schedule), the class-balance EMA, and the fp16 gradient scaler when one is used."""

    step: int
    class_balance: ClassBalanceState
    grad_scaler: torch.amp.GradScaler | None = field(default=None, repr=False)

    @classmethod
    def new(cls, num_classes: int, device: torch.device | str | None = None) -> "AdaptState":
        return cls(step=0, class_balance=ClassBalanceState(num_classes, device))

    def state_dict(self) -> dict[str, Any]:
        state = {"step": int(self.step), "class_balance": self.class_balance.state_dict()}
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.class_balance.load_state_dict(state["class_balance"])
        if "grad_scaler" in state:
            self.grad_scaler = self.grad_scaler or torch.amp.GradScaler("cuda")
            self.grad_scaler.load_state_dict(state["grad_scaler"])


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_bn_affine(model: nn.Module) -> nn.Module:
    """BatchNorm weight and bias get ``requires_grad=False``; the layers stay in whatever mode
    they are (train mode in ``T``, so running statistics follow the target batches)."""
    for bn in batch_norm_layers(model):
        for param in (bn.weight, bn.bias):
            if param is not None:
                param.requires_grad_(False)
    return model


def make_networks(source_model: nn.Module, channels_last: bool = False
                  ) -> tuple[nn.Module, nn.Module, nn.Module]:
    """``(S, M, T)``: three deep copies of the source model.

    ``S``: eval mode, no gradients, never updated. ``M``: eval mode, no gradients, updated only
    by :func:`ema_update` (parameters by EMA, BN buffers copied from ``T``, so in eval mode it
    normalises with ``T``'s target statistics). ``T``: train mode, trainable except the
    BatchNorm affine parameters.
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    source = copy.deepcopy(source_model).to(memory_format=memory_format).eval().requires_grad_(False)
    memory = copy.deepcopy(source_model).to(memory_format=memory_format).eval().requires_grad_(False)
    target = copy.deepcopy(source_model).to(memory_format=memory_format).train().requires_grad_(True)
    freeze_bn_affine(target)
    return source, memory, target


def learning_rate(step: int, cfg: AdaptConfig) -> float:
    """The backbone learning rate at ``step`` (the classifier's is ``classifier_lr_mult`` times it).

    ``lr * warm(i) * decay(i)``: ``warm`` rises linearly from ``warmup_factor`` to 1 over
    ``warmup_iters`` and then stays 1; ``decay`` is ``max(0, 1 - i/max_iters)^power`` for the
    ``poly`` schedule (so it never goes negative past ``max_iters``) and 1 for ``constant``.
    Multiplying, rather than starting the decay after the warm-up, keeps it continuous.
    """
    cfg = cfg.resolved()
    if step < cfg.warmup_iters:
        warm = cfg.warmup_factor + (1.0 - cfg.warmup_factor) * step / cfg.warmup_iters
    else:
        warm = 1.0
    decay = poly_decay(step, cfg.max_iters, cfg.power) if cfg.schedule == "poly" else 1.0
    return cfg.lr * warm * decay


def poly_decay(step: int, total: int, power: float) -> float:
    """The polynomial learning-rate decay ``max(0, 1 - step/total)^power`` (0 from ``total`` on);
    the factor of this schedule and of source training (:mod:`iapc.adapt.train_source`)."""
    return max(0.0, 1.0 - step / total) ** power


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, cfg: AdaptConfig) -> float:
    """Sets every group's lr for ``step`` (times its ``lr_mult``); returns the backbone lr."""
    lr = learning_rate(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    return lr


def make_optimizer(target: nn.Module, cfg: AdaptConfig) -> torch.optim.SGD:
    """SGD (Nesterov) over the trainable parameters: backbone at lr, classifier at 10x lr."""
    cfg = cfg.resolved()
    optimizer = sgd_optimizer(target, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov,
                              cfg.classifier_lr_mult)
    set_learning_rate(optimizer, 0, cfg)
    return optimizer


def sgd_optimizer(network: nn.Module, lr: float, momentum: float, weight_decay: float,
                  nesterov: bool, classifier_lr_mult: float) -> torch.optim.SGD:
    """SGD over the trainable parameters of ``network`` in the groups of its
    ``parameter_groups()``: the backbone at ``lr``, the classifier at ``classifier_lr_mult``
    times it (each group's ``lr_mult``); used by IAPC and by source training
    (:mod:`iapc.adapt.train_source`). A trainable parameter in no group is an error."""
    groups = network.parameter_groups()
    grouped = {id(p) for params in groups.values() for p in params}
    stray = [name for name, p in network.named_parameters() if p.requires_grad and id(p) not in grouped]
    if stray:
        raise UserError(f"model parameters {stray[:3]} are trainable but in no parameter group: "
                        "list them in the model's parameter_groups()")
    param_groups = []
    for name, mult in (("backbone", 1.0), ("classifier", classifier_lr_mult)):
        params = [p for p in groups.get(name, []) if p.requires_grad]
        if params:
            param_groups.append({"params": params, "name": name, "lr_mult": mult, "lr": lr * mult})
    if not param_groups:
        raise UserError("the network has no trainable parameters: adapt a target built with "
                        "make_networks, train a model whose parameter_groups() are not empty")
    return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov)


@torch.no_grad()
def ema_update(memory: nn.Module, target: nn.Module, alpha: float) -> None:
    """``theta_M <- alpha * theta_M + (1 - alpha) * theta_T`` for all parameters (one fused
    ``_foreach`` call per operation), and every buffer (BN running stats) copied from ``T``."""
    memory_params, target_params = list(memory.parameters()), list(target.parameters())
    memory_buffers, target_buffers = list(memory.buffers()), list(target.buffers())
    if len(memory_params) != len(target_params) or len(memory_buffers) != len(target_buffers):
        raise UserError("memory and target networks differ in structure: build both with make_networks")
    torch._foreach_mul_(memory_params, alpha)
    torch._foreach_add_(memory_params, target_params, alpha=1.0 - alpha)
    copy_buffers(memory, target)


@torch.no_grad()
def copy_buffers(memory: nn.Module, target: nn.Module) -> None:
    """``M`` takes ``T``'s buffers (BN running statistics) and keeps its own weights."""
    torch._foreach_copy_(list(memory.buffers()), list(target.buffers()))


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _autocast(cfg: AdaptConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.amp_dtype is None:
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise UserError(f"amp_dtype={cfg.amp_dtype!r} needs a CUDA device, the networks are on "
                        f"{device.type}: set amp_dtype to None")
    return torch.autocast("cuda", dtype=AMP_DTYPES[cfg.amp_dtype])


def _network_input(images_u8: torch.Tensor, model: nn.Module, cfg: AdaptConfig) -> torch.Tensor:
    x = normalize(images_u8, model.norm)  # float32 (N, 3, h, w)
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


def _grad_scaler(state: AdaptState, cfg: AdaptConfig) -> torch.amp.GradScaler | None:
    # fp16 gradients underflow without loss scaling; bf16 has float32's range and needs none.
    if cfg.amp_dtype == "fp16" and state.grad_scaler is None:
        state.grad_scaler = torch.amp.GradScaler("cuda")
    return state.grad_scaler if cfg.amp_dtype == "fp16" else None


@contextlib.contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in eval mode for the block: they normalise with, and do not update, their
    running statistics (gradients still flow); the previous modes come back afterwards."""
    norms = batch_norm_layers(model)
    modes = [bn.training for bn in norms]
    for bn in norms:
        bn.eval()
    try:
        yield
    finally:
        for bn, mode in zip(norms, modes):
            bn.train(mode)


@contextlib.contextmanager
def running_statistics_untouched(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with each batch's own statistics (train mode) but leave their
    running statistics as they are (momentum 0) for the block."""
    norms = batch_norm_layers(model)
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.momentum = 0.0
    try:
        yield
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum


def _gradient_path_statistics(target: nn.Module, bn_statistics: str):
    """How ``T``'s BatchNorm treats the augmented gradient path: "augmented" (paper) lets the
    running statistics follow it; "clean" normalises it with batch statistics and leaves the
    running ones (learnt from clean frames) alone; "frozen" normalises it with those."""
    if bn_statistics == "clean":
        return running_statistics_untouched(target)
    if bn_statistics == "frozen":
        return frozen_bn_statistics(target)
    return contextlib.nullcontext()


@contextlib.contextmanager
def borrowed_statistics(network: nn.Module, lender: nn.Module) -> Iterator[None]:
    """``network`` normalises with ``lender``'s BatchNorm buffers for the block (its own come
    back afterwards): the source weights with the target's statistics, without a fourth copy."""
    own = [b.clone() for b in network.buffers()]
    torch._foreach_copy_(list(network.buffers()), list(lender.buffers()))
    try:
        yield
    finally:
        torch._foreach_copy_(list(network.buffers()), own)


@torch.no_grad()
def update_bn_statistics(model: nn.Module, images_u8: torch.Tensor, cfg: "AdaptConfig",
                         source: nn.Module | None = None) -> None:
    """One train-mode forward of the un-augmented frames: BatchNorm running statistics move
    towards them by the layers' momentum (``cfg.bn_momentum`` when set). No gradients.

    With ``cfg.source_statistics_weight`` w > 0 and the ``source`` network given, each layer's
    statistics stay ``w * source + (1 - w) * target estimate`` (:func:`keep_source_share`)."""
    norms = batch_norm_layers(model)
    if cfg.bn_momentum is not None:
        for bn in norms:
            bn.momentum = cfg.bn_momentum
    weight = cfg.resolved().source_statistics_weight
    before = _running_statistics(norms) if weight > 0 and source is not None else None
    modes = [bn.training for bn in norms]
    for bn in norms:
        bn.train()
    with _autocast(cfg, device_of(model)):
        model(_network_input(images_u8, model, cfg))
    for bn, mode in zip(norms, modes):
        bn.train(mode)
    if before is not None:
        keep_source_share(norms, before, batch_norm_layers(source), weight)


@torch.no_grad()
def target_statistics(model: nn.Module, source: nn.Module, weight: float) -> list[torch.Tensor]:
    """The target estimate ``t`` behind statistics that hold ``weight * s + (1 - weight) * t``:
    [mean, var] per BatchNorm layer of ``model``, in order. ``weight`` must be below 1."""
    if weight >= 1:
        raise UserError("statistics that are all the source's hold no target estimate: use a "
                        "source_statistics_weight below 1")
    pairs = zip(batch_norm_layers(model), batch_norm_layers(source))
    return [(own - weight * src) / (1 - weight) for bn, s in pairs
            for own, src in ((bn.running_mean, s.running_mean), (bn.running_var, s.running_var))]


@torch.no_grad()
def set_source_share(model: nn.Module, source: nn.Module, target: list[torch.Tensor],
                     weight: float) -> None:
    """Every BatchNorm layer's statistics := ``weight * source's + (1 - weight) * target``
    (``target``: :func:`target_statistics`)."""
    pairs = zip(batch_norm_layers(model), batch_norm_layers(source))
    buffers = [(own, src) for bn, s in pairs
               for own, src in ((bn.running_mean, s.running_mean), (bn.running_var, s.running_var))]
    for (own, src), estimate in zip(buffers, target):
        own.copy_(weight * src + (1 - weight) * estimate)


@torch.inference_mode()
def mean_entropy(model: nn.Module, images_u8: torch.Tensor, batch_size: int = 4) -> float:
    """Mean per-pixel softmax entropy (nats) of ``model`` in eval mode (its modes restored after)
    on uint8 (N, 3, H, W) RGB images."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        total, pixels = 0.0, 0
        for chunk in images_u8.split(batch_size):
            logits, _ = model(normalize(chunk.to(device_of(model)), model.norm))  # (n, K, h, w)
            log_p = logits.float().log_softmax(dim=1)
            entropy = -(log_p.exp() * log_p).sum(dim=1)  # (n, h, w)
            total, pixels = total + float(entropy.sum()), pixels + entropy.numel()
    finally:
        for module, mode in modes.items():
            module.train(mode)
    return total / max(1, pixels)


def _running_statistics(norms: list[nn.modules.batchnorm._BatchNorm]) -> list[torch.Tensor]:
    return [t.clone() for bn in norms for t in (bn.running_mean, bn.running_var)]


def keep_source_share(norms: list[nn.modules.batchnorm._BatchNorm], before: list[torch.Tensor],
                      source_norms: list[nn.modules.batchnorm._BatchNorm], weight: float) -> None:
    """Turns one plain running-statistics update of ``norms`` into the update of a mixture.

    The buffers hold ``b = w s + (1 - w) t`` (``s``: the source layer's statistics, ``t``: the
    target estimate, an average of batch statistics ``x`` with rate ``m``). The layer has just
    computed ``raw = (1 - m) b + m x``; the mixture's update is ``(1 - m) b + m (w s + (1 - w) x)
    = (1 - w) raw + w ((1 - m) b + m s)``. Means and variances mix linearly (the mean-gap
    term of a true mixture's variance is left out, so the update stays a running average).
    ``m`` is the layer's momentum, or ``1 / batches seen`` for a cumulative average."""
    if len(source_norms) != len(norms):
        raise UserError("the source network's BatchNorm layers differ from the adapted one's")
    for i, (bn, src) in enumerate(zip(norms, source_norms)):
        rate = bn.momentum if bn.momentum is not None else 1.0 / max(1, int(bn.num_batches_tracked))
        for j, (raw, source_value) in enumerate(((bn.running_mean, src.running_mean),
                                                 (bn.running_var, src.running_var))):
            previous = before[2 * i + j]
            raw.mul_(1 - weight).add_((1 - rate) * previous + rate * source_value, alpha=weight)


def teacher_label(teacher_logits: torch.Tensor, crop: tuple[int, int],
                  min_confidence: float) -> torch.Tensor:
    """``y_hat`` (N, H, W) long: argmax of the upsampled teacher logits (N, K, h, w); pixels whose
    top probability is below ``min_confidence`` become the ignore index."""
    prob = upsample(teacher_logits.float(), crop).softmax(dim=1)  # (N, K, H, W)
    confidence, label = prob.max(dim=1)
    if min_confidence > 0:
        label = torch.where(confidence >= min_confidence, label, IGNORE_INDEX)
    return label


def adaptation_step(source: nn.Module, memory: nn.Module, target: nn.Module, batch: torch.Tensor,
                    optimizer: torch.optim.Optimizer, state: AdaptState, cfg: AdaptConfig,
                    pseudo_label: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> dict[str, float]:
    """One IAPC step on a uint8 (N, 3, H, W) RGB batch, in the released code's order.

    1. EMA update of ``M`` from ``T``;
    2. views: ``x1`` (rescaled crop), ``x0`` (un-rescaled crop), ``x2`` (photometric ``x1``);
       with the preset's ``bn_statistics`` "clean" or "frozen", ``T``'s running BatchNorm
       statistics then follow the un-augmented batch, or its crop ``x0`` when the preset's
       ``statistics_from`` is "crop" (:func:`update_bn_statistics`);
    3. the teacher on ``x1`` (``S``, or ``M`` for ``teacher="memory"``) and ``M(x0)`` without
       autograd;
    4. ``y_hat``: the cropped offline ``pseudo_label`` (N, H, W) if given, else the teacher's
       argmax (streaming), low-confidence pixels ignored when the preset says so;
    5. ``T(x2)`` (BatchNorm as :func:`_gradient_path_statistics` says), the losses, backward,
       SGD step.

    Returns the weighted loss terms ``ia, im, ps, pe, total``, the ``lr`` used and ``skipped``.
    A non-finite loss skips the optimiser step (and the step counter) and returns
    ``skipped=True``; the caller is expected to roll back (BN statistics and class-balance
    state have already seen the batch).
    """
    cfg = cfg.resolved()
    preset = get_preset(cfg.preset)
    device = device_of(target)
    batch = batch.to(device)
    if pseudo_label is not None:
        pseudo_label = pseudo_label.to(device)

    ema_update(memory, target, cfg.ema_alpha)
    views = random_rescale_crop(batch, cfg.crop_hw, cfg.scale_range, label=pseudo_label,
                                generator=generator)
    if preset.bn_statistics != "augmented":  # "clean"/"frozen": they follow un-augmented pixels
        update_bn_statistics(target, views.x0 if preset.statistics_from == "crop" else batch,
                             cfg, source)
    x2 = photometric_augment(views.x1, generator) if preset.photometric else views.x1

    teacher = memory if preset.teacher == "memory" else source
    # "source_bn": the frozen source weights normalising with T's (target) statistics
    borrowed = (borrowed_statistics(source, target) if preset.teacher == "source_bn"
                else contextlib.nullcontext())
    with torch.inference_mode(), _autocast(cfg, device), borrowed:
        teacher_logits, _ = teacher(_network_input(views.x1, teacher, cfg))  # (N, K, h, w)
        memory_logits, memory_feats = memory(_network_input(views.x0, memory, cfg))
    # Inference tensors cannot enter autograd graphs; clones outside inference mode can.
    teacher_logits, memory_logits, memory_feats = (
        t.clone() for t in (teacher_logits, memory_logits, memory_feats))
    if views.label is not None:
        label = views.label  # (N, H, W) offline pseudo-label cropped like x1
    else:
        label = teacher_label(teacher_logits, cfg.crop_hw, preset.min_confidence)  # (N, H, W)

    with _autocast(cfg, device), _gradient_path_statistics(target, preset.bn_statistics):
        target_logits, target_feats = target(_network_input(x2, target, cfg))
    losses = iapc_losses(target_logits, target_feats, teacher_logits, memory_logits, memory_feats,
                         label, preset=preset, state=state.class_balance,
                         class_balance=cfg.class_balance)

    optimizer.zero_grad(set_to_none=True)
    scaler = _grad_scaler(state, cfg)
    (scaler.scale(losses["total"]) if scaler else losses["total"]).backward()
    # The step's only host sync: the loss values, needed for telemetry and the finiteness check.
    values = dict(zip(LOSS_KEYS, torch.stack([losses[k].detach() for k in LOSS_KEYS]).tolist()))
    lr = learning_rate(state.step, cfg)
    if not all(math.isfinite(v) for v in values.values()):
        optimizer.zero_grad(set_to_none=True)
        return {**values, "lr": lr, "skipped": True}
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    set_learning_rate(optimizer, state.step + 1, cfg)
    state.step += 1
    return {**values, "lr": lr, "skipped": False}


@torch.inference_mode()
def ensemble_probabilities(model: nn.Module, images_u8: torch.Tensor,
                           scales: tuple[float, ...] = (0.75, 1.0, 1.25), flip: bool = True
                           ) -> torch.Tensor:
    """Softmax averaged over ``scales`` and (with ``flip``) horizontal flips, each upsampled to
    the image size: uint8 (N, 3, H, W) RGB -> float (N, K, H, W). ``model`` should be in eval mode."""
    device = device_of(model)
    x = normalize(images_u8.to(device), model.norm)  # (N, 3, H, W)
    size = tuple(x.shape[-2:])
    prob_sum = torch.zeros(x.shape[0], model.num_classes, *size, device=device)
    views = 0
    for scale in scales:
        scaled_size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        xs = x if scaled_size == size else F.interpolate(x, size=scaled_size, mode="bilinear",
                                                          align_corners=True)
        for flipped in ((False, True) if flip else (False,)):
            logits, _ = model(xs.flip(-1) if flipped else xs)  # (N, K, h, w)
            logits = logits.flip(-1) if flipped else logits
            prob_sum += upsample(logits.float(), size).softmax(dim=1)
            views += 1
    return prob_sum / views


def generate_pseudo_labels(source: nn.Module, images_u8: torch.Tensor,
                           scales: tuple[float, ...] = (0.75, 1.0, 1.25), flip: bool = True
                           ) -> torch.Tensor:
    """Offline pseudo-labels as the released code: the argmax of :func:`ensemble_probabilities`
    over ``scales`` and flips. ``images_u8`` uint8 (N, 3, H, W) RGB -> uint8 (N, H, W)."""
    if source.num_classes > 255:
        raise UserError(f"{source.num_classes} classes do not fit uint8 pseudo-labels (255 is ignore)")
    return ensemble_probabilities(source, images_u8, scales, flip).argmax(dim=1).to(torch.uint8)
