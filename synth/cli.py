"""``iapc synth``: write synthetic driving domains in the Cityscapes layout.

    iapc synth --out DIR [--domains source city night fog rain | all] [--train N] [--val M]
               [--size 256x128] [--sequences S] [--label-every K] [--seed K]

Each domain goes to ``DIR/<domain>/`` (``leftImg8bit``, ``gtFine`` and, with ``--sequences``,
``leftImg8bit_sequence``), readable by :func:`iapc.data.find_cityscapes`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from iapc.errors import UserError
from iapc.options import parse_size as _parse_size

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder; each domain goes to OUT/<domain>/")
    parser.add_argument("--domains", nargs="+", default=["all"], metavar="DOMAIN",
                        help="domains to write (source city night fog rain), or 'all' (default)")
    parser.add_argument("--train", type=int, default=100, help="annotated train frames per domain")
    parser.add_argument("--val", type=int, default=20, help="annotated val frames per domain")
    parser.add_argument("--size", default="256x128", help="frame size WIDTHxHEIGHT (default 256x128)")
    parser.add_argument("--sequences", type=int, default=0,
                        help="scenes per split that also get their 30-frame leftImg8bit_sequence "
                             "snippet (capped at the split's size)")
    parser.add_argument("--label-every", type=int, default=None, metavar="K",
                        help="also label every K-th frame of each snippet around the annotated "
                             "one (denser scoring of replays; default: only the annotated frame)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same images)")


def parse_size(text: str) -> tuple[int, int]:
    """'256x128' -> (256, 128); scenes need at least 16x16 pixels."""
    return _parse_size(text, minimum=16)


def parse_domains(names: list[str], known: tuple[str, ...]) -> list[str]:
    """Validate --domains against ``known``; 'all' means every known domain."""
    if "all" in names:
        return list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown domain {unknown[0]!r}: choose from {' '.join(known)} or all")
    return list(dict.fromkeys(names))  # keep order, drop repeats


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output folder {out}: {err.strerror}; choose a writable --out")
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"output folder {out} is not writable: choose another --out")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from iapc.synth import DOMAINS, write_domain

    size = parse_size(args.size)
    domains = parse_domains(args.domains, tuple(DOMAINS))
    if args.train < 0 or args.val < 0 or args.sequences < 0:
        raise UserError("--train, --val and --sequences must be zero or positive")
    out = Path(args.out)
    _check_writable(out)
    splits = {"train": args.train, "val": args.val}
    with tqdm(total=len(domains) * (args.train + args.val), unit="scene", desc="synth") as bar:
        for domain in domains:
            bar.set_postfix_str(domain)
            write_domain(out / domain, domain, splits, size, args.sequences, args.seed,
                         progress=bar.update, label_every=args.label_every)
    print(f"wrote {', '.join(domains)} ({args.train} train + {args.val} val scenes each, "
          f"{size[0]}x{size[1]}) under {out}")
    return 0
