"""ESPNetv2 (iapc.adapt.models.espnetv2) against EdgeNets' own code, any frame size, ONNX export,
width inference and checkpoint round trips.

The reference outputs in tests/fixtures/espnetv2_reference.npz were computed with EdgeNets'
original implementation (commit 2b232d3) by tests/fixtures/make_espnetv2_reference.py, which says
how to regenerate them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from iapc.adapt.checkpoint import load_model, save_checkpoint
from iapc.adapt.models import build_model
from iapc.adapt.models.espnetv2 import (WIDTH_CHANNELS, ESPNetv2Seg, adaptive_avg_pool_2d,
                                        deterministic_init, width_from_state_dict)
from iapc.errors import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "real"
REAL_FILES = sorted((REAL / "models" / "espnetv2").glob("espnetv2_s_*_city_*.pth"))
S2_FILE = REAL / "models" / "espnetv2" / "espnetv2_s_2.0_city_1024x512.pth"
needs_real = pytest.mark.skipif(not S2_FILE.is_file(), reason=f"{S2_FILE} is absent")

DET_SIZE = (128, 256)  # (H, W) of the fixture's deterministic-weight outputs
REAL_SIZE = (512, 1024)  # the released 1024x512 network at its training size
MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def image(size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """The fixture's input: (1, 3, H, W) uint8 RGB noise from RandomState(seed), normalised."""
    rgb = np.random.RandomState(seed).randint(0, 256, (1, 3, *size)).astype(np.float32) / 255.0
    return torch.from_numpy((rgb - MEAN) / STD)


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "espnetv2_reference.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def small():
    """s=0.5 with the fixture's deterministic weights, in eval mode."""
    return deterministic_init(ESPNetv2Seg(19, width=0.5), seed=0).eval()


def _compare(out: torch.Tensor, reference: dict, prefix: str, sub: tuple[slice, slice],
             atol: float) -> float:
    """Max |difference| on the stored subsample; sums and maxima of the whole output too."""
    out = out[0].double()  # (20, H, W)
    diff = float(np.abs(out[:, sub[0], sub[1]].numpy() - reference[f"{prefix}_sub"]).max())
    assert diff <= atol, f"{prefix}: max |logit difference| {diff:.2e} > {atol:.0e}"
    n = out.shape[1] * out.shape[2]
    np.testing.assert_allclose(out.sum(dim=(1, 2)).numpy(), reference[f"{prefix}_sum"],
                               rtol=0, atol=atol * n ** 0.5 + 1e-6 * np.abs(reference[f"{prefix}_sum"]).max())
    np.testing.assert_allclose(out.amax(dim=(1, 2)).numpy(), reference[f"{prefix}_max"], rtol=0,
                               atol=atol)
    return diff


@pytest.mark.parametrize("width", [0.5, 2.0])
def test_deterministic_weights_give_the_originals_outputs(reference, width):
    model = deterministic_init(ESPNetv2Seg(19, width=width), seed=0).eval()
    with torch.no_grad():
        out = model.forward_raw(image(DET_SIZE))  # (1, 20, 128, 256)
    assert out.shape == (1, 20, *DET_SIZE)
    _compare(out, reference, f"det_{width}", (slice(3, None, 8), slice(5, None, 8)), atol=1e-5)


@needs_real
def test_released_cityscapes_network_matches_the_original(reference):
    model, meta = load_model(S2_FILE, "espnetv2")
    assert (meta["model"], meta["num_classes"], model.width) == ("espnetv2", 19, 2.0)
    model.eval()
    x = image(REAL_SIZE)
    with torch.no_grad():
        raw = model.forward_raw(x)  # (1, 20, 512, 1024)
        logits, feats = model(x)  # (1, 19, 256, 512), (1, 32, 256, 512)
    _compare(raw, reference, "real", (slice(7, None, 16), slice(7, None, 16)), atol=1e-4)
    # forward drops the background (channel 19) and stops before the release's final upsample
    assert logits.shape == (1, 19, 256, 512) and feats.shape == (1, 32, 256, 512)
    upsampled = F.interpolate(logits, size=REAL_SIZE, mode="bilinear", align_corners=True)
    assert torch.allclose(upsampled, raw[:, :19], atol=1e-4)


@needs_real
@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.stem)
def test_every_released_file_loads_with_its_width_read_from_the_shapes(path):
    width = float(re.search(r"_s_([\d.]+)_", path.name).group(1))
    model, meta = load_model(path)  # recognised without --model
    assert (meta["model"], meta["num_classes"], model.width) == ("espnetv2", 19, width)
    assert model.raw_classes == 20


@pytest.mark.parametrize("width", sorted(WIDTH_CHANNELS))
def test_width_is_inferred_from_the_state_dict_and_the_layout_is_the_originals(reference, width):
    state = ESPNetv2Seg(19, width=width).state_dict()
    assert width_from_state_dict(state) == width
    if f"layout_{width}" in reference:  # sha256 of the original's "key shape" lines
        import hashlib
        lines = "".join(f"{key} {tuple(value.shape)}\n" for key, value in state.items())
        assert hashlib.sha256(lines.encode()).hexdigest() == str(reference[f"layout_{width}"])


@pytest.mark.parametrize("size_in,size_out", [((45, 23), (5, 5)), ((30, 80), (4, 8)),
                                             ((48, 72), (32, 48)), ((4, 6), (5, 5)),
                                             ((64, 128), (32, 64)), ((16, 16), (16, 16))])
def test_exportable_adaptive_pool_equals_pytorchs(size_in, size_out):
    x = torch.randn(2, 3, *size_in)
    expected = F.adaptive_avg_pool2d(x, size_out)
    assert torch.allclose(adaptive_avg_pool_2d(x, size_out), expected, atol=1e-6)


@pytest.mark.parametrize("width,height", [(480, 360), (500, 300)])
def test_any_frame_size_works(small, width, height):
    x = image((height, width))
    with torch.no_grad():
        logits, feats = small(x)
        raw = small.forward_raw(x)
    half = ((height + 1) // 2, (width + 1) // 2)
    assert logits.shape == (1, 19, *half) and feats.shape == (1, 32, *half)
    assert raw.shape == (1, 20, height, width)
    assert torch.isfinite(logits).all()


def test_sides_divisible_by_16_are_not_padded(small):
    x = image((352, 480))
    assert small._padded(x) is x
    assert small._padded(x[:, :, :350]).shape[-2:] == (352, 480)


@pytest.mark.parametrize("height,width", [(360, 480), (300, 500), (7, 9), (1, 17)])
def test_padding_is_reflection(small, height, width):
    x = torch.randn(1, 3, height, width)
    padded = small._padded(x)
    expected_size = (-(-height // 16) * 16, -(-width // 16) * 16)
    assert padded.shape[-2:] == expected_size
    assert torch.equal(padded[:, :, :height, :width], x)
    if expected_size[0] - height < height and expected_size[1] - width < width:
        pad = (0, expected_size[1] - width, 0, expected_size[0] - height)
        assert torch.equal(padded, F.pad(x, pad, mode="reflect"))


def test_training_on_odd_crops(small):
    model = build_model("espnetv2", 19, width=0.5)
    model.load_state_dict(small.state_dict())
    model.train()
    x = image((161, 321))  # an odd crop
    x = torch.cat([x, x.flip(3)])
    logits, feats = model(x)
    assert logits.shape == (2, 19, 81, 161) and feats.shape == (2, 32, 81, 161)
    label = torch.randint(0, 19, (2, 161, 321))
    up = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=True)
    loss = F.cross_entropy(up, label) + feats.pow(2).mean()
    loss.backward()
    groups = model.parameter_groups()
    assert {id(p) for g in groups.values() for p in g} == {id(p) for p in model.parameters()}
    assert groups["backbone"] and groups["classifier"]
    for name, p in model.named_parameters():
        if re.fullmatch(r"base_net\.level\d_0\.eesp\.module_act\.weight", name):
            continue  # as in the release, a down-sampler's EESP returns before its PReLU
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert float(model.base_net.level1.conv.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("frame_size", [(256, 128), (200, 120)])
def test_onnx_export_matches_pytorch(tmp_path, small, frame_size):
    from iapc.export.onnx_export import export_onnx
    from iapc.export.parity import check_parity
    from iapc.engines.runner_onnxrt import OnnxRuntimeRunner
    from iapc.synth import sample_frames

    path = export_onnx(small, tmp_path / "espnetv2.onnx", frame_size=frame_size,
                       model_name="espnetv2")
    with OnnxRuntimeRunner(path) as runner:
        report = check_parity(runner, small, sample_frames(2, frame_size), 0.999)
    assert report.passed, report.message


def test_bare_state_dict_loads_with_the_width_inferred(tmp_path, small):
    path = tmp_path / "espnetv2_s_0.5_city.pth"
    torch.save(small.state_dict(), path)
    for name in ("espnetv2", None, "espnetv2_s0.5"):
        model, meta = load_model(path, name)
        assert model.width == 0.5 and meta["num_classes"] == 19
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                     small.state_dict().values()))
    with pytest.raises(UserError, match="width s=0.5, not s=1.0"):
        load_model(path, "espnetv2_s1.0")
    with pytest.raises(UserError, match="does not hold a tiny"):
        load_model(path, "tiny")


def test_own_checkpoint_round_trip_rebuilds_the_width(tmp_path, small):
    save_checkpoint(tmp_path / "m.pt", "espnetv2", small, {"lr": 0.01}, step=3)
    loaded, meta = load_model(tmp_path / "m.pt")
    assert meta["model"] == "espnetv2" and meta["num_classes"] == 19 and meta["step"] == 3
    assert loaded.width == 0.5
    loaded.eval()
    x = image((64, 96))
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], small(x)[0])
    assert load_model(tmp_path / "m.pt", "espnetv2_s0.5")[0].width == 0.5
    with pytest.raises(UserError, match="width s=0.5, not s=2.0"):
        load_model(tmp_path / "m.pt", "espnetv2_s2.0")
    # a file without the recorded width (model_options) still rebuilds from the shapes
    data = torch.load(tmp_path / "m.pt", weights_only=True)
    del data["model_options"]
    torch.save(data, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt")[0].width == 0.5


def test_registry_names():
    assert build_model("espnetv2").width == 2.0
    assert build_model("espnetv2_s1.5", 19).width == 1.5
    assert build_model("espnetv2", 7, width=1.0).num_classes == 7
    with pytest.raises(UserError, match="ESPNetv2 widths"):
        build_model("espnetv2_s3.0")
    with pytest.raises(UserError, match="cannot be built"):
        build_model("tiny", 19, width=1.0)
