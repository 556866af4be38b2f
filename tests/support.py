"""Helpers shared by tests (on sys.path through pytest's ``pythonpath = tests``).

Starting and watching a runtime is the replay tooling's job; the tests use its functions.
"""

import subprocess

from iapc.replay.launch import free_loopback_port as free_port
from iapc.replay.launch import runtime_executable
from iapc.replay.record import Collector

__all__ = ["Collector", "free_port", "runtime_command", "start_runtime"]


def runtime_command(*args: str) -> list[str]:
    return [*runtime_executable(), *args]


def start_runtime(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(runtime_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            **kwargs)
