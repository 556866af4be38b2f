"""Offline (paper-protocol) IAPC adaptation over an unlabelled image set: ``iapc adapt``.

The source checkpoint is copied into the three networks (source ``S``, memory ``M``, target
``T``); the target images are resized to ``--input-size`` and drawn in shuffled batches; each batch
takes one :func:`~iapc.adapt.iapc_step.adaptation_step`. Pseudo-labels are either made once before
the run from ``S`` with multi-scale + flip averaging and cached as PNGs (``offline``, the
released code) or computed on the fly from ``S`` (``online``, the streaming variant).

Checkpoints (``OUT/checkpoint_<step>.pth``) are ordinary ``iapc/1`` model files of the target, so
``iapc evaluate`` and ``iapc export`` read them, and also hold the memory network, optimiser,
:class:`~iapc.adapt.iapc_step.AdaptState` and both configs: ``--resume`` continues from the latest.

Data parallel: under ``torchrun --nproc-per-node N`` the same command wraps ``T`` in
DistributedDataParallel (gloo on CPU, nccl on GPU) and shards the images with a
DistributedSampler. ``S`` and ``M`` stay local replicas (they take no gradients; ``M`` follows
its rank's copy of ``T``, which DDP keeps identical). Only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from iapc.adapt.evaluate import parse_size
from iapc.errors import UserError
from iapc.options import DEFAULT_INPUT_SIZE

if TYPE_CHECKING:
    import torch
    from torch import nn

    from iapc.data import Sample
    from iapc.adapt.iapc_step import AdaptConfig

CHECKPOINT_GLOB = "checkpoint_*.pth"
PSEUDO_LABEL_DIR = "pseudo_labels"
PSEUDO_LABEL_META = "meta.json"


@dataclass
class RunConfig:
    """How the offline run is driven (the method's own settings live in ``AdaptConfig``)."""

    iters: int = 9000
    batch: int = 6
    size: tuple[int, int] = DEFAULT_INPUT_SIZE  # (W, H) every target image is resized to
    pseudo_labels: str = "offline"  # "offline" (cached multi-scale + flip) or "online"
    pseudo_label_scales: tuple[float, ...] = (0.75, 1.0, 1.25)
    pseudo_label_flip: bool = True
    eval_every: int = 0  # 0: evaluate only at the end
    save_every: int = 0  # 0: save only at the end
    out: str | None = None
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    progress: bool = True

    def validate(self) -> None:
        if self.iters < 1 or self.batch < 1:
            raise UserError("--iters and --batch must be at least 1")
        if self.pseudo_labels not in ("offline", "online"):
            raise UserError(f"--pseudo-labels {self.pseudo_labels!r}: choose offline or online")
        if self.eval_every < 0 or self.save_every < 0:
            raise UserError("--eval-every and --save-every must be 0 (off) or positive")
        if self.resume and not self.out:
            raise UserError("--resume needs --out, the folder holding the checkpoints")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: Any = None  # torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> DistContext:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else a single process.

    GPU runs use nccl with one GPU per local rank; CPU runs use gloo.
    """
    import torch
    import torch.distributed as dist

    from iapc.adapt.evaluate import resolve_device

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size <= 1:
        return DistContext(0, 1, device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), device)


def _barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def wrap_target(target: "nn.Module", ctx: DistContext) -> "nn.Module":
    """``T`` itself, or ``T`` in DDP when several processes run."""
    if not ctx.distributed:
        return target
    from torch.nn.parallel import DistributedDataParallel

    class TargetDDP(DistributedDataParallel):
        """DDP that also answers the wrapped model's interface (``norm``, ``num_classes``,
        ``parameter_groups``...), which the adaptation step reads from ``T``."""

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.module, name)

    # broadcast_buffers: rank 0's BN running statistics are copied to all ranks at each forward.
    return TargetDDP(target, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                     broadcast_buffers=True)


def sync_buffers(model: "nn.Module", ctx: DistContext) -> None:
    """Copy rank 0's buffers (BN running statistics) to every rank, so all ranks hold one model
    (DDP only broadcasts them at the start of a forward, the last step's update differs)."""
    if ctx.distributed:
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


# ----------------------------------------------------------------------------- data


class TargetImages:
    """``torch.utils.data.Dataset``: (uint8 (3, H, W) RGB, uint8 (H, W) pseudo-label or an
    empty tensor when pseudo-labels are computed online) per target image."""

    def __init__(self, samples: Sequence["Sample"], size: tuple[int, int], label_dir: Path | None):
        self.samples = list(samples)
        self.size = size
        self.label_dir = label_dir

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        import torch

        image = _read_rgb(self.samples[index], self.size)
        if self.label_dir is None:
            return image, torch.empty(0, dtype=torch.uint8)
        return image, _read_pseudo_label(self.label_dir, self.samples[index])


CHOICE_FRAMES = 16  # target frames the source share is chosen on


def _choice_frames(samples: list["Sample"], size: tuple[int, int]) -> "torch.Tensor":
    """uint8 (N, 3, H, W) RGB: up to :data:`CHOICE_FRAMES` samples evenly spread over ``samples``."""
    import torch

    step = max(1, len(samples) // CHOICE_FRAMES)
    return torch.stack([_read_rgb(s, size) for s in samples[::step][:CHOICE_FRAMES]])


def _read_rgb(sample: "Sample", size: tuple[int, int]) -> "torch.Tensor":
    """uint8 (3, H, W) RGB of ``sample`` resized to ``size`` = (W, H)."""
    import cv2
    import torch

    from iapc.data import read_image_bgr
    from iapc.adapt.preprocessing import camera_to_rgb

    image = read_image_bgr(sample.image)
    if (image.shape[1], image.shape[0]) != tuple(size):
        image = cv2.resize(image, tuple(size), interpolation=cv2.INTER_LINEAR)
    return camera_to_rgb(torch.from_numpy(image)[None])[0]


def _pseudo_label_file(label_dir: Path, sample: "Sample") -> Path:
    return label_dir / f"{sample.name}.png"


def _read_pseudo_label(label_dir: Path, sample: "Sample") -> "torch.Tensor":
    import cv2
    import torch

    path = _pseudo_label_file(label_dir, sample)
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise UserError(f"pseudo-label {path} is missing or unreadable: delete {label_dir} to "
                        "regenerate the cache")
    return torch.from_numpy(label)


def cache_pseudo_labels(source: "nn.Module", samples: Sequence["Sample"], label_dir: Path,
                        cfg: RunConfig, ctx: DistContext, source_id: str) -> None:
    """Write one multi-scale + flip pseudo-label PNG per sample into ``label_dir`` (train ids).

    The cache is reused when its ``meta.json`` matches (same source, size, scales, flip and
    samples); every rank writes its own share of the files.
    """
    import cv2
    import torch

    from iapc.adapt.iapc_step import generate_pseudo_labels

    meta = {"source": source_id, "size": list(cfg.size), "scales": list(cfg.pseudo_label_scales),
            "flip": cfg.pseudo_label_flip, "samples": len(samples)}
    meta_file = label_dir / PSEUDO_LABEL_META
    if meta_file.is_file() and json.loads(meta_file.read_text()) == meta:
        return
    label_dir.mkdir(parents=True, exist_ok=True)
    mine = list(samples)[ctx.rank::ctx.world_size]
    chunks = range(0, len(mine), cfg.batch)
    if cfg.progress and ctx.is_main:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="pseudo-labels", unit="batch")
    for start in chunks:
        part = mine[start:start + cfg.batch]
        images = torch.stack([_read_rgb(s, cfg.size) for s in part])  # (n, 3, H, W)
        labels = generate_pseudo_labels(source, images.to(ctx.device), cfg.pseudo_label_scales,
                                        cfg.pseudo_label_flip).cpu().numpy()  # (n, H, W) uint8
        for sample, label in zip(part, labels):
            cv2.imwrite(str(_pseudo_label_file(label_dir, sample)), label)
    _barrier(ctx)
    if ctx.is_main:
        meta_file.write_text(json.dumps(meta))
    _barrier(ctx)


def batches_from_step(dataset, cfg: RunConfig, ctx: DistContext, step: int):
    """Shuffled batches, epoch after epoch (sharded across ranks under DDP), starting where a
    run that has taken ``step`` steps stood, so a resumed run sees the batches it would have."""
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=len(dataset) >= ctx.world_size)
    loader = DataLoader(dataset, batch_size=cfg.batch, sampler=sampler, num_workers=cfg.workers,
                        drop_last=len(sampler) >= cfg.batch)
    epoch, skip = divmod(step, len(loader))
    while True:
        sampler.set_epoch(epoch)
        for index, batch in enumerate(loader):
            if index >= skip:  # only the first, resumed epoch skips
                yield batch
        epoch, skip = epoch + 1, 0


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_file(out: str | Path, step: int) -> Path:
    return Path(out) / f"checkpoint_{step:07d}.pth"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``out``, or None."""
    files = sorted(Path(out).glob(CHECKPOINT_GLOB))
    return files[-1] if files else None


def save_adapt_checkpoint(adapter: Any, model_name: str, out: str | Path, config: dict[str, Any],
                          history: list[dict[str, Any]], size: tuple[int, int]) -> Path:
    """A model file of the adapted network that also carries what ``--resume`` needs."""
    from iapc.adapt.checkpoint import save_checkpoint

    path = checkpoint_file(out, adapter.step_count)
    save_checkpoint(path, model_name, adapter.deployable(), config, step=adapter.step_count,
                    input_size=list(size), method=adapter.name, history=history,
                    **adapter.state_dict())
    return path


def restore_adapt_checkpoint(adapter: Any, path: Path) -> list[dict[str, Any]]:
    """Load the adapted network and the method's state from ``path``; returns the history."""
    from iapc.adapt.checkpoint import read_checkpoint_file

    data = read_checkpoint_file(path)
    if data.get("method", "iapc") != adapter.name or "step" not in data:
        raise UserError(f"{path} is not an 'iapc adapt --method {adapter.name}' checkpoint: drop "
                        "--resume or point --out at a run of the same method")
    adapter.deployable().load_state_dict(data["state_dict"])
    adapter.load_state_dict(data)
    return list(data.get("history", []))


# ----------------------------------------------------------------------------- the run


def build_adapter(source_model: "nn.Module", adapt_cfg: "AdaptConfig", ctx: DistContext):
    """The configured method's :class:`~iapc.adapt.adapters.Adapter` on ``ctx.device``; an IAPC
    target is wrapped in DDP when several processes run."""
    from iapc.adapt.adapters import make_adapter

    adapter = make_adapter(adapt_cfg.method, source_model.to(ctx.device), adapt_cfg)
    if adapt_cfg.method == "iapc":
        adapter.trained = wrap_target(adapter.target, ctx)
    elif ctx.distributed:
        raise UserError(f"--method {adapt_cfg.method} runs in one process: drop torchrun")
    return adapter


def _evaluate_adapted(adapter, eval_samples, cfg: RunConfig, ctx: DistContext,
                      classes: str) -> float | None:
    """mIoU of the adapted network on the labelled split (rank 0 only), its modes restored."""
    if not eval_samples:
        return None
    miou = None
    if ctx.is_main:
        from iapc.adapt.evaluate import score_samples
        from iapc.adapt.adapters import deployed

        with deployed(adapter.deployable()) as network:
            miou = score_samples(network, eval_samples, size=cfg.size, batch_size=cfg.batch,
                                 classes=classes, device=ctx.device).miou
    _barrier(ctx)
    return miou


def adapt_offline(source_model: "nn.Module", model_name: str, samples: Sequence["Sample"],
                  adapt_cfg: "AdaptConfig", cfg: RunConfig,
                  eval_samples: Sequence["Sample"] | None = None, classes: str = "19",
                  source_id: str = "") -> dict[str, Any]:
    """Adapt ``source_model`` on ``samples`` for ``cfg.iters`` steps with ``adapt_cfg.method``.

    Returns ``{"steps", "miou" (None without eval_samples), "history", "checkpoint",
    "seconds", "skipped", "target"}``; ``target`` is the adapted model (on ``cfg.device``).
    """
    import torch

    cfg.validate()
    if not samples:
        raise UserError("no target images to adapt on")
    ctx = init_distributed(cfg.device)
    if ctx.distributed and not cfg.out:
        raise UserError("a multi-process run needs --out: the ranks share the pseudo-label cache "
                        "and rank 0 writes the checkpoints there")
    torch.manual_seed(cfg.seed)  # identical initial state on every rank
    adapt_cfg = adapt_cfg.fitted_to(*cfg.size).resolved()
    adapter = build_adapter(source_model, adapt_cfg, ctx)
    config = {"adapt": adapt_cfg.to_dict(), "run": cfg.to_dict(), "source": source_id}
    history: list[dict[str, Any]] = []
    if cfg.resume and latest_checkpoint(cfg.out) is not None:
        history = restore_adapt_checkpoint(adapter, latest_checkpoint(cfg.out))

    label_dir = None
    if cfg.pseudo_labels == "offline" and adapt_cfg.method == "iapc":
        label_dir = Path(cfg.out) / PSEUDO_LABEL_DIR if cfg.out else _temporary_label_dir()
        cache_pseudo_labels(adapter.source, samples, label_dir, cfg, ctx, source_id)
    dataset = TargetImages(samples, cfg.size, label_dir)
    batches = batches_from_step(dataset, cfg, ctx, adapter.step_count)
    generator = torch.Generator()

    started, skipped, last = time.perf_counter(), 0, {}
    bar = _progress(adapter.step_count, cfg, ctx)
    while adapter.step_count < cfg.iters:
        images, labels = next(batches)
        # Seeded from (seed, step, rank): crops differ per rank, and a resumed run draws the
        # same augmentations as an uninterrupted one.
        generator.manual_seed((cfg.seed * 1_000_003 + adapter.step_count) * 1024 + ctx.rank)
        last = adapter.step(images.to(ctx.device),
                            pseudo_label=labels.to(ctx.device) if label_dir else None,
                            generator=generator)
        if adapter.skipped(last):
            skipped += 1
            if skipped > 10:
                raise UserError("more than 10 steps had a non-finite loss: lower --lr")
            continue
        step = adapter.step_count
        bar.update(1)
        if "total" in last:
            bar.set_postfix(loss=f"{last['total']:.3f}")
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.iters:
            history.append(_record(step, last, _evaluate_adapted(adapter, eval_samples, cfg, ctx, classes)))
        if cfg.out and cfg.save_every and step % cfg.save_every == 0 and step < cfg.iters:
            _save(adapter, model_name, cfg, ctx, config, history)
    bar.close()

    # the label-free choice of the statistics' source share (methods that make one), on frames
    # of the target set spread over it: the labels are never read
    adapter.choose_source_share(_choice_frames(samples, cfg.size).to(ctx.device))
    sync_buffers(adapter.deployable(), ctx)
    miou = _evaluate_adapted(adapter, eval_samples, cfg, ctx, classes)
    history.append(_record(adapter.step_count, last, miou))
    checkpoint = _save(adapter, model_name, cfg, ctx, config, history) if cfg.out else None
    if cfg.out and ctx.is_main:
        (Path(cfg.out) / "history.json").write_text(json.dumps(history, indent=2))
    if label_dir is not None and not cfg.out:
        _remove_tree(label_dir)
    return {"steps": adapter.step_count, "miou": miou, "history": history,
            "checkpoint": checkpoint, "seconds": time.perf_counter() - started,
            "skipped": skipped, "target": adapter.deployable(), "rank": ctx.rank,
            "source_share": adapter.cfg.source_statistics_weight,
            "world_size": ctx.world_size}


def _record(step: int, losses: dict[str, Any], miou: float | None) -> dict[str, Any]:
    return {"step": step, "miou": miou,
            **{k: v for k, v in losses.items() if k in ("ia", "im", "ps", "pe", "total", "lr")}}


def _save(adapter, model_name: str, cfg: RunConfig, ctx: DistContext, config,
          history) -> Path | None:
    path = None
    if ctx.is_main:
        path = save_adapt_checkpoint(adapter, model_name, cfg.out, config, history, cfg.size)
    _barrier(ctx)
    return path


def _progress(initial: int, cfg: RunConfig, ctx: DistContext):
    from tqdm import tqdm

    return tqdm(total=cfg.iters, initial=initial, desc="adapt", unit="it",
                disable=not (cfg.progress and ctx.is_main))


def _temporary_label_dir() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="iapc-pseudo-labels-"))


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from iapc.method_config import AdaptConfig
    from iapc.settings import add_flags

    defaults = RunConfig()
    parser.add_argument("--checkpoint", required=True, help="source model file")
    parser.add_argument("--model", default=None, help="architecture, if the file does not record it")
    parser.add_argument("--root", required=True, help="Cityscapes- or GTA5-layout root of target images")
    parser.add_argument("--split", default="train", help="split adapted on (labels unused)")
    parser.add_argument("--eval-split", default="val", help="labelled split evaluated on ('' to skip)")
    parser.add_argument("--classes", default="19", choices=("19", "16", "13"))
    parser.add_argument("--iters", type=int, default=defaults.iters)
    parser.add_argument("--batch", type=int, default=defaults.batch, help="images per process")
    parser.add_argument("--input-size", "--size", dest="size", type=parse_size, default=None,
                        help="WIDTHxHEIGHT resize (default: the checkpoint's training size, else 1024x512)")
    parser.add_argument("--pseudo-labels", choices=("offline", "online"), default=defaults.pseudo_labels)
    parser.add_argument("--out", default=None, help="folder for checkpoints, pseudo-labels, history")
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0)
    add_flags(parser, AdaptConfig, "method__", "adaptation method (docs/METHOD.md)")


def adapt_config_from_args(args: argparse.Namespace) -> "AdaptConfig":
    from iapc.method_config import AdaptConfig
    from iapc.settings import apply_flags

    cfg = apply_flags(args, AdaptConfig(), "method__")
    cfg.check()
    return cfg


def run(args: argparse.Namespace) -> int:
    from iapc.adapt.checkpoint import load_model
    from iapc.options import input_size_for
    from iapc.data import find_samples
    from iapc.adapt.evaluate import labelled_samples

    adapt_cfg = adapt_config_from_args(args)
    source_model, meta = load_model(args.checkpoint, args.model)
    cfg = RunConfig(iters=args.iters, batch=args.batch, size=input_size_for(meta, args.size, "--input-size"),
                    pseudo_labels=args.pseudo_labels, eval_every=args.eval_every,
                    save_every=args.save_every, out=args.out, resume=args.resume,
                    seed=adapt_cfg.seed, device=args.device, workers=args.workers)
    samples = find_samples(args.root, args.split)
    eval_samples = labelled_samples(args.root, args.eval_split) if args.eval_split else None
    result = adapt_offline(source_model, meta["model"], samples, adapt_cfg, cfg, eval_samples,
                           args.classes, source_id=str(Path(args.checkpoint).resolve()))
    if result["rank"] == 0:
        if result["miou"] is not None:
            print(f"mIoU after {result['steps']} steps: {100 * result['miou']:.2f}")
        if result["checkpoint"]:
            print(f"wrote {result['checkpoint']}")
    _dump_rank_state(result)
    _finish_distributed()
    return 0


def _dump_rank_state(result: dict[str, Any]) -> None:
    """``IAPC_DUMP_RANK_STATE=DIR``: every rank saves its target's state dict there (used to check
    that data-parallel ranks end with identical weights)."""
    folder = os.environ.get("IAPC_DUMP_RANK_STATE")
    if folder:
        import torch

        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save(result["target"].state_dict(), Path(folder) / f"rank{result['rank']}.pt")


def _finish_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """``python -m iapc.adapt.offline`` = ``iapc adapt`` (handy as ``torchrun -m``)."""
    from iapc.errors import run_cli

    parser = argparse.ArgumentParser(prog="iapc adapt", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_cli("iapc adapt", lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
