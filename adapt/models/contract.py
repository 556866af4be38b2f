"""A user's own network, given as ``package.module:function``, and the contract every model keeps.

The factory is called as ``function(num_classes)`` and must return a ``torch.nn.Module`` that
keeps the project's model contract (:mod:`iapc.adapt.models`): ``norm`` (a
:class:`~iapc.adapt.preprocessing.NormSpec`), ``num_classes``, ``feature_channels``,
``output_stride``, ``parameter_groups()`` with ``"backbone"`` and ``"classifier"`` parameter
lists, BatchNorm layers (the ``bn`` and ``tent`` methods and IAPC's statistics adapt them), and
``forward(x) -> (logits, features)``. :func:`check_contract` tries each at load, so that a
missing part is one line naming it instead of a failure deep inside adaptation or export.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch
from torch import nn

from iapc.adapt.preprocessing import NormSpec
from iapc.errors import UserError

PROBE_SIZE = (64, 64)  # (H, W) of the dry forward that checks the outputs' shapes


def is_factory_name(name: str) -> bool:
    """``package.module:function`` names a user's factory; registry names have no colon."""
    return ":" in name


def import_factory(name: str) -> Callable[[int], nn.Module]:
    """The function ``package.module:function`` names; a :class:`UserError` says what is wrong."""
    module_name, _, function_name = name.partition(":")
    if not module_name or not function_name:
        raise UserError(f"model {name!r}: give a factory as package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"model {name!r}: cannot import {module_name} ({err}); put its folder on "
                        "PYTHONPATH or install its package") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise UserError(f"model {name!r}: {module_name} has no function {function_name}")
    return factory


def build_user_model(name: str, num_classes: int) -> nn.Module:
    """``function(num_classes)`` of the factory ``name``, checked against the contract."""
    try:
        model = import_factory(name)(num_classes)
    except UserError:
        raise
    except Exception as err:  # the user's code: its failure in one line
        raise UserError(f"model {name!r}: the factory failed with {type(err).__name__}: "
                        f"{err}") from None
    check_contract(model, name, num_classes)
    return model


def _fail(name: str, what: str) -> UserError:
    return UserError(f"model {name!r} does not keep the model contract: {what} "
                     "(see iapc.adapt.models.contract)")


def check_contract(model: object, name: str, num_classes: int) -> None:
    """Raises a one-line :class:`UserError` naming the first part of the contract ``model``
    misses; a model that passes runs through evaluation, every method, export and the runtime."""
    if not isinstance(model, nn.Module):
        raise _fail(name, f"the factory returned a {type(model).__name__}, not a torch.nn.Module")
    _check_attributes(model, name, num_classes)
    _check_parameter_groups(model, name)
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise _fail(name, "it has no BatchNorm layer (the bn and tent methods and IAPC's "
                          "statistics adapt them)")
    _check_forward(model, name)


def _check_attributes(model: nn.Module, name: str, num_classes: int) -> None:
    if not isinstance(getattr(model, "norm", None), NormSpec):
        raise _fail(name, "no 'norm' attribute holding a NormSpec (how its input is normalised, "
                          "e.g. iapc.adapt.preprocessing.IMAGENET_RGB)")
    for attribute in ("num_classes", "feature_channels", "output_stride"):
        if not isinstance(getattr(model, attribute, None), int):
            raise _fail(name, f"no integer '{attribute}' attribute")
    if model.num_classes != num_classes:
        raise _fail(name, f"num_classes is {model.num_classes}, the factory was asked for "
                          f"{num_classes}")


def _check_parameter_groups(model: nn.Module, name: str) -> None:
    groups = model.parameter_groups() if callable(getattr(model, "parameter_groups", None)) else None
    if not isinstance(groups, dict) or not {"backbone", "classifier"} <= set(groups):
        raise _fail(name, "no parameter_groups() returning {'backbone': [...], 'classifier': "
                          "[...]} (IAPC trains the classifier at 10x the backbone's rate)")
    if not list(groups["classifier"]):
        raise _fail(name, "parameter_groups()['classifier'] is empty")


def _check_forward(model: nn.Module, name: str) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, *PROBE_SIZE))  # (1, 3, 64, 64)
    except Exception as err:
        raise _fail(name, f"forward on a (1, 3, 64, 64) input failed with "
                          f"{type(err).__name__}: {err}") from None
    finally:
        model.train(was_training)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise _fail(name, "forward(x) must return (logits, features)")
    logits, features = out
    if logits.ndim != 4 or logits.shape[1] != model.num_classes:
        raise _fail(name, f"logits have shape {tuple(logits.shape)}, expected "
                          f"(N, {model.num_classes}, h, w)")
    if features.ndim != 4 or features.shape[1] != model.feature_channels:
        raise _fail(name, f"features have shape {tuple(features.shape)}, expected "
                          f"(N, {model.feature_channels}, h, w)")
