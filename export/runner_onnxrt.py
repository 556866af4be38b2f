"""The old name of :mod:`iapc.engines.runner_onnxrt`, kept only for ``benchmarks/`` until their imports move;
nothing else imports it (tests/test_import_boundary.py checks)."""

from iapc.engines.runner_onnxrt import *  # noqa: F401,F403
