"""Stochastic restore (CoTTA) against long-stream drift: the same IAPC stream with restore
probability 0 and p, side by side.

Reports, every ``--report-every`` steps, how far the target's weights have moved from the source
(relative L2 distance) and the health figures of the target on held-out frames (JS divergence of
class histograms vs the source model, agreement with the memory network, mean entropy).

    .venv/bin/python benchmarks/restore_drift.py --steps 300 --p 0.01
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from iapc import synth
from iapc.adapt.checkpoint import load_model
from iapc.adapt.iapc_step import AdaptConfig, AdaptState, adaptation_step, make_networks, make_optimizer
from iapc.adapt.models import build_model
from iapc.adapt.preprocessing import camera_to_rgb
from iapc.runtime.config import HealthConfig
from iapc.adapt.adapters import stochastic_restore
from iapc.daemon.health import check_health


@torch.no_grad()
def weight_distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """||a - b|| / ||b|| over all parameters."""
    diff = sum(float((x - y).pow(2).sum()) for x, y in zip(a.parameters(), b.parameters()))
    norm = sum(float(y.pow(2).sum()) for y in b.parameters())
    return (diff / norm) ** 0.5


def run(model: torch.nn.Module, frames: np.ndarray, holdout: np.ndarray, steps: int, p: float,
        report_every: int, seed: int) -> list[dict]:
    cfg = AdaptConfig(preset="paper", lr=1e-3, warmup_iters=20, crop=(128, 64),
                      schedule="constant", seed=seed)
    source, memory, target = make_networks(model)
    optimizer = make_optimizer(target, cfg)
    state = AdaptState.new(model.num_classes)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(1, steps + 1):
        picks = rng.choice(len(frames), size=2, replace=False)
        batch = camera_to_rgb(torch.from_numpy(frames[picks]))
        adaptation_step(source, memory, target, batch, optimizer, state, cfg, generator=generator)
        if p > 0:
            stochastic_restore(target, source, p, generator)
        if step % report_every == 0:
            health = check_health(target, source, source, memory, holdout, HealthConfig())
            rows.append({"step": step, "distance": weight_distance(target, source),
                         "js_vs_source": health.figures.get("js_vs_source"),
                         "memory_agreement": health.figures.get("memory_agreement"),
                         "entropy": health.figures.get("entropy", {}).get("candidate")})
            target.train()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--p", type=float, default=0.01)
    parser.add_argument("--report-every", type=int, default=50)
    parser.add_argument("--checkpoint", help="a tiny source checkpoint (default: random init)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = (load_model(args.checkpoint, "tiny")[0] if args.checkpoint
             else build_model("tiny"))
    stream = synth.stream("fog", (128, 64), args.seed)
    images = np.stack([next(stream)[0] for _ in range(96)])  # (96, 64, 128, 3) BGR
    frames, holdout = images[:80], images[80:]  # train on 80, judge on 16 never trained on
    plain = run(model, frames, holdout, args.steps, 0.0, args.report_every, args.seed)
    restored = run(model, frames, holdout, args.steps, args.p, args.report_every, args.seed)
    print(f"{'step':>5} | {'p=0 distance':>12} {'JS/src':>7} {'mem agr':>7} | "
          f"{'p=' + str(args.p) + ' distance':>14} {'JS/src':>7} {'mem agr':>7} | distance ratio")
    for a, b in zip(plain, restored):
        print(f"{a['step']:5d} | {a['distance']:12.4f} {a['js_vs_source']:7.4f} "
              f"{a['memory_agreement']:7.3f} | {b['distance']:14.4f} {b['js_vs_source']:7.4f} "
              f"{b['memory_agreement']:7.3f} | {b['distance'] / max(a['distance'], 1e-12):.2f}")


if __name__ == "__main__":
    main()
