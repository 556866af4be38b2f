"""Test-time-adaptation baselines IAPC is compared with.

- BN adapt: re-estimate BatchNorm statistics on target frames, nothing else changes.
- TENT (Wang et al., ICLR 2021, DequanWang/tent): minimise the prediction entropy by updating
  only the BatchNorm affine parameters, normalising with the current batch's statistics. The one
  implementation: the runtime's ``tent`` method (:class:`iapc.adapt.adapters.Tent`) steps with
  :func:`tent_step` too, configured to keep running statistics.

Batches are uint8 (N, 3, H, W) RGB, turned into network input with the model's own ``norm``.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from iapc.adapt.iapc_step import batch_norm_layers
from iapc.adapt.preprocessing import normalize
from iapc.errors import UserError


def _input(model: nn.Module, batch_u8: torch.Tensor) -> torch.Tensor:
    if batch_u8.dtype != torch.uint8 or batch_u8.ndim != 4:
        raise UserError(f"expected a uint8 (N, 3, H, W) RGB batch, got {batch_u8.dtype} "
                        f"{tuple(batch_u8.shape)}: convert camera frames with camera_to_rgb first")
    return normalize(batch_u8.to(next(model.parameters()).device), model.norm)


@torch.no_grad()
def bn_adapt(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Replace every BatchNorm's running statistics by the plain average over ``batches``.

    Statistics are reset and ``momentum=None`` makes BatchNorm keep a cumulative average, so
    every batch counts equally whatever their number. The model is returned in eval mode with
    its original momenta; weights are untouched.
    """
    norms = batch_norm_layers(model)
    if not norms:
        raise UserError("the model has no BatchNorm layers: BN adaptation does not apply to it")
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()  # BN updates its running statistics only in train mode
    seen = 0
    for batch in batches:
        model(_input(model, batch))
        seen += 1
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    model.eval()
    if seen == 0:
        raise UserError("bn_adapt got no batches: give at least one batch of target frames")
    return model


def configure_tent(model: nn.Module, batch_statistics: bool = True,
                   bn_momentum: float | None = None) -> nn.Module:
    """Prepare ``model`` for TENT: train mode, only BN affine parameters trainable.

    ``batch_statistics`` (the paper's TENT): BN always normalises with the current batch's
    statistics, the running ones are dropped. False (the runtime's ``tent`` method): the running
    statistics are kept and updated (with ``bn_momentum`` when given), so that the adapted model
    can be exported and run frame by frame.
    """
    model.train()
    model.requires_grad_(False)
    norms = batch_norm_layers(model)
    if not norms:
        raise UserError("the model has no BatchNorm layers: TENT adapts BN affine parameters only")
    for bn in norms:
        bn.requires_grad_(True)
        if batch_statistics:  # force use of batch stats in train and eval modes
            bn.track_running_stats = False
            bn.running_mean = None
            bn.running_var = None
        elif bn_momentum is not None:
            bn.momentum = bn_momentum
    return model


def collect_tent_params(model: nn.Module) -> tuple[list[nn.Parameter], list[str]]:
    """The BN affine parameters TENT optimises, and their names."""
    params, names = [], []
    for module_name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for param_name, param in module.named_parameters(recurse=False):
                if param_name in ("weight", "bias"):
                    params.append(param)
                    names.append(f"{module_name}.{param_name}")
    return params, names


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy of ``softmax(logits)``: (N, K, h, w) -> (N, h, w)."""
    log_p = logits.float().log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def tent_step(model: nn.Module, batch_u8: torch.Tensor, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """One TENT update: forward, mean per-pixel entropy, backward, step.

    Returns ``{"entropy": ...}`` (the loss before the update; one host sync).
    """
    if not model.training:
        raise UserError("tent needs train mode: call configure_tent(model) first")
    logits, _ = model(_input(model, batch_u8))  # (N, K, h, w)
    loss = softmax_entropy(logits).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"entropy": loss.item()}
