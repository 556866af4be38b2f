"""The source models that ship with the package (``iapc/weights/``), torch-free.

Each is a checkpoint ``source_<model>.pt`` beside a manifest ``source_<model>.json`` that says
how it was made (the command, its data, seed), its sha256, its input size and its mIoU on the
synthetic source domain's val split. ``iapc-runtime`` with no ``--checkpoint`` serves the
shipped model of ``--model`` at once; a model without shipped weights is trained on first use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from iapc.errors import UserError
from iapc.files import sha256_of

WEIGHTS_DIR = Path(__file__).with_name("weights")


def weights_path(model: str) -> Path:
    return WEIGHTS_DIR / f"source_{model}.pt"


def manifest_path(model: str) -> Path:
    return WEIGHTS_DIR / f"source_{model}.json"


def shipped_manifest(model: str) -> dict[str, Any] | None:
    path = manifest_path(model)
    return json.loads(path.read_text()) if path.is_file() else None


def shipped_checkpoint(model: str) -> Path | None:
    """The shipped weights of ``model`` after checking them against their manifest, or None
    when none ship; a damaged file is a :class:`UserError` (reinstall the package)."""
    manifest, path = shipped_manifest(model), weights_path(model)
    if manifest is None or not path.is_file():
        return None
    if sha256_of(path) != manifest["sha256"]:
        raise UserError(f"the shipped weights {path} do not match their manifest's sha256: "
                        "reinstall iapc-runtime, or pass --checkpoint FILE")
    return path
