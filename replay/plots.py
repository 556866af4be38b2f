"""The replay report's PNG plots (matplotlib): mIoU over time, latency histogram, swap timeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from iapc.replay.report import miou_of

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
