"""Typed settings defined once: default, type, range and help in one ``dataclasses.field``.

A config class declares each of its settings with :func:`setting`; from that one declaration
come the YAML key (the field name, nested classes become nested mappings), the command-line
flag (:func:`add_flags`, ``--field-name`` unless the setting names its own), the range check
(:func:`check`), and the help text. ``None`` as a value means "use the default" where the type
allows it. Torch-free: the inference process reads its config through this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import field
from typing import Any

from iapc.errors import UserError
from iapc.options import parse_size


def setting(default: Any, help: str, *, minimum: float | None = None,
            maximum: float | None = None, above: float | None = None,
            choices: tuple | None = None, flag: str | None = None, cli: bool = True) -> Any:
    """A dataclass field with its help, range and command-line flag.

    ``minimum``/``maximum`` are inclusive bounds, ``above`` an exclusive lower bound; ``choices``
    the allowed values; ``flag`` the option's name when it is not ``--field-name``; ``cli=False``
    keeps a setting out of the command line (YAML only). Sizes are ``(width, height)`` tuples,
    written ``WIDTHxHEIGHT`` on the command line.
    """
    meta = {"help": help, "minimum": minimum, "maximum": maximum, "above": above,
            "choices": choices, "flag": flag, "cli": cli}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults need default_factory")
    return field(default=default, metadata=meta)


def _options(hint: Any) -> tuple:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _is_size(hint: Any) -> bool:
    return any(typing.get_origin(o) is tuple for o in _options(hint))


def _is_nested(cls: type, name: str) -> bool:
    return dataclasses.is_dataclass(getattr(cls(), name))


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def describe_range(f: dataclasses.Field) -> str:
    """``"a number >= 0"``, ``"one of a, b"`` ... for error and help text."""
    m = f.metadata
    if m.get("choices"):
        return "one of " + ", ".join(str(c) for c in m["choices"])
    parts = []
    if m.get("above") is not None:
        parts.append(f"> {m['above']:g}")
    if m.get("minimum") is not None:
        parts.append(f">= {m['minimum']:g}")
    if m.get("maximum") is not None:
        parts.append(f"<= {m['maximum']:g}")
    return "a number " + " and ".join(parts) if parts else ""


def _in_range(value: Any, f: dataclasses.Field) -> bool:
    m = f.metadata
    if value is None:
        return True
    if m.get("choices") is not None:
        return value in m["choices"]
    values = value if isinstance(value, tuple) else (value,)
    if not all(isinstance(v, (int, float)) for v in values):
        return True
    return all((m.get("minimum") is None or v >= m["minimum"])
               and (m.get("maximum") is None or v <= m["maximum"])
               and (m.get("above") is None or v > m["above"]) for v in values)


def check(config: Any, where: str = "config") -> None:
    """Every setting of ``config`` (and of its nested configs) within its range, else a
    :class:`UserError` naming the YAML key, its command-line flag and what is allowed."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check(value, f"{where}.{f.name}")
        elif f.metadata and not _in_range(value, f):
            flag = f" ({flag_name(f)})" if f.metadata.get("cli") else ""
            shown = "x".join(str(v) for v in value) if isinstance(value, tuple) else repr(value)
            raise UserError(f"{where}.{f.name}{flag} is {shown}: it must be "
                            f"{describe_range(f)}")


# ----------------------------------------------------------------------------- YAML / JSON


def to_plain(config: Any) -> dict[str, Any]:
    """Nested plain dict (tuples become lists) for JSON and YAML."""
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


def from_plain(cls: type, data: Any, where: str = "config"):
    """An instance of ``cls`` from a nested mapping: unknown keys and wrong types are one-line
    :class:`UserError` s; missing keys take their defaults; ranges are checked."""
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping of option: value, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"unknown option {where}.{unknown[0]}: known options are "
                        f"{', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        if _is_nested(cls, name):
            values[name] = from_plain(type(getattr(cls(), name)), value, f"{where}.{name}")
        else:
            values[name] = _as_type(value, hints[name], f"{where}.{name}")
    config = cls(**values)
    check(config, where)
    return config


def _as_type(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the field's type (lists become tuples); UserError if it cannot be."""
    options = _options(hint)
    if hint is Any or (value is None and type(None) in options):
        return value
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
            items = typing.get_args(option)
            if len(value) == len(items) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in value):
                return tuple(t(v) for t, v in zip(items, value))
    wanted = " or ".join(f"a list of {len(typing.get_args(o))} {_item_kind(o)}"
                         if typing.get_origin(o) is tuple else getattr(o, "__name__", str(o))
                         for o in options)
    raise UserError(f"{where} must be {wanted}, got {value!r}: fix it in the config file")


def _item_kind(hint: Any) -> str:
    return "integers" if typing.get_args(hint)[0] is int else "numbers"


# ----------------------------------------------------------------------------- command line


def _parser_type(hint: Any, f: dataclasses.Field):
    options = [o for o in _options(hint) if o is not type(None)]
    if _is_size(hint):
        if typing.get_args(options[0]) and typing.get_args(options[0])[0] is float:
            return _float_pair(f)
        minimum = int(f.metadata.get("minimum") or 1)
        return lambda text: parse_size(text, minimum=minimum)
    kind = options[0]
    if kind is bool:
        return None
    return {int: int, float: float, str: str, Any: str}[kind]


def _float_pair(f: dataclasses.Field):
    def parse(text: str) -> tuple[float, float]:
        try:
            low, high = (float(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not two numbers LOW,HIGH") from None
        return low, high
    return parse


def add_flags(parser: argparse.ArgumentParser, cls: type, dest_prefix: str = "",
              title: str | None = None, only: tuple[str, ...] | None = None,
              defaults: Any = None) -> None:
    """One option per command-line setting of ``cls`` (nested configs are added by their own
    call), every argparse default ``None`` so that only the options given override a config
    file or the defaults; ``defaults`` (an instance) is what the help shows as the default."""
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    defaults = defaults if defaults is not None else cls()
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        if _is_nested(cls, f.name):
            continue
        if not f.metadata.get("cli"):
            continue
        dest = dest_prefix + f.name
        default = getattr(defaults, f.name)
        shown = "x".join(str(v) for v in default) if isinstance(default, tuple) else default
        help_text = f.metadata["help"] + (f" (default: {shown})" if default is not None else "")
        kind = _parser_type(hints[f.name], f)
        if kind is None:  # bool: --flag / --no-flag
            group.add_argument(flag_name(f), dest=dest, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
            continue
        choices = tuple(c for c in f.metadata.get("choices") or () if c is not None) or None
        metavar = "WxH" if _is_size(hints[f.name]) else (None if choices else f.name.upper())
        group.add_argument(flag_name(f), dest=dest, type=kind, default=None, help=help_text,
                           choices=choices, metavar=metavar)


def apply_flags(args: argparse.Namespace, config: Any, dest_prefix: str = "") -> Any:
    """Set on ``config`` every option of :func:`add_flags` that was given; returns ``config``
    after checking ranges (flags are checked like config keys)."""
    for f in dataclasses.fields(config):
        value = getattr(args, dest_prefix + f.name, None)
        if value is not None and not dataclasses.is_dataclass(getattr(config, f.name)):
            setattr(config, f.name, value)
    return config
