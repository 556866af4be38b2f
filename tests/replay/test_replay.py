"""``iapc replay`` end to end: the real runtime on generated Cityscapes-layout drives, the report
checked against cityscapesscripts' own evaluation and against the runtime's own summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from support import cityscapes_eval_args
from iapc.errors import UserError
from iapc.labels import TRAIN_ID_TO_ID
from iapc.replay.report import continual_goals
from iapc.contracts import run_folder
from iapc.runtime.sources import make_source
from iapc.synth import ANNOTATED_FRAME, SEQUENCE_LENGTH, write_domain

pytestmark = pytest.mark.process  # starts real runtime or command processes: not in make test-fast

SIZE = (128, 64)  # (width, height) of the generated frames and of the engine input
SEQUENCES = 2  # 30-frame snippets in the replayed fog root


def iapc(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from iapc.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """fog: two val snippets (60 frames, 2 annotated); night: 3 val images, no sequences."""
    base = tmp_path_factory.mktemp("replay_data")
    write_domain(base / "fog", "fog", split_sizes={"val": SEQUENCES}, size=SIZE, sequences=SEQUENCES)
    write_domain(base / "night", "night", split_sizes={"val": 3}, size=SIZE)
    return base


@pytest.fixture(scope="module")
def briefly_trained_checkpoint(tmp_path_factory):
    """A 'tiny' model after a few source-training steps: it predicts several classes, so the
    mIoU comparison below is not between two all-zero scores."""
    from iapc.data import find_cityscapes
    from iapc.adapt.train_source import TrainConfig, train_source

    base = tmp_path_factory.mktemp("replay_source")
    write_domain(base / "source", "source", split_sizes={"train": 6}, size=SIZE)
    out = base / "tiny.pt"
    cfg = TrainConfig(model="tiny", iters=10, batch=2, size=SIZE)
    train_source("tiny", find_cityscapes(base / "source", "train"), cfg, out=out, progress=False)
    return out


def runtime_yaml(folder):
    """Exports every 3 updates so that hot-swaps happen within a short replay, and a statistics
    phase of 8 frames so that gradient steps follow within it; normal priority so the test does
    not depend on how busy the machine is."""
    path = folder / "runtime.yaml"
    path.write_text("adaptation:\n  nice: 0\n  export_every_steps: 3\n  batch_size: 2\n"
                    "  shift_statistics_frames: 8\n")
    return path


def cityscapes_eval(pred_files: list[str], gt_files: list[str], tmp_path) -> dict:
    cs_eval, args = cityscapes_eval_args(tmp_path)
    return cs_eval.evaluateImgLists(pred_files, gt_files, args)


def as_label_id_pngs(per_frame: list[dict], roots, folder) -> tuple[list[str], list[str]]:
    """The saved train-id masks as cityscapesscripts predictions (label ids), with their gt."""
    folder.mkdir()
    preds, gts = [], []
    for entry in per_frame:
        train_ids = cv2.imread(entry["mask_file"], cv2.IMREAD_UNCHANGED)
        pred = folder / f"r{entry['round']}_{entry['name']}.png"
        cv2.imwrite(str(pred), TRAIN_ID_TO_ID[train_ids])
        city = entry["name"].split("_")[0]
        gts.append(str(roots / entry["domain"] / "gtFine" / "val" / city
                       / f"{entry['name']}_gtFine_labelIds.png"))
        preds.append(str(pred))
    return preds, gts


def test_replay_report_matches_cityscapesscripts_and_the_published_stream(
        roots, briefly_trained_checkpoint, tmp_path):
    out = tmp_path / "report"
    done = iapc("replay", "--cityscapes", str(roots / "fog"), "--split", "val", "--rate", "15",
                "--checkpoint", str(briefly_trained_checkpoint), "--model", "tiny",
                "--input-size", f"{SIZE[0]}x{SIZE[1]}", "--runtime-config", str(runtime_yaml(tmp_path)),
                "--out", str(out), "--save-masks", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    frames = SEQUENCES * SEQUENCE_LENGTH

    for run_name in ("adapted", "source_only"):
        run = report[run_name]
        # mIoU of the annotated frames, as the replay scored them while they passed, equals
        # cityscapesscripts' evaluation of the very masks the runtime published.
        per_frame = run["scores"]["per_frame"]
        assert [e["frame_id"] for e in per_frame] == [s * SEQUENCE_LENGTH + ANNOTATED_FRAME
                                                      for s in range(SEQUENCES)]
        preds, gts = as_label_id_pngs(per_frame, roots, tmp_path / run_name)
        reference = cityscapes_eval(preds, gts, tmp_path)
        assert run["scores"]["miou"] > 0
        assert run["scores"]["miou"] == pytest.approx(100 * reference["averageScoreClasses"], abs=1e-3)
        for entry, pred, gt in zip(per_frame, preds, gts):
            single = cityscapes_eval([pred], [gt], tmp_path)["averageScoreClasses"]
            assert entry["miou"] == pytest.approx(100 * single, abs=1e-3)

        # Every frame arrived, in order, and the counts agree with the runtime's own summary.
        summary = json.loads((out / "logs" / run_name / run_folder.INFERENCE_SUMMARY).read_text())
        assert run["frames"]["expected"] == run["frames"]["received"] == frames
        assert run["frames"]["missing"] == 0 and run["frames"]["in_order"]
        assert summary["frames_published"] == frames and summary["frames_failed"] == 0
        assert run["frames"]["runtime"]["frames_published"] == frames
        assert run["latency"]["p50_ms"] > 0 and run["latency"]["fps"] > 0

    adapted, source = report["adapted"]["engine_versions"], report["source_only"]["engine_versions"]
    # Versions never go backwards; each change in the stream is an announced swap at that frame,
    # and the announced swaps are exactly those the inference process logged.
    assert adapted["non_decreasing"] and adapted["swaps_match_stream"]
    assert len(adapted["distinct"]) >= 2, "no hot-swap during the adapted replay"
    summary = json.loads((out / "logs" / "adapted" / run_folder.INFERENCE_SUMMARY).read_text())
    assert [(s["to"], s["at_frame"]) for s in adapted["swaps"]] == \
        [(s["to"], s["at_frame"]) for s in summary["swaps"]]
    for change in adapted["changes_in_stream"]:
        entries = [e for e in report["adapted"]["scores"]["per_frame"]
                   if e["frame_id"] >= change["frame_id"]]
        assert all(e["engine_version"] >= change["to"] for e in entries)
    timed = [s for s in adapted["swaps"] if s["to_service_s"] is not None]
    assert timed and all(s["to_service_s"] == pytest.approx(s["export_s"] + s["ready_s"], abs=2e-3)
                         for s in timed)
    assert report["adapted"]["adaptation"]["steps"] > 0
    assert source["distinct"] == [adapted["first"]] and source["swaps"] == []

    for plot in ("miou_over_time.png", "latency_histogram.png", "swap_timeline.png"):
        image = cv2.imread(str(out / plot))
        assert image is not None and image.shape[0] > 100, plot
    assert "| adapted |" in (out / "report.md").read_text()


def test_continual_cycle_reports_each_round_and_domain(roots, tiny_checkpoint, tmp_path):
    # Paced rather than --fast: at full speed a replaying process that a busy CPU delays loses
    # masks at the runtime's publisher (it never waits for subscribers), and they would count
    # as missing here.
    out = tmp_path / "cycle"
    done = iapc("replay", "--cycle", str(roots / "fog"), str(roots / "night"), "--rounds", "2",
                "--rate", "40", "--checkpoint", str(tiny_checkpoint), "--model", "tiny",
                "--input-size", f"{SIZE[0]}x{SIZE[1]}", "--runtime-config", str(runtime_yaml(tmp_path)),
                "--out", str(out), "--no-baseline", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    per_round = SEQUENCES * SEQUENCE_LENGTH + 3  # fog snippets, then night's annotated images

    assert report["replay"]["domains"] == ["fog", "night"]
    assert report["replay"]["frames_per_round"] == per_round
    run = report["adapted"]
    assert run["frames"]["received"] == run["frames"]["expected"] == 2 * per_round
    assert run["frames"]["missing"] == 0
    # One runtime run over both rounds: frame ids continue into round 2 and map back to files.
    entries = [(e["round"], e["domain"], e["frame_id"]) for e in run["scores"]["per_frame"]]
    first_round = [(1, "fog", 19), (1, "fog", 49), (1, "night", 60), (1, "night", 61),
                   (1, "night", 62)]
    assert entries == first_round + [(2, d, i + per_round) for _, d, i in first_round]
    assert set(run["scores"]["per_round_domain"]) == {"1", "2"}
    assert all(v is not None for r in run["scores"]["per_round_domain"].values() for v in r.values())
    assert run["engine_versions"]["non_decreasing"]
    assert report["source_only"] is None and report["continual"]["goals"]["above_source_only"] is None


def test_cityscapes_source_plays_joined_roots_in_turn(roots):
    import os

    fog = make_source("cityscapes", str(roots / "fog"), SIZE).images
    night = make_source("cityscapes", str(roots / "night"), SIZE).images
    joined = make_source("cityscapes", os.pathsep.join([str(roots / "fog"), str(roots / "night")]),
                         SIZE)
    assert joined.images == fog + night
    assert len(fog) == SEQUENCES * SEQUENCE_LENGTH and len(night) == 3
    assert sum(label is not None for label in joined.labels) == SEQUENCES + 3


def test_continual_goals_flag_forgetting_and_losing_to_source_only():
    table = [{"round": r, "domain": d, "adapted": a, "source_only": 40.0, "gain": a - 40.0}
             for r, d, a in [(1, "fog", 45.0), (1, "rain", 44.0), (2, "fog", 44.6), (2, "rain", 42.0)]]
    goals = continual_goals(table, ["fog", "rain"])
    assert goals["per_domain"]["fog"]["change"] == pytest.approx(-0.4)
    assert goals["per_domain"]["rain"]["change"] == pytest.approx(-2.0)
    assert goals["no_forgetting"] is False and goals["above_source_only"] is True
    table[-1].update(adapted=39.0, gain=-1.0)
    assert continual_goals(table, ["fog", "rain"])["above_source_only"] is False


def test_by_visit_position_scores_frames_by_how_far_into_their_visit_they_are():
    """Two domains of 100 frames per round, two rounds: frames early in each visit are wrong,
    later ones right; bins of 50 frames must say so overall and per domain, in every round."""
    import numpy as np

    from iapc.replay.plan import PlannedFrame, ReplayPlan
    from iapc.replay.record import ScoredFrame
    from iapc.replay.report import by_visit_position

    plan = ReplayPlan(["a", "b"], ["a", "b"],
                      [PlannedFrame(i, "a" if i < 100 else "b", Path(f"{i}.png"), None)
                       for i in range(200)], rounds=2)
    right, wrong = np.zeros((19, 19), np.int64), np.zeros((19, 19), np.int64)
    right[0, 0] = wrong[0, 1] = 100  # class 0 everywhere, predicted as 0 (IoU 1) or as 1 (IoU 0)
    scored = [ScoredFrame(r * 200 + start + at, r, domain, "", 1, wrong if at < 50 else right)
              for r in range(2) for domain, start in (("a", 0), ("b", 100)) for at in (10, 60)]
    result = by_visit_position(scored, plan, 19, "19", bin_frames=50)
    assert result["miou"] == [0.0, 100.0]
    assert result["per_domain"] == {"a": [0.0, 100.0], "b": [0.0, 100.0]}


@pytest.mark.parametrize("args, message", [
    (["--cityscapes", "/nonexistent/root"], "does not exist"),
    (["--cityscapes", "{night}", "--split", "train"], "neither leftImg8bit_sequence/train"),
    (["--cityscapes", "{night}", "--rounds", "0"], "--rounds must be 1 or more"),
    (["--cityscapes", "{night}", "--rate", "0"], "--rate must be positive"),
    (["--cityscapes", "{night}", "--checkpoint", "/nonexistent.pt"], "does not exist"),
])
def test_bad_input_is_one_line_that_says_what_to_do(roots, tmp_path, capsys, args, message):
    from iapc.cli import main

    args = [a.format(night=roots / "night") for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(["replay", *args, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err.startswith("iapc: error:") and message in err and "\n" not in err


def test_unlabelled_roots_are_refused(tmp_path):
    from iapc.replay.plan import build_plan

    write_domain(tmp_path / "fog", "fog", split_sizes={"val": 1}, size=SIZE, sequences=1)
    for label in (tmp_path / "fog" / "gtFine").rglob("*_labelIds.png"):
        label.unlink()
    with pytest.raises(UserError, match="nothing to evaluate"):
        build_plan([tmp_path / "fog"], "val", 1)


def test_plan_maps_frame_ids_of_any_split_and_round_back_to_files(tmp_path):
    from iapc.replay.plan import build_plan

    write_domain(tmp_path / "rain", "rain", split_sizes={"train": 1}, size=SIZE, sequences=1)
    plan = build_plan([tmp_path / "rain"], "train", rounds=2)
    assert plan.runtime_location == str(tmp_path / "rain" / "leftImg8bit_sequence" / "train")
    assert plan.total_frames == 2 * SEQUENCE_LENGTH
    round_index, frame = plan.locate(SEQUENCE_LENGTH + ANNOTATED_FRAME)
    assert round_index == 1 and frame.name == f"synthrain_000000_{ANNOTATED_FRAME:06d}"
    assert frame.label is not None and frame.label.is_file()
    assert [f.position for f in plan.frames if f.label is not None] == [ANNOTATED_FRAME]
