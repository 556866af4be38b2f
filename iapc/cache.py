"""The cache of first-use artefacts (synthetic domains, the embedded source model).

Torch-free and in one place because both sides read it: the training code writes the embedded
model, the runtime's command line looks for it before starting any process.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$IAPC_CACHE``, default ``~/.cache/iapc``."""
    return Path(os.environ.get("IAPC_CACHE", Path.home() / ".cache" / "iapc"))


def embedded_model_path(model: str) -> Path:
    """Where the embedded source model of architecture ``model`` is cached."""
    return cache_dir() / "embedded" / f"source_{model}.pt"
