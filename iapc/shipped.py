"""The source models that ship with the package (``iapc/weights/``), torch-free.

Each is a checkpoint ``source_<model>.pt`` beside a manifest ``source_<model>.json`` that says
how it was made (the command, its data, seed), its sha256, its input size and its mIoU on the
synthetic source domain's val split. ``iapc-runtime`` with no ``--checkpoint`` serves the
shipped model of ``--model`` at once; a model without shipped weights is trained on first use.

:func:`default_checkpoint` is the one way every command finds the default source model
(``iapc-runtime``, ``iapc replay``, the benchmarks): shipped, else cached, else trained once in a
child process, so the caller stays free of torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
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


def default_checkpoint(model: str) -> Path:
    """The default source checkpoint of ``model``: the shipped one, else the cached one, else
    one trained now on the synthetic source domain by ``python -m iapc.adapt.embedded`` in a
    child process (a few minutes, once; cached). Torch is never loaded here."""
    from iapc.cache import embedded_model_path

    shipped = shipped_checkpoint(model)
    if shipped is not None:
        return shipped
    path = embedded_model_path(model)
    if not path.is_file():
        print(f"first use: training the embedded {model} source model on the synthetic source "
              f"domain into {path} (a few minutes, once)", file=sys.stderr)
        code = subprocess.call([sys.executable, "-m", "iapc.adapt.embedded", "--model", model,
                                "--out", str(path)])
        if code != 0 or not path.is_file():
            raise UserError(f"training the embedded source model failed (exit {code}); pass "
                            "--checkpoint FILE to use your own")
    return path
