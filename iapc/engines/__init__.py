"""iapc.engines: the engines, torch-free; shared by the adaptation daemon (which builds and stores
them) and the inference process (which serves them), which never import each other.

- ``targets``: what an engine is built for (backend, precision, device), how it is built and
  gated, and the one way the inference process turns a stored version into a runner;
- ``runner_base``, ``runner_onnxrt``, ``runner_tensorrt``: one ``activate / infer / deactivate``
  interface per backend;
- ``store``: the versioned, atomic engine store; ``manifest``: its one manifest schema.

The torch side (ONNX export, deployment, parity gate, torch runner) is :mod:`iapc.export`.
"""
