"""Masks per second bridged at 1024x512 (DDS + MCAP sinks) vs a MaskPublisher sending flat out.

Both run in one process, side by side: a thread publishes fresh masks as fast as the socket takes
them for DURATION seconds while MaskBridge republishes the newest one to DDS and records it to a
rosbag2 (MCAP). The ratio bridged / published is how much of the runtime's rate the bridge keeps;
the rest is dropped by newest-wins, never queued.

    .venv/bin/python benchmarks/bench_bridge.py [--seconds 5] [--color]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from iapc.ros_bridge.bridge import BridgeConfig, MaskBridge
from iapc.ros_bridge.dds import DdsSink
from iapc.ros_bridge.recorder import McapRecorder
from iapc.runtime.client import MaskSubscriber
from iapc.runtime.protocol import MaskHeader
from iapc.runtime.publisher import MaskPublisher

HEIGHT, WIDTH = 512, 1024


def publish_flat_out(pub: MaskPublisher, stop: threading.Event, masks: list[np.ndarray]) -> None:
    frame_id = 0
    while not stop.is_set():
        mask = masks[frame_id % len(masks)].copy()  # a fresh array per frame, as the loop does
        pub.publish_mask(MaskHeader(frame_id=frame_id, capture_ns=time.time_ns(), engine_version=1,
                                    height=HEIGHT, width=WIDTH, num_classes=19), mask)
        frame_id += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--color", action="store_true", help="also bridge the rgb8 colour image")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 19, size=(HEIGHT, WIDTH), dtype=np.uint8) for _ in range(4)]
    config = BridgeConfig(color=args.color, status_topic=None)
    with tempfile.TemporaryDirectory() as tmp, MaskPublisher("tcp://127.0.0.1:*") as pub:
        sinks = [DdsSink(domain_id=random.randint(100, 200)), McapRecorder(Path(tmp) / "bench.mcap")]
        with MaskBridge(MaskSubscriber(pub.endpoint, topics=config.wire_topics()), sinks,
                        config) as bridge:
            stop = threading.Event()
            bridging = threading.Thread(target=bridge.run, kwargs={"stop": stop})
            bridging.start()
            time.sleep(0.5)  # subscription lands
            start_masks, start_published = bridge.counters.masks, pub.counters.masks_published
            publisher = threading.Thread(target=publish_flat_out, args=(pub, stop, masks))
            t0 = time.perf_counter()
            publisher.start()
            time.sleep(args.seconds)
            published = pub.counters.masks_published - start_published
            bridged = bridge.counters.masks - start_masks
            elapsed = time.perf_counter() - t0
            stop.set()
            publisher.join()
            bridging.join()
            recorded = sinks[1].messages
    published_rate, bridged_rate = published / elapsed, bridged / elapsed
    print(f"1024x512 masks, {elapsed:.1f} s, sinks: DDS + MCAP{' (+ rgb8)' if args.color else ''}")
    print(f"  published {published_rate:8.1f} masks/s  ({published} masks)")
    print(f"  bridged   {bridged_rate:8.1f} masks/s  ({bridged} masks, {recorded} bag messages)")
    print(f"  ratio bridged/published = {bridged_rate / published_rate:.3f}")


if __name__ == "__main__":
    main()
