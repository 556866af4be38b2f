"""The guard against weights that self-training made worse: a candidate whose label-free quality
(flip and prototype agreement) falls below that of the source weights under the candidate's own
statistics is rejected; statistics alone never trip it (they have their own label-free choice)."""

from __future__ import annotations

import copy

import pytest
import torch

from iapc.adapt.checkpoint import load_model
from iapc.adapt.iapc_step import batch_norm_layers
from iapc.daemon.health import check_health, label_free_quality
from iapc.runtime.config import HealthConfig
from iapc.shipped import shipped_checkpoint
from iapc.synth import sample_frames


GUARDED = HealthConfig(max_quality_drop=0.02)


@pytest.fixture(scope="module")
def source():
    path = shipped_checkpoint("tiny")
    if path is None:
        pytest.skip("no shipped tiny checkpoint: run 'make weights' to train it")
    model, _ = load_model(path)
    return model.eval()


@pytest.fixture(scope="module")
def frames():
    return sample_frames(8, (256, 128), seed=3)


def with_wrong_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Normalisation statistics of another world: every layer's means shifted by two spreads."""
    bad = copy.deepcopy(model)
    with torch.no_grad():
        for bn in batch_norm_layers(bad):
            bn.running_mean += 2 * bn.running_var.sqrt()
    return bad


def with_damaged_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Weights a runaway self-training could leave: every convolution's weights with noise of
    their own spread added (fixed seed)."""
    bad = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in bad.modules():
            if isinstance(module, torch.nn.Conv2d):
                noise = torch.randn(module.weight.shape, generator=generator)
                module.weight += noise * module.weight.std()
    return bad


LOOSE = HealthConfig(max_js_vs_serving=1.0, max_js_vs_source=1.0, max_entropy_rise=1.0,
                     min_memory_agreement=0.0, max_class_share=1.0,
                     max_quality_drop=GUARDED.max_quality_drop)


def test_the_source_network_itself_passes_with_equal_figures(source, frames):
    report = check_health(source, source, source, source, frames, GUARDED)
    assert report.passed, report.message
    figures = report.figures["label_free"]
    assert figures["candidate"] == figures["source_weights"]
    assert report.figures["source_agreement"] == 1.0
    assert 0.5 < figures["candidate"]["flip"] <= 1 and 0.3 < figures["candidate"]["prototype"] <= 1


def test_weights_worse_by_their_label_free_quality_are_rejected(source, frames):
    bad = with_damaged_weights(source)
    good, worse = label_free_quality(source, frames), label_free_quality(bad, frames)
    assert worse.flip_agreement < good.flip_agreement - 0.02
    report = check_health(bad, source, source, bad, frames, LOOSE)
    assert not report.passed
    assert any(r.startswith("adapted weights worse than the source weights by their")
               for r in report.reasons), report.reasons
    off = copy.copy(LOOSE)
    off.max_quality_drop = 1.0
    assert check_health(bad, source, source, bad, frames, off).passed


def test_statistics_alone_never_trip_the_weights_guard(source, frames):
    """Other statistics change the quality of the source weights just as much: nothing to
    blame on the weights (the source's own buffers come back afterwards)."""
    before = [b.clone() for b in source.buffers()]
    other = with_wrong_statistics(source)
    report = check_health(other, source, source, other, frames, LOOSE)
    figures = report.figures["label_free"]
    assert figures["candidate"] == figures["source_weights"]
    assert not any(r.startswith("adapted weights") for r in report.reasons)
    assert all(torch.equal(a, b) for a, b in zip(source.buffers(), before))
