"""Command-line value parsers shared by every ``iapc`` command (one definition each)."""

from __future__ import annotations

import re

from iapc.errors import UserError

# Input (width, height) of a checkpoint that does not record the size it was trained at (the
# released DeepLabV2 files: Cityscapes at 1024x512).
DEFAULT_INPUT_SIZE = (1024, 512)

_SIZE = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


def parse_size(text: str, minimum: int = 1) -> tuple[int, int]:
    """``"1024x512"`` -> ``(1024, 512)``, i.e. (width, height); each side at least ``minimum``."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise UserError(f"size {text!r} is not WIDTHxHEIGHT: write e.g. 1024x512")
    width, height = int(match.group(1)), int(match.group(2))
    if width < max(1, minimum) or height < max(1, minimum):
        raise UserError(f"size {text!r} is too small: use at least {max(1, minimum)}x{max(1, minimum)}")
    return width, height


def input_size_for(meta: dict, requested: tuple[int, int] | None,
                   option: str = "--input-size", prog: str = "") -> tuple[int, int]:
    """The size a command runs a checkpoint's model at: ``requested`` if given (one warning
    line when it differs from the size recorded in ``meta["input_size"]``), else the recorded
    size, else :data:`DEFAULT_INPUT_SIZE`."""
    import sys

    recorded = meta.get("input_size")
    if requested is None:
        return tuple(recorded) if recorded else DEFAULT_INPUT_SIZE
    if recorded and tuple(requested) != tuple(recorded):
        print(f"{prog + ': ' if prog else ''}warning: {option} {requested[0]}x{requested[1]} "
              f"differs from the {recorded[0]}x{recorded[1]} the checkpoint was trained at; "
              f"drop {option} to use the training size", file=sys.stderr)
    return tuple(requested)
