"""The daemon wired from its jobs: a fresh start deploys the source weights and begins with the
statistics phase; a restart resumes the deployed state and deploys nothing; every job sends on
the one event sender it was given (none is patched in later)."""

from __future__ import annotations

import torch

from support import SIZE, Events, diverse_model

from iapc.engines.store import EngineStore
from iapc.contracts import run_folder
from iapc.runtime.config import RuntimeConfig
from iapc.synth import sample_frames


def make(tmp_path):
    from iapc.adapt.checkpoint import save_checkpoint
    from iapc.daemon.process import AdaptationDaemon
    from iapc.contracts.handoff import EventSender
    from iapc.contracts.run_folder import ipc_address

    checkpoint = tmp_path / "source.pt"
    if not checkpoint.is_file():
        save_checkpoint(checkpoint, "tiny", diverse_model())
    cfg = RuntimeConfig(run_dir=str(tmp_path / "run"), input_size=SIZE)
    cfg.adaptation.batch_size = 2
    cfg.adaptation.shift_statistics_frames = 3
    events = EventSender(ipc_address(tmp_path / "run", run_folder.EVENTS_SOCKET))
    return AdaptationDaemon(cfg, str(checkpoint), events)


def test_start_deploys_the_source_then_a_restart_resumes_without_deploying(tmp_path):
    (tmp_path / "run").mkdir()
    received = Events(tmp_path / "run")
    d = make(tmp_path)
    try:
        assert d.stepper.events is d.deployer.events is d.state.events is d.domains.events \
            is d.events
        d.start()
        assert (tmp_path / "run" / run_folder.HEARTBEAT).read_text().strip().isdigit()
        assert EngineStore(d.store.root).current().number == 1 and d.statistics_frames_left == 3
        for image in sample_frames(8, SIZE, seed=3):
            d.keep(image)
        d.progress.statistics_frames_left = 0  # straight to gradient steps
        for _ in range(2):
            d.adapt_once()
        assert d.export_version() == 2 and d.step_count == 2
        weights = {k: v.clone() for k, v in d.serving.state_dict().items()}
    finally:
        d.events.close()
    again = make(tmp_path)
    try:
        again.start()
        assert again.step_count == 2 and again.statistics_frames_left == 0
        assert [v.number for v in EngineStore(again.store.root).versions()] == [1, 2]
        for key, value in again.serving.state_dict().items():
            assert torch.equal(value, weights[key]), key
    finally:
        again.events.close()
    assert [e["type"] for e in received.all()] == ["version", "version"]
    received.receiver.close()
