"""``iapc demo``: source-only vs IAPC on a synthetic domain shift, end to end on a CPU.

1. writes the synthetic labelled ``source`` domain and one target domain (``night`` by default)
   in the Cityscapes layout under the cache folder (``--cache``, else ``$IAPC_CACHE``, else
   ``~/.cache/iapc``), unless they are already there;
2. trains the ``tiny`` source model on the source domain, or reuses the cached checkpoint;
3. evaluates it on the target domain's labelled split (source-only);
4. adapts it with IAPC on the target's unlabelled training split (offline pseudo-labels);
5. evaluates again and prints both mIoUs.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from iapc.adapt.evaluate import parse_size
from iapc.cache import cache_dir as default_cache_dir
from iapc.errors import UserError


@dataclass
class DemoConfig:
    target: str = "night"
    size: tuple[int, int] = (256, 128)  # (W, H) of the written images and of every network input
    train_images: int = 160  # per domain
    val_images: int = 40
    source_iters: int = 600
    source_batch: int = 8
    source_lr: float = 3e-3
    source_jitter: float = 0.3  # photometric jitter while training the source model
    adapt_iters: int = 300
    adapt_batch: int = 4
    # Backbone lr; the classifier learns 10x faster. 3e-4 measured best of 3e-4..1e-2 for the
    # tiny model on the night domain (docs/BENCHMARKS.md, bench_adaptation.py).
    adapt_lr: float = 3e-4
    crop: tuple[int, int] = (192, 96)  # (W, H) IAPC random crop
    preset: str = "paper"
    seed: int = 0
    device: str = "auto"
    cache: str | None = None


def cache_dir(cfg_cache: str | None) -> Path:
    """``--cache``, else the shared cache (:func:`iapc.cache.cache_dir`)."""
    return Path(cfg_cache) if cfg_cache else default_cache_dir()


def ensure_domain(root: Path, domain: str, cfg: DemoConfig, seed: int) -> Path:
    """Write ``domain`` once; a ``done.json`` stamp records what was written."""
    from iapc.synth import write_domain

    folder = root / f"{domain}_{cfg.size[0]}x{cfg.size[1]}"
    stamp = {"domain": domain, "size": list(cfg.size), "train": cfg.train_images,
             "val": cfg.val_images, "seed": seed}
    marker = folder / "done.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return folder
    write_domain(folder, domain, {"train": cfg.train_images, "val": cfg.val_images},
                 size=cfg.size, seed=seed)
    marker.write_text(json.dumps(stamp))
    return folder


def ensure_source_model(root: Path, source_root: Path, cfg: DemoConfig):
    """The cached tiny source model for this configuration, trained if missing."""
    from iapc.adapt.checkpoint import load_model
    from iapc.data import find_samples
    from iapc.adapt.train_source import TrainConfig, train_source

    path = root / (f"source_tiny_{cfg.size[0]}x{cfg.size[1]}_{cfg.train_images}img_"
                   f"{cfg.source_iters}it_jitter{cfg.source_jitter:g}_seed{cfg.seed}.pth")
    if not path.is_file():
        train_cfg = TrainConfig(iters=cfg.source_iters, batch=cfg.source_batch, size=cfg.size,
                                lr=cfg.source_lr, jitter=cfg.source_jitter, seed=cfg.seed,
                                device=cfg.device)
        train_source("tiny", find_samples(source_root, "train"), train_cfg, out=path)
    model, _ = load_model(path)
    return model, path


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Steps 1-5 above; returns the mIoUs (fractions) and timings."""
    from iapc.data import find_samples
    from iapc.adapt.evaluate import evaluate_model, labelled_samples
    from iapc.adapt.iapc_step import AdaptConfig
    from iapc.adapt.offline import RunConfig, adapt_offline
    from iapc.synth import DOMAINS

    if cfg.target not in DOMAINS or cfg.target == "source":
        raise UserError(f"unknown target domain {cfg.target!r}: choose one of "
                        f"{', '.join(d for d in DOMAINS if d != 'source')}")
    root = cache_dir(cfg.cache) / "demo"
    started = time.perf_counter()
    source_root = ensure_domain(root, "source", cfg, seed=cfg.seed)
    target_root = ensure_domain(root, cfg.target, cfg, seed=cfg.seed + 1)
    model, checkpoint = ensure_source_model(root, source_root, cfg)
    target_val = labelled_samples(target_root, "val")
    eval_kwargs = {"size": cfg.size, "batch_size": 8, "device": cfg.device}
    source_on_source = evaluate_model(model, labelled_samples(source_root, "val"), **eval_kwargs)["miou"]
    source_only = evaluate_model(model, target_val, **eval_kwargs)["miou"]
    adapt_cfg = AdaptConfig(preset=cfg.preset, lr=cfg.adapt_lr, crop=cfg.crop, warmup_iters=0,
                            max_iters=cfg.adapt_iters, seed=cfg.seed)
    run_cfg = RunConfig(iters=cfg.adapt_iters, batch=cfg.adapt_batch, size=cfg.size,
                        seed=cfg.seed, device=cfg.device)
    adapted = adapt_offline(model, "tiny", find_samples(target_root, "train"), adapt_cfg, run_cfg,
                            target_val, source_id=str(checkpoint))
    return {"target": cfg.target, "source_on_source": source_on_source, "source_only": source_only,
            "iapc": adapted["miou"], "adapt_seconds": adapted["seconds"],
            "total_seconds": time.perf_counter() - started, "cache": str(root),
            "config": asdict(cfg)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    parser.add_argument("--target", default=d.target, help="synthetic target domain (night, fog, rain, city)")
    parser.add_argument("--input-size", "--size", dest="size", type=parse_size, default=d.size,
                        help="WIDTHxHEIGHT")
    parser.add_argument("--crop", type=parse_size, default=d.crop, help="WIDTHxHEIGHT IAPC crop")
    parser.add_argument("--train-images", type=int, default=d.train_images)
    parser.add_argument("--val-images", type=int, default=d.val_images)
    parser.add_argument("--source-iters", type=int, default=d.source_iters)
    parser.add_argument("--adapt-iters", type=int, default=d.adapt_iters)
    parser.add_argument("--preset", default=d.preset, help="paper or released")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device)
    parser.add_argument("--cache", default=None, help="cache folder (default $IAPC_CACHE or ~/.cache/iapc)")
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")


def run(args: argparse.Namespace) -> int:
    if min(args.train_images, args.val_images, args.source_iters, args.adapt_iters) < 1:
        raise UserError("--train-images, --val-images, --source-iters and --adapt-iters must be >= 1")
    cfg = DemoConfig(target=args.target, size=args.size, crop=args.crop,
                     train_images=args.train_images, val_images=args.val_images,
                     source_iters=args.source_iters, adapt_iters=args.adapt_iters,
                     preset=args.preset, seed=args.seed, device=args.device, cache=args.cache)
    result = run_demo(cfg)
    print(f"source model on the source domain : {100 * result['source_on_source']:6.2f} mIoU")
    print(f"source-only on '{cfg.target}'{' ' * max(0, 13 - len(cfg.target))}: "
          f"{100 * result['source_only']:6.2f} mIoU")
    print(f"IAPC ({cfg.preset}, {cfg.adapt_iters} steps){' ' * max(0, 10 - len(cfg.preset))}: "
          f"{100 * result['iapc']:6.2f} mIoU  ({100 * (result['iapc'] - result['source_only']):+.2f})")
    print(f"({result['total_seconds']:.0f} s; data and source model cached in {result['cache']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
