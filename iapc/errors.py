"""User-facing errors: one line that says what to do, no traceback."""

from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A mistake the user can fix (bad option, missing file, wrong checkpoint).

    The command-line entry points print ``<prog>: error: <message>`` and exit with status 2;
    the message itself must say what to do.
    """


def run_cli(prog: str, main: Callable[[], int]) -> int:
    """Run ``main`` and turn a :class:`UserError` into one line on stderr (exit 2)."""
    try:
        return main()
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
