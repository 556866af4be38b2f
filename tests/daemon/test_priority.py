"""The daemon's scheduling: the idle class where asked and the OS has it, else nice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import os, sys
from iapc.daemon.process import lower_priority
used = lower_priority(nice=int(sys.argv[1]), threads=1, idle=sys.argv[2] == "idle")
print(used, os.sched_getscheduler(0), os.nice(0), sep="|", flush=True)
os._exit(0)  # an idle-class process gets CPU only when nothing else wants it: end at once
"""


def _run(nice: int, mode: str) -> list[str]:
    # a child process: scheduling changes cannot be undone in the test process
    out = subprocess.run([sys.executable, "-c", PROBE, str(nice), mode], capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.strip().split("|")


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="no idle scheduling class on this OS")
def test_idle_priority_puts_the_daemon_in_the_idle_class():
    used, policy, _ = _run(10, "idle")
    assert used == "idle" and int(policy) == os.SCHED_IDLE


def test_without_it_the_daemon_is_niced():
    before = os.nice(0)
    used, policy, niceness = _run(10, "nice")
    assert used == "nice 10" and int(policy) == os.SCHED_OTHER
    assert int(niceness) == min(19, before + 10)
