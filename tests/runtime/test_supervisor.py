"""The supervisor's contract, with a stand-in daemon process (no children are started): a daemon
that dies after it got going is restarted with backoff and the restart announced; one whose
heartbeat stops is killed and that announced; a user error (exit 2) stops the runtime with it; a
daemon that keeps dying before its first heartbeat is given up with one line; the summary line
comes from this run's summary file only."""

from __future__ import annotations

import json
import os
import time

import pytest

from iapc.contracts import run_folder
from iapc.runtime import supervisor
from iapc.runtime.config import RuntimeConfig
from iapc.contracts.events import EventType
from iapc.runtime.supervisor import FAILED_EXIT, USER_ERROR_EXIT, Supervisor


class Daemon:
    """A stand-in Child: ``code`` is what poll() returns (None while running)."""

    def __init__(self):
        self.code = None
        self.started_at = time.time()
        self.starts = 0
        self.killed = 0
        self.relay = type("Relay", (), {"join": staticmethod(lambda timeout=None: None)})()

    def poll(self):
        return self.code

    def start(self):
        self.starts += 1
        self.code = None
        self.started_at = time.time()

    def kill(self):
        self.killed += 1
        self.code = -9
        return -9


class Sent:
    def __init__(self):
        self.events = []

    def send(self, kind, **fields):
        self.events.append((EventType(kind), fields))
        return True


@pytest.fixture()
def sup(tmp_path, monkeypatch):
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_S", (0.0,))
    cfg = RuntimeConfig(run_dir=str(tmp_path / "run"), daemon_timeout=5.0,
                        daemon_start_timeout=20.0)
    s = Supervisor(cfg, checkpoint=str(tmp_path / "unused.pt"))
    s.daemon, s.events = Daemon(), Sent()
    yield s
    for lock in s._locks:
        lock.close()


def beat(sup, age_s=0.0):
    path = sup.run_dir / run_folder.HEARTBEAT
    path.write_text(f"{os.getpid()}\n")
    when = time.time() - age_s
    os.utime(path, (when, when))


def test_a_daemon_that_died_after_it_got_going_is_restarted_and_announced(sup):
    beat(sup)
    sup.daemon.code = -9
    assert sup._restart_daemon_if_dead() is None
    assert sup.daemon.starts == 1 and sup.daemon_restarts == 1
    assert sup.events.events == [(EventType.DAEMON_RESTART,
                                  {"reason": "exit status -9", "restarts": 1})]
    assert sup._restart_daemon_if_dead() is None and sup.daemon.starts == 1  # running again


def test_a_silent_daemon_is_killed_and_announced(sup):
    beat(sup, age_s=0.0)
    sup._kill_daemon_if_hung()
    assert sup.daemon.killed == 0  # beating
    sup.daemon.started_at = time.time() - 60
    beat(sup, age_s=10.0)  # older than daemon_timeout (5 s), newer than its start
    sup._kill_daemon_if_hung()
    assert sup.daemon.killed == 1
    kind, fields = sup.events.events[0]
    assert kind is EventType.DAEMON_HUNG and fields["reason"] == "no heartbeat for 10 s"


def test_before_its_first_beat_a_daemon_gets_the_start_timeout(sup):
    sup.daemon.started_at = time.time() - 10  # over daemon_timeout, under daemon_start_timeout
    sup._kill_daemon_if_hung()
    assert sup.daemon.killed == 0
    sup.daemon.started_at = time.time() - 30
    sup._kill_daemon_if_hung()
    assert sup.daemon.killed == 1


def test_a_user_error_stops_the_runtime_with_it(sup):
    sup.daemon.code = USER_ERROR_EXIT
    assert sup._restart_daemon_if_dead() == USER_ERROR_EXIT
    assert sup.daemon.starts == 0 and sup.events.events == []


def test_a_daemon_that_never_gets_going_is_given_up_in_one_line(sup, capsys):
    for attempt in range(supervisor.FAST_FAILURES_LIMIT):
        sup.daemon.code = 1  # died before any heartbeat
        code = sup._restart_daemon_if_dead()
    assert code == FAILED_EXIT and sup.daemon.starts == supervisor.FAST_FAILURES_LIMIT - 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("iapc-runtime: error: ")
    assert str(sup.run_dir / run_folder.log_name("daemon")) in err and "--no-adapt" in err


def test_the_summary_line_reads_this_runs_summary_only(sup):
    assert "stopped before the first frame" in sup.summary_line()
    summary = {"frames_published": 40, "frames_failed": 1, "frames_unreadable": 0,
               "capture_dropped": 2, "publish_dropped": 1, "swaps": [{}, {}],
               "engine_version": 3, "finished_ns": time.time_ns()}
    (sup.run_dir / run_folder.INFERENCE_SUMMARY).write_text(json.dumps(summary))
    line = sup.summary_line()
    assert line.startswith("iapc-runtime: 40 frames published (1 failed, 0 unreadable files, "
                           "3 dropped), 2 swaps, store engine v3 in service")
    summary["finished_ns"] = sup.started_ns - 1  # a predecessor's
    (sup.run_dir / run_folder.INFERENCE_SUMMARY).write_text(json.dumps(summary))
    assert "stopped before the first frame" in sup.summary_line()
