"""Statistics that keep a share of the source's: ``source_statistics_weight``."""

from __future__ import annotations

import copy

import pytest
import torch

from iapc.adapt.iapc_step import AdaptConfig, batch_norm_layers, update_bn_statistics
from iapc.adapt.adapters import make_adapter
from iapc.adapt.models import build_model


def _batches(count=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    # each batch brighter than the last, so that every update moves the statistics
    return [torch.randint(40 * i, 40 * i + 120, (2, 3, 32, 48), generator=g, dtype=torch.uint8)
            for i in range(count)]


def _model():
    torch.manual_seed(0)
    return build_model("tiny", num_classes=5)


def _statistics(model):
    return [t.clone() for bn in batch_norm_layers(model) for t in (bn.running_mean, bn.running_var)]


def _assert_mixture(mixed, source, target, weight):
    for m, s, t in zip(_statistics(mixed), _statistics(source), _statistics(target)):
        torch.testing.assert_close(m, weight * s + (1 - weight) * t)


@pytest.mark.parametrize("weight", [0.25, 0.5])
def test_bn_adapt_keeps_the_share_of_a_plain_average(weight):
    """BN-adapt's cumulative average: w * source + (1 - w) * the average the share-free
    method reaches on the same batches."""
    source = _model()
    pure = make_adapter("bn", source, AdaptConfig(method="bn"))
    mixed = make_adapter("bn", source, AdaptConfig(method="bn", source_statistics_weight=weight))
    for batch in _batches():
        pure.step(batch)
        mixed.step(batch)
    _assert_mixture(mixed.deployable(), source, pure.deployable(), weight)


def test_a_running_average_keeps_the_share_at_every_update():
    """With a momentum (the stream's running statistics) the mixture holds after each update."""
    source = _model().train()
    cfg = AdaptConfig(bn_momentum=0.1, source_statistics_weight=0.5)
    pure, mixed = copy.deepcopy(source), copy.deepcopy(source)
    for batch in _batches():
        update_bn_statistics(pure, batch, AdaptConfig(bn_momentum=0.1))
        update_bn_statistics(mixed, batch, cfg, source)
        _assert_mixture(mixed, source, pure, 0.5)


def test_a_full_share_never_moves_and_no_share_is_bn_adapt():
    source = _model()
    frozen = make_adapter("bn", source, AdaptConfig(method="bn", source_statistics_weight=1.0))
    plain = make_adapter("bn", source, AdaptConfig(method="bn"))
    zero = make_adapter("bn", source, AdaptConfig(method="bn", source_statistics_weight=0.0))
    for batch in _batches():
        for adapter in (frozen, plain, zero):
            adapter.step(batch)
    _assert_mixture(frozen.deployable(), source, source, 1.0)
    _assert_mixture(zero.deployable(), plain.deployable(), plain.deployable(), 1.0)
    assert any(not torch.equal(a, b) for a, b in zip(_statistics(plain.deployable()),
                                                     _statistics(source)))


def test_a_new_domain_recalibrated_from_one_batch_keeps_the_share():
    source = _model()
    batch = _batches(1)[0]
    pure = make_adapter("iapc", source, AdaptConfig(method="iapc", preset="stream", crop=(48, 32),
                                                    source_statistics_weight=0.0))
    mixed = make_adapter("iapc", source, AdaptConfig(method="iapc", preset="stream", crop=(48, 32),
                                                     source_statistics_weight=0.5))
    pure.recalibrate(batch)
    mixed.recalibrate(batch)
    _assert_mixture(mixed.deployable(), source, pure.deployable(), 0.5)
    _assert_mixture(mixed.memory_network(), source, pure.deployable(), 0.5)


def test_the_share_chosen_label_free_is_the_lowest_entropy_one_and_it_is_kept():
    from iapc.adapt.iapc_step import mean_entropy, set_source_share, target_statistics
    from iapc.method_config import SOURCE_SHARES

    source = _model()
    cfg = AdaptConfig(method="iapc", preset="stream", crop=(48, 32), choose_source_share=True)
    adapter = make_adapter("iapc", source, cfg)
    assert adapter.cfg.source_statistics_weight == 0.5
    for batch in _batches():
        adapter.follow_statistics(batch)
    images = torch.cat(_batches(2, seed=1))
    estimate = target_statistics(adapter.deployable(), adapter.source, 0.5)
    expected = {}
    for share in SOURCE_SHARES:  # what each share gives, computed apart
        probe = copy.deepcopy(adapter.deployable())
        set_source_share(probe, adapter.source, estimate, share)
        expected[share] = mean_entropy(probe, images)

    entropies = adapter.choose_source_share(images)
    best = min(expected, key=expected.get)
    assert entropies.keys() == expected.keys()
    assert all(abs(entropies[s] - expected[s]) < 1e-6 for s in expected)
    assert adapter.cfg.source_statistics_weight == best
    for got, want in zip(target_statistics(adapter.deployable(), adapter.source, best), estimate):
        torch.testing.assert_close(got, want)  # the same target estimate, another share
    _assert_mixture(adapter.memory_network(), adapter.deployable(), adapter.deployable(), 1.0)

    resumed = make_adapter("iapc", source, cfg)  # the share travels with the state
    resumed.load_state_dict({**adapter.state_dict(), "step": 0})
    assert resumed.cfg.source_statistics_weight == best
    adapter.reset()  # and a reset goes back to the configured one
    assert adapter.cfg.source_statistics_weight == 0.5


def test_no_choice_where_the_method_makes_none():
    source = _model()
    fixed = make_adapter("iapc", source, AdaptConfig(method="iapc", preset="stream", crop=(48, 32),
                                                     choose_source_share=False))
    plain = make_adapter("bn", source, AdaptConfig(method="bn"))
    images = _batches(1)[0]
    assert fixed.choose_source_share(images) == {} and plain.choose_source_share(images) == {}
    assert fixed.cfg.source_statistics_weight == 0.5 and plain.cfg.source_statistics_weight == 0.0


def test_statistics_only_updates_follow_the_crop_the_stream_adapts_on():
    """The stream preset's statistics phase and recalibration see cfg.crop windows of larger
    frames, as its gradient steps do; BN-adapt (statistics from whole frames) sees the frames."""
    from iapc.adapt.augment import random_rescale_crop

    source = _model()
    batch = torch.randint(0, 256, (2, 3, 64, 96), generator=torch.Generator().manual_seed(5),
                          dtype=torch.uint8)
    stream = make_adapter("iapc", source, AdaptConfig(method="iapc", preset="stream", crop=(48, 32)))
    expected = copy.deepcopy(stream.deployable())
    window = random_rescale_crop(batch, (32, 48), (1.0, 1.0),
                                 generator=torch.Generator().manual_seed(stream.cfg.seed)).x0
    assert tuple(window.shape) == (2, 3, 32, 48)
    update_bn_statistics(expected, window, stream.cfg, stream.source)
    stream.follow_statistics(batch)
    for got, want in zip(_statistics(stream.deployable()), _statistics(expected)):
        torch.testing.assert_close(got, want)
    plain = make_adapter("bn", source, AdaptConfig(method="bn"))
    assert plain.statistics_view(batch) is batch
