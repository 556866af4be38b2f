"""The health gate on tiny models, and the daemon's decisions around it: reject, roll back, carry
on; roll back on a non-finite loss; stochastic restore toward the source weights."""

import copy
import math

import numpy as np
import pytest
import torch

from support import SIZE, diverse_model, tiny_daemon

from iapc.adapt.models import build_model
from iapc.synth import sample_frames
from iapc.engines.store import EngineStore
from iapc.runtime.config import HealthConfig
from iapc.daemon.health import check_health, js_divergence, non_finite_tensors, predict

@pytest.fixture(scope="module")
def frames():
    return sample_frames(6, SIZE, seed=1)


def collapsed(model: torch.nn.Module, class_id: int = 3) -> torch.nn.Module:
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.classifier[0].bias[class_id] = 1e3  # every pixel becomes class_id
    return bad


def test_js_divergence_bounds():
    p = np.array([0.5, 0.5, 0.0, 0.0])
    assert js_divergence(p, p) == pytest.approx(0.0)
    assert js_divergence(p, np.array([0.0, 0.0, 0.5, 0.5])) == pytest.approx(math.log(2))
    assert 0 < js_divergence(p, np.array([0.4, 0.4, 0.2, 0.0])) < math.log(2)


def test_an_unchanged_model_is_healthy(frames):
    model = diverse_model()
    report = check_health(model, model, model, model, frames, HealthConfig())
    assert report.passed, report.message
    assert report.figures["js_vs_serving"] == 0 and report.figures["memory_agreement"] == 1
    assert report.figures["largest_class_share"]["source"] < 0.5  # the fixture is not collapsed
    assert 0 < report.figures["confidence"]["candidate"] <= 1


def test_collapse_is_rejected_unless_the_source_model_collapses_too(frames):
    source = diverse_model()
    candidate = collapsed(source)
    report = check_health(candidate, source, source, source, frames, HealthConfig())
    assert not report.passed
    assert any(r.startswith("collapse: class 3 takes 100%") for r in report.reasons)
    assert report.figures["largest_class_share"]["candidate"] == 1.0
    # a source that already sees one class everywhere: the same candidate is no collapse
    report = check_health(candidate, candidate, collapsed(source), candidate, frames,
                          HealthConfig())
    assert not any(r.startswith("collapse") for r in report.reasons), report.reasons


def test_non_finite_weights_are_rejected_before_running(frames):
    source = diverse_model()
    candidate = copy.deepcopy(source)
    with torch.no_grad():
        candidate.backbone[0][0].weight[0, 0, 0, 0] = float("nan")
    assert non_finite_tensors(candidate) == ["backbone.0.0.weight"]
    report = check_health(candidate, source, source, source, frames, HealthConfig())
    assert not report.passed and "non-finite weights in backbone.0.0.weight" in report.message


def test_non_finite_outputs_are_rejected(frames):
    source = diverse_model()
    candidate = copy.deepcopy(source)
    candidate.backbone[0][1].running_var.fill_(-1.0)  # sqrt of a negative variance: NaN logits
    assert not predict(candidate, frames).finite
    report = check_health(candidate, source, source, source, frames, HealthConfig())
    assert "non-finite outputs" in report.reasons


def test_a_sudden_distribution_jump_is_rejected(frames):
    serving = diverse_model()
    candidate = copy.deepcopy(serving)
    with torch.no_grad():  # two classes suddenly take most pixels, neither of them alone
        candidate.classifier[0].bias[[0, 1]] += 40.0
    report = check_health(candidate, serving, serving, serving, frames, HealthConfig())
    assert not report.passed
    assert any(r.startswith("class distribution jumped") for r in report.reasons)
    assert max(report.figures["largest_class_share"].values()) < 0.9  # no collapse
    loose = HealthConfig(max_js_vs_serving=1.0, max_js_vs_source=1.0, min_memory_agreement=0.0)
    assert check_health(candidate, serving, serving, serving, frames, loose).passed


# -- the daemon's decisions ---------------------------------------------------------------------

@pytest.fixture()
def daemon(tmp_path, frames):
    d, events = tiny_daemon(tmp_path)
    assert len(d.frames.holdout) == 3 and len(d.frames) == 9  # every 4th frame is held out
    assert d.export_version() == 1  # the source weights, as at start-up
    assert [e["type"] for e in events.all()] == ["version"]
    yield d, events
    d.events.close()
    events.receiver.close()


def test_a_rejected_candidate_is_not_deployed_and_the_state_rolls_back(daemon):
    d, events = daemon
    d.step()
    deployed = {k: v.clone() for k, v in d.serving.state_dict().items()}
    with torch.no_grad():
        d.adapter.target.classifier[0].bias[7] = 1e3  # the adapted model collapses to class 7
    assert d.export_version() is None
    sent = events.all()
    rejected = next(e for e in sent if e["type"] == "rejected")
    assert rejected["gate"] == "health" and "collapse: class 7" in rejected["reason"]
    assert rejected["health"]["largest_class_share"]["candidate"] == 1.0
    rollback = next(e for e in sent if e["type"] == "rollback")
    assert rollback["step"] == 1 and rollback["to_step"] == 0
    assert EngineStore(d.store.root).current().number == 1  # nothing deployed
    for key, value in d.adapter.target.state_dict().items():  # back to the deployed weights
        assert torch.equal(value, deployed[key]), key
    d.step()  # and it carries on adapting
    assert d.step_count == 1


def test_a_healthy_candidate_is_deployed_with_its_figures_in_the_manifest(daemon):
    d, events = daemon
    d.step()
    assert d.export_version() == 2
    version = next(e for e in events.all() if e["type"] == "version")
    assert version["health"]["frames"] == 3
    manifest = EngineStore(d.store.root).current().manifest
    assert manifest["health"] == version["health"] and manifest["step"] == 1


def test_a_non_finite_loss_rolls_back(daemon):
    d, events = daemon
    with torch.no_grad():
        d.adapter.target.backbone[0][0].weight.fill_(float("nan"))
    d.step()
    rollback = next(e for e in events.all() if e["type"] == "rollback")
    assert rollback["reason"] == "non-finite loss"
    assert not non_finite_tensors(d.adapter.target) and d.step_count == 0


def test_stochastic_restore_returns_weights_toward_the_source():
    from iapc.adapt.adapters import stochastic_restore

    source, target = diverse_model(0), diverse_model(1)
    generator = torch.Generator().manual_seed(0)
    before = copy.deepcopy(target)
    stochastic_restore(target, source, 0.0, generator)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), before.parameters()))
    stochastic_restore(target, source, 0.5, generator)
    pairs = [(t, s, b) for t, s, b in zip(target.parameters(), source.parameters(),
                                            before.parameters())]
    differed = sum(int((b != s).sum()) for t, s, b in pairs)  # elements the models disagreed on
    restored = sum(int(((b != s) & (t == s)).sum()) for t, s, b in pairs)
    assert 0.45 < restored / differed < 0.55
    stochastic_restore(target, source, 1.0, generator)
    assert all(torch.equal(t, s) for t, s in zip(target.parameters(), source.parameters()))
