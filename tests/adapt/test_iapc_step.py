"""IAPC step machinery: config, networks, optimiser and schedule, EMA, augmentation views,
the adaptation step on the tiny model, offline pseudo-labels."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from iapc.adapt.augment import (PHOTOMETRIC_OPS, PolicyOp, apply_op, imagenet_photometric_policy,
                                photometric_augment, random_rescale_crop)
from iapc.adapt.losses import resize_label, upsample
from iapc.adapt.iapc_step import (AdaptConfig, AdaptState, adaptation_step, ema_update, freeze_bn_affine,
                                  generate_pseudo_labels, learning_rate, make_networks, make_optimizer,
                                  set_learning_rate)
from iapc.adapt.models import build_model
from iapc.adapt.preprocessing import normalize
from iapc.errors import UserError


def _images(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny", num_classes=5)


# ---- config ----------------------------------------------------------------------------------

def test_config_round_trip_and_errors():
    cfg = AdaptConfig(preset="released", crop=(128, 64), schedule="constant")
    values = cfg.to_dict()
    assert values["crop"] == [128, 64]
    assert AdaptConfig.from_dict(values) == cfg.resolved()  # saved with the preset's values filled in
    with pytest.raises(UserError, match="unknown adaptation option"):
        AdaptConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(UserError, match="schedule"):
        AdaptConfig(schedule="cosine")
    with pytest.raises(UserError, match="preset"):
        AdaptConfig(preset="nope")


# ---- networks, optimiser, schedule -------------------------------------------------------------

def test_make_networks_roles(tiny):
    source, memory, target = make_networks(tiny)
    assert not source.training and not any(p.requires_grad for p in source.parameters())
    assert not memory.training and not any(p.requires_grad for p in memory.parameters())
    assert target.training
    for module in target.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.training and not module.weight.requires_grad and not module.bias.requires_grad
        elif isinstance(module, nn.Conv2d):
            assert module.weight.requires_grad
    assert target.backbone[0][0].weight.data_ptr() != tiny.backbone[0][0].weight.data_ptr()


def test_freeze_bn_affine_keeps_mode():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    freeze_bn_affine(net)
    assert net[1].training and not net[1].weight.requires_grad and net[0].weight.requires_grad


def test_schedule_values():
    cfg = AdaptConfig(lr=1e-4, warmup_iters=10, warmup_factor=0.1, max_iters=100, power=0.9)
    assert learning_rate(0, cfg) == pytest.approx(1e-5)
    assert learning_rate(5, cfg) == pytest.approx(1e-4 * 0.55 * 0.95 ** 0.9)
    assert learning_rate(10, cfg) == pytest.approx(1e-4 * 0.9 ** 0.9)
    assert learning_rate(100, cfg) == 0.0
    assert learning_rate(250, cfg) == 0.0  # clamped past max_iters, never negative
    constant = AdaptConfig(lr=1e-4, warmup_iters=10, schedule="constant", max_iters=100)
    assert learning_rate(5, constant) == pytest.approx(0.55e-4)
    assert learning_rate(10**9, constant) == pytest.approx(1e-4)


def test_optimizer_groups_and_lr_multiplier(tiny):
    cfg = AdaptConfig(lr=1e-4, warmup_iters=10, max_iters=100)
    _, _, target = make_networks(tiny)
    optimizer = make_optimizer(target, cfg)
    assert [g["name"] for g in optimizer.param_groups] == ["backbone", "classifier"]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-5, 1e-4])
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9
    assert optimizer.defaults["weight_decay"] == 5e-4
    trainable = {id(p) for p in target.parameters() if p.requires_grad}
    in_groups = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(in_groups) == sorted(trainable)  # BN affine excluded, nothing twice
    set_learning_rate(optimizer, 10, cfg)
    lr = 1e-4 * 0.9 ** 0.9
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr, 10 * lr])


# ---- EMA -------------------------------------------------------------------------------------

def test_ema_update_by_hand():
    def net(value):
        model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1))
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
            model[1].running_mean.fill_(value)
            model[1].num_batches_tracked.fill_(int(value))
        return model

    memory, target = net(1.0), net(3.0)
    ema_update(memory, target, alpha=0.75)
    for p in memory.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.75 * 1.0 + 0.25 * 3.0))
    assert memory[1].running_mean.item() == 3.0 and memory[1].num_batches_tracked.item() == 3
    assert target[0].weight.item() == 3.0  # target untouched


# ---- augmentation ----------------------------------------------------------------------------

def test_policy_is_imagenet_restricted_to_photometric_ops():
    policy = imagenet_photometric_policy()
    names = {op.name for sub in policy for op in sub}
    assert names <= set(PHOTOMETRIC_OPS) and {"Solarize", "Equalize", "Posterize", "Color"} <= names
    # torchvision's first ImageNet sub-policy is (Posterize 0.4 @ bin 8, Rotate 0.6 @ bin 9):
    # the rotation is dropped and bin 8 of Posterize is 4 bits.
    assert policy[0] == (PolicyOp("Posterize", 0.4, 4.0, False),)
    assert PolicyOp("Color", 0.6, pytest.approx(0.4), True) in [op for sub in policy for op in sub]


@pytest.mark.parametrize("name,magnitude", [("Equalize", None), ("AutoContrast", None),
                                            ("Sharpness", 0.7), ("Posterize", 5.0), ("Color", -0.4)])
def test_batched_op_equals_per_image(name, magnitude):
    images = _images(3, 12, 16)
    images[1] //= 4  # a low-contrast image, so per-image statistics differ
    batched = apply_op(images, name, magnitude)
    single = torch.cat([apply_op(images[i:i + 1], name, magnitude) for i in range(3)])
    assert torch.equal(batched, single)


def test_photometric_augment_is_seeded_and_changes_images():
    images = _images(8, 16, 24)
    a = photometric_augment(images, torch.Generator().manual_seed(1))
    b = photometric_augment(images, torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == images.shape and torch.equal(a, b)
    assert not torch.equal(a, images)
    with pytest.raises(UserError, match="uint8"):
        photometric_augment(images.float())


def _find_window(haystack, needle):
    """(top, left) where the (..., h, w) ``needle`` sits in ``haystack``."""
    h, w = needle.shape[-2:]
    for top in range(haystack.shape[-2] - h + 1):
        for left in range(haystack.shape[-1] - w + 1):
            if torch.equal(haystack[..., top:top + h, left:left + w], needle):
                return top, left
    raise AssertionError("window not found")


def test_rescale_crop_views_and_label_alignment():
    images = _images(1, 40, 60, seed=2)
    label = torch.randint(0, 19, (1, 40, 60), generator=torch.Generator().manual_seed(3))
    views = random_rescale_crop(images, (16, 24), (1.5, 1.5), label=label,
                                generator=torch.Generator().manual_seed(4))
    assert views.x1.shape == views.x0.shape == (1, 3, 16, 24) and views.label.shape == (1, 16, 24)
    # the label crop and x1 come from the same window of the rescaled (60x90) frame
    top, left = _find_window(resize_label(label, (60, 90)), views.label)
    rescaled = TF.resize(images[0], [60, 90], antialias=True)
    assert torch.equal(views.x1[0], rescaled[:, top:top + 16, left:left + 24])
    # x0 is an un-rescaled window centred on the same place (clipped to the frame)
    top0, left0 = _find_window(images, views.x0)
    expected_top = min(max((top + 8) / 1.5 - 8, 0), 40 - 16)
    expected_left = min(max((left + 12) / 1.5 - 12, 0), 60 - 24)
    assert abs(top0 - expected_top) <= 0.5 and abs(left0 - expected_left) <= 0.5


def test_rescale_crop_pads_small_images():
    images = _images(2, 10, 12)
    label = torch.zeros(2, 10, 12, dtype=torch.uint8)
    views = random_rescale_crop(images, (16, 20), (1.0, 1.0), label=label)
    assert torch.equal(views.x1[:, :, :10, :12], images) and torch.equal(views.x0, views.x1)
    assert views.x1[:, :, 10:].eq(0).all() and views.label[:, 10:].eq(255).all()
    assert views.label[:, :10, :12].eq(0).all()


# ---- the adaptation step ---------------------------------------------------------------------

def _setup(tiny, **overrides):
    cfg = AdaptConfig(crop=(128, 64), warmup_iters=2, max_iters=50, lr=1e-3, **overrides)
    source, memory, target = make_networks(tiny)
    return cfg, source, memory, target, make_optimizer(target, cfg), AdaptState.new(tiny.num_classes)


def test_adaptation_step_updates_target_only(tiny):
    cfg, source, memory, target, optimizer, state = _setup(tiny, ema_alpha=0.5)
    source_before = copy.deepcopy(source.state_dict())
    target_before = copy.deepcopy(target.state_dict())
    batch = _images(2, 80, 150)
    generator = torch.Generator().manual_seed(0)
    stats = [adaptation_step(source, memory, target, batch, optimizer, state, cfg, generator=generator)
             for _ in range(2)]
    for s in stats:
        assert not s["skipped"] and all(torch.isfinite(torch.tensor(s[k])) for k in ("ia", "im", "ps", "pe", "total"))
    assert stats[0]["lr"] == pytest.approx(learning_rate(0, cfg))
    assert stats[1]["lr"] == pytest.approx(learning_rate(1, cfg))
    assert state.step == 2
    assert all(torch.equal(v, source_before[k]) for k, v in source.state_dict().items())
    after = target.state_dict()
    conv = "backbone.0.0.weight"
    assert not torch.equal(after[conv], target_before[conv])  # conv weights trained
    assert torch.equal(after["backbone.0.1.weight"], target_before["backbone.0.1.weight"])  # BN affine frozen
    assert not torch.equal(after["backbone.0.1.running_mean"], target_before["backbone.0.1.running_mean"])
    # memory: at step 2's start, theta_M = 0.5 * theta_M(=source) + 0.5 * theta_T(after step 1)
    mem = memory.state_dict()[conv]
    assert not torch.equal(mem, source_before[conv]) and not torch.equal(mem, after[conv])
    assert state.class_balance.often.shape == (5,)


def test_adaptation_step_with_offline_pseudo_labels(tiny):
    cfg, source, memory, target, optimizer, state = _setup(tiny, preset="released")
    batch = _images(2, 72, 136, seed=5)
    pseudo = generate_pseudo_labels(source, batch)
    stats = adaptation_step(source, memory, target, batch, optimizer, state, cfg,
                            pseudo_label=pseudo, generator=torch.Generator().manual_seed(1))
    assert not stats["skipped"] and stats["total"] == pytest.approx(
        stats["ia"] + stats["im"] + stats["ps"] + stats["pe"], rel=1e-5)


def test_non_finite_loss_skips_the_update(tiny):
    cfg, source, memory, target, optimizer, state = _setup(tiny)
    with torch.no_grad():
        target.classifier[0].bias.fill_(float("nan"))
    before = copy.deepcopy(target.state_dict())
    stats = adaptation_step(source, memory, target, _images(2, 64, 128), optimizer, state, cfg)
    assert stats["skipped"] and state.step == 0
    assert torch.equal(target.state_dict()["backbone.0.0.weight"], before["backbone.0.0.weight"])


def test_amp_needs_cuda(tiny):
    cfg, source, memory, target, optimizer, state = _setup(tiny, amp_dtype="bf16")
    with pytest.raises(UserError, match="CUDA"):
        adaptation_step(source, memory, target, _images(1, 64, 128), optimizer, state, cfg)


def test_adapt_state_round_trip(tiny):
    cfg, source, memory, target, optimizer, state = _setup(tiny)
    adaptation_step(source, memory, target, _images(2, 64, 128), optimizer, state, cfg)
    restored = AdaptState.new(5)
    restored.load_state_dict(state.state_dict())
    assert restored.step == 1 and torch.equal(restored.class_balance.often, state.class_balance.often)


# ---- offline pseudo-labels -------------------------------------------------------------------

def test_pseudo_labels_single_scale_is_plain_argmax(tiny):
    source, _, _ = make_networks(tiny)
    images = _images(2, 32, 48)
    labels = generate_pseudo_labels(source, images, scales=(1.0,), flip=False)
    with torch.no_grad():
        logits, _ = source(normalize(images, source.norm))
    assert labels.dtype == torch.uint8 and labels.shape == (2, 32, 48)
    assert torch.equal(labels.long(), upsample(logits, (32, 48)).argmax(dim=1))


def test_flip_averaged_pseudo_labels_are_flip_equivariant(tiny):
    source, _, _ = make_networks(tiny)
    images = _images(1, 32, 48, seed=7)
    labels = generate_pseudo_labels(source, images)
    flipped = generate_pseudo_labels(source, images.flip(-1))
    assert (labels.flip(-1) == flipped).float().mean() > 0.99
