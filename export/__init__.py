"""iapc.export: the torch side of the engines, from a PyTorch model to a deployed engine.

- ``onnx_export``: the ONNX graph with pre/post-processing inside (uint8 BGR frames in, uint8
  mask and optional confidence out);
- ``deploy``: the deployment pipeline of ``iapc export`` and the daemon (export, the target's
  engine, gates, store);
- ``parity``: the gate that compares an engine's masks with PyTorch's;
- ``runner_torch``: the PyTorch runner (checks and development); ``runners``: ``make_runner``,
  one factory over every backend for tools;
- ``cli``: ``iapc export``.

The torch-free half (engine targets, the other runners, the store and its manifest) is
:mod:`iapc.engines`. Nothing is imported here.
"""
