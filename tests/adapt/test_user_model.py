"""A user's own network given as package.module:function: built, checked at load, saved, loaded,
exported and scored like a registered model; each missing part of the contract is one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iapc.adapt.checkpoint import load_model, save_checkpoint
from iapc.adapt.models import build_model
from iapc.errors import UserError

TESTS = Path(__file__).resolve().parents[1]


def test_a_factory_that_keeps_the_contract_builds_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = build_model("user_models:good", 19)
    assert model.num_classes == 19 and model.feature_channels == 8
    save_checkpoint(tmp_path / "own.pt", "user_models:good", model)
    loaded, meta = load_model(tmp_path / "own.pt")
    assert meta["model"] == "user_models:good"
    x = torch.rand(1, 3, 32, 48)
    model.eval(), loaded.eval()
    assert torch.equal(model(x)[0], loaded(x)[0])


@pytest.mark.parametrize("factory, words", [
    ("without_norm", "no 'norm' attribute holding a NormSpec"),
    ("without_batchnorm", "it has no BatchNorm layer"),
    ("logits_only", "forward(x) must return (logits, features)"),
    ("without_groups", "no parameter_groups()"),
    ("not_a_module", "the factory returned a dict, not a torch.nn.Module"),
    ("absent", "user_models has no function absent"),
])
def test_each_missing_part_of_the_contract_is_one_line_naming_it(factory, words):
    with pytest.raises(UserError) as err:
        build_model(f"user_models:{factory}", 19)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_module_that_does_not_import_says_what_to_do():
    with pytest.raises(UserError, match="PYTHONPATH"):
        build_model("no_such_package.models:net", 19)


def test_the_runtime_reads_a_factory_checkpoint_in_its_own_process(tmp_path):
    """iapc-runtime asks a child process for the checkpoint's facts: the factory must import
    there too, from PYTHONPATH."""
    save_checkpoint(tmp_path / "own.pt", "user_models:good", build_model("user_models:good", 19),
                    input_size=(96, 64))
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    done = subprocess.run([sys.executable, "-m", "iapc.adapt.checkpoint", str(tmp_path / "own.pt")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"model": "user_models:good", "num_classes": 19,
                                       "input_size": [96, 64]}


def test_a_factory_model_exports_and_passes_the_parity_gate(tmp_path):
    from iapc.export.onnx_export import export_onnx
    from iapc.export.parity import check_parity
    from iapc.engines.runner_onnxrt import OnnxRuntimeRunner
    import numpy as np

    torch.manual_seed(0)
    model = build_model("user_models:good", 19).eval()
    path = export_onnx(model, tmp_path / "own.onnx", frame_size=(64, 48), model_name="user_models:good")
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 48, 64, 3), dtype=np.uint8)
    report = check_parity(OnnxRuntimeRunner(path), model, frames, 0.999)
    assert report.passed, report.message
