"""The ``iapc`` command: one sub-command per job, each defined next to the code it runs.

Every sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and imports
heavy libraries (torch, onnxruntime) only inside ``run``, so ``iapc --help`` and the torch-free
commands (``subscribe``, ``bridge``) start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from iapc.errors import run_cli

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("iapc.synth.cli", "write synthetic driving domains in the Cityscapes layout"),
    "train-source": ("iapc.adapt.train_source", "train a source model on a labelled root"),
    "adapt": ("iapc.adapt.offline", "adapt a source checkpoint on an unlabelled root with IAPC"),
    "evaluate": ("iapc.adapt.evaluate", "mIoU of a checkpoint on a labelled root"),
    "demo": ("iapc.adapt.demo", "synthetic end-to-end adaptation demo (source-only vs IAPC)"),
    "export": ("iapc.export.cli", "export a checkpoint to ONNX / an engine in the engine store"),
    "subscribe": ("iapc.runtime.subscribe_cli", "print the masks and status a runtime publishes"),
    "replay": ("iapc.replay.cli", "replay Cityscapes sequences through the runtime and report"),
    "bridge": ("iapc.ros_bridge.cli", "republish masks to ROS 2 / MCAP / Foxglove"),
    "keys": ("iapc.runtime.security", "make CURVE keys for iapc-runtime --curve-keys"),
}


def _available_commands() -> dict[str, object]:
    """Import each sub-command module that exists in this installation."""
    modules = {}
    for name, (module_name, _help) in COMMANDS.items():
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:  # a real missing dependency inside the module
                raise
    return modules


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(prog="iapc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = _available_commands()
    for name, module in modules.items():
        p = sub.add_parser(name, help=COMMANDS[name][1], description=COMMANDS[name][1])
        module.add_arguments(p)
    return parser, modules


def _main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(modules[args.command].run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    sys.exit(run_cli("iapc", lambda: _main(argv)))
