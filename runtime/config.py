"""The runtime's configuration: typed dataclasses (:mod:`iapc.settings`), read from YAML,
overridden from the command line (flags derived from the same declarations), range-checked once,
saved beside every run and in every engine manifest. ``None`` means "use the default". The
method's settings are :class:`~iapc.method_config.AdaptConfig`, embedded as ``method``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iapc.errors import UserError
from iapc.engines.targets import BACKENDS, PRECISIONS
from iapc.method_config import AdaptConfig
from iapc.options import parse_size as _parse_size
from iapc.settings import check, from_plain, setting, to_plain


def default_cache_dir() -> Path:
    """Where first-use artefacts (synthetic data, the embedded source model) are cached."""
    from iapc.cache import cache_dir

    return cache_dir()


SOURCE_KINDS = ("camera", "video", "images", "cityscapes", "camvid", "synthetic")


@dataclass
class SourceConfig:
    kind: str = setting("synthetic", "kind of frame source", choices=SOURCE_KINDS, cli=False)
    location: str = setting("fog", "device path, file, folder, or synthetic domain name", cli=False)
    fps: float | None = setting(15.0, "pace file and synthetic sources at this rate (0 or None: as "
                                "fast as possible)", minimum=0, flag="--fps")
    loop: bool = setting(False, "restart file sources at the end")
    max_frames: int | None = setting(None, "stop after this many frames", minimum=1)
    seed: int = setting(0, "seed of the synthetic stream", minimum=0, cli=False)
    retry_max_s: float = setting(5.0, "a lost camera is reopened with backoff doubling up to this",
                                 above=0, cli=False)
    # Synthetic source only: injected faults for tests and soak runs, e.g.
    # "bad=0.01,outage=0.002,outage_s=0.5" (see iapc.runtime.sources.FaultSchedule).
    faults: str | None = setting(None, "injected faults of the synthetic source", cli=False)


@dataclass
class DaemonConfig:
    """How the daemon runs whichever method ``RuntimeConfig.method`` names."""

    enabled: bool = setting(True, "adapt on the stream (False: serve the source engine)", cli=False)
    batch_size: int = setting(2, "frames per adaptation step", minimum=1, cli=False)
    buffer_size: int = setting(64, "recent frames kept by the daemon", minimum=1, cli=False)
    export_every_steps: int = setting(50, "export a candidate engine every N steps", minimum=1)
    export_every_seconds: float | None = setting(None, "also export every T seconds", above=0)
    sample_every: int = setting(2, "offer every k-th frame to the daemon", minimum=1, cli=False)
    threads: int = setting(1, "torch threads in the daemon: it must not starve inference",
                           minimum=1, cli=False)
    nice: int = setting(10, "CPU priority of the daemon relative to the loop", minimum=0,
                        maximum=19, cli=False)
    # Off by default: under sustained load from other processes an idle-class daemon gets no
    # CPU at all, not even to end on SIGTERM (seen in the test suite beside a benchmark).
    idle_priority: bool = setting(False, "run the daemon under the OS's idle scheduling class "
                                  "(Linux SCHED_IDLE): it computes only on CPU time nothing "
                                  "else wants, and a waking loop preempts it at once (else: "
                                  "nice)", cli=False)
    device: str = setting("auto", "where the daemon adapts: auto (CUDA when present), cpu, cuda",
                          flag="--adapt-device")
    # Fraction of wall time the daemon may spend computing (0 < d <= 1): after a step of t
    # seconds it idles t * (1 - d) / d, leaving a shared GPU (or CPU) to the inference loop.
    # 0.5 kept the loop's p99 latency within 1.25x of no adaptation on 2 CPU cores (1.0: 1.38x).
    duty_cycle: float = setting(0.5, "fraction of wall time the daemon may compute", above=0,
                                maximum=1)
    min_agreement: float = setting(0.995, "parity gate: pixel agreement engine vs PyTorch",
                                   minimum=0, maximum=1, cli=False)
    holdout_every: int = setting(4, "every k-th received frame goes to the health gate, not to "
                                 "training (0: none)", minimum=0, cli=False)
    heartbeat_every: float = setting(1.0, "seconds between the daemon's heartbeats", above=0,
                                     cli=False)
    # A bank of adapted states per recognised domain (docs/METHOD.md, "Domain changes"): on a
    # return to a domain seen before, its state and engine come back at once; a new domain
    # starts from the source model with its own normalisation statistics.
    domain_bank: bool = setting(True, "keep adapted states per recognised domain")
    domain_bank_size: int = setting(4, "domains kept in the bank", minimum=1, cli=False)
    shift_z: float = setting(1.3, "descriptor z-score above which a frame is far from its "
                             "domain", above=0, cli=False)
    shift_window: int = setting(12, "recent frames of which 3/4 far make a domain shift",
                                minimum=1, cli=False)
    shift_match_factor: float = setting(1.5, "after a shift, the frames go to the nearest banked "
                                        "domain when they score under this times shift_z",
                                        above=0, cli=False)
    shift_return_window: int = setting(4, "a return to a banked domain is taken after this many "
                                       "far frames when they are clearly that domain's (0: after "
                                       "the full window)", minimum=0, cli=False)
    domain_min_frames: int = setting(24, "frames a domain needs before it can be left or "
                                     "recognised", minimum=1, cli=False)
    # After a change to a new domain (and at a fresh start) the state's BatchNorm statistics are first
    # brought to the new frames by no-gradient updates, one per received frame, far cheaper than
    # gradient steps and deployed at the same cadence; self-training resumes once they have
    # followed the domain.
    shift_statistics_frames: int = setting(64, "after a change to a new domain, the next N received "
                                           "frames only move BatchNorm statistics (no gradient step)",
                                           minimum=0, cli=False)


@dataclass
class HealthConfig:
    """The health gate run before every deployment (see docs/RELIABILITY.md)."""

    enabled: bool = setting(True, "run the health gate before deploying", cli=False)
    holdout_size: int = setting(16, "recent frames kept out of training to judge candidates on",
                                minimum=1, cli=False)
    max_class_share: float = setting(0.9, "collapse: one class takes more of the pixels than "
                                     "this...", minimum=0, maximum=1, cli=False)
    collapse_margin: float = setting(0.2, "...and this much more than under the source model",
                                     minimum=0, maximum=1, cli=False)
    max_js_vs_serving: float = setting(0.35, "JS divergence (nats, max ln 2) of class histograms",
                                       minimum=0, cli=False)
    max_js_vs_source: float = setting(0.6, "the same against the source model", minimum=0, cli=False)
    max_entropy_rise: float = setting(0.3, "mean normalised entropy may rise this much over "
                                      "serving", minimum=0, cli=False)
    min_memory_agreement: float = setting(0.3, "pixels where candidate and memory network agree",
                                          minimum=0, maximum=1, cli=False)
    max_quality_drop: float = setting(0.02, "the candidate's label-free quality (flip and "
                                      "prototype agreement) may fall this far below the source "
                                      "network's (1: no such check)", minimum=0, maximum=1,
                                      cli=False)


# Where the runtime's method differs from AdaptConfig's defaults (which are the offline paper run).
RUNTIME_METHOD = {"method": "iapc", "preset": "stream"}


def streaming_method() -> AdaptConfig:
    """The runtime's method: IAPC with the streaming preset (its own lr, warm-up, EMA)."""
    return AdaptConfig(**RUNTIME_METHOD)


@dataclass
class RuntimeConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    method: AdaptConfig = field(default_factory=streaming_method)
    adaptation: DaemonConfig = field(default_factory=DaemonConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    model: str = setting("tiny", "architecture of the checkpoint")
    checkpoint: str | None = setting(None, "source checkpoint (default: the embedded synthetic one)")
    num_classes: int = setting(19, "classes of the model", minimum=1, maximum=255)
    backend: str = setting("auto", "engine backend", choices=BACKENDS)
    # The engine is built, gated and stored at this precision (iapc.export.engines); the parity
    # gate's bound is adaptation.min_agreement, at most REDUCED_PRECISION_MIN_AGREEMENT for fp16.
    precision: str = setting("auto", "engine precision: auto (fp16 with TensorRT, fp32 with ONNX "
                             "Runtime), fp16 or fp32", choices=PRECISIONS)
    # None: the size the checkpoint was trained at (recorded in it), else 1024x512.
    input_size: tuple[int, int] | None = setting(None, "engine input WIDTHxHEIGHT (default: the "
                                                 "checkpoint's training size)", minimum=32)
    publish: str = setting("tcp://127.0.0.1:5555", "ZeroMQ PUB address")
    # Messages ZeroMQ queues per subscriber before it drops that subscriber's masks: small, so a
    # stalled client never holds memory; replays that must see every mask raise it.
    publish_hwm: int = setting(8, "masks queued per slow subscriber before its masks are dropped",
                               minimum=1)
    metrics_port: int | None = setting(None, "serve Prometheus metrics on 127.0.0.1:PORT",
                                       minimum=1, maximum=65535)
    store: str | None = setting(None, "engine store folder (default: RUN_DIR/store)")
    run_dir: str | None = setting(None, "runtime state folder (default: ~/.cache/iapc/run)")
    keep_versions: int = setting(5, "engine versions kept in the store", minimum=1, cli=False)
    inference_threads: int = setting(1, "ONNX Runtime intra-op threads", minimum=1, cli=False)
    curve_keys: str | None = setting(None, "encrypt with CURVE and admit only the clients in "
                                     "DIR/authorized (make keys with 'iapc keys --out DIR'); "
                                     "needed for non-loopback addresses")
    insecure: bool = setting(False, "allow binding a non-loopback address without CURVE")
    confidence: bool = setting(False, "also publish confidence maps")
    status_every: float = setting(1.0, "seconds between status heartbeats", above=0, cli=False)
    daemon_timeout: float = setting(120.0, "no daemon heartbeat for this long: kill and restart "
                                    "it", above=0, cli=False)
    daemon_start_timeout: float = setting(300.0, "the same before its first heartbeat (loading a "
                                          "model)", above=0, cli=False)

    def to_dict(self) -> dict[str, Any]:
        return {**to_plain(self), "method": self.method.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RuntimeConfig":
        data = dict(data)
        method = data.pop("method", None)
        cfg = from_plain(cls, data, "config")
        if method is not None:
            if isinstance(method, dict):  # a saved ad-hoc preset is not a runtime setting
                method = {k: v for k, v in method.items() if k != "preset_definition"}
            # keys left out keep the runtime's method, not AdaptConfig's offline defaults
            cfg.method = from_plain(AdaptConfig, {**RUNTIME_METHOD, **method}, "config.method")
        return cfg

    def check(self) -> None:
        check(self, "config")

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else default_cache_dir() / "run"

    def resolved_store(self) -> Path:
        from iapc.contracts.run_folder import STORE

        return Path(self.store) if self.store else self.resolved_run_dir() / STORE


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
