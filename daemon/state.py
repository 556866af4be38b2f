"""Persistence of the adaptation state: after every deployed version, ``RUN/adaptation.pt`` holds
an ordinary checkpoint of the deployed network (read by ``iapc evaluate``, ``iapc export`` and
``iapc adapt --resume``) plus the method's state; a restarted daemon resumes from it, and a
rejected candidate or a non-finite loss rolls the state back to it. Also the copy of the weights
in service, the health gate's reference."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Callable

from iapc.adapt.checkpoint import read_checkpoint_file, save_checkpoint
from iapc.adapt.iapc_step import AdaptConfig
from iapc.daemon.progress import Progress
from iapc.errors import UserError
from iapc.runtime.config import RuntimeConfig
from iapc.contracts.events import EventType

log = logging.getLogger("iapc.daemon")


class StateKeeper:
    """Writes, loads, resumes and rolls back the state of ``adapter``; ``domain`` says which
    domain the state belongs to (None without the domain bank)."""

    def __init__(self, cfg: RuntimeConfig, method_config: AdaptConfig, adapter, path: Path,
                 progress: Progress, events, domain: Callable[[], int | None] = lambda: None):
        self.cfg, self.method_config, self.adapter = cfg, method_config, adapter
        self.path, self.progress, self.events, self.domain = path, progress, events, domain
        # the weights of the engine in service (one more model copy in memory)
        self.serving = copy.deepcopy(adapter.deployable()).eval()

    def write(self, path: Path, version: int | None) -> None:
        """The state as an ordinary checkpoint of the deployed network, plus the method's."""
        save_checkpoint(path, self.cfg.model, self.adapter.deployable(),
                        {"adapt": self.method_config.to_dict(), "runtime": self.cfg.to_dict()},
                        step=self.adapter.step_count, input_size=list(self.cfg.input_size),
                        method=self.method_config.method, version=version, domain=self.domain(),
                        **self.adapter.state_dict())

    def load(self, path: Path) -> dict:
        payload = read_checkpoint_file(path)
        if payload.get("method", "iapc") != self.method_config.method:
            raise UserError(f"it was made by --method {payload.get('method')}")
        self.adapter.deployable().load_state_dict(payload["state_dict"])
        self.adapter.load_state_dict(payload)
        return payload

    def follow_service(self) -> None:
        """The deployable weights are now those in service."""
        self.serving.load_state_dict(self.adapter.deployable().state_dict())

    def save(self, version: int) -> None:
        """``version`` was deployed from the current state: write it, it is now in service."""
        self.write(self.path, int(version))
        self.progress.updates_since_deploy = 0
        self.follow_service()

    def resume(self) -> bool:
        """Load the last deployed state, if any; False when starting fresh."""
        if not self.path.is_file():
            return False
        try:
            payload = self.load(self.path)
        except Exception as err:  # a damaged or foreign state file: start from the source model
            log.error("cannot resume from %s (%s): starting from the source model", self.path, err)
            self.adapter.reset()
            return False
        self.progress.updates_since_deploy = 0
        self.follow_service()
        log.info("resumed adaptation at step %d (engine v%s)", self.adapter.step_count,
                 payload.get("version"))
        return True

    def rollback(self, reason: str) -> None:
        """Back to the last deployed state (or the source model if none was saved); tell why."""
        step = self.adapter.step_count
        if not self.resume():
            self.adapter.reset()
            self.progress.updates_since_deploy = self.progress.statistics_updates = 0
        log.warning("rolled back from step %d to step %d: %s", step, self.adapter.step_count,
                    reason)
        self.events.send(EventType.ROLLBACK, step=step, to_step=self.adapter.step_count,
                         reason=reason)
