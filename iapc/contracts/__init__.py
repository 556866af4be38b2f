"""iapc.contracts: what the supervisor, the inference process and the adaptation daemon agree
on, torch-free, so that the daemon and the inference process depend on it and not on each other.

- ``run_folder``: the names of the files and sockets in a run folder;
- ``events``: the typed list of events the daemon and the supervisor send to the inference
  process (docs/PROTOCOL.md's events table is generated from it);
- ``handoff``: the ZeroMQ hand-offs that carry frames to the daemon and events back.

The runtime's configuration is still :mod:`iapc.runtime.config`.
"""
