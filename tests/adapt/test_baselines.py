"""BN adaptation and TENT on the tiny model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from iapc.adapt.baselines import (bn_adapt, collect_tent_params, configure_tent, softmax_entropy,
                                  tent_step)
from iapc.adapt.models import build_model
from iapc.adapt.preprocessing import normalize
from iapc.errors import UserError


def _batches(count, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, 3, 32, 48), generator=g, dtype=torch.uint8) for _ in range(count)]


def _model():
    torch.manual_seed(0)
    return build_model("tiny", num_classes=5)


def test_bn_adapt_uses_the_plain_average_of_batch_statistics():
    model = _model()
    weights_before = copy.deepcopy(model.backbone[0][0].weight)
    batches = _batches(3)
    first_conv, first_bn = model.backbone[0][0], model.backbone[0][1]
    with torch.no_grad():
        activations = [first_conv(normalize(b, model.norm)) for b in batches]  # (2, 16, 16, 24) each
    expected_mean = torch.stack([a.mean(dim=(0, 2, 3)) for a in activations]).mean(dim=0)
    expected_var = torch.stack([a.var(dim=(0, 2, 3), unbiased=True) for a in activations]).mean(dim=0)

    bn_adapt(model, batches)
    assert torch.allclose(first_bn.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(first_bn.running_var, expected_var, rtol=1e-4)
    assert not model.training and first_bn.momentum == 0.1  # momentum restored
    assert torch.equal(model.backbone[0][0].weight, weights_before)


def test_bn_adapt_needs_batches_and_batch_norm():
    with pytest.raises(UserError, match="at least one batch"):
        bn_adapt(_model(), [])
    plain = nn.Conv2d(3, 3, 1)
    with pytest.raises(UserError, match="no BatchNorm"):
        bn_adapt(plain, _batches(1))


def test_configure_tent_trains_bn_affine_only():
    model = configure_tent(_model())
    params, names = collect_tent_params(model)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(params) == 2 * len(norms) and all(n.endswith(("weight", "bias")) for n in names)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in params}
    assert all(bn.running_mean is None and not bn.track_running_stats for bn in norms)


def test_tent_lowers_entropy_and_touches_only_bn():
    model = configure_tent(_model())
    params, _ = collect_tent_params(model)
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    conv_before = copy.deepcopy(model.backbone[0][0].weight)
    bn_before = copy.deepcopy(model.backbone[0][1].weight)
    batch = _batches(1, seed=3)[0]
    entropies = [tent_step(model, batch, optimizer)["entropy"] for _ in range(8)]
    assert entropies[-1] < entropies[0]
    assert torch.equal(model.backbone[0][0].weight, conv_before)
    assert not torch.equal(model.backbone[0][1].weight, bn_before)


def test_tent_needs_train_mode():
    model = configure_tent(_model()).eval()
    params, _ = collect_tent_params(model)
    with pytest.raises(UserError, match="train mode"):
        tent_step(model, _batches(1)[0], torch.optim.SGD(params, lr=0.01))


def test_softmax_entropy_of_uniform_prediction():
    logits = torch.zeros(1, 4, 2, 3)
    assert torch.allclose(softmax_entropy(logits), torch.full((1, 2, 3), torch.log(torch.tensor(4.0))))
