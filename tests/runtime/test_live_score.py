"""Live mIoU of the inference process, scored off the loop's thread."""

import numpy as np

from iapc.runtime.live_score import LiveScore
from iapc.runtime.sources import Frame


def test_scores_every_labelled_frame_after_close():
    score = LiveScore(num_classes=3, backlog=1000)
    rng = np.random.default_rng(0)
    for index in range(50):
        mask = rng.integers(0, 3, (8, 16), dtype=np.uint8)
        label = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)  # labels at twice the size
        score(Frame(np.zeros((16, 32, 3), np.uint8), index, 0, label), mask, version=1)
    score(Frame(np.zeros((16, 32, 3), np.uint8), 50, 0, None), mask, version=1)  # unlabelled
    score.close()
    assert score.frames == 50 and score.skipped == 0
    assert score.miou() == 100.0


def test_a_wrong_mask_scores_zero_and_nothing_before_a_frame():
    score = LiveScore(num_classes=2)
    assert score.miou() is None
    label = np.zeros((4, 4), np.uint8)
    score(Frame(np.zeros((4, 4, 3), np.uint8), 0, 0, label), np.ones((4, 4), np.uint8), version=1)
    score.close()
    assert score.miou() == 0.0


def test_the_engine_in_service_is_compared_with_the_source_engine_on_the_same_frames(tmp_path):
    """A real ONNX Runtime source engine beside masks that equal the labels: the recent window
    reports both mIoUs and the gain, and the Prometheus gauges carry them."""
    import torch

    from iapc.adapt.models import build_model
    from iapc.export.onnx_export import export_onnx
    from iapc.export.runners import OnnxRuntimeRunner
    from iapc.runtime.metrics import RuntimeMetrics

    torch.manual_seed(0)
    onnx_path = export_onnx(build_model("tiny", num_classes=3).eval(), tmp_path / "source.onnx",
                            frame_size=(32, 16))
    metrics = RuntimeMetrics()
    score = LiveScore(num_classes=3, backlog=1000, source_every=0.0, metrics=metrics)
    score.compare_with(OnnxRuntimeRunner(onnx_path, intra_op_threads=1))
    rng = np.random.default_rng(1)
    for index in range(20):
        image = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)
        label = rng.integers(0, 3, (16, 32), dtype=np.uint8)
        score(Frame(image, index, 0, label), label.copy(), version=2, batch=image[None])
    score.close()
    recent = score.status()["miou_recent"]
    assert recent["frames"] == 20 and recent["serving"] == 100.0
    assert recent["source"] < 100.0 and recent["gain"] == recent["serving"] - recent["source"]
    gauge = lambda engine: metrics.registry.get_sample_value("iapc_live_miou", {"engine": engine})  # noqa: E731
    assert gauge("serving") == 100.0 and gauge("source") == recent["source"]
