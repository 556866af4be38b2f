"""ONNX export with pre- and post-processing inside the graph.

The exported graph takes what the camera delivers, uint8 (N, H, W, 3) BGR, and returns what the
consumers need, a uint8 (N, H, W) class-id mask (and optionally a uint8 confidence map). The
preprocessing is :func:`iapc.adapt.preprocessing.normalize` applied to
:func:`~iapc.adapt.preprocessing.camera_to_rgb`, imported from the one place it is defined, so
training, export and inference cannot drift.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from iapc.adapt.preprocessing import camera_to_rgb, normalize
from iapc.errors import UserError
from iapc.options import DEFAULT_INPUT_SIZE

INPUT_NAME = "frames"
MASK_NAME = "mask"
CONFIDENCE_NAME = "confidence"
METADATA_KEY = "iapc"  # metadata_props key holding the JSON description of the graph
# Opset 17 is the newest one the legacy exporter, ONNX Runtime and TensorRT 10 all handle well
# (Resize with align_corners, TopK, ArgMax and uint8 Cast are all covered).
DEFAULT_OPSET = 17


class SegmentationGraph(nn.Module):
    """Camera frame in, class-id mask out: ``preprocess -> model -> upsample -> argmax``.

    ``out_size`` = (H, W) of the mask; ``None`` means the frame's own size. With
    ``confidence=True`` forward also returns the importance ``1 - q2/q1`` of the top two softmax
    probabilities, scaled to uint8 0..255 (0 = a tie, 255 = certain).
    """

    def __init__(self, model: nn.Module, out_size: tuple[int, int] | None = None,
                 confidence: bool = False):
        super().__init__()
        self.model = model
        self.out_size = out_size
        self.confidence = confidence

    def forward(self, frames: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = normalize(camera_to_rgb(frames), self.model.norm)  # (N, 3, H, W) float32
        logits, _features = self.model(x)  # (N, K, H/os, W/os)
        size = self.out_size if self.out_size is not None else frames.shape[1:3]
        # align_corners=True, as the training losses upsample: (N, K, H, W)
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
        mask = logits.argmax(dim=1).to(torch.uint8)  # (N, H, W)
        if not self.confidence:
            return mask
        return mask, importance_uint8(logits)


def importance_uint8(logits: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) logits -> uint8 (N, H, W) ``round(255 * (1 - q2/q1))`` (the importance of docs/METHOD.md)."""
    top2 = logits.softmax(dim=1).topk(2, dim=1).values  # (N, 2, H, W), q1 >= q2
    importance = 1.0 - top2[:, 1] / top2[:, 0]  # (N, H, W) in [0, 1)
    return (importance * 255.0).round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class GraphMetadata:
    """What a consumer of the ONNX file needs to know; stored in its ``metadata_props``."""

    model: str
    num_classes: int
    frame_width: int
    frame_height: int
    batch: int | None  # None: dynamic batch
    input_name: str
    output_names: tuple[str, ...]
    preprocessing: dict[str, Any]  # the model's NormSpec as a dict
    opset: int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "GraphMetadata":
        data = json.loads(text)
        data["output_names"] = tuple(data["output_names"])
        return cls(**data)


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _legacy_export(graph: SegmentationGraph, example: torch.Tensor, path: Path, opset: int,
                   output_names: list[str], dynamic_batch: bool) -> None:
    # The TorchScript exporter (dynamo=False) is used on purpose: it exports the tiny model in
    # ~0.2 s against ~2.5 s for the torch.export-based one (and DeepLabV2-ResNet101 in seconds
    # instead of a minute), which is what bounds "new weights -> engine ready" during adaptation.
    # It also names initializers deterministically for a given architecture, which TensorRT's
    # ONNX refitter relies on to match weights between exports.
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *output_names]} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # legacy-exporter notice
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # constant mean/std
        torch.onnx.export(graph, (example,), str(path), input_names=[INPUT_NAME],
                          output_names=output_names, opset_version=opset, dynamic_axes=axes,
                          do_constant_folding=True, dynamo=False)


def _simplify_if_available(onnx_model):
    """Run onnxslim (or onnxsim) when installed; neither is required."""
    if importlib.util.find_spec("onnxslim") is not None:
        import onnxslim
        return onnxslim.slim(onnx_model)
    if importlib.util.find_spec("onnxsim") is not None:
        import onnxsim
        simplified, ok = onnxsim.simplify(onnx_model)
        return simplified if ok else onnx_model
    return onnx_model


def _attach_metadata(onnx_model, metadata: GraphMetadata) -> None:
    del onnx_model.metadata_props[:]
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()


def export_onnx(model: nn.Module, path: str | os.PathLike,
                frame_size: tuple[int, int] = DEFAULT_INPUT_SIZE, batch: int = 1,
                dynamic_batch: bool = False, confidence: bool = False,
                opset: int = DEFAULT_OPSET, model_name: str | None = None,
                simplify: bool = True) -> Path:
    """Export ``model`` wrapped in :class:`SegmentationGraph` to ``path``; returns the path.

    ``frame_size`` is (W, H) of the camera frames; the graph's input is uint8 (batch, H, W, 3).
    The file is checked with ``onnx.checker`` and carries :class:`GraphMetadata`.
    """
    import onnx

    width, height = frame_size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    output_names = [MASK_NAME, CONFIDENCE_NAME] if confidence else [MASK_NAME]
    graph = SegmentationGraph(model, out_size=None, confidence=confidence)
    example = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8,
                            device=_model_device(model))
    was_training = model.training
    graph.eval()  # BN running stats; folded into the convolutions by the exporter
    try:
        with torch.no_grad():
            _legacy_export(graph, example, path, opset, output_names, dynamic_batch)
    finally:
        model.train(was_training)

    onnx_model = onnx.load(str(path))
    if simplify:
        onnx_model = _simplify_if_available(onnx_model)
    metadata = GraphMetadata(
        model=model_name or type(model).__name__, num_classes=int(model.num_classes),
        frame_width=width, frame_height=height, batch=None if dynamic_batch else batch,
        input_name=INPUT_NAME, output_names=tuple(output_names),
        preprocessing=dataclasses.asdict(model.norm), opset=opset)
    _attach_metadata(onnx_model, metadata)
    onnx.save(onnx_model, str(path))
    # checking the file, not the proto, spares one serialisation (seconds for ResNet-101)
    onnx.checker.check_model(str(path))
    return path


def read_metadata(path: str | os.PathLike) -> GraphMetadata:
    """The :class:`GraphMetadata` stored in an exported ONNX file."""
    import onnx

    onnx_model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in onnx_model.metadata_props}
    if METADATA_KEY not in props:
        raise UserError(f"{path} has no '{METADATA_KEY}' metadata: export it with 'iapc export'")
    return GraphMetadata.from_json(props[METADATA_KEY])
