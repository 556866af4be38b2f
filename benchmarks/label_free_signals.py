"""What label-free signals hold beyond BatchNorm statistics: each one turned into the best
classifier it can give, next to BN-adapt and two label oracles, on the same target images.

The question behind it: the oracle (supervised fine-tuning on target labels) is 8-13 mIoU above
BN-adapt, but no self-training setting of IAPC adds to BN-adapt. Is there information in the
label-free signals that a better loss could extract? Per domain and seed, starting from the
BN-adapted source model (statistics: plain average over the 96 training images):

- ``BN-adapt``: the reference;
- ``BN + flip/scale ensemble``: softmax averaged over scales 0.75/1/1.25 and flips (a teacher that
  good is what distilling an ensemble could reach);
- ``BN + source statistics 10%``: running statistics mixed 90/10 with the source's;
- ``BN + per-image statistics 50%``: each frame's own statistics averaged with the domain's;
- ``BN + true target prior``: logits shifted by log(true target class frequencies / predicted
  ones), an upper bound for any class-prior (label-shift) correction;
- ``nearest class centroid``: features classified by cosine similarity to soft centroids of the
  predictions (the clustering SHOT-style pseudo-labels rely on);
- ``self-training, all pixels`` / ``confidence > 0.7`` / ``class-balanced 50%``: fine-tuning all
  weights (statistics frozen) on the BN model's fixed pseudo-labels, AdamW 150 steps, lr 3e-4;
- ``oracle, classifier only`` / ``oracle, all weights``: the same fine-tuning on the true labels.

    OMP_NUM_THREADS=1 python benchmarks/label_free_signals.py --checkpoint iapc/weights/source_tiny.pt \\
        --data bench-out/methods/data --domains night,fog --seeds 1

``--data`` is the domain folder of ``bench_methods.py`` (instances are written there if missing).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from iapc.adapt.baselines import bn_adapt
from iapc.adapt.checkpoint import load_model
from iapc.adapt.evaluate import labelled_samples
from iapc.adapt.losses import IGNORE_INDEX
from iapc.adapt.iapc_step import batch_norm_layers, ensemble_probabilities
from iapc.adapt.preprocessing import camera_to_rgb, normalize
from iapc.data import load_sample
from iapc.metrics import ConfusionMatrix

STEPS, BATCH, LR = 150, 4, 3e-4


def load_split(root: Path, split: str, size) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, H, W) RGB frames and long (N, H, W) train-id labels of a labelled split."""
    pairs = [load_sample(s, size) for s in labelled_samples(root, split)]
    frames = camera_to_rgb(torch.from_numpy(np.stack([p[0] for p in pairs])))
    return frames, torch.from_numpy(np.stack([p[1] for p in pairs])).long()


@torch.no_grad()
def predict(model, frames, chunk=16) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax (N, K, H, W) and features (N, C, h, w) of one plain forward, in eval mode."""
    model.eval()
    probs, feats = [], []
    for start in range(0, len(frames), chunk):
        x = normalize(frames[start:start + chunk], model.norm)  # (n, 3, H, W)
        logits, feat = model(x)  # (n, K, h, w), (n, C, h, w)
        probs.append(upsampled(logits, x.shape[-2:]).softmax(1))
        feats.append(feat)
    return torch.cat(probs), torch.cat(feats)


def predict_ensemble(model, frames, chunk=16) -> torch.Tensor:
    """Softmax (N, K, H, W) averaged over scales 0.75/1/1.25 and flips, as the offline
    pseudo-labels of IAPC (:func:`~iapc.adapt.iapc_step.ensemble_probabilities`)."""
    model.eval()
    return torch.cat([ensemble_probabilities(model, frames[start:start + chunk])
                      for start in range(0, len(frames), chunk)])


def upsampled(maps: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=True)


def miou(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """mIoU (19 classes) of the argmax of ``scores`` (N, K, H, W) against ``labels`` (N, H, W)."""
    metric = ConfusionMatrix(scores.shape[1])
    for i in range(len(labels)):
        metric.update(scores[i].argmax(0), labels[i])
    return metric.compute("19").miou


def class_frequencies(labels: torch.Tensor, classes: int) -> torch.Tensor:
    counts = torch.bincount(labels[labels != IGNORE_INDEX], minlength=classes).double()
    return counts / counts.sum()


def fine_tuned(model, frames, labels, params: Callable = lambda m: m.parameters()):
    """``model`` after STEPS of AdamW cross-entropy on (frames, labels), statistics frozen."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(params(model), lr=LR, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    for step in range(STEPS):
        picks = rng.choice(len(frames), BATCH, replace=False)
        for group in optimizer.param_groups:
            group["lr"] = LR * (1 - step / STEPS) ** 0.9
        model.eval()  # BatchNorm keeps the BN-adapted statistics
        logits, _ = model(normalize(frames[picks], model.norm))
        loss = F.cross_entropy(upsampled(logits, labels.shape[-2:]), labels[picks],
                               ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


def statistics_mixed(adapted, source, source_weight: float):
    """``adapted`` with each BatchNorm's statistics mixed with the source's (as a mixture)."""
    mixed = copy.deepcopy(adapted)
    for bn, t, s in zip(batch_norm_layers(mixed), batch_norm_layers(adapted), batch_norm_layers(source)):
        a = source_weight
        bn.running_mean.copy_((1 - a) * t.running_mean + a * s.running_mean)
        bn.running_var.copy_((1 - a) * t.running_var + a * s.running_var
                             + a * (1 - a) * (t.running_mean - s.running_mean) ** 2)
    return mixed


def per_image_statistics(adapted, frames, weight: float) -> torch.Tensor:
    """Softmax of each frame with statistics ``weight`` of its own, ``1 - weight`` the domain's."""
    probs = []
    for i in range(len(frames)):
        model = copy.deepcopy(adapted)
        for bn in batch_norm_layers(model):
            bn.momentum = weight
        model.train()
        with torch.no_grad():
            model(normalize(frames[i:i + 1], model.norm))
        probs.append(predict(model, frames[i:i + 1])[0])
    return torch.cat(probs)


def centroid_scores(train_feats, train_probs, val_feats, temperature=0.1) -> torch.Tensor:
    """Cosine similarity of ``val_feats`` (N, C, h, w) to the soft class centroids of the
    training features weighted by the predictions (K, C)."""
    flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])  # noqa: E731
    probs = F.interpolate(train_probs, size=train_feats.shape[-2:], mode="bilinear",
                          align_corners=True)
    weights, feats = flat(probs), flat(train_feats)  # (P, K), (P, C)
    centroids = F.normalize(weights.t() @ feats / (weights.sum(0)[:, None] + 1e-8), dim=1)
    return torch.einsum("nchw,kc->nkhw", F.normalize(val_feats, dim=1), centroids) / temperature


def class_balanced(labels, confidence, keep: float) -> torch.Tensor:
    """Per predicted class, only its ``keep`` most confident pixels (CBST's thresholds)."""
    out = torch.full_like(labels, IGNORE_INDEX)
    for k in labels.unique().tolist():
        mask = labels == k
        values = confidence[mask]
        values = values[torch.randperm(len(values))[:200_000]]  # quantile needs a bounded input
        out[mask & (confidence >= torch.quantile(values, 1 - keep))] = k
    return out


def run_instance(source, root: Path, size) -> dict[str, float]:
    train_x, train_y = load_split(root, "train", size)
    val_x, val_y = load_split(root, "val", size)
    adapted = bn_adapt(copy.deepcopy(source), [train_x[i:i + 8] for i in range(0, len(train_x), 8)])
    val_p, val_f = predict(adapted, val_x)
    train_p, train_f = predict(adapted, train_x)
    confidence, pseudo = train_p.max(1)
    prior_shift = (class_frequencies(train_y, train_p.shape[1])
                   / train_p.mean((0, 2, 3)).double()).float()[None, :, None, None]
    scores = {
        "BN-adapt": miou(val_p, val_y),
        "BN + flip/scale ensemble": miou(predict_ensemble(adapted, val_x), val_y),
        "BN + source statistics 10%": miou(predict(statistics_mixed(adapted, source, 0.1), val_x)[0], val_y),
        "BN + per-image statistics 50%": miou(per_image_statistics(adapted, val_x, 0.5), val_y),
        "BN + true target prior": miou(val_p * prior_shift, val_y),
        "nearest class centroid": miou(upsampled(centroid_scores(train_f, train_p, val_f),
                                                 val_y.shape[-2:]), val_y),
    }
    pseudo_labels = {
        "self-training, all pixels": pseudo,
        "self-training, confidence > 0.7": torch.where(confidence > 0.7, pseudo, IGNORE_INDEX),
        "self-training, class-balanced 50%": class_balanced(pseudo, confidence, 0.5),
        "oracle, all weights": train_y,
    }
    for name, labels in pseudo_labels.items():
        scores[name] = miou(predict(fine_tuned(adapted, train_x, labels), val_x)[0], val_y)
    classifier = fine_tuned(adapted, train_x, train_y, params=lambda m: m.classifier.parameters())
    scores["oracle, classifier only"] = miou(predict(classifier, val_x)[0], val_y)
    return scores


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="bench_methods.py's domain folder")
    p.add_argument("--domains", default="night,fog")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--train-images", type=int, default=96)
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument("--out", default=None, help="write results.json here")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from bench_methods import domain_instance  # the same domain instances (run as a script)

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    source, meta = load_model(args.checkpoint)
    args.size = tuple(meta["input_size"] or (256, 128))
    runs: dict[str, list[dict[str, float]]] = {}
    for domain in [d for d in args.domains.split(",") if d]:
        for seed in range(args.seeds):
            scores = run_instance(source, domain_instance(Path(args.data), domain, seed, args),
                                  args.size)
            runs.setdefault(domain, []).append(scores)
            print(f"{domain}, seed {seed}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in scores.items()),
                  flush=True)
    names = list(next(iter(runs.values()))[0])
    print("\n| signal | " + " | ".join(runs) + " | mean - BN-adapt |")
    print("|---|" + "---|" * (len(runs) + 1))
    for name in names:
        means = [statistics.fmean(r[name] for r in rows) for rows in runs.values()]
        gain = statistics.fmean(r[name] - r["BN-adapt"] for rows in runs.values() for r in rows)
        print(f"| {name} | " + " | ".join(f"{100 * m:.1f}" for m in means) + f" | {100 * gain:+.1f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
