"""The embedded default source model: a small network trained on the synthetic source domain.

Used when no checkpoint is given (``iapc-runtime`` with no options, ``iapc demo``). It is trained
once on first use and cached under :func:`iapc.cache.cache_dir`; the synthetic
source domain it learns from is written beside it.

``python -m iapc.adapt.embedded --out FILE`` trains it (the runtime calls this in a child process
so that its own processes stay free of training work).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from iapc.cache import cache_dir, embedded_model_path
from iapc.errors import run_cli

EMBEDDED_SIZE = (256, 128)  # (width, height) of the synthetic frames and the engine input
EMBEDDED_TRAIN_IMAGES = 300
EMBEDDED_ITERS = 1500
# Training iterations of a first-use model; $IAPC_EMBEDDED_ITERS overrides them (tests that must
# exercise first-use training in seconds).
ITERS_VARIABLE = "IAPC_EMBEDDED_ITERS"
# Photometric jitter (brightness/contrast/saturation x(1 +- 0.3)) while training: the same recipe
# as benchmarks/bench_adaptation.py's source model (40.7 mIoU on the source domain's val split).
EMBEDDED_JITTER = 0.3


def synthetic_root(domain: str, train: int = EMBEDDED_TRAIN_IMAGES, val: int = 40,
                   size: tuple[int, int] = EMBEDDED_SIZE, seed: int = 0) -> Path:
    """A synthetic domain in the Cityscapes layout, written on first use into the cache."""
    from iapc.synth import write_domain

    root = cache_dir() / "synthetic" / f"{domain}_{size[0]}x{size[1]}_{train}_{val}_s{seed}"
    done = root / ".complete"
    if not done.is_file():
        write_domain(root, domain, split_sizes={"train": train, "val": val}, size=size, seed=seed)
        done.touch()
    return root


def ensure_source_model(model: str = "tiny", out: Path | None = None, iters: int | None = None,
                        progress: bool = True) -> Path:
    """The cached source checkpoint, trained on the synthetic source domain if missing
    (``iters`` None: ``$IAPC_EMBEDDED_ITERS``, else :data:`EMBEDDED_ITERS`)."""
    out = out or embedded_model_path(model)
    if out.is_file():
        return out
    from iapc.data import find_cityscapes
    from iapc.adapt.train_source import TrainConfig, train_source

    iters = iters or int(os.environ.get(ITERS_VARIABLE) or EMBEDDED_ITERS)
    root = synthetic_root("source")
    cfg = TrainConfig(model=model, iters=iters, size=EMBEDDED_SIZE, jitter=EMBEDDED_JITTER)
    train_source(model, find_cityscapes(root, "train"), cfg, out=out, progress=progress)
    return out


# Source val frames the shipped model's check test re-scores (a few, so the test stays fast).
CHECK_FRAMES = 8
SHIP_COMMAND = "python -m iapc.adapt.embedded --model {model} --ship"


def ship(model: str = "tiny", checkpoint: Path | None = None, iters: int | None = None) -> Path:
    """Train (or take ``checkpoint``) and write the shipped weights and their manifest into
    ``iapc/weights/``: the command, data, seed, sha256, input size and source-val mIoU."""
    import json
    import shutil

    from iapc.adapt.checkpoint import load_model
    from iapc.adapt.evaluate import evaluate_model, labelled_samples
    from iapc.files import sha256_of
    from iapc.shipped import manifest_path, weights_path

    out = weights_path(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    if checkpoint is not None:
        shutil.copyfile(checkpoint, out)
    else:
        out.unlink(missing_ok=True)
        ensure_source_model(model, out, iters)
    network, meta = load_model(out)
    val = labelled_samples(synthetic_root("source"), "val")
    score = lambda samples: evaluate_model(network.eval(), samples, size=EMBEDDED_SIZE,  # noqa: E731
                                           batch_size=8)["miou"]
    manifest = {
        "model": model, "command": SHIP_COMMAND.format(model=model), "sha256": sha256_of(out),
        "input_size": list(EMBEDDED_SIZE), "num_classes": meta["num_classes"],
        "data": {"domain": "source", "generator": "iapc synthetic world", "seed": 0,
                 "train_images": EMBEDDED_TRAIN_IMAGES, "val_images": len(val),
                 "size": list(EMBEDDED_SIZE)},
        "training": meta["config"], "seed": meta["config"].get("seed", 0),
        "source_val_miou": round(100 * score(val), 2),
        "check": {"frames": CHECK_FRAMES, "miou": round(100 * score(val[:CHECK_FRAMES]), 2)},
    }
    manifest_path(model).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iapc.adapt.embedded")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--iters", type=int, default=None,
                        help=f"training iterations (default ${ITERS_VARIABLE}, else {EMBEDDED_ITERS})")
    parser.add_argument("--ship", action="store_true",
                        help="write the package's shipped weights and manifest (iapc/weights/)")
    parser.add_argument("--from-checkpoint", type=Path, default=None,
                        help="with --ship: ship this already trained checkpoint of the recipe")
    args = parser.parse_args(argv)
    if args.ship:
        return run_cli("iapc-runtime", lambda: (print(ship(args.model, args.from_checkpoint,
                                                           args.iters)), 0)[1])
    return run_cli("iapc-runtime", lambda: (print(ensure_source_model(args.model, args.out, args.iters)), 0)[1])


if __name__ == "__main__":
    sys.exit(main())
