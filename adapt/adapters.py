"""Test-time adaptation methods behind one small interface, selected by name (``--method``).

Every method is an :class:`Adapter` built from a source model and an
:class:`~iapc.method_config.AdaptConfig`:

- ``step(batch)`` adapts on one uint8 (N, 3, H, W) RGB batch and returns telemetry (floats);
- ``deployable()`` is the network to evaluate or export (the caller puts it in eval mode with
  :func:`deployed`);
- ``state_dict()`` / ``load_state_dict()`` carry everything a resumed run needs; the deployable
  network's weights go into the checkpoint's ``state_dict`` beside it, so ``iapc evaluate`` and
  ``iapc export`` read any method's checkpoint;
- ``reset()`` returns to the source model.

Methods (:data:`METHODS`):

- ``none``: the source model, never changed;
- ``bn``: BatchNorm statistics re-estimated on target frames (running average with
  ``cfg.bn_momentum``, or a plain average of every frame seen when it is None), nothing else;
- ``tent``: entropy minimisation of the BatchNorm affine parameters (Adam, ``cfg.tent_lr``),
  normalising with batch statistics while adapting; the engine is deployed with the running
  statistics those batches left, since an engine segments frames one at a time;
- ``iapc``: IAPC with the config's preset (``paper``, ``released``, ``stream``).

Memory: ``none`` and ``bn`` hold one model copy, ``tent`` one plus Adam's two moments of the
BN affine parameters, ``iapc`` three (source, memory, target) plus SGD momentum.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Any, Callable, Iterator

import torch
from torch import nn

from iapc.adapt.baselines import bn_adapt, collect_tent_params, configure_tent, tent_step
from iapc.adapt.iapc_step import (AdaptConfig, AdaptState, adaptation_step, batch_norm_layers,
                                  copy_buffers, device_of, make_networks, make_optimizer,
                                  mean_entropy, set_source_share,
                                  target_statistics, update_bn_statistics)
from iapc.adapt.augment import random_rescale_crop
from iapc.method_config import SOURCE_SHARES, get_preset
from iapc.errors import UserError


class Adapter:
    """The state of one method on one model. Subclasses set ``name`` and implement the four
    methods; ``source`` is a frozen copy of the source model (eval mode) kept for reset."""

    name = ""
    updates_weights = True  # False: nothing to export after the first engine
    # False where a step only moves BatchNorm statistics: no statistics phase comes before it
    takes_gradient_steps = True

    def __init__(self, model: nn.Module, cfg: AdaptConfig):
        self.given_cfg = cfg
        self.cfg = cfg.resolved()  # the preset's values where cfg leaves them None
        self.source = copy.deepcopy(model).eval().requires_grad_(False)
        self.step_count = 0
        # where statistics-only updates take their crops (statistics_from "crop")
        self.statistics_generator = torch.Generator().manual_seed(self.cfg.seed)

    def step(self, batch: torch.Tensor, pseudo_label: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> dict[str, float]:
        raise NotImplementedError

    def deployable(self) -> nn.Module:
        raise NotImplementedError

    def memory_network(self) -> nn.Module:
        """The network the health gate measures drift against (IAPC's memory; else itself)."""
        return self.deployable()

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs besides the deployable weights and the step counter (both
        top-level keys of the checkpoint it goes into: ``state_dict`` and ``step``): here the
        source share the statistics hold (it may have been chosen, :meth:`choose_source_share`)."""
        return {"source_share": self.cfg.source_statistics_weight}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From a checkpoint's payload (its ``step`` and the keys of :meth:`state_dict`)."""
        self.step_count = int(state.get("step", 0))
        self._load_source_share(state)

    def _load_source_share(self, state: dict[str, Any]) -> None:
        # the statistics themselves come with the weights; this says what they hold
        if "source_share" in state:
            self.cfg = dataclasses.replace(self.cfg,
                                           source_statistics_weight=float(state["source_share"]))

    def reset(self) -> None:
        """Back to the source model and a fresh state (the configured source share too)."""
        self.__init__(self.source, self.given_cfg)

    def recalibrate(self, batch: torch.Tensor) -> None:
        """BatchNorm running statistics of the deployable network := the plain average over
        ``batch`` (uint8 (N, 3, H, W) RGB of a new domain), so that a domain met for the first
        time is served with its own normalisation at once, keeping the source's share
        (``cfg.source_statistics_weight``). Weights and modes are untouched."""
        network = self.deployable()
        if not batch_norm_layers(network):
            return
        modes = {m: m.training for m in network.modules()}
        bn_adapt(network, [self.statistics_view(batch)])
        if self.cfg.source_statistics_weight > 0:  # the plain average is all target estimate
            set_source_share(network, self.source, target_statistics(network, self.source, 0.0),
                             self.cfg.source_statistics_weight)
        for module, mode in modes.items():
            module.train(mode)

    def follow_statistics(self, batch: torch.Tensor) -> None:
        """One no-gradient update of the deployable network's BatchNorm running statistics
        towards ``batch`` (uint8 (N, 3, H, W) RGB), as the method's own steps move them; the
        weights, the step counter and the schedule are untouched."""
        network = self.deployable()
        if batch_norm_layers(network):
            update_bn_statistics(network, self.statistics_view(batch).to(device_of(network)),
                                 self.cfg, self.source)

    def statistics_view(self, batch: torch.Tensor) -> torch.Tensor:
        """What statistics-only updates see of a uint8 (N, 3, H, W) batch: the whole frames, or
        with the preset's ``statistics_from`` "crop" a random ``cfg.crop`` window of each (the
        extent the method's own steps take their statistics from)."""
        if get_preset(self.cfg.preset).statistics_from != "crop":
            return batch
        return random_rescale_crop(batch, self.cfg.fitted_to(batch.shape[-1], batch.shape[-2]).crop_hw,
                                   (1.0, 1.0), generator=self.statistics_generator).x0

    def choose_source_share(self, images: torch.Tensor) -> dict[float, float]:
        """The label-free choice of the source share of the BatchNorm statistics
        (``cfg.choose_source_share``): each share of :data:`SOURCE_SHARES` is tried on uint8
        (N, 3, H, W) RGB ``images`` (recent frames, no labels) and the one whose network
        predicts with the lowest mean entropy is kept, in the deployable network and for the
        statistics updates that follow. Returns {share: mean entropy}, empty when there is
        no choice to make."""
        network = self.deployable()
        current = self.cfg.source_statistics_weight
        if not self.cfg.choose_source_share or current >= 1 or not batch_norm_layers(network):
            return {}
        target = target_statistics(network, self.source, current)
        entropies = {}
        for share in SOURCE_SHARES:
            set_source_share(network, self.source, target, share)
            entropies[share] = mean_entropy(network, images)
        self.use_source_share(min(entropies, key=entropies.get), target)
        return entropies

    def use_source_share(self, share: float, target: list[torch.Tensor] | None = None) -> None:
        """Statistics that hold ``share`` of the source's from now on (``target``: the target
        estimate, :func:`target_statistics` of the current share, when already computed)."""
        network = self.deployable()
        if target is None:
            target = target_statistics(network, self.source, self.cfg.source_statistics_weight)
        set_source_share(network, self.source, target, share)
        self.cfg = dataclasses.replace(self.cfg, source_statistics_weight=share)

    def skipped(self, stats: dict[str, Any]) -> bool:
        return bool(stats.get("skipped", False))


@contextlib.contextmanager
def deployed(network: nn.Module) -> Iterator[nn.Module]:
    """``network`` in eval mode for the block (export, evaluation), its modes restored after."""
    modes = {m: m.training for m in network.modules()}
    network.eval()
    try:
        yield network
    finally:
        for module, mode in modes.items():
            module.train(mode)


class SourceOnly(Adapter):
    """``none``: serve and evaluate the source model as it is."""

    name = "none"
    updates_weights = False

    def step(self, batch, pseudo_label=None, generator=None):
        self.step_count += 1  # counted, so that loops over steps end; the weights never change
        return {}

    def deployable(self):
        return self.source


class BNAdapt(Adapter):
    """``bn``: only the BatchNorm running statistics follow the target frames."""

    name = "bn"
    takes_gradient_steps = False

    def __init__(self, model, cfg):
        super().__init__(model, cfg)
        self.model = copy.deepcopy(self.source)
        if self.cfg.bn_momentum is None:  # plain average over all frames seen
            for bn in batch_norm_layers(self.model):
                bn.reset_running_stats()
                bn.momentum = None

    def step(self, batch, pseudo_label=None, generator=None):
        self.follow_statistics(batch)
        self.step_count += 1
        return {}

    def deployable(self):
        return self.model


class Tent(Adapter):
    """``tent``: minimise the mean per-pixel prediction entropy over the BN affine parameters."""

    name = "tent"

    def __init__(self, model, cfg):
        super().__init__(model, cfg)
        # running statistics kept, so that the adapted model can be exported and run frame by frame
        self.model = configure_tent(copy.deepcopy(self.source), batch_statistics=False,
                                    bn_momentum=cfg.bn_momentum)
        params, _ = collect_tent_params(self.model)
        self.optimizer = torch.optim.Adam(params, lr=cfg.tent_lr, betas=(0.9, 0.999))

    def step(self, batch, pseudo_label=None, generator=None):
        stats = tent_step(self.model, batch, self.optimizer)  # batch statistics (train mode)
        self.step_count += 1
        return {**stats, "total": stats["entropy"]}

    def deployable(self):
        return self.model

    def state_dict(self):
        return {**super().state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])


class IAPC(Adapter):
    """``iapc``: the three networks, SGD, the schedule and the class-balance state."""

    name = "iapc"

    def __init__(self, model, cfg):
        super().__init__(model, cfg)
        self.source, self.memory, self.target = make_networks(model, channels_last=cfg.channels_last)
        self.trained = self.target  # replaced by a DistributedDataParallel wrapper in DDP runs
        self.optimizer = make_optimizer(self.target, cfg)
        self.state = AdaptState.new(self.target.num_classes, device_of(self.target))
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def step(self, batch, pseudo_label=None, generator=None):
        stats = adaptation_step(self.source, self.memory, self.trained, batch, self.optimizer,
                                self.state, self.cfg, pseudo_label=pseudo_label,
                                generator=generator if generator is not None else self.generator)
        if not stats["skipped"] and self.cfg.restore_probability > 0:
            stochastic_restore(self.target, self.source, self.cfg.restore_probability,
                               self.generator)
        self.step_count = self.state.step
        return stats

    def deployable(self):
        return self.target

    def memory_network(self):
        return self.memory

    def state_dict(self):
        return {**super().state_dict(), "memory": self.memory.state_dict(),
                "optimizer": self.optimizer.state_dict(), "adapt_state": self.state.state_dict()}

    def load_state_dict(self, state):
        if "memory" not in state or "adapt_state" not in state:
            raise UserError("the checkpoint holds no IAPC state (memory network, optimiser): "
                            "resume it with the --method it was made with")
        self.memory.load_state_dict(state["memory"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.state.load_state_dict(state["adapt_state"])
        self._load_source_share(state)
        self.step_count = self.state.step

    def recalibrate(self, batch):
        super().recalibrate(batch)
        self.memory.load_state_dict(self.target.state_dict())  # same weights after a reset

    def follow_statistics(self, batch):
        super().follow_statistics(batch)
        copy_buffers(self.memory, self.target)  # M normalises with T's statistics

    def use_source_share(self, share, target=None):
        super().use_source_share(share, target)
        copy_buffers(self.memory, self.target)


def stochastic_restore(target: nn.Module, source: nn.Module, probability: float,
                       generator: torch.Generator) -> None:
    """CoTTA's stochastic restore: each weight element of ``target`` returns to its ``source``
    value with ``probability`` (BN statistics are left alone: they track the target domain)."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            restore = torch.rand(t.shape, generator=generator).to(t.device) < probability
            t.copy_(torch.where(restore, s, t))


METHODS: dict[str, Callable[[nn.Module, AdaptConfig], Adapter]] = {
    "none": SourceOnly, "bn": BNAdapt, "tent": Tent, "iapc": IAPC}


def make_adapter(method: str, model: nn.Module, cfg: AdaptConfig) -> Adapter:
    """The :class:`Adapter` of ``method`` on a copy of ``model`` (which is left untouched)."""
    if method not in METHODS:
        raise UserError(f"unknown adaptation method {method!r}: choose one of {', '.join(METHODS)}")
    return METHODS[method](model, cfg)
