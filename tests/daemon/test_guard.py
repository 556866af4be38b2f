"""The guard against serving worse than the source network: a candidate whose label-free
quality (flip and prototype agreement) falls below the source's is rejected."""

from __future__ import annotations

import copy

import pytest
import torch

from iapc.adapt.checkpoint import load_model
from iapc.adapt.method import batch_norm_layers
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


def test_the_source_network_itself_passes_with_equal_figures(source, frames):
    report = check_health(source, source, source, source, frames, GUARDED)
    assert report.passed, report.message
    figures = report.figures["label_free"]
    assert figures["candidate"] == figures["source"]
    assert report.figures["source_agreement"] == 1.0
    assert 0.5 < figures["source"]["flip"] <= 1 and 0.3 < figures["source"]["prototype"] <= 1


def test_a_candidate_worse_by_its_label_free_quality_is_rejected(source, frames):
    bad = with_wrong_statistics(source)
    good, worse = label_free_quality(source, frames), label_free_quality(bad, frames)
    assert worse.prototype_agreement < good.prototype_agreement - 0.02
    loose = HealthConfig(max_js_vs_serving=1.0, max_js_vs_source=1.0, max_entropy_rise=1.0,
                         min_memory_agreement=0.0, max_class_share=1.0,
                         max_quality_drop=GUARDED.max_quality_drop)
    report = check_health(bad, source, source, bad, frames, loose)
    assert not report.passed
    assert any(r.startswith("worse than the source network by its prototype agreement")
               for r in report.reasons), report.reasons
    off = copy.copy(loose)
    off.max_quality_drop = 1.0
    assert check_health(bad, source, source, bad, frames, off).passed
