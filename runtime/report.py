"""The replay report: ``report.json``, a Markdown summary and PNG plots (matplotlib, Agg).

Built from what the runtime published during a replay (:class:`~iapc.runtime.replay.RunRecord`):
mask headers (frame id, engine version, capture and publish times), the scored annotated frames
(one confusion matrix each) and the status messages (heartbeats, swaps, adaptation events).
mIoU figures are percentages over the classes chosen with ``--classes``, computed by
:class:`iapc.adapt.metrics.ConfusionMatrix` (the same numbers as cityscapesscripts).
"""

from __future__ import annotations

import collections
import datetime
import json
import platform
from pathlib import Path

import numpy as np

from iapc.adapt.metrics import ConfusionMatrix

FORGETTING_TOLERANCE = 0.5  # mIoU points a domain may lose from its first to its last round
MAX_LISTED_MISSING = 50


# ----------------------------------------------------------------------------------------------
# mIoU
# ----------------------------------------------------------------------------------------------

def miou_of(matrices: list[np.ndarray], num_classes: int, classes: str) -> float | None:
    """mIoU (percent) of the summed (K, K) confusion matrices; None when there are none."""
    if not matrices:
        return None
    metric = ConfusionMatrix(num_classes)
    metric.mat = np.sum(matrices, axis=0)
    value = metric.compute(classes).miou
    return None if np.isnan(value) else round(100 * value, 3)


def class_iou(matrices: list[np.ndarray], num_classes: int, classes: str) -> dict[str, float | None]:
    metric = ConfusionMatrix(num_classes)
    metric.mat = np.sum(matrices, axis=0)
    scores = metric.compute(classes).to_dict()["iou"]
    return {name: (None if v is None else round(100 * v, 3)) for name, v in scores.items()}


def miou_summary(record, plan, classes: str) -> dict:
    """Overall, per round and domain, per engine version, and per annotated frame."""
    k = record.num_classes
    scored = record.scored
    per_round = {}
    for round_index in range(record.rounds):
        per_round[str(round_index + 1)] = {
            domain: miou_of([s.confusion for s in scored
                             if s.round == round_index and s.domain == domain], k, classes)
            for domain in plan.domains}
    versions = sorted({s.engine_version for s in scored})
    return {
        "classes": classes,
        "annotated_frames": len(scored),
        "miou": miou_of([s.confusion for s in scored], k, classes),
        "class_iou": class_iou([s.confusion for s in scored], k, classes) if scored else {},
        "per_round_domain": per_round,
        "per_engine_version": {str(v): miou_of([s.confusion for s in scored
                                                if s.engine_version == v], k, classes)
                               for v in versions},
        "per_frame": [{"frame_id": s.frame_id, "round": s.round + 1, "domain": s.domain,
                       "name": s.name, "engine_version": s.engine_version,
                       "miou": miou_of([s.confusion], k, classes),
                       **({"mask_file": s.mask_file} if s.mask_file else {})} for s in scored],
    }


# ----------------------------------------------------------------------------------------------
# The published stream: frames, latency, versions, swaps, adaptation
# ----------------------------------------------------------------------------------------------

def frame_accounting(record, expected: int) -> dict:
    """Received vs expected frame ids, from the mask headers and the runtime's own counters."""
    ids = [m[0] for m in record.masks]
    missing = sorted(set(range(expected)) - set(ids))
    heartbeat = last_heartbeat(record.statuses)
    return {
        "expected": expected, "received": len(ids), "unique": len(set(ids)),
        "missing": len(missing), "missing_ids": missing[:MAX_LISTED_MISSING],
        "in_order": ids == sorted(ids),
        "runtime": {key: heartbeat.get(key) for key in (
            "frames_in", "frames_published", "frames_failed", "capture_dropped",
            "handoff_dropped", "publish_dropped")},
        "subscriber": record.subscriber,
    }


def last_heartbeat(statuses: list[dict]) -> dict:
    beats = [s for s in statuses if s.get("kind") == "heartbeat"]
    return beats[-1] if beats else {}


def latency_summary(record) -> dict:
    """Capture -> publish latency (ms) from the mask headers, and the published frame rate."""
    if not record.masks:
        return {"frames": 0}
    masks = np.array([m[:4] for m in record.masks], dtype=np.int64)  # (N, 4) id, ver, cap, pub
    latency_ms = (masks[:, 3] - masks[:, 2]) / 1e6
    span_s = (masks[:, 3].max() - masks[:, 3].min()) / 1e9
    p50, p90, p99 = np.percentile(latency_ms, [50, 90, 99])
    return {"frames": len(masks), "p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3), "mean_ms": round(float(latency_ms.mean()), 3),
            "max_ms": round(float(latency_ms.max()), 3),
            "fps": round((len(masks) - 1) / span_s, 2) if span_s > 0 else None}


def version_changes(record) -> list[dict]:
    """Where the engine version changes in the mask stream, in frame-id order."""
    ordered = sorted(record.masks)
    changes = []
    for previous, current in zip(ordered, ordered[1:]):
        if current[1] != previous[1]:
            changes.append({"frame_id": current[0], "from": previous[1], "to": current[1]})
    return changes


def swap_timeline(record) -> list[dict]:
    """Each hot-swap with the time from new weights to engine in service.

    ``export_s`` (daemon: export, parity and health checks, store) comes with the version's adaptation event,
    ``ready_s`` (inference: load and warm-up) with the swap message; their sum is the time from
    new weights to the engine serving frames.
    """
    export_s = {s.get("version"): s.get("export_s") for s in record.statuses
                if s.get("kind") == "adaptation" and s.get("type") == "version"}
    swaps = []
    for s in record.statuses:
        if s.get("kind") != "swap":
            continue
        exported = export_s.get(s.get("to"))
        ready = s.get("ready_s")
        swaps.append({"from": s.get("from"), "to": s.get("to"), "at_frame": s.get("at_frame"),
                      "switch_ms": s.get("switch_ms"), "ready_s": ready, "export_s": exported,
                      "to_service_s": (round(exported + ready, 3)
                                       if exported is not None and ready is not None else None)})
    return swaps


def versions_summary(record) -> dict:
    versions = [m[1] for m in sorted(record.masks)]
    changes = version_changes(record)
    swaps = swap_timeline(record)
    # Every change seen in the stream must be a swap the runtime announced, at the same frame,
    # and every announced swap before the last frame must show in the stream.
    last_frame = max((m[0] for m in record.masks), default=-1)
    announced = [(s["at_frame"], s["from"], s["to"]) for s in swaps]
    seen = [(c["frame_id"], c["from"], c["to"]) for c in changes]
    within_stream = [a for a in announced if a[0] is not None and a[0] <= last_frame]
    service = [s["to_service_s"] for s in swaps if s["to_service_s"] is not None]
    return {
        "first": versions[0] if versions else None, "last": versions[-1] if versions else None,
        "distinct": sorted(set(versions)),
        "non_decreasing": versions == sorted(versions),
        "changes_in_stream": changes, "swaps": swaps,
        "swaps_match_stream": sorted(seen) == sorted(within_stream),
        "to_service_s": ({"median": round(float(np.median(service)), 3),
                          "max": round(float(np.max(service)), 3)} if service else None),
    }


def adaptation_summary(record) -> dict:
    """Steps and losses from the heartbeats' ``adaptation`` field, and the daemon's events."""
    curve, seen_steps = [], set()
    start_ns = record.masks[0][2] if record.masks else 0
    for s in record.statuses:
        stats = s.get("adaptation") if s.get("kind") == "heartbeat" else None
        if not stats or stats.get("step") in seen_steps:
            continue
        seen_steps.add(stats.get("step"))
        curve.append({"time_s": round((s.get("time_ns", start_ns) - start_ns) / 1e9, 3),
                      **{k: v for k, v in stats.items() if isinstance(v, (int, float))}})
    events = [s for s in record.statuses if s.get("kind") == "adaptation"]
    return {"steps": max((c.get("step", 0) for c in curve), default=0),
            "last_losses": curve[-1] if curve else {}, "curve": curve,
            "events": dict(collections.Counter(str(e.get("type")) for e in events))}


def run_summary(record, plan, classes: str) -> dict:
    return {"adapted": record.adapted, "rounds": record.rounds, "wall_s": round(record.wall_s, 2),
            "frames": frame_accounting(record, plan.frames_per_round * record.rounds),
            "latency": latency_summary(record), "engine_versions": versions_summary(record),
            "adaptation": adaptation_summary(record), "scores": miou_summary(record, plan, classes)}


# ----------------------------------------------------------------------------------------------
# Adapted vs source-only, and the continual goals
# ----------------------------------------------------------------------------------------------

def source_only_by_domain(baseline: dict | None) -> dict[str, float | None]:
    """The source-only engine is fixed, so its one round stands for every round."""
    if baseline is None:
        return {}
    return baseline["scores"]["per_round_domain"]["1"]


def continual_table(adapted: dict, baseline: dict | None, domains: list[str]) -> list[dict]:
    """One row per (round, domain): adapted, source-only and their difference (points)."""
    source = source_only_by_domain(baseline)
    rows = []
    for round_name, by_domain in adapted["scores"]["per_round_domain"].items():
        for domain in domains:
            value, base = by_domain.get(domain), source.get(domain)
            rows.append({"round": int(round_name), "domain": domain, "adapted": value,
                         "source_only": base,
                         "gain": (round(value - base, 3)
                                  if value is not None and base is not None else None)})
    return rows


def continual_goals(table: list[dict], domains: list[str]) -> dict:
    """No domain loses more than FORGETTING_TOLERANCE points from its first to its last round;
    every domain stays above source-only in every round."""
    per_domain = {}
    for domain in domains:
        rows = [r for r in table if r["domain"] == domain and r["adapted"] is not None]
        if not rows:
            continue
        first, last = rows[0]["adapted"], rows[-1]["adapted"]
        per_domain[domain] = {
            "first_round": first, "last_round": last, "change": round(last - first, 3),
            "min_gain_over_source": (min(r["gain"] for r in rows)
                                     if all(r["gain"] is not None for r in rows) else None)}
    forgetting_ok = all(d["change"] >= -FORGETTING_TOLERANCE for d in per_domain.values())
    gains = [d["min_gain_over_source"] for d in per_domain.values()]
    above_ok = bool(gains) and all(g is not None and g > 0 for g in gains)
    return {"tolerance_points": FORGETTING_TOLERANCE, "per_domain": per_domain,
            "no_forgetting": forgetting_ok,
            "above_source_only": above_ok if any(g is not None for g in gains) else None}


def build_report(plan, adapted_record, baseline_record, cfg) -> dict:
    adapted = run_summary(adapted_record, plan, cfg.classes)
    baseline = (run_summary(baseline_record, plan, cfg.classes)
                if baseline_record is not None else None)
    table = continual_table(adapted, baseline, plan.domains)
    return {
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.machine()}, {platform.system()})",
        "replay": {"roots": [str(r) for r in cfg.roots], "domains": plan.domains,
                   "split": cfg.split, "rounds": plan.rounds,
                   "frames_per_round": plan.frames_per_round,
                   "annotated_per_round": sum(f.label is not None for f in plan.frames),
                   "rate_fps": cfg.rate, "checkpoint": cfg.checkpoint, "model": cfg.model,
                   "input_size": list(cfg.input_size) if cfg.input_size else None,
                   "classes": cfg.classes,
                   "baseline": "source-only engine (--no-adapt), one round: a fixed engine "
                               "gives the same masks every round" if baseline else None},
        "adapted": adapted,
        "source_only": baseline,
        "continual": {"table": table, "goals": continual_goals(table, plan.domains)},
    }


# ----------------------------------------------------------------------------------------------
# Writing: JSON, Markdown, PNG
# ----------------------------------------------------------------------------------------------

def _fmt(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def headline(report: dict) -> str:
    adapted, source = report["adapted"], report["source_only"]
    lat = adapted["latency"]
    line = f"mIoU adapted {_fmt(adapted['scores']['miou'])}"
    if source is not None:
        line += f" vs source-only {_fmt(source['scores']['miou'])}"
    return (f"{line} | latency p50 {_fmt(lat.get('p50_ms'))} ms p99 {_fmt(lat.get('p99_ms'))} ms"
            f" | {_fmt(lat.get('fps'))} fps | missing frames {adapted['frames']['missing']}"
            f" | swaps {len(adapted['engine_versions']['swaps'])}")


def _runs_table(report: dict) -> list[str]:
    """One row per run: the headline figures."""
    runs = [("adapted", report["adapted"])]
    if report["source_only"] is not None:
        runs.append(("source-only", report["source_only"]))
    lines = ["| run | mIoU (%) | latency p50 / p90 / p99 (ms) | fps | frames received / expected "
             "| missing | swaps | new weights -> in service (s, median) | adaptation steps |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, run in runs:
        lat, frames, versions = run["latency"], run["frames"], run["engine_versions"]
        service = versions["to_service_s"]["median"] if versions["to_service_s"] else None
        lines.append(f"| {name} | {_fmt(run['scores']['miou'], 2)} | {_fmt(lat.get('p50_ms'))} / "
                     f"{_fmt(lat.get('p90_ms'))} / {_fmt(lat.get('p99_ms'))} | "
                     f"{_fmt(lat.get('fps'))} | {frames['received']} / {frames['expected']} | "
                     f"{frames['missing']} | {len(versions['swaps'])} | {_fmt(service, 2)} | "
                     f"{run['adaptation']['steps']} |")
    return lines


def _continual_section(continual: dict) -> list[str]:
    """Per round and domain table, then the two goals."""
    lines = ["## mIoU per round and domain (%)", "",
             "| round | domain | adapted | source-only | gain |", "| --- | --- | --- | --- | --- |"]
    for row in continual["table"]:
        lines.append(f"| {row['round']} | {row['domain']} | {_fmt(row['adapted'], 2)} | "
                     f"{_fmt(row['source_only'], 2)} | {_fmt(row['gain'], 2)} |")
    goals = continual["goals"]
    lines += ["", "## Continual goals", "",
              f"- no domain's last-round mIoU below its first round by more than "
              f"{goals['tolerance_points']} point: **{_yes_no(goals['no_forgetting'])}**",
              f"- every domain above source-only in every round: "
              f"**{_yes_no(goals['above_source_only'])}**", ""]
    for domain, d in goals["per_domain"].items():
        lines.append(f"  - {domain}: round 1 {_fmt(d['first_round'], 2)} -> last round "
                     f"{_fmt(d['last_round'], 2)} ({d['change']:+.2f}), smallest gain over "
                     f"source-only {_fmt(d['min_gain_over_source'], 2)}")
    return lines


def _stream_section(adapted: dict) -> list[str]:
    versions = adapted["engine_versions"]
    return ["## Stream", "",
            f"- engine versions in the stream: {versions['distinct']} (non-decreasing: "
            f"{_yes_no(versions['non_decreasing'])}, swaps match the stream: "
            f"{_yes_no(versions['swaps_match_stream'])})",
            f"- runtime counters: {adapted['frames']['runtime']}",
            f"- adaptation events: {adapted['adaptation']['events']}", "",
            "Plots: `miou_over_time.png`, `latency_histogram.png`, `swap_timeline.png`.", ""]


def markdown_summary(report: dict) -> str:
    r = report["replay"]
    pace = "as fast as possible" if r["rate_fps"] is None else f"{r['rate_fps']:g} fps"
    intro = (f"{report['created']} on {report['machine']}: {', '.join(r['domains'])} "
             f"({r['split']}), {r['rounds']} round(s) of {r['frames_per_round']} frames "
             f"({r['annotated_per_round']} annotated), {pace}, mIoU over {r['classes']} classes.")
    lines = ["# Replay report", "", intro, "", *_runs_table(report), "",
             *_continual_section(report["continual"]), "", *_stream_section(report["adapted"])]
    return "\n".join(lines)


def _yes_no(value) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def _running_miou(per_frame: list[dict], matrices: dict[int, np.ndarray], num_classes: int,
                  classes: str) -> list[float | None]:
    """mIoU of the (round, domain) segment so far, at each annotated frame."""
    values, segment, acc = [], None, []
    for entry in per_frame:
        key = (entry["round"], entry["domain"])
        if key != segment:
            segment, acc = key, []
        acc.append(matrices[entry["frame_id"]])
        values.append(miou_of(acc, num_classes, classes))
    return values


def plot_miou_over_time(report: dict, adapted_record, baseline_record, plan, path: Path) -> None:
    import matplotlib.pyplot as plt

    classes = report["replay"]["classes"]
    fig, ax = plt.subplots(figsize=(10, 4))
    runs = [("adapted", adapted_record, report["adapted"], "tab:blue")]
    if baseline_record is not None:
        runs.append(("source-only", baseline_record, report["source_only"], "tab:gray"))
    for label, record, summary, color in runs:
        per_frame = summary["scores"]["per_frame"]
        matrices = {s.frame_id: s.confusion for s in record.scored}
        running = _running_miou(per_frame, matrices, record.num_classes, classes)
        for round_index in range(plan.rounds if record is baseline_record else 1):
            # The fixed source-only engine is drawn under every round of the adapted run.
            shift = round_index * plan.frames_per_round
            x = [e["frame_id"] + shift for e in per_frame]
            ax.scatter(x, [e["miou"] for e in per_frame], s=6, color=color, alpha=0.3)
            ax.plot(x, running, color=color, label=label if round_index == 0 else None)
    domain_starts = [i for i, f in enumerate(plan.frames)
                     if i == 0 or plan.frames[i - 1].domain != f.domain]
    for round_index in range(plan.rounds):
        for start in domain_starts:
            ax.axvline(round_index * plan.frames_per_round + start, color="k", lw=0.3)
    ax.set_xlabel("frame id (domain boundaries as vertical lines)")
    ax.set_ylabel(f"mIoU (%, {classes} classes)")
    ax.set_title("mIoU over time: per annotated frame (dots), running per round and domain (lines)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latency_histogram(records: list, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for record in records:
        latency_ms = [(m[3] - m[2]) / 1e6 for m in record.masks]
        if latency_ms:
            ax.hist(latency_ms, bins=50, alpha=0.6, label=record.name)
    ax.set_xlabel("capture -> publish latency (ms)")
    ax.set_ylabel("frames")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_swap_timeline(report: dict, adapted_record, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5))
    ordered = sorted(adapted_record.masks)
    top.step([m[0] for m in ordered], [m[1] for m in ordered], where="post")
    for swap in report["adapted"]["engine_versions"]["swaps"]:
        top.axvline(swap["at_frame"], color="tab:orange", lw=0.5)
    top.set_xlabel("frame id")
    top.set_ylabel("engine version")
    top.set_title("engine in service (orange: announced hot-swaps)")
    curve = report["adapted"]["adaptation"]["curve"]
    if curve and "total" in curve[0]:
        bottom.plot([c["step"] for c in curve], [c.get("total") for c in curve])
    bottom.set_xlabel("adaptation step")
    bottom.set_ylabel("IAPC loss (total)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: dict, out: Path, adapted_record, baseline_record, plan) -> None:
    """report.json, report.md and the three PNG plots in ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a vehicle or a CI machine
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown_summary(report))
    plot_miou_over_time(report, adapted_record, baseline_record, plan, out / "miou_over_time.png")
    records = [adapted_record] + ([baseline_record] if baseline_record is not None else [])
    plot_latency_histogram(records, out / "latency_histogram.png")
    plot_swap_timeline(report, adapted_record, out / "swap_timeline.png")
