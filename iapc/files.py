"""Small file helpers every side uses, torch-free: the one sha256 of a file."""

from __future__ import annotations

import hashlib
import os

CHUNK = 1 << 20


def sha256_of(path: str | os.PathLike) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
