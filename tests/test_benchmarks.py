"""The benchmark scripts stay runnable: each parses its options (imports included)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process  # starts real runtime or command processes: not in make test-fast

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_script_shows_its_help(script):
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_script_does_not_use_the_tests_helpers(script):
    """Benchmarks run from a checkout without the tests: what they need lives in the package."""
    text = script.read_text()
    assert "from support import" not in text and '"tests"' not in text
