"""Saving and loading model checkpoints.

Two layouts are read:
- the project's own (written by :func:`save_checkpoint`): ``{"format": "iapc/1", "model": name,
  "num_classes": K, "state_dict": ..., "config": {...}, "step": int}``, plus ``model_options``
  (e.g. ``{"width": 1.0}``) for models built with options;
- the released IAPC / AdvEnt files: ``{"state_dict": ...}`` or a bare state dict, keys possibly
  prefixed ``module.``; the auxiliary ``layer5`` head is skipped. These hold a
  ``deeplabv2_resnet101``;
- the released ESPNetv2 Cityscapes files (EdgeNets): a bare state dict, recognised by its keys
  (or named with ``--model espnetv2``); the width s is read from its shapes and its 20 outputs
  are the 19 classes plus a background class (see :mod:`iapc.adapt.models.espnetv2`).

Everything is loaded with ``torch.load(..., weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from iapc.adapt.models import MODELS, build_model, parse_model_name
from iapc.adapt.models.contract import is_factory_name
from iapc.adapt.models import espnetv2
from iapc.errors import UserError

FORMAT = "iapc/1"
RELEASED_MODEL = "deeplabv2_resnet101"
_SKIPPED_PREFIXES = ("layer5.",)


def save_checkpoint(path: str | os.PathLike, model_name: str, model: nn.Module,
                    config: dict[str, Any] | None = None, step: int = 0, **extra: Any) -> None:
    """Write ``model`` and its resolved config atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "model": model_name, "num_classes": model.num_classes,
               "state_dict": model.state_dict(), "config": dict(config or {}), "step": int(step)}
    if hasattr(model, "build_options"):  # e.g. ESPNetv2's width: rebuilds the same architecture
        payload["model_options"] = dict(model.build_options())
    payload.update(extra)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``, turning every failure into a :class:`UserError`."""
    from iapc.checkpoint_file import check_checkpoint_file

    path = check_checkpoint_file(path)  # empty, truncated, not a checkpoint: one clear line
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, or not a weights-only file
        raise UserError(f"checkpoint {path} could not be read: {_load_failure(err)}") from None
    if not isinstance(data, dict):
        raise UserError(f"checkpoint {path} holds a {type(data).__name__}, expected a dict "
                        "with a 'state_dict'")
    return data


def _load_failure(err: Exception) -> str:
    """What went wrong and what to do, in our words: PyTorch's own text runs to many lines."""
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err).lower():
        return ("it holds pickled Python objects, not only tensors (e.g. a whole model saved with "
                "torch.save(model)); save {'state_dict': model.state_dict()} instead (no pickled "
                "code is ever run)")
    return (f"{type(err).__name__}; expected a file written by 'iapc train-source' or a released "
            "IAPC/AdvEnt {'state_dict': ...} file: copy or download it again")


def _released_state_dict(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    state = data.get("state_dict", data)
    cleaned = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if not key.startswith(_SKIPPED_PREFIXES):
            cleaned[key] = value
    return cleaned


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, model_name: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not hold a {model_name}: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
            "pass the --model it was trained with")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise UserError(
                f"checkpoint {path}: {key} has shape {tuple(tensor.shape)}, a {model_name} with "
                f"{model.num_classes} classes needs {tuple(expected[key].shape)}; check --model "
                "and --num-classes")
    model.load_state_dict(state)


def load_model(path: str | os.PathLike, model_name: str | None = None,
               num_classes: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build the right architecture and load ``path`` into it.

    Returns ``(model, meta)``; ``meta`` has ``model``, ``num_classes``, ``config``, ``step`` and
    ``input_size`` (the (W, H) it was trained at, or None when the file does not say).
    ``model_name``/``num_classes`` are checked against the file when it records them.
    """
    path = Path(path)
    data = read_checkpoint_file(path)
    options: dict[str, Any] = {}
    if data.get("format") == FORMAT:
        name, classes = data["model"], int(data["num_classes"])
        if model_name is not None and not _same_architecture(model_name, name):
            raise UserError(f"checkpoint {path} holds a {name}, not a {model_name}: "
                            f"drop --model or pass --model {name}")
        options = dict(data.get("model_options") or {})
        if num_classes is not None and num_classes != classes:
            raise UserError(f"checkpoint {path} has {classes} classes, not {num_classes}")
        state = data["state_dict"]
        meta = {"model": name, "num_classes": classes, "config": data.get("config", {}),
                "step": int(data.get("step", 0)), "input_size": recorded_input_size(data),
                "method": data.get("method")}
    else:
        state = _released_state_dict(data)
        if model_name is None and espnetv2.is_espnetv2_state_dict(state):
            model_name = "espnetv2"
        name = model_name or RELEASED_MODEL
        if parse_model_name(name)[0] == "espnetv2" and espnetv2.is_espnetv2_state_dict(state):
            # the last output is the background class, dropped by the model (19 of 20)
            classes = num_classes or espnetv2.raw_classes_from_state_dict(state) - 1
        else:
            classes = num_classes or _classes_from_released(state)
        meta = {"model": name, "num_classes": classes, "config": {}, "step": 0,
                "input_size": None}
    base, named = parse_model_name(name)
    if base not in MODELS and not is_factory_name(name):
        raise UserError(f"checkpoint {path} names unknown model {name!r}")
    if base == "espnetv2":
        asked = parse_model_name(model_name)[1] if model_name is not None else {}
        options = {**named, **options, **_espnetv2_width(state, {**named, **asked}, path)}
    model = build_model(name, classes, **options)
    _load_state(model, state, path, name)
    return model, meta


def _same_architecture(asked: str, recorded: str) -> bool:
    """``--model espnetv2`` matches a file of any ESPNetv2 width; a width in either name must
    agree (the width recorded in the file's state dict is checked when it is loaded)."""
    asked_base, asked_options = parse_model_name(asked)
    recorded_base, recorded_options = parse_model_name(recorded)
    if asked_base != recorded_base:
        return False
    return not (asked_options and recorded_options) or asked_options == recorded_options


def _espnetv2_width(state: dict[str, torch.Tensor], named: dict[str, Any],
                    path: Path) -> dict[str, float]:
    """``{"width": s}`` read from an ESPNetv2 state dict's shapes (nothing if it holds none);
    a width given in the model's name must be the file's."""
    if not espnetv2.is_espnetv2_state_dict(state):
        return {}  # not an ESPNetv2: _load_state says so with the missing keys
    try:
        width = espnetv2.width_from_state_dict(state)
    except ValueError as err:
        raise UserError(f"checkpoint {path}: {err}") from None
    if "width" in named and float(named["width"]) != width:
        raise UserError(f"checkpoint {path} holds an ESPNetv2 of width s={width}, not "
                        f"s={named['width']}: pass --model espnetv2 (the width is read from "
                        "the file)")
    return {"width": width}


def recorded_input_size(data: dict[str, Any]) -> tuple[int, int] | None:
    """The (width, height) a checkpoint's model was trained at: its ``input_size`` key, else the
    ``size`` of its training config (files written before the key existed), else None."""
    size = data.get("input_size") or (data.get("config") or {}).get("size")
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    return None


def _classes_from_released(state: dict[str, torch.Tensor]) -> int:
    bias = state.get("layer6.conv2d_list.0.bias")
    return int(bias.shape[0]) if bias is not None else 19


def main(argv: list[str] | None = None) -> int:
    """``python -m iapc.adapt.checkpoint FILE``: the facts a torch-free process needs about a
    checkpoint (model, classes, training size), as one JSON line; a bad file is one error line.
    ``iapc-runtime`` calls it before starting its processes."""
    import argparse
    import json

    from iapc.errors import run_cli

    parser = argparse.ArgumentParser(prog="python -m iapc.adapt.checkpoint")
    parser.add_argument("checkpoint")
    parser.add_argument("--model", default=None)
    parser.add_argument("--num-classes", type=int, default=None)
    args = parser.parse_args(argv)

    def facts() -> int:
        try:
            _, meta = load_model(args.checkpoint, args.model, args.num_classes)
        except UserError:
            raise  # not dead: already one line that says what to do, kept from the wrapping below
        except Exception as err:  # a file that reads but does not hold what it should
            raise UserError(f"checkpoint {args.checkpoint} could not be loaded ({type(err).__name__}: "
                            f"{err}): expected a file written by 'iapc train-source' or "
                            "'iapc adapt', or a released {'state_dict': ...} file") from None
        print(json.dumps({"model": meta["model"], "num_classes": meta["num_classes"],
                          "input_size": meta["input_size"]}))
        return 0

    return run_cli("iapc-runtime", facts)


if __name__ == "__main__":
    raise SystemExit(main())
