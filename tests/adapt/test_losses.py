"""IAPC losses: hand-worked examples, the loop-based reference of both presets, gradients."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from iapc.adapt.losses import (PRESETS, ClassBalanceState, Preset, balanced_pixel_ce, class_balance_weights,
                               entropy_diversity, entropy_released, get_preset, iapc_losses,
                               importance, prototype_logits, prototypes)
from iapc.errors import UserError


def _load_reference():
    # Loaded by path: tests are collected with --import-mode=importlib and are not a package.
    path = Path(__file__).with_name("released_reference.py")
    spec = importlib.util.spec_from_file_location("released_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()


# ---- presets ---------------------------------------------------------------------------------

def test_presets_match_method_document():
    paper, released = PRESETS["paper"], PRESETS["released"]
    assert (paper.importance, paper.im, paper.ps_reshape_quirk) == ("probability", "entropy_diversity", False)
    assert (paper.weights.ia, paper.weights.im, paper.weights.ps, paper.weights.pe) == (0.2, 0.5, 0.04, 2.0)
    assert (released.importance, released.im, released.ps_reshape_quirk) == ("logit", "entropy", True)
    assert (released.weights.ia, released.weights.im, released.weights.ps, released.weights.pe) == (0.2, 2.0, 0.04, 0.5)


def test_unknown_preset_is_a_user_error():
    with pytest.raises(UserError, match="choose one of paper, released"):
        get_preset("iapc++")


# ---- single terms, by hand -------------------------------------------------------------------

def test_importance_by_hand():
    logits = torch.tensor([2.0, 1.0, 0.0]).view(1, 3, 1, 1)
    assert importance(logits, "logit").item() == pytest.approx(1 - 1 / 2)
    # softmax top-two ratio is exp(1 - 2)
    assert importance(logits, "probability").item() == pytest.approx(1 - math.exp(-1), rel=1e-6)
    with pytest.raises(UserError):
        importance(logits, "margin")


def test_importance_none_weighs_every_pixel_one():
    logits = torch.randn(2, 5, 3, 4) * 3
    weights = importance(logits, "none")
    assert weights.shape == (2, 3, 4) and weights.dtype == torch.float32
    assert torch.equal(weights, torch.ones(2, 3, 4))


def test_importance_none_makes_ia_the_plain_class_balanced_ce():
    # Row P of the ablation: L_IA = mean CE_cb(t, y_hat), the importance no longer scales it.
    plain = Preset("P", importance="none", im="entropy_diversity", ps_reshape_quirk=False,
                   weights=PRESETS["paper"].weights)
    inputs = _hand_example()
    losses = iapc_losses(*inputs, preset=plain)
    paper = iapc_losses(*inputs, preset="paper")
    ia_unweighted = 0.2 * 7 * math.log(3)  # uniform t, every class rare: weight 7, CE ln 3
    assert losses["ia"].item() == pytest.approx(ia_unweighted, rel=1e-6)
    assert losses["ia"].item() > paper["ia"].item()  # paper weights w < 1 shrink it
    for key in ("im", "ps", "pe"):
        assert losses[key].item() == pytest.approx(paper[key].item(), rel=1e-6)


def test_class_balance_by_hand():
    # 80x80 = 6400 pixels, one image: threshold 64*64 = 4096 pixels.
    label = torch.full((1, 80, 80), 255, dtype=torch.long)
    flat = label.view(-1)
    flat[:4200] = 0  # frequent: weight 1
    flat[4200:6400 - 100] = 1  # 2100 pixels: rare, weight 7 (the 100 left stay ignored)
    state = ClassBalanceState(3)  # class 2 absent: weight 7, often -> 0.9 + 0.7 = 1.6
    weights = class_balance_weights(label, 3, state)
    assert weights.tolist() == pytest.approx([1.0, 7.0, 7 * 1.6])
    assert state.often.tolist() == pytest.approx([1.0, 1.0, 1.6])
    weights = class_balance_weights(label, 3, state)  # often: 0.9 * 1.6 + 0.7 = 2.14
    assert weights.tolist() == pytest.approx([1.0, 7.0, 7 * 2.14])


def test_class_balance_threshold_scales_with_batch():
    label = torch.zeros(2, 100, 100, dtype=torch.long)
    label[1, :50] = 1  # class 1: 5000 pixels, more than 4096 but fewer than 2 * 4096
    # class 0: 15000 pixels >= 2 * 4096
    weights = class_balance_weights(label, 2, ClassBalanceState(2))
    assert weights.tolist() == pytest.approx([1.0, 7.0])


def test_class_balance_state_round_trip():
    state = ClassBalanceState(3)
    class_balance_weights(torch.zeros(1, 4, 4, dtype=torch.long), 3, state)
    restored = ClassBalanceState(3)
    restored.load_state_dict(state.state_dict())
    assert torch.equal(restored.often, state.often)
    with pytest.raises(UserError, match="same model"):
        ClassBalanceState(4).load_state_dict(state.state_dict())


def test_balanced_ce_counts_ignored_pixels_in_the_mean():
    logits = torch.zeros(1, 3, 1, 2)  # uniform: CE = ln 3
    label = torch.tensor([[[1, 255]]])
    weight = torch.tensor([1.0, 7.0, 1.0])
    assert balanced_pixel_ce(logits, label, weight).mean().item() == pytest.approx(7 * math.log(3) / 2)


def test_entropies_by_hand():
    prob = torch.tensor([0.5, 0.5, 0.0]).view(1, 3, 1, 1)
    assert entropy_released(prob).item() == pytest.approx(-2 * 0.5 * math.log(0.5 + 1e-5) - 0.0, rel=1e-6)
    # pixel a: p = (1/2, 1/4, 1/4); pixel b: p = (1/4, 1/2, 1/4); p_bar = (3/8, 3/8, 1/4)
    logits = torch.tensor([[math.log(2), 0.0], [0.0, math.log(2)], [0.0, 0.0]]).view(1, 3, 1, 2)
    h_pixel = 1.5 * math.log(2)
    h_bar = -(2 * 3 / 8 * math.log(3 / 8) + 1 / 4 * math.log(1 / 4))
    assert entropy_diversity(logits).item() == pytest.approx(h_pixel - h_bar, rel=1e-6)


def test_prototypes_by_hand():
    # image 0: features e1, e1, e2, (3, 3); labels 0, 0, 1, 1; class 2 absent
    feats = torch.tensor([[[1.0, 1.0], [0.0, 3.0]], [[0.0, 0.0], [1.0, 3.0]]]).unsqueeze(0)  # (1, 2, 2, 2)
    label = torch.tensor([[[0, 0], [1, 1]]])
    protos = prototypes(torch.cat([feats, 2 * feats]), torch.cat([label, 1 - label]), 3)  # (2, 3, 2)
    assert protos[0].tolist() == [[1.0, 0.0], [1.5, 2.0], [0.0, 0.0]]
    # image 1 is per-image: its own labels (flipped) and features (doubled)
    assert protos[1].tolist() == [[3.0, 4.0], [2.0, 0.0], [0.0, 0.0]]


def test_prototype_logits_cosine_and_released_layout():
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # pixels e1, e2 (C=2, h=1, w=2)
    protos = torch.tensor([[[2.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])  # (1, K=3, C=2)
    r = 1 / math.sqrt(2)
    correct = prototype_logits(target, protos, reshape_quirk=False)  # (1, 3, 1, 2)
    assert correct.flatten().tolist() == pytest.approx([1.0, 0.0, r, r, 0.0, 0.0])
    # similarity matrix rows are pixels: [[1, r, 0], [0, r, 0]]; view(1, 3, 1, 2) reads it flat
    quirk = prototype_logits(target, protos, reshape_quirk=True)
    assert quirk.flatten().tolist() == pytest.approx([1.0, r, 0.0, 0.0, r, 0.0])


# ---- the whole loss, by hand -----------------------------------------------------------------

def _hand_example():
    """N=1, K=3, C=2, 2x2 crop = feature size (so resampling is the identity)."""
    target_logits = torch.zeros(1, 3, 2, 2)  # uniform p: every CE is ln 3, argmax t = 0
    # target features per pixel (row-major): e1, e2, (1, 1), e1
    target_feats = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]]).view(1, 2, 2, 2)
    source = torch.tensor([[4.0, 2, 1], [1, 0, 3], [2, 1, 0], [0, 5, 1]])  # (pixel, K)
    source_logits = source.t().reshape(1, 3, 2, 2)
    pseudo_label = source.argmax(dim=1).view(1, 2, 2)  # 0, 2, 0, 1
    # memory: labels 0, 0, 1, 1 on features e1, e1, e2, e2 -> prototypes e1, e2, 0
    memory_logits = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]]).t().reshape(1, 3, 2, 2)
    memory_feats = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]]).view(1, 2, 2, 2)
    return target_logits, target_feats, source_logits, memory_logits, memory_feats, pseudo_label


def _ce(scores, k):
    return -math.log(math.exp(scores[k]) / sum(math.exp(v) for v in scores))


@pytest.mark.parametrize("preset", ["paper", "released"])
def test_iapc_losses_by_hand(preset):
    losses = iapc_losses(*_hand_example(), preset=preset)
    ln3 = math.log(3)
    # every class is present but rare (< 64*64 pixels): class weight 7 * often(1.0)
    if preset == "released":
        w = [1 - 2 / 4, 1 - 1 / 3, 1 - 1 / 2, 1 - 1 / 5]  # 1 - q2/q1 on raw logits
        im = -3 * (1 / 3) * math.log(1 / 3 + 1e-5)
        lam = {"ia": 0.2, "im": 2.0, "ps": 0.04, "pe": 0.5}
    else:
        w = [1 - math.exp(-2), 1 - math.exp(-2), 1 - math.exp(-1), 1 - math.exp(-4)]
        im = 0.0  # uniform p: mean H(p) = H(p_bar) = ln 3
        lam = {"ia": 0.2, "im": 0.5, "ps": 0.04, "pe": 2.0}
    ia = sum(wi * 7 * ln3 for wi in w) / 4

    # similarities (pixel x class): e1 -> (1, 0, 0), e2 -> (0, 1, 0), (1,1) -> (r, r, 0), e1
    r = 1 / math.sqrt(2)
    sim = [[1, 0, 0], [0, 1, 0], [r, r, 0], [1, 0, 0]]
    proto_label = [0, 1, 0, 0]  # ties go to the first class
    if preset == "released":
        flat = [v for row in sim for v in row]  # view(K, h*w): channel k = flat[4k:4k+4]
        ps_scores = [[flat[4 * k + p] for k in range(3)] for p in range(4)]
    else:
        ps_scores = sim
    ps = ln3 + sum(_ce(ps_scores[p], 0) for p in range(4)) / 4  # second term's labels: argmax t = 0
    # PE: prototype label agrees with the pseudo-label (0, 2, 0, 1) at pixels 0 and 2 only
    pe = (7 * ln3 + 0 + 7 * ln3 + 0) / 4

    expected = {"ia": lam["ia"] * ia, "im": lam["im"] * im, "ps": lam["ps"] * ps, "pe": lam["pe"] * pe}
    expected["total"] = sum(expected.values())
    assert {k: v.item() for k, v in losses.items()} == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert all(v.dtype == torch.float32 for v in losses.values())
    assert proto_label != [0, 2, 0, 1]  # the example exercises the PE mask


def test_class_balance_off_uses_unit_weights():
    losses = iapc_losses(*_hand_example(), preset="paper", class_balance=False)
    assert losses["pe"].item() == pytest.approx(2.0 * (2 * math.log(3)) / 4, rel=1e-6)


# ---- against the loop-based reference ----------------------------------------------------------

def _random_inputs(seed, absent_classes=()):
    g = torch.Generator().manual_seed(seed)
    n, k, c, h, w = 2, 5, 8, 16, 24
    crop = (64, 96)  # 4x the feature size; 6144 pixels per image, so the rare threshold bites
    inputs = dict(
        target_logits=torch.randn(n, k, h, w, generator=g) * 2,
        target_feats=torch.randn(n, c, h, w, generator=g),
        source_logits=torch.randn(n, k, h, w, generator=g) * 2 + 3,  # mostly positive logits
        memory_logits=torch.randn(n, k, h // 2, w // 2, generator=g) * 2,  # coarser memory map
        memory_feats=torch.randn(n, c, h // 2, w // 2, generator=g),
    )
    label = torch.randint(0, k, (n, *crop), generator=g)
    label[:, :40] = 0  # class 0 frequent (> 64*64*2 pixels), the others rare
    for cls in absent_classes:
        label[label == cls] = 1
    label[0, -3:, :5] = 255  # a few ignored pixels
    inputs["pseudo_label"] = label
    return inputs


@pytest.mark.parametrize("preset,reference", [("released", ref.RELEASED), ("paper", ref.PAPER)])
def test_matches_loop_reference_over_two_steps(preset, reference):
    state = ClassBalanceState(5)
    often = [1.0] * 5
    for step, absent in enumerate([(3, 4), ()]):
        inputs = _random_inputs(step, absent_classes=absent)
        ours = iapc_losses(**inputs, preset=preset, state=state)
        expected = ref.reference_losses(*inputs.values(), often=often, **reference)
        assert {k: v.item() for k, v in ours.items()} == pytest.approx(expected, rel=1e-5, abs=1e-7)
        assert state.often.tolist() == pytest.approx(often)
    assert often[3] > 1.0  # the absent classes moved the EMA


def test_released_quirk_changes_the_ps_term_only():
    inputs = _random_inputs(0)
    quirk = iapc_losses(**inputs, preset="released")
    correct_layout = Preset("released-correct-layout", importance="logit", im="entropy",
                            ps_reshape_quirk=False, weights=PRESETS["released"].weights)
    correct = iapc_losses(**inputs, preset=correct_layout)
    assert quirk["ps"].item() != pytest.approx(correct["ps"].item(), rel=1e-3)
    for key in ("ia", "im", "pe"):
        assert quirk[key].item() == pytest.approx(correct[key].item(), rel=1e-6)


# ---- gradients -------------------------------------------------------------------------------

def test_gradients_reach_target_outputs_only():
    inputs = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in _random_inputs(1).items()}
    losses = iapc_losses(**inputs, preset="released")
    losses["total"].backward()
    for name in ("target_logits", "target_feats"):
        assert inputs[name].grad is not None and inputs[name].grad.abs().sum() > 0, name
    for name in ("source_logits", "memory_logits", "memory_feats"):
        assert inputs[name].grad is None, name


def test_feature_gradient_flows_through_the_ps_similarity_map():
    inputs = {k: v.clone() for k, v in _random_inputs(2).items()}
    inputs["target_feats"].requires_grad_(True)
    inputs["target_logits"].requires_grad_(True)
    losses = iapc_losses(**inputs, preset="paper")
    (grad,) = torch.autograd.grad(losses["ps"], inputs["target_feats"], retain_graph=True)
    assert grad.abs().sum() > 0
    # IA, IM and PE depend on the logits alone
    (grad_other,) = torch.autograd.grad(losses["ia"] + losses["im"] + losses["pe"],
                                        inputs["target_feats"], allow_unused=True)
    assert grad_other is None


def test_prototypes_are_detached():
    feats = torch.randn(1, 4, 3, 3, requires_grad=True)
    protos = torch.randn(1, 5, 4, requires_grad=True)
    prototype_logits(feats, protos).sum().backward()
    assert feats.grad is not None and protos.grad is None


def test_low_precision_inputs_give_float32_losses():
    inputs = _random_inputs(3)
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    losses = iapc_losses(**half, preset="paper")
    assert losses["total"].dtype == torch.float32 and torch.isfinite(losses["total"])
