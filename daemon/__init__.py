"""iapc.daemon: the adaptation daemon, the torch side of the runtime.

- ``process``: the process (sockets, signals) and :class:`~iapc.daemon.process.AdaptationDaemon`,
  which wires the jobs below together with what each depends on;
- ``stepping``: gradient steps and statistics updates on sampled batches, duty cycle;
- ``deployer``: the export cadence and the deployment of each candidate, rejection and rollback;
- ``domain_switch``: domain changes: bank the state left, restore or start the one entered;
- ``state``: the adaptation state on disk (resume, rollback) and the weights in service;
- ``progress``: the counters the jobs share, and the heartbeat;
- ``buffer``: the buffer of recent frames, the held-out frames and batch sampling;
- ``domains``: the label-free domain tracker and the bank of adapted states;
- ``health`` and ``engine_health``: the health gate run before every deployment, on the weights
  and on the engine to be served.

Deployment itself (export -> engine -> parity -> health -> store) is :mod:`iapc.export.deploy`,
shared with ``iapc export``; the methods it adapts with are :mod:`iapc.adapt.adapters`.
"""
