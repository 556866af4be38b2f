"""Runtime metrics: Prometheus exposition on loopback, plus small in-loop meters.

- :class:`RuntimeMetrics`: the counters, gauges and latency histogram that a Prometheus server
  scrapes from ``http://127.0.0.1:PORT/metrics``.
- :class:`LatencyStats`: running p50/p90/p99 over the last N samples (for logs and status).
- :class:`RateMeter`: frames per second over a sliding time window.
"""

from __future__ import annotations

import collections
import time
from typing import Callable

import numpy as np

# Capture -> publish latency of a 1-100 ms pipeline; the last buckets catch stalls.
LATENCY_BUCKETS_S = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 1.0,
)
METRICS_HOST = "127.0.0.1"


class RuntimeMetrics:
    """Prometheus metrics of one runtime process, in their own registry.

    A private registry (not the library's global one) lets tests and several runtimes in one
    process each create their own without name clashes.
    """

    def __init__(self, port: int | None = None, registry: object | None = None) -> None:
        # prometheus_client is imported here: protocol-only clients never need it.
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.latency_seconds = Histogram(
            "iapc_latency_seconds", "Capture to publish latency per frame",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.fps = Gauge("iapc_fps", "Published frames per second (sliding window)", registry=r)
        self.frames_published = Counter(
            "iapc_frames_published", "Masks published", registry=r
        )
        self.frames_dropped = Counter(
            "iapc_frames_dropped", "Frames dropped, by pipeline stage", ["stage"], registry=r
        )
        self.swaps = Counter("iapc_engine_swaps", "Engine hot-swaps", registry=r)
        self.engine_version = Gauge("iapc_engine_version", "Version of the live engine", registry=r)
        self.adaptation_loss = Gauge(
            "iapc_adaptation_loss", "Last IAPC adaptation loss", registry=r
        )
        self.adaptation_steps = Counter(
            "iapc_adaptation_steps", "IAPC adaptation steps taken", registry=r
        )
        # mIoU (percent) over the recent labelled frames compared live (runtime.live_score)
        self.live_miou = Gauge("iapc_live_miou", "mIoU over the recent labelled frames, by engine "
                               "(serving: the engine in service; source: the source engine on "
                               "the same frames)", ["engine"], registry=r)
        # one label per decision kind: iapc.contracts.events.DECISIONS
        self.events = Counter(
            "iapc_runtime_events", "Adaptation decisions and faults survived, by kind", ["kind"],
            registry=r,
        )
        self._server = None
        self.port: int | None = None
        if port is not None:
            self.start_http(port)

    # -- updates from the loop -------------------------------------------------------------

    def observe_frame(self, capture_ns: int, publish_ns: int) -> None:
        """One published frame: count it and record its capture -> publish latency."""
        self.frames_published.inc()
        self.latency_seconds.observe(max(0, publish_ns - capture_ns) / 1e9)

    def count_drop(self, stage: str, count: int = 1) -> None:
        self.frames_dropped.labels(stage=stage).inc(count)

    def count_swap(self, new_version: int) -> None:
        self.swaps.inc()
        self.engine_version.set(new_version)

    def count_event(self, kind: str, count: int = 1) -> None:
        self.events.labels(kind=kind).inc(count)

    def observe_live_miou(self, serving: float | None, source: float | None) -> None:
        for engine, value in (("serving", serving), ("source", source)):
            if value is not None:
                self.live_miou.labels(engine=engine).set(value)

    def observe_adaptation(self, loss: float, steps: int = 1) -> None:
        self.adaptation_loss.set(loss)
        self.adaptation_steps.inc(steps)

    # -- exposition ------------------------------------------------------------------------

    def start_http(self, port: int = 0) -> int:
        """Serve /metrics on 127.0.0.1 only; port 0 picks a free one. Returns the port."""
        from prometheus_client import start_http_server

        from iapc.errors import UserError

        if self._server is not None:
            return self.port
        try:
            self._server, _thread = start_http_server(port, addr=METRICS_HOST,
                                                      registry=self.registry)
        except OSError as err:
            raise UserError(
                f"cannot serve metrics on {METRICS_HOST}:{port}: {err.strerror}; pick a free "
                "--metrics-port"
            ) from err
        self.port = self._server.server_port
        return self.port

    def close(self) -> None:
        """Stop the HTTP server if one runs; safe to call more than once."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "RuntimeMetrics":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LatencyStats:
    """Percentiles over the last ``window`` samples, kept in a fixed numpy ring buffer."""

    def __init__(self, window: int = 1000) -> None:
        if window < 1:
            raise ValueError("LatencyStats window must be at least 1 sample")
        self._samples = np.zeros(window, dtype=np.float64)  # (window,) ring buffer
        self._next = 0
        self.count = 0  # samples ever added

    def add(self, value: float) -> None:
        self._samples[self._next] = value
        self._next = (self._next + 1) % len(self._samples)
        self.count += 1

    def window_values(self) -> np.ndarray:
        """The samples currently in the window (order not preserved)."""
        return self._samples[: min(self.count, len(self._samples))]

    def percentiles(self, qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, float]:
        """``{"p50": ..., "p90": ..., "p99": ...}``; NaN before the first sample."""
        values = self.window_values()
        if values.size == 0:
            return {f"p{q:g}": float("nan") for q in qs}
        found = np.percentile(values, qs)
        return {f"p{q:g}": float(v) for q, v in zip(qs, found)}

    def reset(self) -> None:
        self._next = 0
        self.count = 0


class RateMeter:
    """Events per second over the last ``window_s`` seconds (e.g. published fps)."""

    def __init__(self, window_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._ticks: collections.deque[float] = collections.deque()

    def tick(self) -> None:
        now = self._clock()
        self._ticks.append(now)
        self._forget_before(now - self.window_s)

    def rate(self) -> float:
        """Ticks per second between the oldest and newest tick in the window; 0 if < 2 ticks."""
        self._forget_before(self._clock() - self.window_s)
        if len(self._ticks) < 2:
            return 0.0
        span = self._ticks[-1] - self._ticks[0]
        return (len(self._ticks) - 1) / span if span > 0 else 0.0

    def _forget_before(self, cutoff: float) -> None:
        while self._ticks and self._ticks[0] < cutoff:
            self._ticks.popleft()
