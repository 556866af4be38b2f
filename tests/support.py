"""Helpers shared by tests (on sys.path through pytest's ``pythonpath = tests``).

Starting and watching a runtime is the replay tooling's job; the tests use its functions.
"""

import subprocess
import time

from iapc.engines.targets import cast_weights_to_fp16 as honest_fp16_cast  # before any monkeypatch
from iapc.replay.launch import free_loopback_port as free_port
from iapc.replay.launch import runtime_executable
from iapc.replay.record import Collector
from iapc.runtime.client import MaskSubscriber

__all__ = ["Collector", "Events", "FRAMES", "SIZE", "diverse_model", "cityscapes_eval_args", "collect", "disagreeing_fp16",
           "free_port", "runtime_args", "runtime_command", "start_runtime", "tiny_daemon"]

FRAMES = 240  # frames of the end-to-end runs
SIZE = (128, 64)  # (width, height) of the daemon's and the engines' frames in unit tests
SHARPEN = 30.0


def runtime_command(*args: str) -> list[str]:
    return [*runtime_executable(), *args]


def start_runtime(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(runtime_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            **kwargs)


def runtime_args(run_dir, port, checkpoint, frames=FRAMES):
    config = run_dir.parent / "runtime.yaml"
    # Small export interval so that several versions are deployed within the test; the daemon
    # keeps normal priority and no duty-cycle limit so the test does not depend on how busy
    # the machine is.
    config.write_text("adaptation:\n  nice: 0\n  duty_cycle: 1.0\n  export_every_steps: 3\n"
                      "  batch_size: 2\n")
    return ["--config", str(config), "--synthetic", "fog", "--fps", "20", "--max-frames", str(frames),
            "--checkpoint", str(checkpoint), "--model", "tiny", "--input-size", "128x64",
            "--run-dir", str(run_dir), "--publish", f"tcp://127.0.0.1:{port}",
            "--quiet"]


def collect(port, args, timeout=100.0):
    """Start the runtime with ``args``; every mask header it publishes until it exits."""
    headers = []
    # subscribed before the runtime starts, so that not even the first mask is missed
    with MaskSubscriber(f"tcp://127.0.0.1:{port}", newest_wins=False) as sub:
        process = start_runtime(*args)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                header, mask = sub.receive(timeout=0.5)
            except TimeoutError:
                if process.poll() is not None:
                    break
                continue
            assert mask.shape == (64, 128) and mask.max() < 19
            headers.append(header)
    return headers, process


class Events:
    """Receives the daemon's events on the ipc socket the inference process would bind."""

    def __init__(self, run_dir):
        from iapc.contracts.handoff import EventReceiver
        from iapc.contracts.run_folder import EVENTS_SOCKET, ipc_address

        self.receiver = EventReceiver(ipc_address(run_dir, EVENTS_SOCKET))

    def all(self, timeout_ms=2000):
        found = self.receiver.poll(timeout_ms)
        while True:
            more = self.receiver.poll(100)
            if not more:
                return found
            found += more


def cityscapes_eval_args(tmp_path):
    """cityscapesscripts' pixel-level evaluation module and quiet arguments for generated data."""
    import copy

    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_eval

    args = copy.copy(cs_eval.args)
    args.evalInstLevelScore = False  # generated data has no instanceIds files
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    args.bold = args.nocol = ""
    args.exportFile = str(tmp_path / "cs_result.json")
    return cs_eval, args


def diverse_model(seed: int = 0):
    """A tiny model whose predictions spread over many classes (random init predicts one class:
    its logits are nearly equal, so the bias decides; sharpened weights let features decide)."""
    import torch

    from iapc.adapt.models import build_model
    from iapc.adapt.preprocessing import camera_to_rgb, normalize
    from iapc.synth import sample_frames

    torch.manual_seed(seed)
    model = build_model("tiny")
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batch_norms:
        bn.momentum = None  # running statistics of these frames, as a trained model would have
    frames = torch.from_numpy(sample_frames(8, SIZE, seed=seed + 10))
    with torch.no_grad():
        model.train()(normalize(camera_to_rgb(frames), model.norm))
        for conv in model.classifier:
            conv.weight.mul_(SHARPEN)
            conv.bias.zero_()
    for bn in batch_norms:
        bn.momentum = 0.1
    return model.eval()


def tiny_daemon(tmp_path, **settings):
    """An adaptation daemon on :func:`diverse_model` at SIZE (run folder ``tmp_path/run``, batches
    of 2, ``settings`` for RuntimeConfig) that has kept 12 frames, and the Events of its run
    folder. The caller closes ``daemon.events`` and ``events.receiver``."""
    from iapc.adapt.checkpoint import save_checkpoint
    from iapc.contracts.handoff import EventSender
    from iapc.contracts.run_folder import EVENTS_SOCKET, ipc_address
    from iapc.daemon.process import AdaptationDaemon
    from iapc.runtime.config import RuntimeConfig
    from iapc.synth import sample_frames

    checkpoint = tmp_path / "source.pt"
    save_checkpoint(checkpoint, "tiny", diverse_model())
    cfg = RuntimeConfig(run_dir=str(tmp_path / "run"), input_size=SIZE, **settings)
    cfg.adaptation.batch_size = 2
    (tmp_path / "run").mkdir()
    events = Events(tmp_path / "run")
    daemon = AdaptationDaemon(cfg, str(checkpoint),
                              EventSender(ipc_address(tmp_path / "run", EVENTS_SOCKET)))
    for image in sample_frames(12, SIZE, seed=2):
        daemon.keep(image)
    return daemon, events


def disagreeing_fp16(src, dst):
    """A stand-in fp16 conversion gone wrong, whose engine disagrees with the weights (as an
    fp16 overflow would): the honest cast, then every per-channel vector (biases,
    normalisation) shifted far. Patched in for ``iapc.engines.targets.cast_weights_to_fp16``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    honest_fp16_cast(src, dst)
    model = onnx.load(str(dst))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT16 and len(init.dims) == 1:
            values = numpy_helper.to_array(init).astype(np.float32)
            shifted = values + rng.normal(0, 3.0, values.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(shifted.astype(np.float16), init.name))
    onnx.save(model, str(dst))
    return dst
