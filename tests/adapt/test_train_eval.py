"""Source training and evaluation on a tiny generated Cityscapes-layout root."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from iapc.adapt.checkpoint import load_model
from iapc.data import find_samples
from iapc.adapt.evaluate import evaluate_model, labelled_samples, parse_size, predict_train_ids
from iapc.labels import NAME_TO_ID
from iapc.adapt.models import build_model
from iapc.adapt.train_source import TrainConfig, random_scale_crop_flip, train_source
from iapc.cli import _main as cli_main
from iapc.errors import UserError

SIZE = (128, 64)  # (W, H)

# BGR colour of each class in the generated scenes.
_COLOURS = {"sky": (200, 150, 100), "road": (90, 90, 90), "sidewalk": (160, 160, 200),
            "building": (60, 80, 140), "car": (30, 30, 200)}


def _scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A street-like BGR image and its label ids: sky, road, sidewalk, buildings and cars."""
    image = np.zeros((height, width, 3), np.uint8)
    label = np.zeros((height, width), np.uint8)  # 0 = "unlabeled" (void)

    def paint(name, rows, cols):
        image[rows, cols] = _COLOURS[name]
        label[rows, cols] = NAME_TO_ID[name]

    horizon = int(height * rng.uniform(0.35, 0.5))
    paint("sky", slice(0, horizon), slice(None))
    paint("road", slice(horizon, None), slice(None))
    paint("sidewalk", slice(horizon, None), slice(0, width // 6))
    for _ in range(3):
        x, w, top = rng.integers(0, width - 20), rng.integers(15, 40), rng.integers(3, horizon)
        paint("building", slice(top, horizon), slice(x, x + w))
    for _ in range(2):
        x, w, y = rng.integers(0, width - 20), rng.integers(15, 30), rng.integers(horizon, height - 8)
        paint("car", slice(y, y + 8), slice(x, x + w))
    label[-2:, :] = 0  # a void strip: ignored by training and evaluation
    noisy = image.astype(np.int16) + rng.normal(0, 8, image.shape).astype(np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8), label


def write_root(root: Path, splits: dict[str, int], size=SIZE, seed=0, labelled=True) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in splits.items():
        for i in range(count):
            image, label = _scene(rng, *size)
            name = f"synth_000000_{i:06d}"
            img_dir = root / "leftImg8bit" / split / "synth"
            img_dir.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(img_dir / f"{name}_leftImg8bit.png"), image)
            if labelled:
                gt_dir = root / "gtFine" / split / "synth"
                gt_dir.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(gt_dir / f"{name}_gtFine_labelIds.png"), label)
    return root


@pytest.fixture(scope="module")
def source_root(tmp_path_factory) -> Path:
    return write_root(tmp_path_factory.mktemp("source"), {"train": 16, "val": 4})


@pytest.fixture(scope="module")
def trained(source_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    cfg = TrainConfig(iters=60, batch=4, size=SIZE, lr=5e-3, seed=0, device="cpu")
    model = train_source("tiny", find_samples(source_root, "train"), cfg, out=out, progress=False)
    return model, out


def test_training_learns_the_source_domain(trained, source_root):
    model, _ = trained
    samples = labelled_samples(source_root, "val")
    torch.manual_seed(0)
    untrained = evaluate_model(build_model("tiny"), samples, size=SIZE)
    scores = evaluate_model(model, samples, size=SIZE, batch_size=3)
    assert scores["images"] == 4
    assert scores["miou"] > 0.5 and scores["miou"] > untrained["miou"] + 0.3
    assert scores["iou"]["wall"] is None  # absent class: NaN, left out of the mean
    assert scores["iou"]["road"] > 0.8


def test_checkpoint_holds_config_and_reloads(trained, source_root):
    model, path = trained
    reloaded, meta = load_model(path)
    assert meta["model"] == "tiny" and meta["step"] == 60
    assert meta["config"]["batch"] == 4 and tuple(meta["config"]["size"]) == SIZE
    images = torch.randint(0, 256, (2, 3, 64, 128), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.equal(predict_train_ids(model.eval(), images, (64, 128)),
                           predict_train_ids(reloaded.eval(), images, (64, 128)))


def test_logits_are_upsampled_to_the_label_size(trained):
    model, _ = trained
    images = torch.randint(0, 256, (1, 3, 32, 64), dtype=torch.uint8)
    with torch.inference_mode():
        assert predict_train_ids(model, images, (64, 128)).shape == (1, 64, 128)


def test_evaluate_cli_prints_table_and_writes_json(trained, source_root, tmp_path, capsys):
    model, path = trained
    out = tmp_path / "scores.json"
    code = cli_main(["evaluate", "--checkpoint", str(path), "--root", str(source_root),
                     "--size", "128x64", "--json", str(out), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "road" in printed and "mIoU" in printed
    written = json.loads(out.read_text())
    direct = evaluate_model(model, labelled_samples(source_root, "val"), size=SIZE)
    assert written["miou"] == pytest.approx(direct["miou"])
    assert f"{100 * direct['miou']:6.2f}" in printed


def test_evaluate_defaults_to_the_size_the_checkpoint_was_trained_at(trained, source_root,
                                                                     tmp_path, capsys):
    _, path = trained
    scores = {}
    for name, size_args in (("default", []), ("explicit", ["--size", "128x64"]),
                            ("other", ["--size", "64x32"])):
        out = tmp_path / f"{name}.json"
        assert cli_main(["evaluate", "--checkpoint", str(path), "--root", str(source_root),
                         "--json", str(out), "--device", "cpu", *size_args]) == 0
        scores[name] = json.loads(out.read_text())["miou"]
        warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning")]
        assert len(warnings) == (1 if name == "other" else 0), warnings
    assert scores["default"] == scores["explicit"]  # trained at 128x64, recorded in the file
    assert load_model(path)[1]["input_size"] == SIZE


def test_train_source_cli_writes_a_checkpoint(source_root, tmp_path, capsys):
    out = tmp_path / "cli.pth"
    code = cli_main(["train-source", "--root", str(source_root), "--out", str(out), "--iters", "3",
                     "--batch", "2", "--size", "64x32", "--crop", "48x24", "--optimizer", "sgd",
                     "--device", "cpu", "--eval-split", "val"])
    assert code == 0 and out.is_file()
    _, meta = load_model(out)
    assert meta["config"]["optimizer"] == "sgd" and tuple(meta["config"]["crop"]) == (48, 24)  # WxH
    assert "mIoU" in capsys.readouterr().out


def test_joint_augmentation_keeps_image_and_label_aligned():
    rng = np.random.default_rng(0)
    image = np.zeros((32, 64, 3), np.uint8)
    image[:, :16] = 255  # a white left band
    label = np.zeros((32, 64), np.uint8)
    label[:, :16] = 7
    for _ in range(10):
        img, lab = random_scale_crop_flip(image, label, (40, 80), (0.5, 1.5), True, rng)
        assert img.shape == (40, 80, 3) and lab.shape == (40, 80)
        white, seven = img[..., 0] > 200, lab == 7
        assert (white & seven).sum() >= 0.9 * seven.sum()  # same pixels, up to resize blur
        assert set(np.unique(lab)) <= {0, 7, 255}
    # Shrinking below the crop pads the label with ignore, never with a class.
    _, lab = random_scale_crop_flip(image, label, (40, 80), (0.5, 0.5), False, rng)
    assert (lab == 255).sum() == 40 * 80 - 16 * 32


def test_bad_input_gives_one_line_user_errors(source_root, tmp_path, capsys):
    with pytest.raises(UserError, match="WIDTHxHEIGHT"):
        parse_size("1024-512")
    unlabelled = write_root(tmp_path / "unlabelled", {"val": 2}, labelled=False)
    with pytest.raises(UserError, match="no labelled images"):
        labelled_samples(unlabelled, "val")
    with pytest.raises(UserError, match="--iters"):
        train_source("tiny", find_samples(source_root), TrainConfig(iters=0), progress=False)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    from iapc.errors import run_cli

    code = run_cli("iapc", lambda: cli_main(["evaluate", "--checkpoint", str(bad),
                                             "--root", str(source_root)]))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is not a PyTorch checkpoint" in err
