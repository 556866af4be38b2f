"""Adaptation methods side by side, with an oracle ceiling, several seeds and 95% intervals.

For every synthetic target domain and seed (a freshly generated instance of the domain per seed:
``--train-images`` unlabelled training images, ``--val-images`` labelled val images), each method
adapts a copy of one source checkpoint on the training images through the same
:func:`~iapc.adapt.offline.adapt_offline` loop and :mod:`iapc.adapt.adapters` interface the
``iapc adapt --method`` command uses, and is scored (mIoU, 19 classes) on the val images:

- ``source-only`` (``--method none``), ``BN-adapt`` (``bn``), ``TENT`` (``tent``);
- ``IAPC (paper)``: the paper preset with offline multi-scale pseudo-labels (poly decay over the
  budget, no warm-up, as ``bench_adaptation.py``);
- ``IAPC (stream)``: the runtime's streaming preset, pseudo-labels on the fly;
- any ``--variants`` of the stream preset (one changed field each, for ablations);
- ``oracle``: supervised fine-tuning on the *labels* of the same training images, same steps
  (AdamW), the ceiling no label-free method is expected to pass.

Reported per domain: mean mIoU per method, each method's difference to BN-adapt and to
source-only with a 95% t-interval over seeds (paired: same data per seed), and the fraction of
the source-only -> oracle gap it closes. Writes ``results.json`` and ``results.md`` to ``--out``.

    OMP_NUM_THREADS=1 python benchmarks/bench_methods.py --checkpoint SOURCE.pt --out OUT
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from method_runs import (VARIANTS, finetune_supervised, method_configs, sample_batches,  # this folder
                         summarise, timed, variant_label)

from iapc.adapt.checkpoint import load_model
from iapc.data import find_samples, load_sample
from iapc.adapt.evaluate import evaluate_model, labelled_samples, parse_size
from iapc.adapt.iapc_step import AdaptConfig
from iapc.adapt.offline import RunConfig, adapt_offline
from iapc.synth import write_domain

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="source model (e.g. the embedded one)")
    p.add_argument("--out", default="bench-out/methods")
    p.add_argument("--data", default=None, help="where the target domains are written (default: OUT/data)")
    p.add_argument("--domains", default="night,fog,rain,city")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--size", type=parse_size, default=None, help="WxH (default: the checkpoint's)")
    p.add_argument("--train-images", type=int, default=96)
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument("--iters", type=int, default=150)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=parse_size, default=(192, 96), help="WIDTHxHEIGHT IAPC crop")
    p.add_argument("--paper-lr", type=float, default=3e-4)
    p.add_argument("--oracle-lr", type=float, default=1e-3)
    p.add_argument("--methods", default="source-only,BN-adapt,TENT,IAPC (paper),IAPC (stream),oracle")
    p.add_argument("--variants", default="", help=f"comma list of: {', '.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- methods


def run_method(model, train, val, cfg: AdaptConfig, pseudo_labels: str, args, seed: int) -> float:
    iters = 1 if cfg.method == "none" else args.iters
    run_cfg = RunConfig(iters=iters, batch=args.batch, size=args.size, seed=seed, device="cpu",
                        pseudo_labels=pseudo_labels, progress=False)
    return adapt_offline(model, "tiny", train, cfg, run_cfg, val)["miou"]


def run_oracle(model, train_labelled, val, args, seed: int) -> float:
    """Supervised fine-tuning on the training images' labels: the ceiling."""
    pairs = [load_sample(s, args.size) for s in train_labelled]
    net = finetune_supervised(model, sample_batches(pairs, args.batch, seed), args.iters,
                              args.oracle_lr, seed)
    return evaluate_model(net.eval(), val, size=args.size, batch_size=8, device="cpu")["miou"]


# ----------------------------------------------------------------------------- one domain


def domain_instance(data: Path, domain: str, seed: int, args) -> Path:
    """A fresh instance of ``domain`` per seed (different scenes), written once."""
    root = data / f"{domain}_{args.size[0]}x{args.size[1]}_{args.train_images}_{args.val_images}_s{seed}"
    if not (root / ".complete").is_file():
        write_domain(root, domain, {"train": args.train_images, "val": args.val_images},
                     size=args.size, seed=1000 + seed)
        (root / ".complete").touch()
    return root


def run_domain(model, domain: str, seed: int, args) -> dict[str, float]:
    root = domain_instance(Path(args.data), domain, seed, args)
    train, val = find_samples(root, "train"), labelled_samples(root, "val")
    print(f"  {domain}, seed {seed}:", flush=True)
    scores = {}
    configs = method_configs(seed, args.crop, args.iters, args.paper_lr, args.variant_list)
    variants = {variant_label(v) for v in args.variant_list}
    for name, (cfg, pseudo_labels) in configs.items():
        if name in args.method_list or name in variants:
            scores[name] = timed(name, lambda: run_method(model, train, val, cfg, pseudo_labels,
                                                          args, seed))
    if "oracle" in args.method_list:
        scores["oracle"] = timed("oracle", lambda: run_oracle(model, labelled_samples(root, "train"),
                                                              val, args, seed))
    return scores


# ----------------------------------------------------------------------------- report


def markdown(summary: dict[str, Any], args) -> str:
    lines = [f"# Adaptation methods: {args.iters} steps, batch {args.batch}, {args.seeds} seeds, "
             f"{args.train_images} train / {args.val_images} val images per domain and seed", ""]
    for domain, entry in summary.items():
        lines += [f"## {domain}", "", "| method | mIoU | vs source-only (95% CI) | vs BN-adapt (95% CI) "
                  "| gap closed |", "|---|---|---|---|---|"]
        for m, value in entry["mean"].items():
            cells = []
            for ref in ("source-only", "BN-adapt"):
                mean, half = entry.get(f"vs {ref}", {}).get(m, (math.nan, math.nan))
                cells.append(f"{100 * mean:+.1f} ± {100 * half:.1f}")
            closed = entry.get("gap closed", {}).get(m, math.nan)
            lines.append(f"| {m} | {100 * value:.1f} | {cells[0]} | {cells[1]} | {100 * closed:.0f}% |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, meta = load_model(args.checkpoint)
    args.size = args.size or tuple(meta["input_size"] or (256, 128))
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.data = args.data or str(Path(args.out) / "data")
    started = time.perf_counter()
    runs: dict[str, list[dict[str, float]]] = {}
    for domain in [d for d in args.domains.split(",") if d]:
        runs[domain] = [run_domain(model, domain, seed, args) for seed in range(args.seeds)]
    summary = summarise(runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items()}
    (out / "results.json").write_text(json.dumps({"settings": settings, "runs": runs,
                                                  "summary": summary,
                                                  "seconds": time.perf_counter() - started},
                                                 indent=2, default=str))
    text = markdown(summary, args)
    (out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
