import faulthandler
import os
import sys
import threading
import time
from pathlib import Path

import pytest

# A hang becomes a failure. Each test has pytest-timeout's limit (pyproject: timeout); the whole
# session has this one, and after pytest's summary the interpreter has EXIT_GRACE_S to end (a
# thread, a child or a ZeroMQ context left behind can keep it alive). Past either, faulthandler
# prints every thread's stack and the process exits with status 1.
SESSION_LIMIT_S = int(os.environ.get("IAPC_TEST_SESSION_LIMIT_S", 40 * 60))
EXIT_GRACE_S = 60
LEAK_GRACE_S = 5.0  # how long a test's threads and children get to end after it


def pytest_configure(config):
    faulthandler.dump_traceback_later(SESSION_LIMIT_S, exit=True, file=sys.__stderr__)
    # every property test draws the same examples on every run and has no time limit per
    # example: a verdict never depends on chance or on how loaded the machine is
    from hypothesis import settings

    settings.register_profile("deterministic", derandomize=True, deadline=None, database=None)
    settings.load_profile("deterministic")


def _destroy_open_zmq_contexts() -> int:
    """Destroys, without linger, the ZeroMQ contexts nobody closed; returns how many. Garbage
    collection would otherwise terminate them with the default linger, which blocks for ever
    (inside whichever later test happens to collect them) while a socket has queued messages."""
    import gc
    import warnings

    zmq = sys.modules.get("zmq")
    if zmq is None:
        return 0
    with warnings.catch_warnings():  # isinstance on some of torch's lazy objects warns
        warnings.simplefilter("ignore")
        left = [c for c in gc.get_objects() if isinstance(c, zmq.Context) and _has_open_sockets(c)]
    for context in left:
        context.destroy(linger=0)
    return len(left)


def _has_open_sockets(context) -> bool:
    """An open context with an open socket (only such a context can block its termination);
    pyzmq's own garbage-collector context is left to pyzmq."""
    from zmq.utils.garbage import gc as zmq_garbage

    if context.closed or context is zmq_garbage._context:
        return False
    return any(not socket.closed for socket in list(context._sockets))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:  # what a failed test opened was not closed: no later test may pay for it
        if _destroy_open_zmq_contexts():
            report.sections.append(("conftest", "open ZeroMQ contexts destroyed after the failure"))


_EXIT_STATUS = {"status": 1}


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS["status"] = int(exitstatus)
    left = _destroy_open_zmq_contexts()
    if left:
        print(f"\nconftest: {left} ZeroMQ context(s) left open by the tests were destroyed",
              file=sys.__stderr__)


def pytest_unconfigure(config):
    # Non-daemon threads still running would keep the interpreter alive after the summary:
    # name them, print every stack, and exit now with pytest's status (1 if it was 0).
    main = threading.main_thread()
    left = [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]
    if left:
        print(f"\nconftest: threads still running after the tests: {[t.name for t in left]}; "
              "their stacks follow, then the run exits", file=sys.__stderr__, flush=True)
        faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
        sys.__stdout__.flush()
        os._exit(_EXIT_STATUS["status"] or 1)
    # replaces the session limit: from here on only interpreter shut-down is left
    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True, file=sys.__stderr__)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for torch in the test process.

    CI has two shared cores and many tests start runtime processes beside the test process;
    torch's default threading then oversubscribes them (adaptation steps measured 10-40x slower).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _child_pids() -> set[int]:
    """Live (not zombie) direct children of this process, read from /proc (Linux)."""
    children = set()
    own = os.getpid()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == own and state != "Z":
            children.add(int(entry.name))
    return children


def _leftovers(threads_before: set, children_before: set) -> tuple[list, set]:
    threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()
               and not t.daemon]
    return threads, _child_pids() - children_before


@pytest.fixture(autouse=True)
def _nothing_outlives_the_test(request):
    """Fails a test that leaves a non-daemon thread or a child process running: either keeps
    the test process alive after the summary (the hang this guards against) or disturbs later
    tests. Session and module fixtures are set up before this one, so their parts don't count."""
    threads_before, children_before = set(threading.enumerate()), _child_pids()
    yield
    deadline = time.monotonic() + LEAK_GRACE_S
    threads, children = _leftovers(threads_before, children_before)
    while (threads or children) and time.monotonic() < deadline:
        time.sleep(0.05)
        threads, children = _leftovers(threads_before, children_before)
    for pid in children:  # end them so that they can't hang the session either
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    if threads or children:
        pytest.fail(f"{request.node.nodeid} left running: threads "
                    f"{[t.name for t in threads]}, child processes {sorted(children)}",
                    pytrace=False)


# Shared by the runtime and replay tests, which start real runtimes on it.
@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised 'tiny' source model (adaptation needs no trained weights to run)."""
    import torch

    from iapc.adapt.checkpoint import save_checkpoint
    from iapc.adapt.models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, "tiny", build_model("tiny"), {"note": "test"})
    return path
