"""Writing the replay report: ``report.json``, ``report.md`` and the PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from iapc.replay.markdown import markdown_summary
from iapc.replay.plots import plot_latency_histogram, plot_miou_over_time, plot_swap_timeline


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
