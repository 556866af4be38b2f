"""The source models that ship with the package: their manifests, hashes and mIoU."""

from __future__ import annotations

import pytest

from iapc.shipped import sha256_of, shipped_checkpoint, shipped_manifest, weights_path


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_a_shipped_model_matches_its_manifest_and_scores_what_it_says(tmp_path, name):
    from iapc.adapt.checkpoint import load_model
    from iapc.adapt.embedded import EMBEDDED_SIZE
    from iapc.adapt.evaluate import evaluate_model, labelled_samples
    from iapc.synth import write_domain

    manifest = shipped_manifest(name)
    assert manifest is not None, f"iapc/weights/source_{name}.json is missing"
    for key in ("command", "data", "seed", "sha256", "source_val_miou", "input_size"):
        assert key in manifest, key
    path = shipped_checkpoint(name)
    assert path == weights_path(name) and sha256_of(path) == manifest["sha256"]
    model, meta = load_model(path)
    assert meta["input_size"] == tuple(manifest["input_size"]) == EMBEDDED_SIZE
    assert meta["model"] == manifest["model"] == name
    # the first frames of the source domain's val split, as the manifest's check scored them
    frames = manifest["check"]["frames"]
    write_domain(tmp_path, "source", {"val": frames}, size=EMBEDDED_SIZE, seed=manifest["data"]["seed"])
    miou = evaluate_model(model.eval(), labelled_samples(tmp_path, "val"), size=EMBEDDED_SIZE,
                          batch_size=8)["miou"]
    assert 100 * miou == pytest.approx(manifest["check"]["miou"], abs=0.5)


def test_a_damaged_shipped_file_is_refused_with_one_line(tmp_path, monkeypatch):
    import iapc.shipped as shipped
    from iapc.errors import UserError

    (tmp_path / "source_tiny.pt").write_bytes(b"not the shipped weights")
    (tmp_path / "source_tiny.json").write_text('{"sha256": "0"}')
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(UserError, match="reinstall"):
        shipped.shipped_checkpoint("tiny")
