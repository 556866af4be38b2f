"""Every option and config key is range-checked where it is declared: a bad value stops
``iapc-runtime`` before any process starts, with one line naming the option and the range."""

from __future__ import annotations

import subprocess

import pytest

from support import runtime_command

pytestmark = pytest.mark.process  # starts real runtime or command processes: not in make test-fast

BAD_OPTIONS = [
    (["--fps", "-5"], "--fps", ">= 0"),
    (["--max-frames", "0"], "--max-frames", ">= 1"),
    (["--max-frames", "-3"], "--max-frames", ">= 1"),
    (["--export-every-steps", "0"], "--export-every-steps", ">= 1"),
    (["--export-every-steps", "-1"], "--export-every-steps", ">= 1"),
    (["--duty-cycle", "7"], "--duty-cycle", "<= 1"),
    (["--metrics-port", "99999"], "--metrics-port", "<= 65535"),
    (["--publish", "tcp://127.0.0.1:99999"], "port must be 1..65535", ""),
    (["--lr", "0"], "--lr", "> 0"),
    (["--restore-probability", "2"], "--restore-probability", "<= 1"),
]

BAD_YAML = [
    ("source: {fps: -5}\n", "config.source.fps", ">= 0"),
    ("adaptation: {duty_cycle: 7}\n", "config.adaptation.duty_cycle", "<= 1"),
    ("adaptation: {batch_size: -3}\n", "config.adaptation.batch_size", ">= 1"),
    ("method: {method: iapc, ema_alpha: 1.5}\n", "ema_alpha", "[0, 1]"),
    ("method: {method: sgd}\n", "config.method.method", "none, bn, tent, iapc"),
]


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(runtime_command(*args, "--run-dir", str(cwd / "run")), cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.mark.parametrize("args, names, allowed", BAD_OPTIONS, ids=[" ".join(a) for a, _, _ in BAD_OPTIONS])
def test_an_out_of_range_option_is_one_line_and_exit_2(tmp_path, args, names, allowed):
    done = _run(*args, cwd=tmp_path)
    line = _one_line(done)
    assert done.returncode == 2 and names in line and allowed in line, line
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


@pytest.mark.parametrize("text, names, allowed", BAD_YAML, ids=[t.strip() for t, _, _ in BAD_YAML])
def test_an_out_of_range_config_key_is_one_line_and_exit_2(tmp_path, text, names, allowed):
    (tmp_path / "runtime.yaml").write_text(text)
    done = _run("--config", str(tmp_path / "runtime.yaml"), cwd=tmp_path)
    line = _one_line(done)
    assert done.returncode == 2 and names in line and allowed in line, line


def test_a_store_of_another_input_size_is_refused_before_any_process(tmp_path, tiny_checkpoint):
    from iapc.adapt.checkpoint import load_model
    from iapc.engines.manifest import INPUT_SIZE_KEY
    from iapc.export.onnx_export import export_onnx
    from iapc.engines.store import EngineStore

    model, _ = load_model(tiny_checkpoint, "tiny")
    store = EngineStore(tmp_path / "store")
    store.publish(export_onnx(model.eval(), tmp_path / "v1.onnx", frame_size=(128, 64)),
                  manifest_extra={INPUT_SIZE_KEY: [128, 64]})
    done = _run("--checkpoint", str(tiny_checkpoint), "--store", str(store.root),
                "--input-size", "96x64", "--synthetic", "fog", "--quiet", cwd=tmp_path)
    line = [l for l in done.stderr.strip().splitlines() if "warning" not in l][-1]
    assert done.returncode == 2 and "--input-size 128x64" in line, done.stderr
    assert "Traceback" not in done.stderr
    assert [v.number for v in store.versions()] == [1]  # nothing written to the store
