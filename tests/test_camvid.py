"""CamVid as a first-class root: discovery in the distributed layout, the class table onto
Cityscapes train ids, 11-class scoring, ``iapc evaluate``, the runtime's frame source and the
replay plan, on a small generated tree (and, when present, on the real one)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from iapc.data import (camvid_protocol, camvid_sequence, find_camvid, find_camvid_spec,
                       find_samples, is_camvid_root, load_sample, read_camvid_ids, read_train_ids)
from iapc.errors import UserError
from iapc.labels import (CAMVID_CLASS_NAMES, CAMVID_IGNORE, CAMVID_TO_TRAIN_ID, CITYSCAPES_TO_CAMVID,
                         CITYSCAPES_UNMAPPED, CLASS_NAMES, IGNORE_INDEX, NAME_TO_TRAIN_ID,
                         TRAIN_ID_TO_CAMVID)
from iapc.metrics import ConfusionMatrix, camvid_matrix, camvid_scores, update_camvid

REAL_CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "real" / "CamVid"
SIZE = (48, 36)  # (width, height) of the generated frames
# (split, sequence, frames) of the generated tree; written out of order on purpose
TREE = [("train", "0016E5", ["00420", "00390"]), ("train", "0001TP", ["006750", "006690", "006720"]),
        ("val", "0016E5", ["07989", "07959"]), ("test", "0001TP", ["008580", "008550"])]


def _label(rng: np.random.Generator) -> np.ndarray:
    """Blocky CamVid classes 0..11 (void included) at SIZE."""
    blocks = rng.integers(0, 12, size=(6, 8), dtype=np.uint8)
    return cv2.resize(blocks, SIZE, interpolation=cv2.INTER_NEAREST)


@pytest.fixture(scope="module")
def camvid_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("CamVid")
    rng = np.random.default_rng(0)
    for split, sequence, frames in TREE:
        (root / split).mkdir(exist_ok=True)
        (root / f"{split}annot").mkdir(exist_ok=True)
        for frame in frames:
            name = f"{sequence}_{frame}.png"
            image = rng.integers(0, 256, size=(SIZE[1], SIZE[0], 3), dtype=np.uint8)
            cv2.imwrite(str(root / split / name), image)
            cv2.imwrite(str(root / f"{split}annot" / name), _label(rng))
    (root / "train.txt").write_text("a list file the reader ignores\n")
    return root


def names(samples) -> list[str]:
    return [s.name for s in samples]


# ----------------------------------------------------------------------------- discovery


def test_frames_in_sequence_then_frame_order_with_their_labels(camvid_root):
    train = find_camvid(camvid_root, "train")
    assert names(train) == ["0001TP_006690", "0001TP_006720", "0001TP_006750",
                            "0016E5_00390", "0016E5_00420"]
    assert all(s.label_set == "camvid" and s.label == camvid_root / "trainannot" / s.image.name
               for s in train)
    assert names(find_camvid(camvid_root, "val")) == ["0016E5_07959", "0016E5_07989"]
    assert names(find_camvid(camvid_root, "test")) == ["0001TP_008550", "0001TP_008580"]
    assert len(find_camvid(camvid_root, "all")) == 9
    assert names(find_camvid(camvid_root, "train+test", ["0001TP"]))[-2:] == \
        ["0001TP_008550", "0001TP_008580"]
    assert is_camvid_root(camvid_root) and camvid_sequence("Seq05VD_f00000") == "Seq05VD"


def test_sequences_are_selected_in_the_order_given(camvid_root):
    chosen = find_camvid(camvid_root, "train", ["0016E5", "0001TP"])
    assert [camvid_sequence(n) for n in names(chosen)] == ["0016E5"] * 2 + ["0001TP"] * 3
    # a root spec ROOT:SEQ[/SPLIT],... says the same, per sequence split first
    spec = find_camvid_spec(f"{camvid_root}:0016E5,0001TP/test", "all")
    assert names(spec) == ["0016E5_00390", "0016E5_00420", "0016E5_07959", "0016E5_07989",
                           "0001TP_008550", "0001TP_008580"]
    # find_samples knows a CamVid root, its --sequence selection and the spec form
    assert names(find_samples(camvid_root, "test")) == names(find_camvid(camvid_root, "test"))
    assert len(find_samples(camvid_root, "train", ["0016E5"])) == 2
    assert len(find_samples(f"{camvid_root}:0001TP", "train")) == 3


def test_protocol_halves_are_split_plus_sequence(camvid_root):
    adapt, score = camvid_protocol(camvid_root, "dusk")  # 0001TP: train half, then test half
    assert names(adapt) == ["0001TP_006690", "0001TP_006720", "0001TP_006750"]
    assert names(score) == ["0001TP_008550", "0001TP_008580"]
    with pytest.raises(UserError, match="0006R0"):  # this small tree has no 0006R0
        camvid_protocol(camvid_root, "day")


@pytest.mark.parametrize("call, message", [
    (lambda root: find_samples(root.parent / "missing", "train"), "neither"),
    (lambda root: find_camvid(root.parent, "train"), "is not a CamVid root"),
    (lambda root: find_camvid(root, "val", ["0001TP"]), "no sequence '0001TP'"),
    (lambda root: find_camvid(root, "trian"), "unknown CamVid split"),
    (lambda root: find_samples(root, "train", ["Seq05VD"]), "no sequence 'Seq05VD'"),
    (lambda root: find_samples(f"{root}:0001TP", "train", ["0001TP"]), "drop --sequence"),
])
def test_bad_roots_and_selections_are_one_line_errors(camvid_root, call, message):
    with pytest.raises(UserError, match=message) as err:
        call(camvid_root)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- labels


def test_every_train_id_maps_to_one_camvid_class_or_is_unmapped():
    assert set(CITYSCAPES_TO_CAMVID) | set(CITYSCAPES_UNMAPPED) == set(CLASS_NAMES)
    for train_id, name in enumerate(CLASS_NAMES):
        camvid = int(TRAIN_ID_TO_CAMVID[train_id])
        if name in CITYSCAPES_UNMAPPED:
            assert camvid == CAMVID_IGNORE
        else:
            assert CAMVID_CLASS_NAMES[camvid] == CITYSCAPES_TO_CAMVID[name]
    assert (TRAIN_ID_TO_CAMVID[len(CLASS_NAMES):] == CAMVID_IGNORE).all()  # 19.., 255: void
    assert CAMVID_CLASS_NAMES[TRAIN_ID_TO_CAMVID[NAME_TO_TRAIN_ID["truck"]]] == "Car"
    assert CAMVID_CLASS_NAMES[TRAIN_ID_TO_CAMVID[NAME_TO_TRAIN_ID["rider"]]] == "Bicyclist"


def test_representative_train_ids_round_trip():
    for camvid, name in enumerate(CAMVID_CLASS_NAMES):
        train_id = int(CAMVID_TO_TRAIN_ID[camvid])
        assert TRAIN_ID_TO_CAMVID[train_id] == camvid, name
    assert CAMVID_TO_TRAIN_ID[CAMVID_IGNORE] == IGNORE_INDEX
    representative = {n: CLASS_NAMES[CAMVID_TO_TRAIN_ID[i]] for i, n in enumerate(CAMVID_CLASS_NAMES)}
    assert representative == {"Sky": "sky", "Building": "building", "Pole": "pole", "Road": "road",
                              "Pavement": "sidewalk", "Tree": "vegetation",
                              "SignSymbol": "traffic sign", "Fence": "fence", "Car": "car",
                              "Pedestrian": "person", "Bicyclist": "bicycle"}


def test_label_files_read_as_camvid_classes_and_as_train_ids(camvid_root, tmp_path):
    sample = find_camvid(camvid_root, "train")[0]
    raw = cv2.imread(str(sample.label), cv2.IMREAD_UNCHANGED)
    assert (read_camvid_ids(sample.label) == raw).all()
    image, train_ids = load_sample(sample)
    assert image.shape == (SIZE[1], SIZE[0], 3)
    assert (train_ids == CAMVID_TO_TRAIN_ID[raw]).all()
    assert (read_train_ids(sample.label, "camvid") == train_ids).all()
    odd = tmp_path / "odd.png"  # values above void are void
    cv2.imwrite(str(odd), np.array([[3, 12, 200]], dtype=np.uint8))
    assert read_camvid_ids(odd).tolist() == [[3, 11, 11]]


# ----------------------------------------------------------------------------- scoring

# CamVid labels (3 Road, 4 Pavement, 0 Sky, 8 Car, 11 void) and predicted train ids
# (0 road, 1 sidewalk, 10 sky, 2 building, 13 car, 14 truck).
LABEL = np.array([[3, 3, 3, 4], [0, 0, 11, 8]], dtype=np.uint8)
PRED = np.array([[0, 0, 1, 1], [10, 2, 13, 14]], dtype=np.int64)


def test_eleven_class_scores_by_hand():
    matrix = camvid_matrix()
    update_camvid(matrix, PRED, LABEL)
    scores = camvid_scores(matrix)
    iou = dict(zip(CAMVID_CLASS_NAMES, scores.iou))
    # Road: 2 of 3 found, no false positive; Pavement: 1 hit, 1 false positive; Sky: 1 of 2;
    # Building: only a false positive; Car: the truck pixel (the car pixel is on void).
    assert iou["Road"] == pytest.approx(2 / 3) and iou["Pavement"] == pytest.approx(1 / 2)
    assert iou["Sky"] == pytest.approx(1 / 2) and iou["Building"] == 0 and iou["Car"] == 1
    assert all(math.isnan(iou[n]) for n in ("Pole", "Tree", "SignSymbol", "Fence",
                                            "Pedestrian", "Bicyclist"))
    assert scores.miou == pytest.approx(8 / 15)  # (2/3 + 1/2 + 1/2 + 0 + 1) / 5
    assert scores.accuracy == pytest.approx(5 / 7)  # 7 non-void pixels
    assert set(scores.to_dict()["iou"]) == set(CAMVID_CLASS_NAMES)


def test_nineteen_class_figure_on_representative_train_ids():
    metric = ConfusionMatrix(19)
    metric.update(PRED, CAMVID_TO_TRAIN_ID[LABEL])
    # road 2/3, sidewalk 1/2, sky 1/2, building 0; car 0 (the truck pixel), truck 0
    assert metric.compute("19").miou == pytest.approx(5 / 18)


def test_a_prediction_without_camvid_class_is_wrong_not_ignored():
    matrix = camvid_matrix()
    update_camvid(matrix, np.array([[19, 0]]), np.array([[3, 3]], dtype=np.uint8))  # 19: none
    scores = camvid_scores(matrix)
    assert scores.iou[3] == pytest.approx(1 / 2) and scores.accuracy == pytest.approx(1 / 2)


def test_evaluate_prints_both_tables_and_writes_camvid11(camvid_root, tiny_checkpoint, tmp_path,
                                                         capsys):
    from iapc.cli import main

    out = tmp_path / "scores.json"
    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--root", str(camvid_root),
              "--split", "train", "--sequence", "0001TP", "--size", "48x36", "--device", "cpu",
              "--json", str(out)])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "CamVid's 11 classes" in printed and "Bicyclist" in printed and "sidewalk" in printed
    assert "(11 classes)" in printed and "(19 classes)" in printed
    scores = json.loads(out.read_text())
    assert scores["images"] == 3 and list(scores["camvid11"]["iou"]) == list(CAMVID_CLASS_NAMES)
    assert 0 <= scores["camvid11"]["miou"] <= 1


def test_evaluate_model_returns_camvid11_on_camvid(camvid_root, tiny_checkpoint):
    from iapc.adapt.checkpoint import load_model
    from iapc.adapt.evaluate import evaluate_model, labelled_samples

    model, _ = load_model(str(tiny_checkpoint), None)
    scores = evaluate_model(model, labelled_samples(camvid_root, "test"), size=SIZE)
    assert scores["images"] == 2 and set(scores["camvid11"]) >= {"miou", "iou", "accuracy"}


def test_evaluate_bad_root_is_one_line(tiny_checkpoint, tmp_path, capsys):
    from iapc.cli import main

    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--root", str(tmp_path / "nope"),
              "--sequence", "0001TP"])
    assert done.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- stream


def test_frame_source_plays_sequences_in_turn_with_train_id_labels(camvid_root):
    from iapc.runtime.sources import make_source

    source = make_source("camvid", f"{camvid_root}:0016E5,0001TP", SIZE)
    frames = list(source.frames())
    assert [f.name for f in frames] == [
        "0016E5_00390.png", "0016E5_00420.png", "0016E5_07959.png", "0016E5_07989.png",
        "0001TP_006690.png", "0001TP_006720.png", "0001TP_006750.png",
        "0001TP_008550.png", "0001TP_008580.png"]
    assert [f.index for f in frames] == list(range(9))
    for frame, label in zip(frames, source.labels):
        raw = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
        assert frame.image.shape == (SIZE[1], SIZE[0], 3)
        assert (frame.label == CAMVID_TO_TRAIN_ID[raw]).all()
    assert len(make_source("camvid", f"{camvid_root}:0001TP/test", SIZE).images) == 2
    assert len(make_source("camvid", str(camvid_root), SIZE).images) == 9


def test_runtime_option_and_bad_source(camvid_root, tmp_path):
    from iapc.runtime.cli import build_parser, config_from_args
    from iapc.runtime.sources import make_source

    cfg = config_from_args(build_parser().parse_args(["--camvid-sequence", f"{camvid_root}:0001TP"]))
    assert (cfg.source.kind, cfg.source.location) == ("camvid", f"{camvid_root}:0001TP")
    for bad, message in ((f"{tmp_path}/nope:0001TP", "does not exist"),
                         (f"{camvid_root}:Seq05VD", "no sequence 'Seq05VD'"),
                         (str(tmp_path), "not a CamVid root")):
        with pytest.raises(UserError, match=message) as err:
            make_source("camvid", bad, SIZE)
        assert "\n" not in str(err.value)


def test_replay_plan_follows_the_runtime_order(camvid_root, tmp_path):
    from iapc.replay.launch import runtime_arguments
    from iapc.replay.plan import ReplayConfig, plan_replay
    from iapc.runtime.sources import make_source

    cfg = ReplayConfig(roots=[camvid_root], split="train", camvid=f"{camvid_root}:0001TP,0016E5")
    plan = plan_replay(cfg)
    assert plan.domains == ["0001TP", "0016E5"] and plan.frames_per_round == 5
    assert plan.runtime_location == f"{camvid_root}:0001TP/train,0016E5/train"
    played = make_source("camvid", plan.runtime_location, SIZE).images
    assert [f.image for f in plan.frames] == played
    assert all(f.label is not None and f.label_set == "camvid" for f in plan.frames)
    assert plan.frames[0].name == "0001TP_006690"
    args = runtime_arguments(cfg, plan, tmp_path / "run", "tcp://127.0.0.1:5555", True, 1)
    assert args[args.index("--camvid-sequence") + 1] == plan.runtime_location


# ----------------------------------------------------------------------------- the real tree


@pytest.mark.skipif(not REAL_CAMVID.is_dir(), reason="no ../shared/real/CamVid beside the repository")
def test_real_camvid_tree():
    counts = {split: len(find_camvid(REAL_CAMVID, split)) for split in ("train", "val", "test")}
    assert counts == {"train": 367, "val": 101, "test": 233}
    per_sequence = {(split, sequence): len(find_camvid(REAL_CAMVID, split, [sequence]))
                    for split, sequence in (("train", "0001TP"), ("train", "0006R0"),
                                            ("train", "0016E5"), ("val", "0016E5"),
                                            ("test", "0001TP"), ("test", "Seq05VD"))}
    assert per_sequence == {("train", "0001TP"): 62, ("train", "0006R0"): 101,
                            ("train", "0016E5"): 204, ("val", "0016E5"): 101,
                            ("test", "0001TP"): 62, ("test", "Seq05VD"): 171}
    dusk_adapt, dusk_score = camvid_protocol(REAL_CAMVID, "dusk")
    assert (dusk_adapt[0].name, dusk_adapt[-1].name) == ("0001TP_006690", "0001TP_008520")
    assert (dusk_score[0].name, dusk_score[-1].name) == ("0001TP_008550", "0001TP_010380")
    assert [len(s) for s in camvid_protocol(REAL_CAMVID, "day")] == [305, 171]
    image, train_ids = load_sample(dusk_score[0])
    assert image.shape == (360, 480, 3) and train_ids.shape == (360, 480)
    assert read_camvid_ids(dusk_score[0].label).max() <= CAMVID_IGNORE


def test_a_train_id_matrix_of_camvid_labels_gives_the_same_camvid_scores_exactly():
    """The replay scores masks against CamVid labels as train ids (19 x 19); collapsed to CamVid's
    classes, that matrix must equal scoring the same pixels on CamVid labels directly."""
    from iapc.labels import camvid_to_train_ids
    from iapc.metrics import (ConfusionMatrix, camvid_matrix, camvid_scores, scores_of_matrix,
                              update_camvid)

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 12, size=(40, 50)).astype(np.uint8)  # CamVid ids, 11 = void
    predictions = rng.integers(0, 19, size=(40, 50))
    direct = camvid_matrix()
    update_camvid(direct, predictions, labels)
    as_train_ids = ConfusionMatrix(19)
    as_train_ids.update(predictions, camvid_to_train_ids(labels))
    collapsed = scores_of_matrix(as_train_ids.mat, "camvid11")
    expected = camvid_scores(direct)
    assert collapsed.miou == expected.miou
    np.testing.assert_array_equal(collapsed.iou, expected.iou)

