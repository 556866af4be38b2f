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
