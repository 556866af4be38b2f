"""Mask delivery latency over loopback ZeroMQ, with and without a deliberately slow subscriber.

One MaskPublisher sends (H, W) uint8 masks at a camera rate; each subscriber is its own process
with a MaskSubscriber and records, per mask, publish -> decoded-in-the-client latency. Run 1 has the
fast subscribers alone; run 2 adds a subscriber that sleeps between receives. The fast subscribers'
medians are compared side by side (ratio run2 / run1): the slow one should cost them nothing.

    .venv/bin/python benchmarks/bench_delivery.py --frames 300 --fps 60
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from dataclasses import dataclass

import numpy as np

WARMUP_S = 1.0  # masks flagged warm-up while every subscriber connects; not measured


@dataclass
class SubscriberResult:
    name: str
    latencies_ms: list[float]  # publish -> decoded by the client's receive thread
    ages_ms: list[float]  # publish -> returned by receive() (includes time spent sleeping)

    def row(self, published: int) -> str:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        age = np.array(self.ages_ms) if self.ages_ms else np.array([np.nan])
        return (f"{self.name:<8} received {len(self.latencies_ms):4d}/{published:<4d} "
                f"delivery median {np.median(lat):6.3f} ms  p99 {np.percentile(lat, 99):6.3f} ms  "
                f"age at read median {np.median(age):6.3f} ms")


def subscriber_process(name: str, endpoint: str, sleep_s: float, results: mp.Queue,
                       ready: mp.Queue) -> None:
    from iapc.runtime.client import MaskSubscriber

    latencies, ages = [], []
    with MaskSubscriber(endpoint, topics=(b"mask",)) as sub:
        ready.put(name)
        while True:
            try:
                message = sub.receive_any(timeout=2.0)  # 2 s of silence: the run is over
            except TimeoutError:
                break
            read_ns = time.time_ns()
            if message.header.extra.get("warmup"):
                continue
            _ = int(message.array[-1, -1])  # touch the payload, as a real client would
            latencies.append((message.received_ns - message.header.publish_ns) / 1e6)
            ages.append((read_ns - message.header.publish_ns) / 1e6)
            if sleep_s:
                time.sleep(sleep_s)
    results.put(SubscriberResult(name, latencies, ages))


def run_once(subscribers: dict[str, float], args: argparse.Namespace) -> tuple[list, np.ndarray]:
    """Publish ``args.frames`` masks to the given subscribers (name -> sleep s); gather results."""
    from iapc.runtime.protocol import MaskHeader
    from iapc.runtime.publisher import MaskPublisher

    ctx = mp.get_context("spawn")
    results, ready = ctx.Queue(), ctx.Queue()
    mask = np.random.default_rng(0).integers(0, 19, size=(args.height, args.width), dtype=np.uint8)
    publish_s = np.empty(args.frames)
    with MaskPublisher("tcp://127.0.0.1:*") as pub:
        procs = [ctx.Process(target=subscriber_process, args=(n, pub.endpoint, s, results, ready))
                 for n, s in subscribers.items()]
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.get(timeout=60)

        def publish(frame_id: int, warmup: bool) -> float:
            header = MaskHeader(frame_id=frame_id, capture_ns=time.time_ns(), engine_version=1,
                                height=args.height, width=args.width, num_classes=19,
                                extra={"warmup": True} if warmup else {})
            fresh = mask.copy()  # a fresh array per frame, as an engine returns
            start = time.perf_counter()
            pub.publish_mask(header, fresh)
            return time.perf_counter() - start

        period = 1.0 / args.fps
        for i in range(int(WARMUP_S * args.fps)):
            publish(i, warmup=True)
            time.sleep(period)
        for i in range(args.frames):
            tick = time.perf_counter()
            publish_s[i] = publish(i, warmup=False)
            time.sleep(max(0.0, period - (time.perf_counter() - tick)))
        gathered = [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join()
    return sorted(gathered, key=lambda r: r.name), publish_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--fps", type=float, default=60.0)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--slow-sleep-ms", type=float, default=100.0,
                        help="how long the slow subscriber sleeps after each receive")
    args = parser.parse_args()

    fast = {"fast-1": 0.0, "fast-2": 0.0}
    print(f"{args.height}x{args.width} uint8 masks, {args.frames} frames at {args.fps:g} fps, "
          f"loopback TCP")
    runs = {
        "fast only": run_once(fast, args),
        "with slow": run_once({**fast, "slow": args.slow_sleep_ms / 1e3}, args),
    }
    medians = {}
    for label, (results, publish_s) in runs.items():
        print(f"\n[{label}] publish_mask median {np.median(publish_s) * 1e3:.3f} ms, "
              f"max {publish_s.max() * 1e3:.3f} ms")
        for result in results:
            print("  " + result.row(args.frames))
            medians[label, result.name] = np.median(result.latencies_ms)
    print("\nfast subscribers' median delivery, with slow / without:")
    for name in fast:
        ratio = medians["with slow", name] / medians["fast only", name]
        print(f"  {name}: {medians['fast only', name]:.3f} ms -> {medians['with slow', name]:.3f} ms"
              f"  ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
