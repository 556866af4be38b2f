"""A store built for one engine target (backend, precision, device) and opened with another is
refused before any process starts, in one line that says what to do, as a store of another
input size is; the inference process itself never serves such a version."""

from __future__ import annotations

import pytest

from iapc.errors import UserError
from iapc.engines.targets import EngineTarget, engine_target
from iapc.engines.manifest import INPUT_SIZE_KEY
from iapc.engines.store import EngineStore
from iapc.runtime.cli import build_parser, check_store_fits, config_from_args


def _store(tmp_path, **manifest):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"stand-in")
    store = EngineStore(tmp_path / "store")
    store.publish(onnx, manifest_extra={INPUT_SIZE_KEY: [128, 64], **manifest})
    return store


def _config(tmp_path, *flags):
    cfg = config_from_args(build_parser().parse_args(
        ["--store", str(tmp_path / "store"), "--input-size", "128x64", *flags]))
    return cfg


def test_a_store_of_another_precision_is_refused_in_one_line(tmp_path):
    here = engine_target("onnxruntime")
    _store(tmp_path, **EngineTarget("onnxruntime", "fp16", here.device).manifest_fields())
    with pytest.raises(UserError) as refused:
        check_store_fits(_config(tmp_path, "--backend", "onnxruntime"))
    line = str(refused.value)
    assert "\n" not in line
    assert f"serves v000001, built for onnxruntime fp16 on {here.device}" in line
    assert "--backend onnxruntime --precision fp16 to serve it" in line and "--store" in line
    check_store_fits(_config(tmp_path, "--backend", "onnxruntime", "--precision", "fp16"))


def test_a_store_built_for_tensorrt_is_refused_by_onnx_runtime(tmp_path):
    _store(tmp_path, backend="tensorrt", precision="fp16", device="NVIDIA Orin sm_87, TensorRT 10.3.0")
    with pytest.raises(UserError, match="built for tensorrt fp16 on NVIDIA Orin sm_87, TensorRT "
                                        "10.3.0, this runtime serves onnxruntime fp32"):
        check_store_fits(_config(tmp_path, "--backend", "onnxruntime"))


def test_a_store_for_another_device_names_only_a_new_store(tmp_path):
    here = engine_target("onnxruntime")
    other = "cuda" if here.device == "cpu" else "cpu"
    _store(tmp_path, **EngineTarget("onnxruntime", "fp32", other).manifest_fields())
    with pytest.raises(UserError) as refused:
        check_store_fits(_config(tmp_path, "--backend", "onnxruntime"))
    assert "--backend" not in str(refused.value).split(": pass ", 1)[1]


def test_a_plain_onnx_store_still_serves_on_onnx_runtime(tmp_path):
    _store(tmp_path)  # published by hand or by an older release: no target
    check_store_fits(_config(tmp_path, "--backend", "onnxruntime"))


def test_the_live_comparison_leaves_out_a_source_engine_of_another_target(tmp_path):
    from iapc.engines.targets import serving_runner
    from iapc.runtime.inference import source_runner

    store = _store(tmp_path, step=0, backend="tensorrt", precision="fp16", device="another GPU")
    here = EngineTarget("onnxruntime", "fp32", "cpu")
    assert source_runner(store, lambda v: serving_runner(v, here)) is None
    plain = EngineStore(tmp_path / "plain")
    plain.publish(store.current().onnx_path, manifest_extra={"step": 0})
    assert source_runner(plain, lambda v: serving_runner(v, here)) is not None
