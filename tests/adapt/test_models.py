"""Model registry and checkpoint loading, including the released IAPC/AdvEnt file layout."""

import collections

import pytest
import torch

from iapc.adapt.checkpoint import load_model, save_checkpoint
from iapc.adapt.models import MODELS, build_model
from iapc.errors import UserError


@pytest.fixture(scope="module")
def deeplabv2():
    torch.manual_seed(0)
    return build_model("deeplabv2_resnet101").eval()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_returns_logits_and_features(name):
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        logits, feats = model(torch.randn(1, 3, 64, 128))
    stride = model.output_stride
    assert logits.shape[:2] == (1, 7) and feats.shape[1] == model.feature_channels
    assert logits.shape[-2:] == feats.shape[-2:]
    assert abs(logits.shape[-1] - 128 / stride) <= 1  # DeepLabV2's ceil-mode pool may add one
    groups = model.parameter_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters())), "groups must partition"
    assert groups["classifier"], "the classifier group gets the 10x learning rate"


def test_deeplabv2_has_the_released_architecture(deeplabv2):
    # caffe-style bottleneck: stride on the first 1x1 conv; dilated layer3/4; ceil-mode pool
    assert deeplabv2.layer2[0].conv1.stride == (2, 2) and deeplabv2.layer2[0].conv2.stride == (1, 1)
    assert deeplabv2.layer3[0].conv2.dilation == (2, 2) and deeplabv2.layer4[0].conv2.dilation == (4, 4)
    assert deeplabv2.layer3[0].conv1.stride == (1, 1) and deeplabv2.layer4[0].conv1.stride == (1, 1)
    assert deeplabv2.maxpool.ceil_mode
    assert all(layer[0].downsample is not None for layer in
               (deeplabv2.layer1, deeplabv2.layer2, deeplabv2.layer3, deeplabv2.layer4))
    assert [c.dilation[0] for c in deeplabv2.layer6.conv2d_list] == [6, 12, 18, 24]
    assert [len(layer) for layer in (deeplabv2.layer1, deeplabv2.layer2, deeplabv2.layer3,
                                     deeplabv2.layer4)] == [3, 4, 23, 3]


def test_released_layout_loads_to_the_same_logits(deeplabv2, tmp_path):
    """{'state_dict': ...} with 'module.' prefixes and an auxiliary layer5, as released."""
    state = collections.OrderedDict(("module." + k, v) for k, v in deeplabv2.state_dict().items())
    state["module.layer5.conv2d_list.0.weight"] = torch.zeros(19, 1024, 3, 3)
    state["module.layer5.conv2d_list.0.bias"] = torch.zeros(19)
    path = tmp_path / "GTA5_released.pth"
    torch.save({"state_dict": state}, path)

    loaded, meta = load_model(path)
    assert meta["model"] == "deeplabv2_resnet101" and meta["num_classes"] == 19
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        expected, expected_feats = deeplabv2(x)
        logits, feats = loaded.eval()(x)
    assert torch.equal(logits, expected) and torch.equal(feats, expected_feats)


def test_own_checkpoints_round_trip_with_their_config(tmp_path):
    model = build_model("tiny", num_classes=5).eval()
    save_checkpoint(tmp_path / "m.pt", "tiny", model, {"lr": 0.1}, step=12)
    loaded, meta = load_model(tmp_path / "m.pt")
    assert meta == {"model": "tiny", "num_classes": 5, "config": {"lr": 0.1}, "step": 12,
                    "input_size": None, "method": None}  # neither recorded in this file
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x)[0], model(x)[0])


def test_wrong_or_broken_files_name_the_file_and_what_was_expected(tmp_path):
    tiny = tmp_path / "tiny.pt"
    save_checkpoint(tiny, "tiny", build_model("tiny"))
    with pytest.raises(UserError, match=r"tiny\.pt holds a tiny, not a deeplabv2_resnet101"):
        load_model(tiny, "deeplabv2_resnet101")
    with pytest.raises(UserError, match="has 19 classes, not 16"):
        load_model(tiny, num_classes=16)

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(tiny.read_bytes()[:300])
    with pytest.raises(UserError, match=r"truncated\.pth is truncated or damaged.*copy or download it again"):
        load_model(truncated)

    foreign = tmp_path / "foreign.pth"  # a released-style file of another network
    torch.save({"state_dict": {"module.fc.weight": torch.zeros(3, 3)}}, foreign)
    with pytest.raises(UserError, match=r"foreign\.pth does not hold a deeplabv2_resnet101"):
        load_model(foreign)

    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "missing.pth")


class NotWeights:
    """Pickled code, which weights_only loading must refuse to run."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": NotWeights()}, path)
    with pytest.raises(UserError, match=r"evil\.pth could not be read"):
        load_model(path)
