"""Offline IAPC adaptation: checkpoints, exact resume, pseudo-label cache, DDP on two CPU ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iapc.adapt.checkpoint import load_model, read_checkpoint_file, save_checkpoint
from iapc.data import find_samples
from iapc.adapt.evaluate import labelled_samples
from iapc.adapt.iapc_step import AdaptConfig
from iapc.adapt.models import build_model
from iapc.adapt.offline import RunConfig, adapt_offline, latest_checkpoint
from iapc.synth import write_domain
from iapc.errors import UserError

SIZE = (96, 48)  # (W, H)
CROP = (64, 32)  # (W, H)


@pytest.fixture(scope="module")
def target_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("night")
    write_domain(root, "night", {"train": 8, "val": 2}, size=SIZE, seed=3)
    return root


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("source") / "tiny.pth"
    save_checkpoint(path, "tiny", build_model("tiny").eval(), {"note": "untrained"})
    return path


def _adapt_cfg() -> AdaptConfig:
    return AdaptConfig(preset="paper", lr=1e-3, warmup_iters=0, crop=CROP, max_iters=100)


def _run(source_checkpoint, root, iters, out=None, resume=False, **kwargs):
    model, _ = load_model(source_checkpoint)
    cfg = RunConfig(iters=iters, batch=2, size=SIZE, out=str(out) if out else None, resume=resume,
                    device="cpu", progress=False, **kwargs)
    eval_samples = labelled_samples(root, "val")
    return adapt_offline(model, "tiny", find_samples(root, "train"), _adapt_cfg(), cfg,
                         eval_samples, source_id=str(source_checkpoint))


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_hold_everything_and_resume_is_exact(source_checkpoint, target_root, tmp_path):
    straight = _run(source_checkpoint, target_root, 4, tmp_path / "straight", save_every=2)
    assert straight["steps"] == 4 and 0.0 <= straight["miou"] <= 1.0
    assert [p.name for p in sorted((tmp_path / "straight").glob("checkpoint_*.pth"))] == [
        "checkpoint_0000002.pth", "checkpoint_0000004.pth"]
    data = read_checkpoint_file(tmp_path / "straight" / "checkpoint_0000004.pth")
    assert {"memory", "optimizer", "adapt_state", "config", "history"} <= data.keys()
    assert data["config"]["adapt"]["preset"] == "paper" and data["adapt_state"]["step"] == 4
    model, meta = load_model(tmp_path / "straight" / "checkpoint_0000004.pth")  # an ordinary model file
    assert meta["model"] == "tiny" and meta["step"] == 4
    assert not _same_state(model.state_dict(), load_model(source_checkpoint)[0].state_dict())

    # Stop after 2 steps, then resume to 4: the same weights as the uninterrupted run.
    _run(source_checkpoint, target_root, 2, tmp_path / "split")
    resumed = _run(source_checkpoint, target_root, 4, tmp_path / "split", resume=True)
    assert resumed["steps"] == 4
    assert _same_state(resumed["target"].state_dict(), straight["target"].state_dict())
    assert [h["step"] for h in resumed["history"]] == [2, 4]
    assert latest_checkpoint(tmp_path / "split").name == "checkpoint_0000004.pth"


def test_pseudo_label_cache_is_written_once(source_checkpoint, target_root, tmp_path):
    _run(source_checkpoint, target_root, 1, tmp_path)
    labels = sorted((tmp_path / "pseudo_labels").glob("*.png"))
    assert len(labels) == 8
    stamps = [p.stat().st_mtime_ns for p in labels]
    _run(source_checkpoint, target_root, 1, tmp_path)
    assert [p.stat().st_mtime_ns for p in labels] == stamps  # reused, not regenerated


def test_online_pseudo_labels_and_periodic_eval(source_checkpoint, target_root):
    result = _run(source_checkpoint, target_root, 4, pseudo_labels="online", eval_every=2)
    assert result["checkpoint"] is None
    assert [h["step"] for h in result["history"]] == [2, 4]
    assert all(h["miou"] is not None and h["total"] == h["total"] for h in result["history"])


def test_bad_options_are_user_errors(source_checkpoint, target_root):
    with pytest.raises(UserError, match="--resume needs --out"):
        _run(source_checkpoint, target_root, 1, resume=True)
    with pytest.raises(UserError, match="offline or online"):
        _run(source_checkpoint, target_root, 1, pseudo_labels="sometimes")


@pytest.mark.process
def test_ddp_two_cpu_ranks_end_with_identical_weights(source_checkpoint, target_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IAPC_DUMP_RANK_STATE": str(tmp_path / "ranks")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "iapc.adapt.offline",
               "--checkpoint", str(source_checkpoint), "--root", str(target_root),
               "--iters", "3", "--batch", "2", "--size", f"{SIZE[0]}x{SIZE[1]}",
               "--crop", f"{CROP[0]}x{CROP[1]}", "--lr", "1e-3", "--warmup-iters", "0",
               "--out", str(tmp_path / "run"), "--device", "cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("mIoU after 3 steps") == 1  # only rank 0 reports
    rank0 = torch.load(tmp_path / "ranks" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ranks" / "rank1.pt", weights_only=True)
    assert _same_state(rank0, rank1)
    saved, meta = load_model(tmp_path / "run" / "checkpoint_0000003.pth")
    assert meta["step"] == 3 and _same_state(saved.state_dict(), rank0)
    source, _ = load_model(source_checkpoint)
    assert not _same_state(source.state_dict(), rank0)
    assert len(list((tmp_path / "run" / "pseudo_labels").glob("*.png"))) == 8  # both shards


def test_demo_runs_end_to_end_and_reuses_its_cache(tmp_path, capsys):
    from iapc.cli import _main as cli_main

    argv = ["demo", "--cache", str(tmp_path), "--target", "fog", "--size", "64x32",
            "--crop", "48x24", "--train-images", "4", "--val-images", "2", "--source-iters", "3",
            "--adapt-iters", "2", "--device", "cpu", "--json", str(tmp_path / "demo.json")]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "source-only on 'fog'" in printed and "IAPC (paper, 2 steps)" in printed
    [model_file] = (tmp_path / "demo").glob("source_tiny_*.pth")
    stamp = model_file.stat().st_mtime_ns
    assert cli_main(argv) == 0  # second run: cached domains and source model
    assert model_file.stat().st_mtime_ns == stamp
    import json

    result = json.loads((tmp_path / "demo.json").read_text())
    assert 0.0 <= result["source_only"] <= 1.0 and 0.0 <= result["iapc"] <= 1.0
    with pytest.raises(UserError, match="unknown target domain"):
        cli_main(argv[:3] + ["--target", "source"] + argv[5:])
