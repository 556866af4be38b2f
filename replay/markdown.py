"""The replay report as Markdown (``report.md``) and its one-line headline."""

from __future__ import annotations

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
