"""The adaptation methods behind one interface: what each one changes, and resuming."""

from __future__ import annotations

import copy

import pytest
import torch

from iapc.adapt.iapc_step import AdaptConfig, update_bn_statistics
from iapc.adapt.adapters import METHODS, deployed, make_adapter
from iapc.adapt.models import build_model
from iapc.errors import UserError
from iapc.method_config import METHOD_NAMES


def _images(n=2, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def _model():
    torch.manual_seed(0)
    return build_model("tiny", num_classes=5)


def _bn_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def _weights(model):
    return {k: v.clone() for k, v in model.named_parameters()}


def _changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def _config(method, **kw):
    return AdaptConfig(method=method, preset="stream", crop=(48, 32), **kw)


def test_every_method_name_has_an_adapter():
    assert tuple(METHODS) == METHOD_NAMES
    with pytest.raises(UserError, match="unknown adaptation method"):
        make_adapter("cotta", _model(), _config("iapc"))


def test_none_changes_nothing_and_leaves_the_given_model_alone():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    adapter = make_adapter("none", model, _config("none"))
    assert adapter.step(_images()) == {} and adapter.step_count == 1
    for key, value in adapter.deployable().state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not adapter.updates_weights


def test_bn_moves_only_the_normalisation_statistics():
    adapter = make_adapter("bn", _model(), _config("bn"))
    weights, stats = _weights(adapter.deployable()), _bn_stats(adapter.deployable())
    adapter.step(_images())
    assert not _changed(weights, _weights(adapter.deployable()))
    assert _changed(stats, _bn_stats(adapter.deployable()))


def test_tent_updates_only_batchnorm_affine_parameters_and_deploys_running_statistics():
    adapter = make_adapter("tent", _model(), _config("tent", tent_lr=1e-2))
    weights, stats = _weights(adapter.deployable()), _bn_stats(adapter.deployable())
    out = adapter.step(_images())
    assert out["entropy"] > 0
    changed = _changed(weights, _weights(adapter.deployable()))
    assert changed
    bn_params = {f"{name}.{p}" for name, m in adapter.deployable().named_modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for p in ("weight", "bias")}
    assert changed <= bn_params
    assert _changed(stats, _bn_stats(adapter.deployable()))  # kept for the engine
    with deployed(adapter.deployable()) as net:
        assert not net.training
    assert adapter.deployable().training  # back to adapting


def test_stream_preset_normalises_with_statistics_of_the_clean_crop_half_the_sources():
    """The BN statistics T deploys are those of the un-augmented crop the step adapts on, mixed
    half and half with the source's: the augmented gradient path neither updates nor uses
    batch statistics."""
    from iapc.adapt.augment import random_rescale_crop

    adapter = make_adapter("iapc", _model(), _config("iapc"))
    assert adapter.cfg.source_statistics_weight == 0.5
    expected = copy.deepcopy(adapter.target)
    batch = _images()
    generator = torch.Generator().manual_seed(adapter.cfg.seed)  # the adapter's own draws
    views = random_rescale_crop(batch, adapter.cfg.crop_hw, adapter.cfg.scale_range,
                                generator=generator)
    update_bn_statistics(expected, views.x0, adapter.cfg, adapter.source)
    stats = adapter.step(batch)
    assert not stats["skipped"] and adapter.step_count == 1
    for key, value in _bn_stats(expected).items():
        assert torch.allclose(adapter.target.state_dict()[key], value), key
    assert adapter.target.training  # T itself stays in train mode between steps


def test_iapc_state_round_trips_through_a_checkpoint(tmp_path):
    from iapc.adapt.checkpoint import read_checkpoint_file, save_checkpoint

    adapter = make_adapter("iapc", _model(), _config("iapc"))
    for seed in range(2):
        adapter.step(_images(seed=seed))
    path = tmp_path / "state.pt"
    save_checkpoint(path, "tiny", adapter.deployable(), step=adapter.step_count,
                    method="iapc", **adapter.state_dict())
    resumed = make_adapter("iapc", _model(), _config("iapc"))
    payload = read_checkpoint_file(path)
    resumed.deployable().load_state_dict(payload["state_dict"])
    resumed.load_state_dict(payload)
    assert resumed.step_count == 2 and resumed.state.step == 2
    for key, value in adapter.memory.state_dict().items():
        assert torch.equal(resumed.memory.state_dict()[key], value), key
    with pytest.raises(UserError, match="no IAPC state"):
        resumed.load_state_dict({"step": 1})


def test_reset_returns_to_the_source_model():
    adapter = make_adapter("iapc", _model(), _config("iapc", lr=1e-2))
    source = copy.deepcopy(adapter.source.state_dict())
    adapter.step(_images())
    adapter.reset()
    assert adapter.step_count == 0
    for key, value in adapter.target.state_dict().items():
        assert torch.equal(value, source[key]), key
