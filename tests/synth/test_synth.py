"""Synthetic driving domains: Cityscapes layout on disk, determinism, content, domain gaps,
temporal coherence, the live stream and the ``iapc synth`` command."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from iapc import synth
from iapc.cli import main as iapc_main
from iapc.data import find_cityscapes, load_sample, read_train_ids
from iapc.errors import UserError
from iapc.labels import NAME_TO_ID

SIZE = (256, 128)
TARGETS = [name for name in synth.DOMAINS if name != "source"]


def _scenes(domain: str, n: int, size=SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n independent annotated frames: images (n, H, W, 3), label ids (n, H, W)."""
    pairs = [synth.render_scene(np.random.default_rng([seed, i]), synth.DOMAINS[domain], size,
                                synth.ANNOTATED_FRAME / synth.SEQUENCE_FPS) for i in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@pytest.fixture(scope="module")
def source_scenes():
    return _scenes("source", 12)


@pytest.fixture(scope="module")
def written_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "night"
    synth.write_domain(root, "night", {"train": 3, "val": 1}, size=(128, 64), sequences=1, seed=3)
    return root


# --- Cityscapes layout --------------------------------------------------------------------------

def test_write_domain_uses_the_cityscapes_layout(written_root):
    city = synth.DOMAINS["night"].city
    images = sorted(p.relative_to(written_root).as_posix()
                    for p in (written_root / "leftImg8bit").rglob("*.png"))
    assert images == [f"leftImg8bit/train/{city}/{city}_{i:06d}_000019_leftImg8bit.png" for i in range(3)] \
        + [f"leftImg8bit/val/{city}/{city}_000000_000019_leftImg8bit.png"]
    labels = sorted((written_root / "gtFine").rglob("*_gtFine_labelIds.png"))
    colors = sorted((written_root / "gtFine").rglob("*_gtFine_color.png"))
    assert len(labels) == len(colors) == 4
    # the first scene of each split comes with its 30-frame snippet
    for split in ("train", "val"):
        frames = sorted((written_root / "leftImg8bit_sequence" / split / city).glob("*.png"))
        assert [f.name for f in frames] == [f"{city}_000000_{k:06d}_leftImg8bit.png" for k in range(30)]


def test_written_files_have_cityscapes_dtypes_and_valid_ids(written_root):
    valid_ids = set(NAME_TO_ID.values())
    for label_path in (written_root / "gtFine").rglob("*_labelIds.png"):
        label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        assert label.dtype == np.uint8 and label.shape == (64, 128)
        assert set(np.unique(label).tolist()) <= valid_ids
    image_path = next((written_root / "leftImg8bit").rglob("*.png"))
    image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8 and image.shape == (64, 128, 3)


def test_written_domain_reads_back_with_the_dataset_code(written_root):
    samples = find_cityscapes(written_root, "train")
    assert len(samples) == 3 and all(s.label is not None for s in samples)
    image, train_ids = load_sample(samples[0])
    assert image.shape == (64, 128, 3) and train_ids.shape == (64, 128)
    assert (train_ids != 255).mean() > 0.9  # almost every pixel is a train class

    sequence = find_cityscapes(written_root, "train", sequence=True)
    assert len(sequence) == 30
    labelled = [s for s in sequence if s.label is not None]
    assert [s.name for s in labelled] == [f"{synth.DOMAINS['night'].city}_000000_000019"]
    # frame 19 of the snippet is the annotated image itself
    snippet_frame = cv2.imread(str(sequence[19].image))
    annotated = cv2.imread(str(samples[0].image))
    assert np.array_equal(snippet_frame, annotated)


def test_label_every_labels_snippet_frames_around_the_annotated_one(tmp_path, written_root):
    synth.write_domain(tmp_path, "night", {"val": 1}, size=(128, 64), sequences=1, seed=3,
                       label_every=10)
    city = synth.DOMAINS["night"].city
    labelled = [s for s in find_cityscapes(tmp_path, "val", sequence=True) if s.label is not None]
    assert [s.name for s in labelled] == [f"{city}_000000_{k:06d}" for k in (9, 19, 29)]
    # the Cityscapes image list is unchanged: only frame 19 is an annotated image
    assert [s.name for s in find_cityscapes(tmp_path, "val")] == [f"{city}_000000_000019"]
    # each label is that frame's own (frames move): frame 29's differs from frame 19's
    labels = [read_train_ids(s.label) for s in labelled]
    assert not np.array_equal(labels[1], labels[2])
    same = Path("gtFine") / "val" / city / f"{city}_000000_000019_gtFine_labelIds.png"
    assert (tmp_path / same).read_bytes() == (written_root / same).read_bytes()


def test_an_annotated_scene_does_not_depend_on_writing_its_sequence(tmp_path, written_root):
    synth.write_domain(tmp_path, "night", {"train": 1}, size=(128, 64), sequences=0, seed=3)
    name = f"{synth.DOMAINS['night'].city}_000000_000019"
    for kind, suffix in (("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds")):
        path = Path(kind) / "train" / synth.DOMAINS["night"].city / f"{name}_{suffix}.png"
        assert (tmp_path / path).read_bytes() == (written_root / path).read_bytes()


# --- determinism --------------------------------------------------------------------------------

def test_same_seed_same_frames_and_different_seed_different_frames():
    style = synth.DOMAINS["rain"]  # rain and noise draw from the rng every frame
    a = synth.render_scene(np.random.default_rng(7), style, (128, 64), 0.5)
    b = synth.render_scene(np.random.default_rng(7), style, (128, 64), 0.5)
    c = synth.render_scene(np.random.default_rng(8), style, (128, 64), 0.5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_layout_renders_the_same_scene_at_any_resolution():
    style = synth.DOMAINS["source"]
    layout = synth.sample_layout(np.random.default_rng(4), style)
    _, small = synth.render_scene(np.random.default_rng(0), style, (128, 64), 0.3, layout)
    _, large = synth.render_scene(np.random.default_rng(0), style, (256, 128), 0.3, layout)
    shrunk = cv2.resize(large, (128, 64), interpolation=cv2.INTER_NEAREST)
    assert (shrunk == small).mean() > 0.85


# --- content ------------------------------------------------------------------------------------

@pytest.mark.parametrize("domain", list(synth.DOMAINS))
def test_every_domain_shows_the_main_classes(domain, source_scenes):
    _, labels = source_scenes if domain == "source" else _scenes(domain, 12)
    seen = set(np.unique(labels).tolist())
    for name in ("road", "sidewalk", "sky", "car", "building", "vegetation", "person", "pole"):
        assert NAME_TO_ID[name] in seen, f"{domain}: no {name} in 12 scenes"
    assert seen <= set(NAME_TO_ID.values())


def _fraction(labels: np.ndarray, name: str) -> float:
    return float((labels == NAME_TO_ID[name]).mean())


def _instances(domain: str, kinds: tuple[str, ...], n: int = 12) -> int:
    """How many objects of ``kinds`` n sampled scenes of ``domain`` contain."""
    layouts = [synth.sample_layout(np.random.default_rng([1, i]), synth.DOMAINS[domain])
               for i in range(n)]
    return sum(thing.kind in kinds for layout in layouts for thing in layout.things)


def test_class_frequencies_differ_between_domains_as_designed(source_scenes):
    _, source = source_scenes
    _, city = _scenes("city", 12)
    _, night = _scenes("night", 12)
    assert _fraction(city, "person") > 2 * _fraction(source, "person")  # busy sidewalks
    assert _fraction(city, "vegetation") > 1.2 * _fraction(source, "vegetation")  # greener
    assert _fraction(night, "car") < 0.75 * _fraction(source, "car")  # little traffic at night
    # rain: more trucks and buses, fewer pedestrians (counted in the scene, not in pixels,
    # since one near truck can fill half a frame)
    assert _instances("rain", ("truck", "bus")) > 1.5 * _instances("source", ("truck", "bus"))
    assert _instances("rain", ("person",)) < 0.6 * _instances("source", ("person",))


def _match_colour(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The best global affine colour transform of ``image`` towards ``reference`` (least
    squares over all pixels: a 3x3 matrix and an offset), applied; float32 (H, W, 3)."""
    x = image.reshape(-1, 3).astype(np.float64)
    x = np.hstack([x, np.ones((len(x), 1))])  # (N, 4)
    coefficients, *_ = np.linalg.lstsq(x, reference.reshape(-1, 3).astype(np.float64), rcond=None)
    return (x @ coefficients).reshape(reference.shape).astype(np.float32)


def _residual_after_colour_matching(style: synth.DomainStyle, n: int = 4) -> float:
    """Render the same source scenes in ``style``; mean |difference| to the source rendering
    after the best global colour transform: what a global colour change cannot explain."""
    source = synth.DOMAINS["source"]
    errors = []
    for i in range(n):
        layout = synth.sample_layout(np.random.default_rng([11, i]), source)
        reference, _ = synth.render_scene(np.random.default_rng(0), source, SIZE, 0.0, layout)
        other, _ = synth.render_scene(np.random.default_rng(0), style, SIZE, 0.0, layout)
        errors.append(np.abs(_match_colour(other, reference) - reference).mean())
    return float(np.mean(errors))


def _high_frequency_energy(images: np.ndarray) -> float:
    """Mean |Laplacian| of the grey images after normalising each to unit contrast."""
    values = []
    for image in images:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
        grey = (grey - grey.mean()) / (grey.std() + 1e-6)
        values.append(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean())
    return float(np.mean(values))


def test_targets_differ_from_source_in_more_than_global_colour():
    colour_only = replace(synth.DOMAINS["source"], gain=0.6, tint=(1.2, 1.0, 0.8), contrast=0.8,
                          saturation=0.7)
    floor = _residual_after_colour_matching(colour_only)
    assert floor < 3.0  # a global colour change is undone by matching
    for name in TARGETS:
        residual = _residual_after_colour_matching(synth.DOMAINS[name])
        assert residual > 5 * floor + 5.0, f"{name}: {residual:.1f} vs colour-only {floor:.1f}"


def _fine_noise(images: np.ndarray) -> float:
    """Mean |grey - 3x3 median| relative to the grey contrast: pixel-level noise and grain."""
    values = []
    for image in images:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        residual = np.abs(grey.astype(np.float32) - cv2.medianBlur(grey, 3))
        values.append(residual.mean() / (grey.std() + 1e-6))
    return float(np.mean(values))


def test_targets_change_texture_blur_and_noise_statistics(source_scenes):
    """Contrast-normalised fine-detail statistics move by at least 25% from the source: blur,
    fog and darkness remove detail (city, night, fog), rain streaks and noise add it (rain)."""
    source_images = source_scenes[0][:6]
    for name in TARGETS:
        images = _scenes(name, 6)[0]
        ratios = (_high_frequency_energy(images) / _high_frequency_energy(source_images),
                  _fine_noise(images) / _fine_noise(source_images))
        assert max(abs(np.log(r)) for r in ratios) > np.log(1.25), f"{name}: ratios {ratios}"


def test_fog_depends_on_depth():
    """Far pixels lose more contrast than near ones: not a global veil."""
    style, source = synth.DOMAINS["fog"], synth.DOMAINS["source"]
    layout = synth.sample_layout(np.random.default_rng(2), source)
    clear, label = synth.render_scene(np.random.default_rng(0), source, SIZE, 0.0, layout)
    foggy, _ = synth.render_scene(np.random.default_rng(0), style, SIZE, 0.0, layout)
    road = label == NAME_TO_ID["road"]
    v0 = int(layout.camera.horizon * SIZE[1])
    rows = np.arange(SIZE[1])[:, None].repeat(SIZE[0], 1)
    near, far = road & (rows > SIZE[1] - 12), road & (rows > v0) & (rows < v0 + 6)
    veil = np.array(style.fog_color, np.float32)
    distance = np.abs(foggy.astype(np.float32) - veil).sum(-1)  # how far from the fog colour
    assert distance[near].mean() > 2 * distance[far].mean()
    assert np.abs(clear.astype(np.float32) - veil).sum(-1)[far].mean() > distance[far].mean()


# --- sequences and streams ----------------------------------------------------------------------

def test_sequences_are_temporally_coherent():
    style = synth.DOMAINS["city"]
    frames = synth.render_sequence(np.random.default_rng(5), style, (128, 64), length=6)
    other, _ = synth.render_scene(np.random.default_rng(6), style, (128, 64))
    for (a, la), (b, lb) in itertools.pairwise(frames):
        assert (la == lb).mean() > 0.85  # the label map changes a little per frame
        step = np.abs(a.astype(np.float32) - b).mean()
        jump = np.abs(a.astype(np.float32) - other).mean()
        assert step < 0.6 * jump
    # the camera moves forward: the scene is not frozen
    assert (frames[0][1] != frames[-1][1]).mean() > 0.02


def test_stream_is_endless_deterministic_and_changes_scene_every_30_frames():
    first = list(itertools.islice(synth.stream("fog", (64, 32), seed=1), 32))
    again = list(itertools.islice(synth.stream("fog", (64, 32), seed=1), 3))
    assert all(img.shape == (32, 64, 3) and lab.shape == (32, 64) for img, lab in first)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again))
    within = (first[28][1] == first[29][1]).mean()
    across = (first[29][1] == first[30][1]).mean()
    assert within > across


# --- errors -------------------------------------------------------------------------------------

def test_bad_api_input_raises_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown synthetic domain 'snow'"):
        synth.get_domain("snow")
    with pytest.raises(UserError, match="too small"):
        synth.render_scene(np.random.default_rng(0), synth.DOMAINS["source"], (8, 4))
    with pytest.raises(UserError, match="zero or positive"):
        synth.write_domain(tmp_path, "source", {"train": -1})
    with pytest.raises(UserError, match="unknown synthetic domain"):
        next(synth.stream("snow"))


# --- the command line ---------------------------------------------------------------------------

def _iapc(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        iapc_main(argv)
    return exit_info.value.code


def test_cli_writes_each_domain_in_its_own_folder(tmp_path, capsys):
    code = _iapc(["synth", "--out", str(tmp_path), "--domains", "source", "fog", "--train", "2",
                  "--val", "1", "--size", "96x48", "--sequences", "1", "--seed", "2"])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fog", "source"]
    for domain in ("source", "fog"):
        samples = find_cityscapes(tmp_path / domain, "val")
        image, _ = load_sample(samples[0])
        assert image.shape == (48, 96, 3)
        assert len(find_cityscapes(tmp_path / domain, "train", sequence=True)) == 30
    config = json.loads((tmp_path / "fog" / "synth_config.json").read_text())
    assert config["seed"] == 2 and config["size"] == [96, 48]
    assert config["style"]["fog_density"] == synth.DOMAINS["fog"].fog_density
    assert "wrote source, fog" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--domains", "snow"], "unknown domain 'snow'"),
    (["--size", "256by128"], "'256by128' is not WIDTHxHEIGHT"),
    (["--size", "8x8"], "too small"),
    (["--train", "-2"], "zero or positive"),
])
def test_cli_bad_options_give_one_line_errors(tmp_path, capsys, argv, message):
    assert _iapc(["synth", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("iapc: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_unwritable_output_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert _iapc(["synth", "--out", str(blocker / "sub"), "--train", "1", "--val", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("iapc: error: cannot create output folder") and "\n" not in err


def test_sample_frames_are_structured_and_reproducible():
    """The frames the parity and health gates check engines on."""
    a, b = synth.sample_frames(2, (64, 32), seed=5), synth.sample_frames(2, (64, 32), seed=5)
    assert a.shape == (2, 32, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])
    # neighbouring pixels are mostly alike (regions), unlike uniform noise
    assert np.abs(np.diff(a[0].astype(int), axis=1)).mean() < 20
