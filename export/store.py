"""The old name of :mod:`iapc.engines.store`, kept only for ``benchmarks/`` until their imports move;
nothing else imports it (tests/test_import_boundary.py checks)."""

from iapc.engines.store import *  # noqa: F401,F403
