"""Helpers shared by tests (on sys.path through pytest's ``pythonpath = tests``)."""

import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runtime_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from iapc.runtime.cli import main; main()", *args]


def start_runtime(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(runtime_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            **kwargs)
