from pathlib import Path

import pytest


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
