"""iapc-runtime: on-device continual adaptation (IAPC) for semantic segmentation.

Parts, each a sub-package: ``iapc.adapt`` (models, method, data), ``iapc.export`` (ONNX, engines,
runners, store), ``iapc.runtime`` (inference loop, daemon, ZeroMQ), ``iapc.ros_bridge``.
"""

__version__ = "0.1.0"
