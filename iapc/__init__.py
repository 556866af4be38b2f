"""iapc-runtime: on-device continual adaptation (IAPC) for semantic segmentation.

Parts, each a sub-package: ``iapc.adapt`` (models, method, training; torch), ``iapc.daemon`` (the
adaptation daemon: the method on the live stream, engine builds and gates; torch),
``iapc.export`` (ONNX export, deployment, parity gate; torch), ``iapc.runtime`` (supervisor,
inference loop, hot swap, ZeroMQ publishing; no torch), ``iapc.synth`` (the synthetic driving
world), ``iapc.replay`` (``iapc replay`` and its report), ``iapc.ros_bridge``. The daemon and the
inference process both depend on two small torch-free packages, ``iapc.engines`` (engine
targets, runners, store, manifest) and ``iapc.contracts`` (run folder, events, hand-offs); of
``iapc.runtime`` the daemon imports only the configuration (``iapc.runtime.config``), and the
runtime imports nothing of the daemon. Torch-free modules shared by every side sit at the top: labels, metrics,
data, cache, files, settings, options, errors.
"""

__version__ = "0.1.0"
