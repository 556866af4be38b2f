"""mIoU of a segmentation model on a labelled root, and the ``iapc evaluate`` command.

Protocol (as in the paper): each image is resized to the evaluation input size (1024x512 by
default), normalised with the model's :class:`~iapc.adapt.preprocessing.NormSpec`, and its logits
are upsampled bilinearly (``align_corners=True``) to the label's own resolution before the argmax.

On CamVid samples two figures come out: the Cityscapes classes against the CamVid labels as
representative train ids (as for any root), and CamVid's own 11 classes with the predictions
mapped through :data:`iapc.labels.TRAIN_ID_TO_CAMVID` (``camvid11``; void ignored).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from iapc.errors import UserError
from iapc.options import DEFAULT_INPUT_SIZE
from iapc.options import parse_size  # noqa: F401  (re-exported for the adapt commands)

if TYPE_CHECKING:  # torch stays out of ``iapc --help``
    import torch
    from torch import nn

    from iapc.data import Sample
    from iapc.metrics import SegmentationScores


def resolve_device(name: str) -> "torch.device":
    """``"auto"`` picks CUDA when present, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but no CUDA GPU is visible: use --device cpu")
    return torch.device(name)


def logits_to_train_ids(logits: "torch.Tensor", label_size: tuple[int, int]) -> "torch.Tensor":
    """(N, K, h, w) logits -> int64 (N, H, W) train ids, upsampled bilinearly
    (``align_corners=True``) to ``label_size`` = (H, W) before the argmax."""
    import torch.nn.functional as F

    return F.interpolate(logits, size=tuple(label_size), mode="bilinear", align_corners=True).argmax(1)


def predict_train_ids(model: "nn.Module", images_rgb: "torch.Tensor",
                      label_size: tuple[int, int]) -> "torch.Tensor":
    """uint8 (N, 3, h, w) RGB -> int64 (N, H, W) train ids at ``label_size`` = (H, W)."""
    from iapc.adapt.preprocessing import normalize

    logits, _ = model(normalize(images_rgb, model.norm))  # (N, K, h/os, w/os)
    return logits_to_train_ids(logits, label_size)


def _load_eval_item(sample: "Sample", size: tuple[int, int]):
    """(image BGR resized to ``size``, train ids at native resolution, CamVid classes or None)."""
    import cv2

    from iapc.data import read_camvid_ids, read_image_bgr, read_train_ids
    from iapc.labels import camvid_to_train_ids

    if sample.label is None:
        raise UserError(f"{sample.image} has no label file: evaluate on a labelled split "
                        "(gtFine/<split>/*_gtFine_labelIds.png, CamVid <split>annot/)")
    image = read_image_bgr(sample.image)
    if (image.shape[1], image.shape[0]) != tuple(size):
        image = cv2.resize(image, tuple(size), interpolation=cv2.INTER_LINEAR)
    if sample.label_set == "camvid":
        camvid = read_camvid_ids(sample.label)
        return image, camvid_to_train_ids(camvid), camvid
    return image, read_train_ids(sample.label, sample.label_set), None


def score_samples(model: "nn.Module", samples: Sequence["Sample"],
                  size: tuple[int, int] = DEFAULT_INPUT_SIZE, batch_size: int = 2,
                  classes: str = "19", device: "str | torch.device" = "cpu",
                  progress: bool = False) -> "SegmentationScores":
    """Confusion-matrix scores of ``model`` on labelled ``samples`` (model left in eval mode);
    on CamVid samples with CamVid's 11-class scores as ``camvid11``."""
    import dataclasses

    import numpy as np
    import torch

    from iapc.metrics import ConfusionMatrix, camvid_matrix, camvid_scores, update_camvid
    from iapc.adapt.preprocessing import camera_to_rgb, normalize

    if not samples:
        raise UserError("nothing to evaluate: the sample list is empty")
    if batch_size < 1:
        raise UserError("batch size must be at least 1")
    dev = resolve_device(device) if isinstance(device, str) else device
    model.eval().to(dev)
    metric = ConfusionMatrix(model.num_classes)
    camvid = camvid_matrix() if any(s.label_set == "camvid" for s in samples) else None
    chunks = range(0, len(samples), batch_size)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="evaluate", unit="batch")
    with torch.inference_mode():
        for start in chunks:
            items = [_load_eval_item(s, size) for s in samples[start:start + batch_size]]
            rgb = camera_to_rgb(torch.from_numpy(np.stack([p[0] for p in items])).to(dev))  # (N, 3, h, w)
            logits, _ = model(normalize(rgb, model.norm))  # (N, K, h/os, w/os), one batch
            for i, (_, label, camvid_label) in enumerate(items):  # sizes may differ: one by one
                pred = logits_to_train_ids(logits[i:i + 1], label.shape)[0].cpu()
                metric.update(pred, label)
                if camvid_label is not None:
                    update_camvid(camvid, pred, camvid_label)
    scores = metric.compute(classes)
    return scores if camvid is None else dataclasses.replace(scores, camvid11=camvid_scores(camvid))


def evaluate_model(model: "nn.Module", samples: Sequence["Sample"],
                   size: tuple[int, int] = DEFAULT_INPUT_SIZE, batch_size: int = 2,
                   classes: str = "19", device: "str | torch.device" = "cpu",
                   progress: bool = False) -> dict[str, Any]:
    """:func:`score_samples` as a dict: ``{"miou", "accuracy", "classes", "iou": {name: IoU or
    None}, "images"}`` (on CamVid also ``"camvid11"``: the same keys for CamVid's 11 classes);
    IoU values are fractions in [0, 1]."""
    scores = score_samples(model, samples, size, batch_size, classes, device, progress)
    return {**scores.to_dict(), "images": len(samples)}


def labelled_samples(root: str | Path, split: str = "val",
                     sequences: Sequence[str] | None = None) -> list["Sample"]:
    """Every labelled image of ``root``/``split`` (of CamVid ``sequences`` if given); a
    :class:`UserError` if there is none."""
    from iapc.data import find_samples

    samples = [s for s in find_samples(root, split, sequences) if s.label is not None]
    if not samples:
        raise UserError(f"{root} has no labelled images in split {split!r}: "
                        "pass a labelled --root/--split")
    return samples


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="model file (iapc or released format)")
    parser.add_argument("--model", default=None, help="architecture, if the file does not record it")
    parser.add_argument("--root", required=True,
                        help="labelled Cityscapes-, CamVid- or GTA5-layout root (CamVid: also "
                             "ROOT:SEQ[,SEQ...] for some sequences)")
    parser.add_argument("--split", default="val",
                        help="split (default val; CamVid: train, val, test, a+b or all)")
    parser.add_argument("--sequence", default=None, metavar="SEQ[,SEQ...]",
                        help="CamVid roots: only these sequences, e.g. Seq05VD or 0006R0,0016E5")
    parser.add_argument("--input-size", "--size", dest="size", default=None, type=parse_size,
                        help="input WxH (default: the size the checkpoint was trained at, else 1024x512)")
    parser.add_argument("--classes", default="19", choices=("19", "16", "13"),
                        help="mIoU over 19 Cityscapes classes, or SYNTHIA's 16 / 13")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--json", default=None, help="also write the scores to this JSON file")


def run(args: argparse.Namespace) -> int:
    from iapc.adapt.checkpoint import load_model
    from iapc.options import input_size_for
    from iapc.metrics import format_table

    model, meta = load_model(args.checkpoint, args.model)
    size = input_size_for(meta, args.size, "--input-size")
    sequences = [q.strip() for q in args.sequence.split(",") if q.strip()] if args.sequence else None
    samples = labelled_samples(args.root, args.split, sequences)
    scores = score_samples(model, samples, size=size, batch_size=args.batch,
                           classes=args.classes, device=args.device, progress=True)
    if scores.camvid11 is not None:
        print("Cityscapes classes (CamVid labels as their representative train ids):")
    print(format_table(scores))
    if scores.camvid11 is not None:
        print("\nCamVid's 11 classes (Cityscapes predictions mapped onto them, void ignored):")
        print(format_table(scores.camvid11))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**scores.to_dict(), "images": len(samples)}, indent=2))
    return 0
