"""iapc.daemon: the adaptation daemon, the torch side of the runtime.

- ``process``: the process loop, IPC with the inference process, heartbeats, state on disk;
- ``buffer``: the buffer of recent frames, the held-out frames and batch sampling;
- ``health``: the label-free health gate run before every deployment.

Deployment itself (export -> engine -> parity -> health -> store) is :mod:`iapc.export.deploy`,
shared with ``iapc export``; the methods it adapts with are :mod:`iapc.adapt.methods`.
"""
