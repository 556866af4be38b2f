"""``iapc bridge``: republish the runtime's masks to ROS 2, a rosbag2 (MCAP) and Foxglove.

    iapc bridge --address tcp://127.0.0.1:5555 --topic /iapc/mask --color --record run.mcap
"""

from __future__ import annotations

import argparse

TRANSPORTS = ("auto", "rclpy", "dds", "none")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from iapc.ros_bridge.bridge import DEFAULT_FRAME_ID, DEFAULT_STATUS_TOPIC, DEFAULT_TOPIC
    from iapc.runtime.client import DEFAULT_ADDRESS

    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help=f"runtime PUB address (default {DEFAULT_ADDRESS})")
    parser.add_argument("--topic", default=DEFAULT_TOPIC,
                        help=f"ROS 2 topic of the mono8 class-id image (default {DEFAULT_TOPIC})")
    parser.add_argument("--frame-id", default=DEFAULT_FRAME_ID,
                        help=f"header.frame_id of every image (default {DEFAULT_FRAME_ID})")
    parser.add_argument("--color", action="store_true",
                        help="also publish the Cityscapes-coloured rgb8 mask on TOPIC/color")
    parser.add_argument("--confidence", action="store_true",
                        help="also publish the confidence map (mono8) on TOPIC/confidence")
    parser.add_argument("--status-topic", default=DEFAULT_STATUS_TOPIC,
                        help=f"std_msgs/String topic for runtime status JSON "
                             f"(default {DEFAULT_STATUS_TOPIC}; 'none' to skip)")
    parser.add_argument("--transport", choices=TRANSPORTS, default="auto",
                        help="ROS 2 transport: auto (rclpy if importable, else dds), rclpy, dds, "
                             "or none (record / Foxglove only)")
    parser.add_argument("--domain-id", type=int, default=0, help="ROS 2 / DDS domain id (default 0)")
    parser.add_argument("--best-effort", action="store_true",
                        help="DDS: ROS 2 sensor-data QoS (best effort, depth 5) instead of the "
                             "default (reliable, depth 10)")
    parser.add_argument("--record", metavar="FILE.mcap", default=None,
                        help="also write a rosbag2 with MCAP storage (folder FILE/, file FILE/FILE.mcap)")
    parser.add_argument("--foxglove", action="store_true",
                        help="serve a live view over the Foxglove WebSocket protocol")
    parser.add_argument("--foxglove-port", type=int, default=8765,
                        help="Foxglove WebSocket port on 127.0.0.1 (default 8765)")
    parser.add_argument("--count", type=int, default=0,
                        help="stop after this many masks (default 0: run until interrupted)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="fail if no message arrives for this many seconds (default: wait)")


def resolve_transport(transport: str) -> str:
    """``auto`` -> ``rclpy`` when importable, else ``dds``; an explicit rclpy must be importable."""
    from iapc.errors import UserError
    from iapc.ros_bridge.rclpy_publisher import RCLPY_MISSING, rclpy_available

    if transport == "auto":
        return "rclpy" if rclpy_available() else "dds"
    if transport == "rclpy" and not rclpy_available():
        raise UserError(f"--transport rclpy: {RCLPY_MISSING}; or use --transport dds")
    return transport


def build_sinks(args: argparse.Namespace) -> list:
    """The sinks the options ask for; closes the ones already made if a later one fails."""
    sinks: list = []
    try:
        transport = resolve_transport(args.transport)
        if transport == "rclpy":
            from iapc.ros_bridge.rclpy_publisher import RclpySink
            sinks.append(RclpySink(domain_id=args.domain_id))
        elif transport == "dds":
            from iapc.ros_bridge.dds import DdsSink
            sinks.append(DdsSink(domain_id=args.domain_id, best_effort=args.best_effort))
        if args.record:
            from iapc.ros_bridge.recorder import McapRecorder
            sinks.append(McapRecorder(args.record))
        if args.foxglove:
            from iapc.ros_bridge.foxglove_view import FoxgloveView
            sinks.append(FoxgloveView(port=args.foxglove_port))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


def _check_numbers(args: argparse.Namespace) -> None:
    from iapc.errors import UserError
    from iapc.ros_bridge.dds import check_domain_id

    if args.count < 0:
        raise UserError(f"--count must be 0 (no limit) or positive, got {args.count}")
    if args.timeout is not None and args.timeout <= 0:
        raise UserError(f"--timeout must be positive seconds, got {args.timeout}")
    check_domain_id(args.domain_id)


def run(args: argparse.Namespace) -> int:
    from iapc.errors import UserError
    from iapc.ros_bridge.bridge import BridgeConfig, MaskBridge
    from iapc.runtime.client import MaskSubscriber

    _check_numbers(args)
    status_topic = None if args.status_topic == "none" else args.status_topic
    config = BridgeConfig(topic=args.topic, frame_id=args.frame_id, color=args.color,
                          confidence=args.confidence, status_topic=status_topic)
    sinks = build_sinks(args)
    if not sinks:
        raise UserError("--transport none with neither --record nor --foxglove bridges nowhere: "
                        "add one of them or pick a transport")
    try:
        subscriber = MaskSubscriber(args.address, topics=config.wire_topics())
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    # The bridge closes subscriber and sinks even on Ctrl-C, so a recorded bag is always complete.
    with MaskBridge(subscriber, sinks, config) as bridge:
        try:
            counters = bridge.run(count=args.count, idle_timeout=args.timeout)
        except TimeoutError as err:
            raise UserError(f"{err}: check that the runtime is running and publishing on "
                            f"{args.address}") from err
        print(f"bridged {counters.masks} masks, {counters.confidences} confidence maps, "
              f"{counters.statuses} status messages; {bridge.dropped} older messages dropped; "
              f"sink errors: {counters.sink_errors or 'none'}", flush=True)
    return 0
