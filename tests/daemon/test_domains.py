"""Domain changes: recognising them label-free, and the bank of adapted states per domain."""

from __future__ import annotations

import contextlib
import copy
import itertools

import numpy as np
import torch

from iapc.daemon.domains import DomainBank, DomainStats, DomainTracker, describe
from iapc.synth import stream

SIZE = (128, 64)


def frames(domain: str, count: int, seed: int = 0) -> list[np.ndarray]:
    return [image for image, _ in itertools.islice(stream(domain, SIZE, seed=seed), count)]


def shifts(tracker: DomainTracker, images) -> list:
    return [s for s in (tracker.observe(i) for i in images) if s is not None]


def test_descriptor_is_small_and_bounded():
    d = describe(frames("night", 1)[0])
    assert d.shape == (12,) and d.dtype == np.float32 and (d >= 0).all() and (d <= 1).all()


def test_a_change_of_domain_and_a_return_are_recognised():
    tracker = DomainTracker(min_frames=24, window=6)
    assert shifts(tracker, frames("night", 60)) == []  # within a domain: no shift
    to_fog = shifts(tracker, frames("fog", 60, seed=1))
    assert len(to_fog) == 1 and to_fog[0].to == 1 and not to_fog[0].known
    back = shifts(tracker, frames("night", 60, seed=2))  # other scenes of the same domain
    assert len(back) == 1 and back[0].to == 0 and back[0].known and back[0].came_from == 1


def test_the_tracker_survives_a_restart_through_the_bank(tmp_path):
    bank = DomainBank(tmp_path / "store", size=4)
    tracker, order = bank.load_tracker(min_frames=24, window=6)
    shifts(tracker, frames("night", 40) + frames("fog", 40, seed=1))
    bank.save_tracker(tracker, [0, 1])
    again, order = bank.load_tracker(min_frames=24, window=6)
    assert again.current == 1 and order == [0, 1] and set(again.domains) == {0, 1}
    back = shifts(again, frames("night", 30, seed=2))
    assert back and back[0].to == 0 and back[0].known


def banked_target_statistics(adapter) -> list[torch.Tensor]:
    """The target estimate behind the adapter's statistics, whatever source share they hold."""
    from iapc.adapt.iapc_step import target_statistics

    return target_statistics(adapter.deployable(), adapter.source,
                             adapter.cfg.source_statistics_weight)


@contextlib.contextmanager
def daemon_on_tiny(tmp_path, method: str = "iapc", **adaptation):
    """A daemon (not running: the test drives it) of ``method`` on a fresh tiny model, 2-frame
    batches, a 24-frame domain minimum and a 6-frame shift window, plus ``adaptation`` settings;
    and the events it sends."""
    from iapc.adapt.checkpoint import save_checkpoint
    from iapc.adapt.models import build_model
    from iapc.daemon.process import AdaptationDaemon
    from iapc.runtime.config import RuntimeConfig
    from iapc.contracts.handoff import EventSender
    from iapc.contracts.run_folder import EVENTS_SOCKET, ipc_address
    from support import Events

    torch.manual_seed(0)
    checkpoint = tmp_path / "source.pt"
    save_checkpoint(checkpoint, "tiny", build_model("tiny"))
    cfg = RuntimeConfig(run_dir=str(tmp_path / "run"), input_size=SIZE)
    cfg.method.method = method
    settings = {"batch_size": 2, "domain_min_frames": 24, "shift_window": 6, **adaptation}
    for key, value in settings.items():
        setattr(cfg.adaptation, key, value)
    (tmp_path / "run").mkdir()
    events = Events(tmp_path / "run")
    daemon = AdaptationDaemon(cfg, str(checkpoint),
                              EventSender(ipc_address(tmp_path / "run", EVENTS_SOCKET)))
    try:
        yield daemon, events
    finally:
        daemon.events.close()
        events.receiver.close()


def test_the_daemon_banks_each_domain_and_restores_it_on_return(tmp_path):
    from iapc.engines.store import EngineStore

    with daemon_on_tiny(tmp_path) as (daemon, events):
        assert daemon.export_version(source=True) == 1
        for image in frames("night", 40):
            daemon.keep(image)
        for _ in range(3):
            daemon.step()
        night = {k: v.clone() for k, v in daemon.adapter.deployable().state_dict().items()}
        night_statistics = banked_target_statistics(daemon.adapter)
        for image in frames("fog", 40, seed=1):  # new domain: source weights, fog statistics
            daemon.keep(image)
        target = daemon.adapter.deployable()
        assert daemon.tracker.current == 1 and daemon.step_count == 0
        assert not torch.equal(target.state_dict()["backbone.0.1.running_mean"],
                               night["backbone.0.1.running_mean"])
        daemon.step()
        for image in frames("night", 30, seed=2):  # back: night's banked state, at once
            daemon.keep(image)
        assert daemon.tracker.current == 0 and daemon.step_count == 3
        for key, value in daemon.adapter.deployable().state_dict().items():
            if "running_" not in key:  # the export may have chosen another source share...
                assert torch.equal(value, night[key]), key
        # ...of the same target statistics
        for got, banked in zip(banked_target_statistics(daemon.adapter), night_statistics):
            torch.testing.assert_close(got, banked)
        received = events.all()
        sent = [e for e in received if e["type"] == "domain_shift"]
        assert [(e["from"], e["domain"], e["known"]) for e in sent] == [(0, 1, False), (1, 0, True)]
        store = EngineStore(daemon.cfg.resolved_store())
        assert (store.root / "domains" / "0.pt").is_file() and (store.root / "domains" / "1.pt").is_file()
        # each shift served at once, without an export, then exported the state entered: fog
        # the source engine (v2), then its recalibrated network (v3); the return night's last
        # engine (v1) as v4, then night's banked state (v5)
        manifests = {v.number: v.manifest for v in store.versions()}
        assert sorted(manifests) == [1, 2, 3, 4, 5] and store.current().number == 5
        assert [manifests[n].get("republished_from") for n in (2, 3, 4, 5)] == \
            ["v000001", None, "v000001", None]
        assert manifests[4]["domain"] == 0 and manifests[2]["domain"] == 1
        assert manifests[5]["step"] == 3  # night's three steps, banked
        served = [(e["version"], e.get("republished_from")) for e in received if e["type"] == "version"]
        assert served == [(1, None), (2, 1), (3, None), (4, 1), (5, None)]


def _keep_until_shift(daemon, images) -> int:
    """Frames of ``images`` kept until the tracker changes domain; how many."""
    current = daemon.tracker.current
    for count, image in enumerate(images, start=1):
        daemon.keep(image)
        if daemon.tracker.current != current:
            return count
    raise AssertionError("no domain shift")


def test_a_new_domain_first_moves_only_statistics_for_the_configured_frames(tmp_path):
    with daemon_on_tiny(tmp_path, shift_statistics_frames=5, export_every_steps=2) as (d, events):
        assert d.export_version() == 1
        for image in frames("night", 40):
            d.keep(image)
        assert d.statistics_frames_left == 0  # no shift yet (and no fresh start: run() not called)
        d.adapt_once()
        assert d.step_count == 1 and d.export_due() is False
        fog = frames("fog", 60, seed=1)
        kept = _keep_until_shift(d, fog)
        assert d.statistics_frames_left == 5 and d.step_count == 0  # fog: a new domain
        for image in fog[kept:kept + 4]:  # 4 of the phase's 5 frames (one held out for the gate)
            d.keep(image)
        assert d.statistics_frames_left == 1
        weights = {k: v.clone() for k, v in d.adapter.target.named_parameters()}
        mean = d.adapter.target.state_dict()["backbone.0.1.running_mean"].clone()
        d.adapt_once()
        d.adapt_once()
        assert d.step_count == 0 and d.statistics_updates == 2
        assert not d.can_adapt()  # the run loop waits for a new frame before the next one
        for key, value in d.adapter.target.named_parameters():  # no gradient step
            assert torch.equal(value, weights[key]), key
        assert not torch.equal(d.adapter.target.state_dict()["backbone.0.1.running_mean"], mean)
        for key, value in d.adapter.memory.state_dict().items():  # M takes T's statistics
            if "running" in key:
                assert torch.equal(value, d.adapter.target.state_dict()[key]), key
        # statistics updates count towards the export cadence, and their candidate is gated
        assert d.export_due() and d.export_version() == 3
        version = [e for e in events.all() if e["type"] == "version"][-1]
        assert version["health"] is not None
        d.keep(fog[kept + 4])  # the last frame of the statistics phase
        assert d.statistics_frames_left == 0 and d.can_adapt()
        d.adapt_once()
        assert d.step_count == 1  # self-training resumes
        for image in fog[kept + 5:]:  # fog lasts long enough to be left
            d.keep(image)
        _keep_until_shift(d, frames("night", 40, seed=2))  # a return: its statistics are banked
        assert d.tracker.current == 0 and d.statistics_frames_left == 0


def test_bn_has_no_statistics_phase_its_steps_already_are_one(tmp_path):
    with daemon_on_tiny(tmp_path, method="bn", shift_statistics_frames=5) as (d, _events):
        for image in frames("night", 40):
            d.keep(image)
        _keep_until_shift(d, frames("fog", 60, seed=1))
        assert d.statistics_frames_left == 0
        d.adapt_once()
        assert d.step_count == 1 and d.can_adapt()


def _domain_of(centre: np.ndarray, spread: float, count: int, rng) -> DomainStats:
    """Stats of ``count`` descriptors drawn around ``centre`` with ``spread`` per dimension."""
    stats = DomainStats()
    for d in centre + spread * rng.standard_normal((count, centre.size)).astype(np.float32):
        stats.add(d)
    return stats


def test_a_window_goes_to_a_banked_domain_only_under_the_match_factor():
    """Frames that look like a banked domain's own come back to it; frames that are clearly
    nearer to it than to the current one but outside its spread start a domain of their own."""
    rng = np.random.default_rng(0)
    zero = np.full(12, 0.5, np.float32)
    banked = _domain_of(zero, 0.02, 200, rng)
    here = _domain_of(zero + 0.5, 0.02, 200, rng)
    for offset, factor, known in [(0.0, 1.5, True), (0.08, 1.5, False), (0.08, 2.0, True)]:
        tracker = DomainTracker(z_threshold=1.6, window=6, min_frames=24, match_factor=factor,
                                return_window=0, domains={0: banked, 1: here}, current=1)
        # a window about offset / (spread + floor) = 2.7 z from the banked domain
        window = zero + offset + 0.005 * rng.standard_normal((6, 12)).astype(np.float32)
        found = [s for s in map(tracker.observe_descriptor, window) if s is not None]
        assert len(found) == 1 and found[0].known == known, (offset, factor)
        assert found[0].to == (0 if known else 2)


def _observe_until_shift(tracker: DomainTracker, window: np.ndarray):
    """(index of the frame that completed a shift, the shift), or (None, None)."""
    for index, descriptor in enumerate(window):
        shift = tracker.observe_descriptor(descriptor)
        if shift is not None:
            return index, shift
    return None, None


def test_a_clear_return_is_taken_before_the_window_fills():
    """Frames that score like a banked domain's own, and far less against it than against the
    current domain, go back to it after ``return_window`` frames instead of 9 of 12."""
    rng = np.random.default_rng(1)
    zero = np.full(12, 0.5, np.float32)
    window = zero + 0.002 * rng.standard_normal((12, 12)).astype(np.float32)
    for return_window, expected in [(4, 3), (0, 8)]:
        tracker = DomainTracker(z_threshold=1.6, window=12, min_frames=24,
                                return_window=return_window,
                                domains={0: _domain_of(zero, 0.02, 200, rng),
                                         1: _domain_of(zero + 0.5, 0.02, 200, rng)}, current=1)
        index, shift = _observe_until_shift(tracker, window)
        assert index == expected and shift.known and shift.to == 0, return_window


def test_frames_between_two_domains_wait_for_the_full_window():
    """Frames near a banked domain (under the threshold) but not twice as close to it as to the
    current one are no clear return: the shift waits for 9 far frames of 12."""
    rng = np.random.default_rng(2)
    zero = np.full(12, 0.5, np.float32)
    tracker = DomainTracker(z_threshold=1.6, window=12, min_frames=24, return_window=4,
                            domains={0: _domain_of(zero, 0.02, 200, rng),
                                     1: _domain_of(zero + 0.1, 0.02, 200, rng)}, current=1)
    # about 1.3 z from the banked domain and 2 z from the current one
    window = zero + 0.04 + 0.002 * rng.standard_normal((12, 12)).astype(np.float32)
    index, shift = _observe_until_shift(tracker, window)
    assert index == 8 and shift.known and shift.to == 0


def test_a_banked_engine_is_published_again_unless_its_files_are_damaged(tmp_path):
    from iapc.engines.store import ONNX_FILE, EngineStore

    store = EngineStore(tmp_path / "store", keep=2)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"engine of domain 0")
    first = store.publish(model, manifest_extra={"backend": "onnxruntime", "step": 7})
    bank = DomainBank(store.root, size=4)
    bank.keep_engine(0, first)
    for extra in (b"later", b"versions"):  # the store prunes v1; the bank keeps its copy
        model.write_bytes(extra)
        store.publish(model)
    again = store.publish_copy(bank.banked_engine(0), {"domain": 0})
    assert again.number == 4 and store.current() == again
    assert again.onnx_path.read_bytes() == b"engine of domain 0"
    assert again.manifest["republished_from"] == "v000001" and again.manifest["step"] == 7
    assert again.manifest["domain"] == 0 and again.manifest["backend"] == "onnxruntime"
    (bank.engine_folder(0) / ONNX_FILE).write_bytes(b"damaged")
    assert bank.banked_engine(0) is None and bank.banked_engine(1) is None


def test_a_young_domain_is_not_left_for_drifting_within_the_spread_of_the_one_it_left():
    """A new domain's first frames are alike (one scene); its later frames move on by far more
    than their own spread but well within the spread of the domain it split from (a real
    sequence's scenes change faster than its light). With the prior the new domain holds them;
    with its own frames' spread alone it would split again."""
    rng = np.random.default_rng(3)
    dark = np.full(12, 0.2, np.float32)
    first = dark + 0.002 * rng.standard_normal((30, 12)).astype(np.float32)
    later = dark + 0.03 + 0.002 * rng.standard_normal((30, 12)).astype(np.float32)
    wide = _domain_of(np.full(12, 0.5, np.float32), 0.1, 200, rng)
    for keep_prior, expected in [(True, [(0, 1)]), (False, [(0, 1), (1, 2)])]:
        tracker = DomainTracker(z_threshold=1.3, window=12, min_frames=24,
                                domains={0: copy.deepcopy(wide)})
        found = []
        for descriptor in np.concatenate([first, later]):
            shift = tracker.observe_descriptor(descriptor)
            if shift is not None:
                found.append((shift.came_from, shift.to))
                if not keep_prior:
                    tracker.domains[shift.to].prior_frames = 0
        assert found == expected, keep_prior


@contextlib.contextmanager
def daemon_with_frames_arriving(tmp_path):
    """A tiny-model daemon that has served the source engine (v1, banked as the source's) and
    kept 40 night frames, its frame receiver connected to a real hand-off; and ``offer(images)``,
    which sends frames through that hand-off as the inference loop would."""
    from iapc.contracts.handoff import FrameHandoff, FrameReceiver
    from iapc.contracts.run_folder import FRAMES_SOCKET, ipc_address

    with daemon_on_tiny(tmp_path) as (daemon, _events):
        address = ipc_address(tmp_path / "run", FRAMES_SOCKET)
        handoff, receiver = FrameHandoff(address), FrameReceiver(address)
        try:
            assert daemon.export_version(source=True) == 1
            for image in frames("night", 40):
                daemon.keep(image)
            daemon.receiver = receiver

            def offer(images):
                for index, image in enumerate(images):
                    handoff.offer(index, 0, image)

            yield daemon, offer
        finally:
            handoff.close()
            receiver.close()


def test_a_shift_that_comes_in_during_an_export_abandons_it_and_is_switched_after(tmp_path):
    """Frames keep coming while the daemon exports (tens of seconds for a real network on a
    CPU): they are looked at between the export's stages, and a domain shift among them
    abandons the export of the domain left, whose state is banked; the new domain is served
    right after."""
    import time

    from iapc.engines.store import EngineStore

    with daemon_with_frames_arriving(tmp_path) as (daemon, offer):
        daemon.step()
        offer(frames("fog", 12, seed=1))
        time.sleep(0.5)  # in the sockets' queues, as frames that arrive during an export
        assert daemon.export_version() is None  # abandoned: nothing new is served
        store = EngineStore(daemon.cfg.resolved_store())
        assert store.current().number == 1
        assert daemon.domains.pending is not None and daemon.tracker.current == 1
        daemon.domains.switch_pending()
        assert daemon.domains.pending is None and daemon.step_count == 0
        assert (store.root / "domains" / "0.pt").is_file()  # night's state, banked
        # the source engine at once (v2), then fog's recalibrated network (v3)
        assert [v.manifest.get("republished_from") for v in store.versions()] == \
            [None, "v000001", None]


def test_frames_that_come_in_during_the_duty_cycle_pause_are_taken_and_a_shift_waits(tmp_path):
    """The pause after a step takes the frames that come in, instead of leaving them to the
    hand-off's few places; a shift among them is switched before the next step, not inside it."""
    with daemon_with_frames_arriving(tmp_path) as (daemon, offer):
        received = daemon.frames.received
        offer(frames("fog", 12, seed=1))
        daemon.receive_while_idle(1.5)
        assert daemon.frames.received > received
        assert daemon.domains.pending is not None and daemon.domains.pending.to == 1
        banked_night = daemon.cfg.resolved_store() / "domains" / "0.pt"
        assert not banked_night.exists()  # nothing switched inside the pause
        daemon.domains.switch_pending()
        assert daemon.domains.pending is None and daemon.tracker.current == 1
        assert banked_night.is_file()
