"""iapc.export: from a PyTorch model to a deployed engine.

- ``onnx_export``: the ONNX graph with pre/post-processing inside (uint8 BGR frames in, uint8
  mask and optional confidence out);
- ``runners`` (``runner_base``, ``runner_tensorrt``, ``runner_onnxrt``, ``runner_torch``): one
  ``activate / infer / deactivate`` interface per backend, ``make_runner`` to pick one;
- ``parity``: the gate that compares an engine's masks with PyTorch's;
- ``store``: the versioned, atomic engine store the inference loop reads;
- ``cli``: ``iapc export``.

Nothing is imported here, so ``import iapc.export.store`` stays free of torch.
"""
