"""``iapc export`` end to end, and its one-line errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from iapc.adapt.checkpoint import save_checkpoint
from iapc.cli import _main
from iapc.errors import run_cli
from iapc.engines.store import EngineStore


def _iapc(*argv: str) -> int:
    return run_cli("iapc", lambda: _main(list(argv)))


@pytest.fixture()
def checkpoint(tmp_path, tiny_model):
    path = tmp_path / "tiny.pth"
    save_checkpoint(path, "tiny", tiny_model, config={"lr": 0.01}, step=42)
    return path


def test_export_publishes_a_verified_version(tmp_path, checkpoint, capsys):
    store_dir = tmp_path / "engines"
    assert _iapc("export", "--checkpoint", str(checkpoint), "--store", str(store_dir),
                 "--frame-size", "128x64", "--backend", "onnxruntime", "--confidence") == 0
    out = capsys.readouterr().out
    assert "published v000001" in out and "pixel agreement 100.00%" in out
    version = EngineStore(store_dir).current()
    assert version.name == "v000001" and version.engine_path is None
    manifest = version.manifest
    assert manifest["model"] == "tiny" and manifest["step"] == 42 and manifest["config"] == {"lr": 0.01}
    assert manifest["parity"]["agreement"] == 1.0 and manifest["parity"]["source"] == "synthetic"
    assert manifest["input_size"] == [128, 64] and manifest["confidence"] is True
    assert manifest["timing"]["latency_ms"] > 0 and manifest["health"] is None
    metadata = json.loads(__import__("onnx").load(str(version.onnx_path)).metadata_props[0].value)
    assert metadata["output_names"] == ["mask", "confidence"]


def test_export_with_recorded_frames_adds_a_version(tmp_path, checkpoint, capsys):
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(frames_dir / f"{i}.png"), rng.integers(0, 255, (40, 80, 3), dtype=np.uint8))
    store_dir = tmp_path / "engines"
    for _ in range(2):
        assert _iapc("export", "--checkpoint", str(checkpoint), "--store", str(store_dir),
                     "--frame-size", "64x32", "--frames", str(frames_dir), "--keep", "1") == 0
    store = EngineStore(store_dir)
    assert [v.name for v in store.versions()] == ["v000002"]
    assert store.current().manifest["parity"]["frames"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--checkpoint", "missing.pth"], "checkpoint missing.pth does not exist"),
    (["--backend", "tflite"], "unknown backend 'tflite': choose one of auto, tensorrt, onnxruntime, torch"),
    (["--frame-size", "big"], "is not WIDTHxHEIGHT"),
    (["--min-agreement", "1.5"], "--min-agreement must be in (0, 1]"),
    (["--frames", "no/such/folder"], "frames folder no/such/folder does not exist"),
    (["--model", "deeplabv3_resnet50"], "holds a tiny, not a deeplabv3_resnet50"),
])
def test_one_line_errors(tmp_path, checkpoint, capsys, extra, message):
    argv = ["export", "--checkpoint", str(checkpoint), "--store", str(tmp_path / "s"),
            "--frame-size", "64x32", *extra]
    assert _iapc(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("iapc: error: ") and message in err
    assert err.count("\n") == 1  # one line, no traceback
    assert EngineStore(tmp_path / "s").current() is None  # nothing published
