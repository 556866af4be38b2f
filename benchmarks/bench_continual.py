"""Continual protocol on the synthetic target domains: city -> night -> fog -> rain, repeated.

Replays the four generated target domains in turn for ``--rounds`` rounds through the real
runtime (``iapc replay --cycle``: supervisor, inference process, adaptation daemon, exports,
hot-swaps, ZeroMQ), starting from the embedded synthetic source model, and compares per-round,
per-domain mIoU of the adapted stream with the source-only engine over the same frames.

Goal: no domain's last-round mIoU below its first round by more than 0.5 point (no forgetting,
no collapse), and every domain above source-only.

    .venv/bin/python benchmarks/bench_continual.py                 # about 15 minutes on 2 cores
    .venv/bin/python benchmarks/bench_continual.py --rounds 2 --sequences 2   # a quick look
    .venv/bin/python benchmarks/bench_continual.py --rounds 3 --repeats 3     # with intervals

The full report (report.json, report.md, plots) goes to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
from pathlib import Path

DOMAINS = ("city", "night", "fog", "rain")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--sequences", type=int, default=10,
                   help="30-frame val snippets per domain")
    p.add_argument("--label-every", type=int, default=5,
                   help="label every K-th snippet frame (K=5: 6 scored frames per snippet, 60 per "
                        "visit of 10 snippets; 30 or more: only the Cityscapes annotated frame)")
    p.add_argument("--rate", type=float, default=17.0, help="replay rate, frames per second")
    p.add_argument("--export-every-steps", type=int, default=20,
                   help="adaptation steps between engine exports")
    p.add_argument("--export-every-seconds", type=float, default=None,
                   help="also export every T seconds (iapc-runtime's adaptation.export_every_seconds)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="source model (default: the shipped synthetic one)")
    p.add_argument("--method", default=None, help="iapc-runtime --method (default: its own)")
    p.add_argument("--method-setting", action="append", default=[], metavar="KEY=VALUE",
                   help="a key of the runtime config's method: section (repeatable), "
                        "e.g. restore_probability=0.01")
    p.add_argument("--adaptation-setting", action="append", default=[], metavar="KEY=VALUE",
                   help="a key of the runtime config's adaptation: section (repeatable), "
                        "e.g. duty_cycle=1.0")
    p.add_argument("--no-domain-bank", action="store_true",
                   help="adapt without the bank of per-domain states (for the comparison)")
    p.add_argument("--no-baseline", action="store_true", help="skip the source-only run")
    p.add_argument("--source-iters", type=int, default=None,
                   help="train the embedded source recipe for this many iterations instead of "
                        "its default (cached separately), where the full training is too slow")
    p.add_argument("--data", type=Path, default=None,
                   help="where the domains are written (default: the iapc cache)")
    p.add_argument("--repeats", type=int, default=1,
                   help="adapted runs (the source-only one runs once); with 2 or more, each run "
                        "goes to OUT/runK and the figures are given with a 95%% interval")
    p.add_argument("--out", type=Path, default=Path("bench_continual"))
    return p.parse_args()


def runtime_settings(args: argparse.Namespace) -> dict:
    """The runtime config file of the adapted run: export cadence, bank, ``--method-setting``s
    and ``--adaptation-setting``s."""
    adaptation = {"export_every_steps": args.export_every_steps,
                  "domain_bank": not args.no_domain_bank}
    if args.export_every_seconds:
        adaptation["export_every_seconds"] = args.export_every_seconds
    adaptation.update(key_values(args.adaptation_setting, "--adaptation-setting"))
    settings = {"adaptation": adaptation}
    method = key_values(args.method_setting, "--method-setting")
    if method:
        settings["method"] = method
    return settings


def key_values(settings: list[str], option: str) -> dict:
    """KEY=VALUE strings as a dict, values typed as YAML reads them (0.01 a number, true a
    boolean)."""
    import yaml

    pairs = [setting.split("=", 1) for setting in settings]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"{option} takes KEY=VALUE (see its --help for an example)")
    return {key.strip(): yaml.safe_load(value) for key, value in pairs}


def cached_data_folder(sequences: int, label_every: int | None) -> Path:
    """Where the cycle's domains are written by default (one folder per protocol)."""
    from iapc.cache import cache_dir

    return cache_dir() / "synthetic" / f"continual_{sequences}seq_label{label_every or 30}"


def write_domains(folder: Path, sequences: int, size: tuple[int, int],
                  label_every: int | None) -> list[Path]:
    """The four target domains with ``sequences`` val snippets each, written once."""
    from iapc.synth import write_domain

    roots = []
    for domain in DOMAINS:
        root = folder / domain
        done = root / ".complete"
        if not done.is_file():
            write_domain(root, domain, split_sizes={"val": sequences}, size=size,
                         sequences=sequences, label_every=label_every)
            done.touch()
        roots.append(root)
    return roots


def source_model(iters: int | None) -> Path:
    """The embedded synthetic source model (the runtime's default), or the same recipe trained
    for ``iters`` iterations, cached beside it under its own name."""
    from iapc.adapt.embedded import ensure_source_model
    from iapc.cache import cache_dir
    from iapc.replay.run import embedded_checkpoint

    if iters is None:
        return embedded_checkpoint("tiny")
    return ensure_source_model("tiny", out=cache_dir() / "embedded" / f"source_tiny_{iters}it.pt",
                               iters=iters)


def _num(value: float | None, width: int, digits: int) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def print_table(report: dict) -> None:
    """Per round and domain: adapted, source-only, their ratio; then the goals."""
    print(f"{'round':>5} {'domain':>6} {'adapted':>8} {'source':>8} {'ratio':>6}")
    for row in report["continual"]["table"]:
        adapted, source = row["adapted"], row["source_only"]
        ratio = adapted / source if adapted is not None and source else None
        print(f"{row['round']:>5} {row['domain']:>6} {_num(adapted, 8, 2)} {_num(source, 8, 2)} "
              f"{_num(ratio, 6, 3)}")
    goals = report["continual"]["goals"]
    for domain, d in goals["per_domain"].items():
        print(f"{domain:>6}: round 1 {d['first_round']:.2f} -> round {report['replay']['rounds']} "
              f"{d['last_round']:.2f} ({d['change']:+.2f}); smallest gain over source-only "
              f"{_num(d['min_gain_over_source'], 0, 2)}")
    print(f"no forgetting (last >= first - {goals['tolerance_points']}): {goals['no_forgetting']}; "
          f"above source-only everywhere: {goals['above_source_only']}")


def main() -> int:
    import yaml

    from iapc.adapt.embedded import EMBEDDED_SIZE
    from iapc.replay.plan import ReplayConfig
    from iapc.replay.run import run_replay

    args = parse_args()
    started = datetime.datetime.now().astimezone()
    label_every = args.label_every if args.label_every < 30 else None
    data = args.data or cached_data_folder(args.sequences, label_every)
    roots = write_domains(data, args.sequences, EMBEDDED_SIZE, label_every)
    checkpoint = args.checkpoint or source_model(args.source_iters)
    args.out.mkdir(parents=True, exist_ok=True)
    runtime_yaml = args.out / "runtime.yaml"
    runtime_yaml.write_text(yaml.safe_dump(runtime_settings(args)))
    summaries = []
    for run in range(args.repeats):
        out = args.out if args.repeats == 1 else args.out / f"run{run + 1}"
        cfg = ReplayConfig(roots=roots, rounds=args.rounds, rate=args.rate,
                           checkpoint=str(checkpoint), model="tiny", input_size=EMBEDDED_SIZE,
                           runtime_config=str(runtime_yaml), method=args.method,
                           baseline=not args.no_baseline and run == 0, out=out)
        report = run_replay(cfg)
        print(f"# bench_continual: {started:%Y-%m-%d %H:%M %Z} on {platform.node()} "
              f"({platform.processor() or platform.machine()}), run {run + 1} of {args.repeats}")
        print(f"# command: {shlex.join([sys.executable] + sys.argv)}")
        print(f"# {args.rounds} rounds x {len(DOMAINS)} domains x {args.sequences} snippets "
              f"({report['replay']['frames_per_round']} frames/round, every {label_every or 30}th "
              f"scored) at {args.rate:g} fps, engine {EMBEDDED_SIZE[0]}x{EMBEDDED_SIZE[1]}")
        print_report(report, out)
        summaries.append(run_figures(report))
    if args.repeats > 1:
        print_repeats(summaries, args.out)
    return 0


def print_report(report: dict, out: Path) -> None:
    from iapc.replay.markdown import headline

    print_table(report)
    for run in ("adapted", "source_only"):
        if report.get(run):
            after = report[run]["scores"]["after_switch"]
            print(f"{run}: first {after['frames']} frames after each switch: mIoU {after['miou']} "
                  f"({after['annotated']} annotated), on returns (rounds 2+) {after['miou_returns']}")
            position = report[run]["scores"]["by_visit_position"]
            print(f"{run}: mIoU by position in a visit ({position['bin_frames']}-frame bins): "
                  + " ".join(_num(v, 0, 1) for v in position["miou"]))
    print(headline(report))
    print(f"report: {out / 'report.md'}")


def run_figures(report: dict) -> dict[str, float]:
    """The figures of one adapted run that repeated runs are compared on."""
    table = report["continual"]["table"]
    last = max(row["round"] for row in table)
    after = report["adapted"]["scores"]["after_switch"]
    changes = [d["change"] for d in report["continual"]["goals"]["per_domain"].values()]
    figures = {"overall": report["adapted"]["scores"]["miou"],
               "round 1 (mean of domains)": statistics.fmean(
                   row["adapted"] for row in table if row["round"] == 1),
               "last round (mean of domains)": statistics.fmean(
                   row["adapted"] for row in table if row["round"] == last),
               "first 100 frames after a switch": after["miou"],
               "... after a return": after["miou_returns"],
               "worst last - first round": min(changes)}
    return {k: v for k, v in figures.items() if v is not None}


def print_repeats(summaries: list[dict[str, float]], out: Path) -> None:
    """Mean and 95% interval over the repeated runs of each figure; saved to OUT/repeats.json."""
    from iapc.metrics import mean_interval

    print(f"# over {len(summaries)} runs: mean +- 95% interval (each run)")
    result = {}
    for name in summaries[0]:
        values = [s[name] for s in summaries if name in s]
        mean, half = mean_interval(values)
        result[name] = {"mean": mean, "half_width": half, "runs": values}
        print(f"{name:>34}: {mean:6.2f} +- {half:4.2f}  ({', '.join(f'{v:.2f}' for v in values)})")
    (out / "repeats.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
