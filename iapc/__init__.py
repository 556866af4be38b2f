"""iapc-runtime: on-device continual adaptation (IAPC) for semantic segmentation.

Parts, each a sub-package: ``iapc.adapt`` (models, method, training; torch), ``iapc.export`` (ONNX,
engines, runners, store), ``iapc.runtime`` (inference loop, daemon, ZeroMQ), ``iapc.synth`` (the
synthetic driving world), ``iapc.replay`` (``iapc replay`` and its report), ``iapc.ros_bridge``.
Torch-free modules shared by every side sit at the top: labels, metrics, data, cache.
"""

__version__ = "0.1.0"
