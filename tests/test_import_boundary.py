"""The process boundary: nothing the inference process, the bridge or the replay tooling loads
imports torch. Each module is imported alone in a fresh interpreter, so a failure names the
module that pulled torch in (directly or through what it imports)."""

from __future__ import annotations

import importlib.util
import json
import pkgutil
import subprocess
import sys

import pytest

# Packages whose every module stays torch-free ...
TORCH_FREE_PACKAGES = ("iapc.contracts", "iapc.engines", "iapc.runtime", "iapc.ros_bridge",
                       "iapc.synth", "iapc.replay")
# (the torch side is iapc.adapt, iapc.daemon and iapc.export)
TORCH_SIDE: set[str] = set()
# Shared top-level modules and the tools' runner factory.
TORCH_FREE_MODULES = ("iapc", "iapc.cache", "iapc.cli", "iapc.data", "iapc.errors", "iapc.files",
                      "iapc.labels", "iapc.metrics", "iapc.method_config", "iapc.options",
                      "iapc.settings", "iapc.shipped", "iapc.export.runners")


def test_the_daemon_and_the_inference_process_meet_only_through_shared_packages():
    """Package-level imports: the runtime imports nothing of the daemon, the daemon of the
    runtime only its configuration, and neither the engines nor the contracts import a side."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def imports(folder: str) -> set[str]:
        names = set()
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                elif isinstance(node, ast.Import):
                    names |= {a.name for a in node.names}
        return {n for n in names if n.startswith("iapc.")}

    assert not {n for n in imports("runtime") if n.startswith("iapc.daemon")}
    assert {n for n in imports("daemon") if n.startswith("iapc.runtime")} <= {
        "iapc.runtime.config", "iapc.runtime.config.RuntimeConfig",
        "iapc.runtime.config.HealthConfig", "iapc.runtime.config.DaemonConfig"}
    for shared in ("iapc/engines", "iapc/contracts"):
        sides = ("iapc.runtime", "iapc.daemon", "iapc.export", "iapc.adapt", "iapc.replay")
        assert not {n for n in imports(shared) if n.startswith(sides)}, shared


PROBE = """
import importlib, json, sys
name = sys.argv[1]
try:
    importlib.import_module(name)
except ModuleNotFoundError as err:
    print(json.dumps({"missing": err.name}))
else:
    print(json.dumps({"torch": "torch" in sys.modules}))
"""


def _package_modules(package: str) -> list[str]:
    path = importlib.util.find_spec(package).submodule_search_locations
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules(path)]


def torch_free_modules() -> list[str]:
    names = [m for p in TORCH_FREE_PACKAGES for m in _package_modules(p) if m not in TORCH_SIDE]
    return sorted(set(names) | set(TORCH_FREE_MODULES))


def test_the_list_covers_the_inference_process_modules():
    for name in ("iapc.runtime.sources", "iapc.runtime.loop", "iapc.runtime.swap",
                 "iapc.contracts.handoff", "iapc.runtime.publisher", "iapc.runtime.protocol",
                 "iapc.runtime.metrics", "iapc.runtime.supervisor", "iapc.runtime.inference",
                 "iapc.runtime.cli", "iapc.synth.stream", "iapc.ros_bridge.bridge"):
        assert name in torch_free_modules()


@pytest.mark.parametrize("module", torch_free_modules())
def test_module_does_not_import_torch(module):
    done = subprocess.run([sys.executable, "-c", PROBE, module], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "missing" in result:
        if result["missing"].startswith("iapc"):
            pytest.fail(f"{module} imports the missing module {result['missing']}")
        pytest.skip(f"optional dependency {result['missing']} is not installed")
    assert result["torch"] is False, f"importing {module} loads torch"


# ``iapc replay`` in this interpreter, as its command line runs it; then whether torch was loaded.
# With HIDE_SHIPPED set, the package's shipped weights are hidden, so that the default model is
# trained on first use (in a fresh cache) as on a model that ships none.
REPLAY_PROBE = """
import json, os, sys
from pathlib import Path
import iapc.shipped
if os.environ.get("HIDE_SHIPPED"):
    iapc.shipped.WEIGHTS_DIR = Path(os.environ["HIDE_SHIPPED"])
from iapc.cli import _main
from iapc.errors import run_cli
code = run_cli("iapc", lambda: _main(sys.argv[1:]))
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


@pytest.mark.process
@pytest.mark.parametrize("weights", ["shipped", "trained on first use"])
def test_a_replay_with_the_default_model_loads_no_torch(tmp_path, weights):
    """The replay tooling as it runs, not only as it imports: a whole ``iapc replay`` with the
    default model (no --checkpoint, no --model) leaves torch unloaded, also when that model
    must first be trained (in a child process)."""
    import os

    from iapc.synth import write_domain

    write_domain(tmp_path / "fog", "fog", split_sizes={"val": 1}, size=(256, 128), sequences=1)
    env = dict(os.environ, IAPC_CACHE=str(tmp_path / "cache"), IAPC_EMBEDDED_ITERS="2",
               OMP_NUM_THREADS="1")
    if weights != "shipped":
        (tmp_path / "no-weights").mkdir()
        env["HIDE_SHIPPED"] = str(tmp_path / "no-weights")
    done = subprocess.run([sys.executable, "-c", REPLAY_PROBE, "replay", "--cityscapes",
                           str(tmp_path / "fog"), "--split", "val", "--fast", "--no-baseline",
                           "--no-progress", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=280, env=env)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "report.json").is_file()
    assert result["torch"] is False, "the replay loaded torch"
    if weights != "shipped":
        assert "first use: training the embedded tiny source model" in done.stderr
