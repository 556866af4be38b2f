"""``iapc subscribe``: print one line per mask, confidence map or status message a runtime publishes.

    iapc subscribe --address tcp://127.0.0.1:5555 --topics mask status --count 10 --timeout 5
"""

from __future__ import annotations

import argparse
import json

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
TOP_CLASSES = 3  # classes named in the histogram summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help=f"runtime PUB address (default {DEFAULT_ADDRESS})")
    parser.add_argument("--topics", nargs="+", choices=("mask", "conf", "status"),
                        default=["mask", "status"], help="topics to print (default: mask status)")
    parser.add_argument("--count", type=int, default=0,
                        help="stop after this many messages (default 0: run until interrupted)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="fail if no message arrives for this many seconds (default: wait)")
    parser.add_argument("--curve-server-key", metavar="FILE",
                        help="the runtime's public key (server.key from 'iapc keys'), for CURVE")
    parser.add_argument("--curve-client-secret", metavar="FILE",
                        help="this client's key pair (NAME.key_secret from 'iapc keys'), for CURVE")


def run(args: argparse.Namespace) -> int:
    from iapc.errors import UserError
    from iapc.runtime.client import MaskSubscriber
    from iapc.runtime.protocol import StatusKind

    if args.count < 0:
        raise UserError(f"--count must be 0 (no limit) or positive, got {args.count}")
    if args.timeout is not None and args.timeout <= 0:
        raise UserError(f"--timeout must be positive seconds, got {args.timeout}")
    topics = tuple(t.encode() for t in args.topics)
    listen = topics if b"status" in topics else topics + (b"status",)  # for the end message
    printed = 0
    with MaskSubscriber(args.address, topics=listen, **curve_options(args)) as subscriber:
        while args.count == 0 or printed < args.count:
            try:
                message = subscriber.receive_any(timeout=args.timeout)
            except TimeoutError as err:
                if subscriber.handshake_failure:
                    raise UserError(str(err)) from None
                raise UserError(
                    f"{err} and no end-of-stream message: the runtime hung, or is not running "
                    f"and publishing on {args.address}") from None
            if message.topic in topics:
                print(format_message(message), flush=True)
                printed += 1
            if message.status is not None and message.status.get("kind") == StatusKind.END.value:
                print(f"stream ended ({message.status.get('reason')}) after "
                      f"{message.status.get('frames_published')} frames", flush=True)
                return 0
    return 0


def format_message(message) -> str:
    """One line: topic, frame id, engine version, size, latency and a class histogram."""
    if message.status is not None:
        return f"status {json.dumps(message.status, separators=(',', ':'))}"
    header, array = message.header, message.array
    latency_ms = (message.received_ns - header.capture_ns) / 1e6
    line = (
        f"{message.topic.decode()} frame={header.frame_id} engine=v{header.engine_version} "
        f"size={header.width}x{header.height} latency={latency_ms:.2f}ms"
    )
    if message.topic == b"mask":
        line += " classes: " + class_histogram_summary(array, header.num_classes)
    else:
        line += f" mean_conf={float(array.mean()) / 255:.3f}"
    return line


def class_histogram_summary(mask, num_classes: int, top: int = TOP_CLASSES) -> str:
    """``"road 41.2% building 20.1% sky 9.3% (5 classes)"`` for an (H, W) uint8 class-id mask."""
    import numpy as np

    counts = np.bincount(mask.ravel(), minlength=256)  # (256,) pixels per class id
    names = _class_names(num_classes)
    order = np.argsort(counts)[::-1][:top]
    parts = [
        f"{names.get(int(c), str(int(c)))} {100.0 * counts[c] / mask.size:.1f}%"
        for c in order if counts[c] > 0
    ]
    return " ".join(parts) + f" ({int(np.count_nonzero(counts))} classes)"


def _class_names(num_classes: int) -> dict[int, str]:
    """Cityscapes train-id names when the mask has 19 classes; ids otherwise."""
    from iapc.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES

    names = {IGNORE_INDEX: "ignore"}
    if num_classes == NUM_CLASSES:
        names.update(enumerate(CLASS_NAMES))
    return names


def curve_options(args: argparse.Namespace) -> dict:
    """MaskSubscriber keyword arguments for CURVE, from --curve-server-key/--curve-client-secret."""
    from iapc.errors import UserError
    from iapc.runtime.security import load_client_keys, load_public_key

    if args.curve_server_key is None and args.curve_client_secret is None:
        return {}
    if args.curve_server_key is None or args.curve_client_secret is None:
        raise UserError("CURVE needs both --curve-server-key and --curve-client-secret")
    return {"curve_server_key": load_public_key(args.curve_server_key),
            "curve_client_keys": load_client_keys(args.curve_client_secret)}
