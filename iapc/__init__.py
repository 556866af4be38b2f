"""iapc-runtime: on-device continual adaptation (IAPC) for semantic segmentation.

Parts, each a sub-package: ``iapc.adapt`` (models, method, training; torch), ``iapc.daemon`` (the
adaptation daemon: the method on the live stream, engine builds and gates; torch),
``iapc.export`` (ONNX export and deployment on the torch side; engine targets, runners, store
and manifest torch-free), ``iapc.runtime`` (supervisor, inference loop, hot swap, ZeroMQ; no
torch), ``iapc.synth`` (the synthetic driving world), ``iapc.replay`` (``iapc replay`` and its
report), ``iapc.ros_bridge``. Torch-free modules shared by every side sit at the top: labels,
metrics, data, cache, files, settings, options, errors.
"""

__version__ = "0.1.0"
