"""A torch-free look at a checkpoint file, before any process is started to load it.

``torch.save`` writes a zip archive (``PK`` magic, a ``.../data.pkl`` member, a central directory
at the end) or, in its legacy format, a pickle stream. A 0-byte or truncated copy, or a file that
is no checkpoint at all, is caught here with a line that says what is wrong, instead of a traceback
or PyTorch's raw reader text deep inside a child process.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from iapc.errors import UserError

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"  # legacy torch.save: a pickle stream, protocol 2 or later
CRC_CHECK_LIMIT = 512 * 1024 * 1024  # bytes: reading every member's CRC costs ~1 s per GB

_REDO = "copy or download it again, or pass --checkpoint with a file written by 'iapc train-source'"


def check_checkpoint_file(path: str | os.PathLike) -> Path:
    """Raise a one-line :class:`UserError` unless ``path`` looks like a whole torch checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: give the path of a .pth/.pt file")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes): {_REDO}")
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if head == ZIP_MAGIC:
        _check_archive(path, size)
    elif not head.startswith(PICKLE_PROTO):
        raise UserError(f"checkpoint {path} is not a PyTorch checkpoint (it starts with "
                        f"{head!r}, not a zip archive or a pickle): {_REDO}")
    return path


def _check_archive(path: Path, size: int) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
                raise UserError(f"checkpoint {path} is a zip archive but not a PyTorch checkpoint "
                                f"(no data.pkl inside): {_REDO}")
            bad = archive.testzip() if size <= CRC_CHECK_LIMIT else None
    except zipfile.BadZipFile as err:  # the central directory at the end is missing: truncated
        raise UserError(f"checkpoint {path} is truncated or damaged ({size} bytes, {err}): "
                        f"{_REDO}") from None
    except (OSError, EOFError) as err:
        raise UserError(f"checkpoint {path} could not be read ({err}): {_REDO}") from None
    if bad is not None:
        raise UserError(f"checkpoint {path} is damaged (member {bad} fails its CRC check): {_REDO}")
