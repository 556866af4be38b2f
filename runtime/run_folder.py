"""The old name of :mod:`iapc.contracts.run_folder`, kept only for ``benchmarks/`` until their imports move;
nothing else imports it (tests/test_import_boundary.py checks)."""

from iapc.contracts.run_folder import *  # noqa: F401,F403
