"""What the method benchmarks share: the methods' configs, the oracle, the statistics over seeds.

Imported by ``bench_methods.py`` (synthetic domains) and ``bench_real.py`` (ESPNetv2 on CamVid),
so that both compare the same methods the same way:

- :func:`method_configs`: name -> (:class:`~iapc.method_config.AdaptConfig`, pseudo-label mode)
  of every label-free method (source-only, BN-adapt, TENT, IAPC paper, IAPC stream, and the
  stream preset's ablation :data:`VARIANTS`);
- :func:`sample_batches` and :func:`finetune_supervised`: the oracle, supervised fine-tuning on
  labelled frames (AdamW, poly decay over the budget), optionally on random crops;
- :func:`summarise`: per domain the mean per method, paired differences with 95% t-intervals
  (:func:`iapc.metrics.mean_interval`) and the fraction of the source-only -> oracle gap closed.

Run on its own it prints the resolved settings of each method:

    .venv/bin/python benchmarks/method_runs.py --iters 60 --crop 480x360
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import statistics
import time
from typing import Any, Callable, Iterator, Sequence

from iapc.method_config import PRESETS, AdaptConfig, LossWeights
from iapc.errors import UserError
from iapc.metrics import mean_interval
from iapc.options import parse_size

METHOD_NAMES = ("source-only", "BN-adapt", "TENT", "IAPC (paper)", "IAPC (stream)", "oracle")

# name -> changed fields of the stream preset (ablations of docs/METHOD.md's choices), or of
# the config of another method where a "method" key names it
VARIANTS: dict[str, dict[str, Any]] = {
    "teacher=source": {"teacher": "source"},
    "teacher=source_bn": {"teacher": "source_bn"},
    "bn=augmented": {"bn_statistics": "augmented"},
    "bn=frozen": {"bn_statistics": "frozen"},
    "rare=released": {"rare_fraction": None},
    "conf>=0.9": {"min_confidence": 0.9},
    "lr=3e-4": {"lr": 3e-4},
    "lr=3e-5": {"lr": 3e-5},
    "no class balance": {"class_balance": False},
    "IA only": {"weights": LossWeights(ia=0.2, im=0.0, ps=0.0, pe=0.0)},
    "im=entropy": {"im": "entropy"},
    "no photometric": {"photometric": False},
    "no PE": {"weights": LossWeights(ia=0.2, im=0.5, ps=0.04, pe=0.0)},
    "classifier x1": {"classifier_lr_mult": 1.0},
    "classifier x1 lr=3e-5": {"classifier_lr_mult": 1.0, "lr": 3e-5},
    "restore 0.01": {"restore_probability": 0.01},
    "no source share": {"source_statistics_weight": 0.0, "choose_source_share": False},
    "fixed share 0.5": {"choose_source_share": False},
    "frame statistics": {"statistics_from": "frame"},
    # the stream preset before the source share and crop statistics
    "previous default": {"source_statistics_weight": 0.0, "choose_source_share": False,
                         "statistics_from": "frame"},
    "lr=1e-4 conf>=0.9": {"lr": 1e-4, "min_confidence": 0.9},
    # BN-adapt with a share of the source statistics kept ("method" names another base method)
    "BN-adapt + source share 0.25": {"method": "bn", "source_statistics_weight": 0.25},
    "BN-adapt + source share 0.5": {"method": "bn", "source_statistics_weight": 0.5},
    "BN-adapt + source share 0.75": {"method": "bn", "source_statistics_weight": 0.75},
}


def size_option(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` for argparse: a bad value is argparse's one-line usage error."""
    try:
        return parse_size(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# ----------------------------------------------------------------------------- methods


def stream_config(crop: tuple[int, int], seed: int, **changes) -> AdaptConfig:
    """The stream preset as the runtime runs it, with ``changes`` to its preset fields or to
    the config (lr, class_balance)."""
    config_fields = {f.name for f in dataclasses.fields(AdaptConfig)}
    preset_changes = {k: v for k, v in changes.items() if k not in config_fields}
    config_changes = {k: v for k, v in changes.items() if k in config_fields}
    preset = dataclasses.replace(PRESETS["stream"], **preset_changes) if preset_changes else "stream"
    config_changes.setdefault("method", "iapc")
    return AdaptConfig(preset=preset, crop=crop, seed=seed, **config_changes)


def method_configs(seed: int, crop: tuple[int, int], iters: int, paper_lr: float,
                   variants: Sequence[str] = ()) -> dict[str, tuple[AdaptConfig, str]]:
    """name -> (config, pseudo-label mode) of every label-free method.

    ``IAPC (paper)``: the paper preset with offline multi-scale pseudo-labels, poly decay over
    the ``iters`` budget, no warm-up, backbone lr ``paper_lr``. ``IAPC (stream)``: the
    runtime's streaming preset, pseudo-labels on the fly. ``variants``: keys of
    :data:`VARIANTS`, each the stream preset with one change (``"stream, <name>"``).
    """
    configs = {
        "source-only": (AdaptConfig(method="none", seed=seed), "online"),
        "BN-adapt": (AdaptConfig(method="bn", seed=seed), "online"),
        "TENT": (AdaptConfig(method="tent", seed=seed), "online"),
        "IAPC (paper)": (AdaptConfig(method="iapc", preset="paper", lr=paper_lr, crop=crop,
                                     warmup_iters=0, max_iters=iters, seed=seed), "offline"),
        "IAPC (stream)": (stream_config(crop, seed), "online"),
    }
    for name in variants:
        configs[variant_label(name)] = (stream_config(crop, seed, **VARIANTS[name]), "online")
    return configs


def variant_label(name: str) -> str:
    """The method name a variant is reported under: ``"stream, <name>"`` for the stream
    preset's, the variant's own name where it changes another method."""
    if name not in VARIANTS:
        raise UserError(f"unknown variant {name!r}: choose from {', '.join(VARIANTS)}")
    return name if "method" in VARIANTS[name] else f"stream, {name}"


# ----------------------------------------------------------------------------- the oracle


def sample_batches(pairs: Sequence[tuple[Any, Any]], batch: int, seed: int,
                   crop: tuple[int, int] | None = None) -> Iterator[tuple[Any, Any]]:
    """Endless (images uint8 (N, h, w, 3) BGR, labels uint8 (N, h, w)) numpy batches from
    ``pairs`` of (image, train ids): each step ``batch`` distinct pairs drawn at random, and with
    ``crop`` = (W, H) a random window of that size from each (same place in image and label).
    The same ``seed`` gives the same frames and windows, so methods can share them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    size = min(batch, len(pairs))
    while True:
        picks = rng.choice(len(pairs), size=size, replace=False)
        images, labels = [], []
        for i in picks:
            image, label = pairs[i]
            if crop is not None:
                height, width = label.shape
                cw, ch = min(crop[0], width), min(crop[1], height)
                top, left = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
                image, label = image[top:top + ch, left:left + cw], label[top:top + ch, left:left + cw]
            images.append(image)
            labels.append(label)
        yield np.stack(images), np.stack(labels)


def finetune_supervised(model, batches: Iterator[tuple[Any, Any]], iters: int, lr: float,
                        seed: int, on_step: Callable[[int], None] | None = None):
    """The oracle: a copy of ``model`` fine-tuned with cross-entropy on ``iters`` labelled
    ``batches`` (:func:`sample_batches`), AdamW (weight decay 1e-4) with poly decay over the
    budget. Returns the network in train mode."""
    import torch

    from iapc.adapt.train_source import supervised_loss

    torch.manual_seed(seed)
    net = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    for step in range(iters):
        images, labels = next(batches)  # (N, h, w, 3) BGR, (N, h, w)
        for group in optimizer.param_groups:  # poly decay over the budget
            group["lr"] = lr * (1 - step / iters) ** 0.9
        loss = supervised_loss(net, torch.from_numpy(images), torch.from_numpy(labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step)
    return net


# ----------------------------------------------------------------------------- statistics


def timed(label: str, fn: Callable[[], float]) -> float:
    started = time.perf_counter()
    value = fn()
    print(f"    {label:<28} {100 * value:6.2f}  ({time.perf_counter() - started:.0f} s)", flush=True)
    return value


def summarise(runs: dict[str, list[dict[str, float]]], pooled: bool = True) -> dict[str, Any]:
    """Per domain (and, with ``pooled``, over all domains as ``"all"``): mean per method,
    each method's paired difference to source-only and BN-adapt with its 95% interval, and the
    fraction of the source-only -> oracle gap it closes. ``runs``: domain -> one
    {method: score} per seed."""
    summary = {}
    everything: list[dict[str, float]] = [r for rs in runs.values() for r in rs]
    for domain, rows in {**runs, **({"all": everything} if pooled else {})}.items():
        methods = list(rows[0])
        entry = {"mean": {m: statistics.fmean(r[m] for r in rows) for m in methods}}
        for ref in ("source-only", "BN-adapt"):
            if ref in methods:
                entry[f"vs {ref}"] = {m: mean_interval([r[m] - r[ref] for r in rows]) for m in methods}
        if "oracle" in methods and "source-only" in methods:
            gap = entry["mean"]["oracle"] - entry["mean"]["source-only"]
            entry["gap closed"] = {m: (entry["mean"][m] - entry["mean"]["source-only"]) / gap
                                   if gap > 0 else math.nan for m in methods}
        summary[domain] = entry
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The resolved settings of each compared method "
                                "(shared by bench_methods.py and bench_real.py)")
    p.add_argument("--iters", type=int, default=150, help="adaptation steps (the paper preset's decay)")
    p.add_argument("--crop", type=size_option, default=(192, 96), help="WIDTHxHEIGHT IAPC crop")
    p.add_argument("--paper-lr", type=float, default=3e-4)
    p.add_argument("--variants", default="", help=f"comma list of: {', '.join(VARIANTS)}")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    configs = method_configs(0, args.crop, args.iters, args.paper_lr, variants)
    print(json.dumps({name: {**cfg.to_dict(), "pseudo_labels": mode}
                      for name, (cfg, mode) in configs.items()}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
