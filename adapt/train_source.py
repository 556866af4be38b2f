"""Supervised training of a source model, and the ``iapc train-source`` command.

Cross-entropy (ignore 255) on a labelled Cityscapes- or GTA5-layout root. Each sample is resized
to ``size``, randomly rescaled, cropped (padding with ignore where the scaled image is smaller)
and flipped; photometric jitter is optional. The checkpoint holds the resolved :class:`TrainConfig`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from iapc.adapt.evaluate import parse_size, resolve_device
from iapc.labels import IGNORE_INDEX
from iapc.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from iapc.data import Sample


POLY_POWER = 0.9  # the learning rate decays as (1 - step/iters)^0.9 (no warm-up)


@dataclass
class TrainConfig:
    """Everything that decides a source-training run; saved in the checkpoint."""

    model: str = "tiny"
    num_classes: int = 19
    iters: int = 1000
    batch: int = 8
    size: tuple[int, int] = (256, 128)  # (W, H) every image is resized to first
    crop: tuple[int, int] | None = None  # (W, H) random crop, like every size; None: the resized size
    scale: tuple[float, float] = (0.75, 1.5)  # random rescale range
    flip: bool = True
    jitter: float = 0.0  # photometric jitter strength (brightness/contrast/saturation); 0: off
    optimizer: str = "adamw"  # "adamw" or "sgd"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    classifier_lr_mult: float = 10.0  # SGD only: the classifier learns 10x faster (as DeepLab)
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    log_every: int = 50

    def crop_hw(self) -> tuple[int, int]:
        """(H, W) of the random crop, in the order arrays index."""
        width, height = self.crop if self.crop else self.size
        return (height, width)

    def validate(self) -> None:
        if self.iters < 1 or self.batch < 1:
            raise UserError("--iters and --batch must be at least 1")
        if self.optimizer not in ("adamw", "sgd"):
            raise UserError(f"optimizer {self.optimizer!r}: choose adamw or sgd")
        if self.lr <= 0:
            raise UserError("--lr must be positive")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise UserError(f"scale range {self.scale} must satisfy 0 < low <= high")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def random_scale_crop_flip(image: np.ndarray, label: np.ndarray, crop_hw: tuple[int, int],
                           scale: tuple[float, float], flip: bool,
                           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Joint augmentation of BGR (H, W, 3) and train ids (H, W) -> crops of ``crop_hw``.

    Images resize bilinearly, labels by nearest neighbour; padding is 0 for the image and
    ignore (255) for the label, so padded pixels never train.

    Not :func:`iapc.adapt.augment.random_rescale_crop` (IAPC's views), on purpose: this one
    draws from a per-sample numpy generator, resizes with OpenCV (no antialiasing), pads before
    it picks the window, flips, and makes no un-rescaled ``x0``; the shipped weights were
    trained with exactly these draws and pixels.
    """
    import cv2

    factor = rng.uniform(*scale)
    height, width = label.shape
    new_w, new_h = max(1, round(width * factor)), max(1, round(height * factor))
    image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    crop_h, crop_w = crop_hw
    pad_h, pad_w = max(0, crop_h - new_h), max(0, crop_w - new_w)
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
        label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    top = int(rng.integers(0, label.shape[0] - crop_h + 1))
    left = int(rng.integers(0, label.shape[1] - crop_w + 1))
    image = image[top:top + crop_h, left:left + crop_w]
    label = label[top:top + crop_h, left:left + crop_w]
    if flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def photometric_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and saturation of a uint8 BGR image (factors 1 +- strength)."""
    x = image.astype(np.float32)
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    x = x * brightness
    x = (x - x.mean()) * contrast + x.mean()
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * saturation + gray
    return np.clip(x, 0, 255).astype(np.uint8)


class AugmentedDataset:
    """``torch.utils.data.Dataset`` of augmented (BGR (h, w, 3), train ids (h, w)) crops.

    Each item's generator is seeded from torch's RNG, which the DataLoader seeds per worker from
    its own generator, so a run is reproducible for a given seed and worker count.
    """

    def __init__(self, samples: Sequence["Sample"], cfg: TrainConfig):
        self.samples = list(samples)
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from iapc.data import load_sample

        rng = np.random.default_rng(int(torch.randint(2**62, ())))
        image, label = load_sample(self.samples[index], self.cfg.size)
        image, label = random_scale_crop_flip(image, label, self.cfg.crop_hw(), self.cfg.scale,
                                              self.cfg.flip, rng)
        if self.cfg.jitter > 0:
            image = photometric_jitter(image, self.cfg.jitter, rng)
        return image, label


def make_optimizer(model: "nn.Module", cfg: TrainConfig) -> "torch.optim.Optimizer":
    """AdamW over every parameter, or IAPC's SGD (:func:`~iapc.adapt.iapc_step.sgd_optimizer`:
    Nesterov, the classifier at ``classifier_lr_mult`` times the backbone's lr)."""
    import torch

    from iapc.adapt.iapc_step import sgd_optimizer

    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return sgd_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay, nesterov=True,
                         classifier_lr_mult=cfg.classifier_lr_mult)


def _batches_forever(loader):
    while True:
        yield from loader


def supervised_loss(model: "nn.Module", images_bgr: "torch.Tensor", labels: "torch.Tensor") -> "torch.Tensor":
    """Mean cross-entropy of a batch: uint8 (N, h, w, 3) BGR, uint8 (N, h, w) train ids."""
    import torch.nn.functional as F

    from iapc.adapt.preprocessing import camera_to_rgb, normalize

    logits, _ = model(normalize(camera_to_rgb(images_bgr), model.norm))  # (N, K, h/8, w/8)
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=True)
    return F.cross_entropy(logits, labels.long(), ignore_index=IGNORE_INDEX)


def train_source(model_name: str, samples: Sequence["Sample"], cfg: TrainConfig | None = None,
                 out: str | Path | None = None, progress: bool = True) -> "nn.Module":
    """Train ``model_name`` from scratch on labelled ``samples``; save to ``out`` if given."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from iapc.adapt.checkpoint import save_checkpoint
    from iapc.adapt.iapc_step import poly_decay
    from iapc.adapt.models import build_model

    cfg = cfg or TrainConfig()
    cfg.model = model_name
    cfg.validate()
    labelled = [s for s in samples if s.label is not None]
    if not labelled:
        raise UserError("no labelled samples to train on: give a root with label maps")
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model = build_model(model_name, cfg.num_classes).to(device).train()
    optimizer = make_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    loader = DataLoader(AugmentedDataset(labelled, cfg), batch_size=cfg.batch, shuffle=True,
                        drop_last=len(labelled) >= cfg.batch, num_workers=cfg.workers,
                        generator=torch.Generator().manual_seed(cfg.seed))
    batches = _batches_forever(loader)
    bar = tqdm(range(cfg.iters), desc=f"train {model_name}", unit="it", disable=not progress)
    started, running = time.perf_counter(), None
    for step in bar:
        images, labels = next(batches)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * poly_decay(step, cfg.iters, POLY_POWER)
        loss = supervised_loss(model, images.to(device), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % cfg.log_every == 0 or step == cfg.iters - 1:
            bar.set_postfix(loss=f"{running:.3f}")
    model.eval()
    if out is not None:
        save_checkpoint(out, model_name, model.cpu(), cfg.to_dict(), step=cfg.iters,
                        input_size=list(cfg.size), train_seconds=time.perf_counter() - started, final_loss=float(running))
        model.to(device)
    return model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--root", required=True, help="labelled Cityscapes- or GTA5-layout root")
    parser.add_argument("--split", default="train")
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--out", required=True, help="checkpoint file to write")
    parser.add_argument("--iters", type=int, default=defaults.iters)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--input-size", "--size", dest="size", type=parse_size,
                        default=defaults.size, help="WxH resize first")
    parser.add_argument("--crop", type=parse_size, default=None, help="WxH random crop (default: --input-size)")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default=defaults.optimizer)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--jitter", type=float, default=defaults.jitter,
                        help="photometric jitter strength, e.g. 0.3 (0: off)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--eval-split", default=None,
                        help="evaluate on this labelled split of --root at the end (e.g. val)")


def run(args: argparse.Namespace) -> int:
    from iapc.data import find_samples
    from iapc.adapt.evaluate import labelled_samples, score_samples
    from iapc.metrics import format_table

    cfg = TrainConfig(model=args.model, iters=args.iters, batch=args.batch, size=args.size,
                      crop=args.crop, optimizer=args.optimizer, lr=args.lr, jitter=args.jitter,
                      seed=args.seed, workers=args.workers, device=args.device)
    model = train_source(args.model, find_samples(args.root, args.split), cfg, out=args.out)
    print(f"wrote {args.out}")
    if args.eval_split:
        scores = score_samples(model, labelled_samples(args.root, args.eval_split), size=cfg.size,
                               device=cfg.device)
        print(format_table(scores))
    return 0
