from pathlib import Path

import pytest


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
