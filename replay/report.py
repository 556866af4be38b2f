"""The replay report as a dict (``report.json``): mIoU, frames, latency, swaps, adaptation.

Built from what the runtime published during a replay (:class:`~iapc.replay.record.RunRecord`):
mask headers (frame id, engine version, capture and publish times), the scored annotated frames
(one confusion matrix each) and the status messages (heartbeats, swaps, adaptation events).
mIoU figures are percentages over the classes chosen with ``--classes``, computed by
:class:`iapc.metrics.ConfusionMatrix` (the same numbers as cityscapesscripts).
"""

from __future__ import annotations

import collections
import datetime
import platform

import numpy as np

from iapc.metrics import scores_of_matrix
from iapc.contracts.events import EventType
from iapc.runtime.protocol import StatusKind

FORGETTING_TOLERANCE = 0.5  # mIoU points a domain may lose from its first to its last round
MAX_LISTED_MISSING = 50


# ----------------------------------------------------------------------------------------------
# mIoU
# ----------------------------------------------------------------------------------------------

def miou_of(matrices: list[np.ndarray], num_classes: int, classes: str) -> float | None:
    """mIoU (percent) of the summed (K, K) confusion matrices; None when there are none."""
    if not matrices:
        return None
    value = scores_of_matrix(np.sum(matrices, axis=0), classes).miou
    return None if np.isnan(value) else round(100 * value, 3)


def class_iou(matrices: list[np.ndarray], num_classes: int, classes: str) -> dict[str, float | None]:
    scores = scores_of_matrix(np.sum(matrices, axis=0), classes).to_dict()["iou"]
    return {name: (None if v is None else round(100 * v, 3)) for name, v in scores.items()}


AFTER_SWITCH_FRAMES = 100  # frames after the stream enters a domain that count as "just after"


def visit_positions(scored, plan) -> list[int]:
    """How far into its visit to a domain (frames since the stream entered it) each scored
    frame is: its position in the round minus where its domain's block starts."""
    first_position = {}
    for position, planned in enumerate(plan.frames):  # where each domain's block starts
        first_position.setdefault(planned.domain, position)
    return [(s.frame_id % plan.frames_per_round) - first_position[s.domain] for s in scored]


def after_switch(scored, plan, rounds: int, num_classes: int, classes: str,
                 frames: int = AFTER_SWITCH_FRAMES) -> dict:
    """mIoU of the annotated frames among the first ``frames`` of each visit to a domain (the
    stream just entered it), per domain and round and overall: what a change of domain costs."""
    early = [s for s, at in zip(scored, visit_positions(scored, plan)) if at < frames]
    per_visit = {f"{r + 1}/{d}": miou_of([s.confusion for s in early
                                          if s.round == r and s.domain == d], num_classes, classes)
                 for r in range(rounds) for d in plan.domains}
    later_rounds = [s for s in early if s.round > 0]
    return {"frames": frames, "annotated": len(early),
            "miou": miou_of([s.confusion for s in early], num_classes, classes),
            "miou_returns": miou_of([s.confusion for s in later_rounds], num_classes, classes),
            "per_round_domain": per_visit}


POSITION_BIN_FRAMES = 50  # width of the bins of :func:`by_visit_position`


def by_visit_position(scored, plan, num_classes: int, classes: str,
                      bin_frames: int = POSITION_BIN_FRAMES) -> dict:
    """mIoU of the annotated frames by how far into a visit they are (bins of ``bin_frames``
    frames, all rounds), overall and per domain: how fast a domain's masks recover after the
    stream enters it. A bin without annotated frames is None."""
    bins = [at // bin_frames for at in visit_positions(scored, plan)]
    count = max(bins, default=-1) + 1

    def curve(domain: str | None) -> list[float | None]:
        return [miou_of([s.confusion for s, b in zip(scored, bins)
                         if b == i and (domain is None or s.domain == domain)],
                        num_classes, classes)
                for i in range(count)]

    return {"bin_frames": bin_frames, "miou": curve(None),
            "per_domain": {d: curve(d) for d in plan.domains}}


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
        "after_switch": after_switch(scored, plan, record.rounds, k, classes),
        "by_visit_position": by_visit_position(scored, plan, k, classes),
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
    beats = [s for s in statuses if s.get("kind") == StatusKind.HEARTBEAT]
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
                if s.get("kind") == StatusKind.ADAPTATION and s.get("type") == EventType.VERSION}
    swaps = []
    for s in record.statuses:
        if s.get("kind") != StatusKind.SWAP:
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
        stats = s.get("adaptation") if s.get("kind") == StatusKind.HEARTBEAT else None
        if not stats or stats.get("step") in seen_steps:
            continue
        seen_steps.add(stats.get("step"))
        curve.append({"time_s": round((s.get("time_ns", start_ns) - start_ns) / 1e9, 3),
                      **{k: v for k, v in stats.items() if isinstance(v, (int, float))}})
    events = [s for s in record.statuses if s.get("kind") == StatusKind.ADAPTATION]
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
