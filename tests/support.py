"""Helpers shared by tests (on sys.path through pytest's ``pythonpath = tests``)."""

import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runtime_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from iapc.runtime.cli import main; main()", *args]


def start_runtime(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(runtime_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            **kwargs)


class Collector(threading.Thread):
    """Receives every mask header and status message the runtime publishes."""

    def __init__(self, port: int, rcvhwm: int = 8):
        from iapc.runtime.client import MaskSubscriber

        super().__init__(daemon=True)
        self.sub = MaskSubscriber(f"tcp://127.0.0.1:{port}", topics=(b"mask", b"status"),
                                  newest_wins=False, rcvhwm=rcvhwm)
        self.headers, self.statuses = [], []
        self.stopped = threading.Event()
        self.start()

    def run(self):
        while not self.stopped.is_set():
            try:
                message = self.sub.receive_any(timeout=0.2)
            except TimeoutError:
                continue
            if message.status is not None:
                self.statuses.append(message.status)
            else:
                self.headers.append(message.header)

    def wait_status(self, predicate, timeout: float, after: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for status in self.statuses[after:]:
                if predicate(status):
                    return status
            time.sleep(0.05)
        kinds = [(s.get("kind"), s.get("type"), s.get("state")) for s in self.statuses[after:]]
        raise AssertionError(f"no such status within {timeout} s; saw {kinds[-30:]}")

    def wait_frames(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.headers)
        while len(self.headers) < start + count:
            assert time.monotonic() < deadline, f"masks stopped flowing ({len(self.headers)})"
            time.sleep(0.05)

    def close(self):
        self.stopped.set()
        self.join(5)
        self.sub.close()
