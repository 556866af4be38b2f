"""The runtime's configuration: one typed dataclass, read from YAML, overridden from the command
line, saved beside every run. ``None`` means "use the default".
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iapc.errors import UserError
from iapc.options import parse_size as _parse_size


def default_cache_dir() -> Path:
    """Where first-use artefacts (synthetic data, the embedded source model) are cached."""
    from iapc.cache import cache_dir

    return cache_dir()


@dataclass
class SourceConfig:
    kind: str = "synthetic"  # camera | video | images | cityscapes | synthetic
    location: str = "fog"  # device path, file, folder, or synthetic domain name
    fps: float | None = 15.0  # pacing for file and synthetic sources; None = as fast as possible
    loop: bool = False  # restart file sources at the end
    max_frames: int | None = None  # stop after this many frames (tests, benchmarks)
    seed: int = 0
    retry_max_s: float = 5.0  # a lost camera is reopened with backoff doubling up to this
    # Synthetic source only: injected faults for tests and soak runs, e.g.
    # "bad=0.01,outage=0.002,outage_s=0.5" (see iapc.runtime.sources.FaultSchedule).
    faults: str | None = None


@dataclass
class AdaptationConfig:
    enabled: bool = True
    preset: str = "paper"
    batch_size: int = 2
    buffer_size: int = 64  # recent frames kept by the daemon
    crop: tuple[int, int] = (128, 256)  # (height, width) of IAPC crops
    lr: float = 3e-4  # best of a 3e-4..1e-2 sweep for the tiny model (docs/BENCHMARKS.md)
    warmup_iters: int = 20
    ema_alpha: float = 0.999
    export_every_steps: int = 50
    export_every_seconds: float | None = None
    sample_every: int = 2  # offer every k-th frame to the daemon
    threads: int = 1  # torch threads in the daemon: it must not starve inference
    nice: int = 10  # CPU priority of the daemon relative to the loop
    device: str = "auto"  # where the daemon adapts: "auto" (CUDA when present), "cpu", "cuda"
    amp_dtype: str | None = None  # "bf16" / "fp16" autocast for the adaptation forwards (GPU)
    # Fraction of wall time the daemon may spend computing (0 < d <= 1): after a step of t
    # seconds it idles t * (1 - d) / d, leaving a shared GPU (or CPU) to the inference loop.
    # 0.5 kept the loop's p99 latency within 1.25x of no adaptation on 2 CPU cores (1.0: 1.38x).
    duty_cycle: float = 0.5
    min_agreement: float = 0.995  # parity gate
    holdout_every: int = 4  # every k-th received frame goes to the health gate, not to training
    # CoTTA-style stochastic restore: after each step, each weight element returns to its source
    # value with this probability (0: off). Counters slow drift on very long streams.
    restore_probability: float = 0.0
    heartbeat_every: float = 1.0  # seconds between the daemon's heartbeats to the supervisor
    seed: int = 0


@dataclass
class HealthConfig:
    """The health gate run before every deployment (see docs/RELIABILITY.md)."""

    enabled: bool = True
    holdout_size: int = 16  # recent frames kept out of training to judge candidates on
    max_class_share: float = 0.9  # collapse: one class takes more of the pixels than this...
    collapse_margin: float = 0.2  # ...and this much more than under the source model
    max_js_vs_serving: float = 0.35  # JS divergence (nats, max ln 2) of class histograms
    max_js_vs_source: float = 0.6
    max_entropy_rise: float = 0.3  # mean normalised entropy may rise this much over serving
    min_memory_agreement: float = 0.3  # pixels where candidate and memory network agree


@dataclass
class RuntimeConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    model: str = "tiny"
    checkpoint: str | None = None  # None: the embedded synthetic source model (trained on first use)
    num_classes: int = 19
    backend: str = "auto"  # auto | tensorrt | onnxruntime | torch
    input_size: tuple[int, int] = (256, 128)  # (width, height) the engine runs at
    publish: str = "tcp://127.0.0.1:5555"
    # Messages ZeroMQ queues per subscriber before it drops that subscriber's masks: small, so a
    # stalled client never holds memory; replays that must see every mask raise it.
    publish_hwm: int = 8
    metrics_port: int | None = None
    store: str | None = None  # engine store folder; None: <run_dir>/store
    run_dir: str | None = None  # state of this runtime (store, adaptation checkpoint, logs)
    keep_versions: int = 5
    inference_threads: int = 1
    curve_keys: str | None = None
    insecure: bool = False
    confidence: bool = False
    status_every: float = 1.0  # seconds between status heartbeats
    daemon_timeout: float = 120.0  # no daemon heartbeat for this long: kill and restart it
    daemon_start_timeout: float = 300.0  # the same before its first heartbeat (loading a model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RuntimeConfig":
        return _from_dict(cls, data, "config")

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else default_cache_dir() / "run"

    def resolved_store(self) -> Path:
        return Path(self.store) if self.store else self.resolved_run_dir() / "store"


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the field's type (lists become tuples); UserError if it cannot be."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
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
            if len(value) == len(items) and all(isinstance(v, int) and not isinstance(v, bool)
                                                for v in value):
                return tuple(value)
    wanted = " or ".join(f"a list of {len(typing.get_args(o))} integers"
                         if typing.get_origin(o) is tuple else getattr(o, "__name__", str(o))
                         for o in options)
    raise UserError(f"{where} must be {wanted}, got {value!r}: fix it in the config file")


def _from_dict(cls, data: dict[str, Any], where: str):
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
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            values[name] = _from_dict(type(default), value, f"{where}.{name}")
        else:
            values[name] = _check_type(value, hints[name], f"{where}.{name}")
    return cls(**values)


def load_yaml_config(path: str | os.PathLike) -> RuntimeConfig:
    """A :class:`RuntimeConfig` from a YAML file (keys as in ``RuntimeConfig.to_dict()``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config file {path} is not valid YAML{where}: fix the syntax") from None
    return RuntimeConfig.from_dict(data)


def parse_size(text: str) -> tuple[int, int]:
    """An engine input size ``WIDTHxHEIGHT``; at least 32x32 (the networks downsample by 8-16)."""
    return _parse_size(text, minimum=32)
