"""Age of the newest mask a slow client receives: camera at FPS, client reading 10x slower.

A real MaskPublisher (the runtime's socket options, or ``--sndbuf``) publishes 512x256 masks at ``--fps`` on
loopback; each client takes one mask every ``10 / fps`` seconds and records its age
(receive time minus ``capture_ns``) in frame intervals:

- ``MaskSubscriber`` (drains in its thread, newest wins);
- a raw SUB socket following docs/PROTOCOL.md's advice (RCVHWM 2, RCVBUF 64 KiB, drain with NOBLOCK, keep the last);
- a raw SUB socket with default options that reads one message per turn (what not to do).

    python benchmarks/bench_staleness.py --fps 20 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import zmq

from iapc.runtime.client import MaskSubscriber
from iapc.runtime.protocol import MaskHeader, decode_mask_message
from iapc.runtime.publisher import MaskPublisher


def publish(pub: MaskPublisher, fps: float, stop: threading.Event) -> None:
    mask = np.zeros((256, 512), np.uint8)
    frame = 0
    next_at = time.monotonic()
    while not stop.is_set():
        pub.publish_mask(MaskHeader(frame_id=frame, capture_ns=time.time_ns(), engine_version=1,
                                    height=256, width=512, num_classes=19), mask.copy())
        frame += 1
        next_at += 1.0 / fps
        time.sleep(max(0.0, next_at - time.monotonic()))


def raw_socket(endpoint: str, rcvhwm: int | None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.SUB)
    if rcvhwm is not None:  # the advice: a short libzmq queue and a small kernel buffer
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.RCVBUF, 64 * 1024)
    sock.setsockopt(zmq.SUBSCRIBE, b"mask")
    sock.connect(endpoint)
    return sock


def read_newest(sock: zmq.Socket, drain: bool, timeout_ms: int = 1000):
    """One mask header: the newest queued one when ``drain``, else the next in the queue."""
    if not sock.poll(timeout_ms):
        return None
    frames = sock.recv_multipart()
    while drain:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            break
    return decode_mask_message(frames)[1]


def measure(take, period: float, seconds: float, fps: float) -> dict:
    ages = []
    time.sleep(1.0)  # joined, queues filling
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        header = take()
        if header is not None:
            ages.append((time.time_ns() - header.capture_ns) / 1e9 * fps)
        time.sleep(period)
    ages = np.array(ages[2:])  # the first reads are before any backlog could build
    return {"reads": int(ages.size), "median_age_frames": round(float(np.median(ages)), 2),
            "max_age_frames": round(float(ages.max()), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--slowdown", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sndbuf", type=int, default=0,
                        help="publisher kernel send buffer in bytes (0: the runtime's default)")
    args = parser.parse_args()
    period = args.slowdown / args.fps
    stop = threading.Event()
    with MaskPublisher("tcp://127.0.0.1:*", sndbuf=args.sndbuf) as pub:
        subscriber = MaskSubscriber(pub.endpoint)
        advised = raw_socket(pub.endpoint, rcvhwm=2)
        naive = raw_socket(pub.endpoint, rcvhwm=None)
        thread = threading.Thread(target=publish, args=(pub, args.fps, stop), daemon=True)
        thread.start()
        results = {}
        clients = {"MaskSubscriber": lambda: subscriber.receive(timeout=1.0)[0],
                   "raw SUB, RCVHWM 2, RCVBUF 64 KiB, drain": lambda: read_newest(advised, drain=True),
                   "raw SUB, defaults, one per read": lambda: read_newest(naive, drain=False)}
        runs = {name: threading.Thread(target=lambda n=name, f=take: results.__setitem__(
                    n, measure(f, period, args.seconds, args.fps)))
                for name, take in clients.items()}
        for run in runs.values():
            run.start()
        for run in runs.values():
            run.join()
        stop.set()
        thread.join()
        subscriber.close()
        advised.close()
        naive.close()
    print(json.dumps({"fps": args.fps, "client_period_s": period, "sndbuf": args.sndbuf,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
