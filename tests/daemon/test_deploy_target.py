"""The daemon deploys the engine the inference process will serve: the configured backend's
engine is built in the daemon, the parity gate and the health gate run on that engine, and the
store's version names its backend, precision and device. A disagreeing engine is rejected and the
state rolls back; a TensorRT-configured deployment gates the TensorRT engine (skipped without
TensorRT, with the reason)."""

from __future__ import annotations

import numpy as np
import pytest

from support import SIZE, diverse_model, disagreeing_fp16, tiny_daemon

from iapc.daemon.engine_health import score_engine
from iapc.daemon.health import HealthReport
from iapc.engines import targets as engines
from iapc.engines.targets import EngineTarget, engine_target, serving_runner
from iapc.export.parity import REDUCED_PRECISION_MIN_AGREEMENT, check_parity
from iapc.engines.runner_base import Runner
from iapc.engines.runner_tensorrt import tensorrt_available
from iapc.engines.store import EngineStore
from iapc.runtime.config import HealthConfig
from iapc.synth import sample_frames

TRT_OK, TRT_WHY = tensorrt_available()


@pytest.fixture()
def daemon_fp16(tmp_path):
    d, events = tiny_daemon(tmp_path, backend="onnxruntime", precision="fp16")
    yield d, events
    d.events.close()
    events.receiver.close()


def test_the_daemon_stores_the_engine_it_gated_with_its_target(daemon_fp16):
    d, events = daemon_fp16
    assert d.target == EngineTarget("onnxruntime", "fp16", d.target.device)
    assert d.min_agreement == REDUCED_PRECISION_MIN_AGREEMENT  # the stated fp16 bound
    assert d.export_version() == 1
    d.step()
    assert d.export_version() == 2
    version = EngineStore(d.store.root).current()
    manifest = version.manifest
    assert (manifest["backend"], manifest["precision"], manifest["device"]) == \
        ("onnxruntime", "fp16", d.target.device)
    assert manifest["parity"]["min_agreement"] == REDUCED_PRECISION_MIN_AGREEMENT
    # the health gate scored the engine itself on the held-out frames
    engine = manifest["health"]["engine"]
    assert engine["frames"] == 3 and engine["agreement"] >= REDUCED_PRECISION_MIN_AGREEMENT
    assert [e["type"] for e in events.all()] == ["version", "version"]
    # what the inference process serves is that stored file, and it agrees with the weights
    report = check_parity(serving_runner(version, d.target, threads=1), d.serving,
                          sample_frames(3, SIZE, seed=5), REDUCED_PRECISION_MIN_AGREEMENT)
    assert report.passed, report.message


def test_an_fp16_engine_that_disagrees_is_rejected_and_the_state_rolls_back(daemon_fp16,
                                                                            monkeypatch):
    d, events = daemon_fp16
    assert d.export_version() == 1
    d.step()
    monkeypatch.setattr(engines, "cast_weights_to_fp16", disagreeing_fp16)
    assert d.export_version() is None
    sent = events.all()
    rejected = next(e for e in sent if e["type"] == "rejected")
    assert rejected["gate"] == "parity" and "short by" in rejected["reason"]
    assert next(e for e in sent if e["type"] == "rollback")["to_step"] == 0
    assert [v.number for v in EngineStore(d.store.root).versions()] == [1]


class ConstantEngine(Runner):
    """An engine whose masks are all one class, whatever the weights say."""

    def __init__(self):
        super().__init__("constant")

    def activate_impl(self):
        pass

    def deactivate_impl(self):
        pass

    def infer_impl(self, frames):
        return {"mask": np.full(frames.shape[:3], 5, np.uint8)}


def test_the_health_gate_fails_an_engine_that_is_not_its_weights():
    frames = sample_frames(3, SIZE, seed=4)
    weights = HealthReport(True, [], {"largest_class_share": {"source": 0.4}})
    report = score_engine(weights, ConstantEngine(), diverse_model(), frames, HealthConfig(), 0.99)
    assert not report.passed
    assert report.figures["engine"]["largest_class_share"] == 1.0
    assert report.figures["engine"]["class"] == 5
    assert any(r.startswith("the engine's masks agree with PyTorch's on") for r in report.reasons)
    assert any(r.startswith("collapse in the engine: class 5") for r in report.reasons)


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not TRT_OK, reason=f"the TensorRT deployment needs tensorrt and a GPU: {TRT_WHY}")
def test_a_tensorrt_deployment_gates_and_stores_the_engine_it_serves(tmp_path):
    from iapc.engines.runner_tensorrt import TensorRTRunner

    d, events = tiny_daemon(tmp_path, backend="tensorrt")
    try:
        assert d.target == engine_target("tensorrt") and d.target.precision == "fp16"
        assert d.export_version() == 1
        d.step()
        assert d.export_version() == 2
        version = EngineStore(d.store.root).current()
        manifest = version.manifest
        assert version.engine_path is not None and "model.engine" in manifest["files"]
        assert (manifest["backend"], manifest["precision"], manifest["device"]) == \
            ("tensorrt", "fp16", d.target.device)
        assert manifest["parity"]["min_agreement"] == REDUCED_PRECISION_MIN_AGREEMENT
        assert manifest["parity"]["agreement"] >= REDUCED_PRECISION_MIN_AGREEMENT
        assert manifest["health"]["engine"]["agreement"] >= REDUCED_PRECISION_MIN_AGREEMENT
        served = serving_runner(version, d.target)
        assert isinstance(served, TensorRTRunner) and served.name == "tensorrt:model.engine"
        report = check_parity(served, d.serving, sample_frames(3, SIZE, seed=5),
                              REDUCED_PRECISION_MIN_AGREEMENT)
        assert report.passed, report.message
    finally:
        d.events.close()
        events.receiver.close()
