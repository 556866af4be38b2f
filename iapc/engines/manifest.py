"""The one manifest schema of an engine version, whoever publishes it (``iapc export`` or the
adaptation daemon). The store adds ``format``, ``created`` and ``files`` itself.

Keys:

- ``model``, ``num_classes``, ``method`` (``none``/``bn``/``tent``/``iapc``), ``step`` (adaptation
  steps behind these weights), ``input_size`` ``[W, H]`` the engine takes (the inference loop
  and ``iapc-runtime`` refuse a store whose engines do not fit the frames);
- ``parity``: ``{"agreement", "min_agreement", "frames", "source"}`` of the parity gate;
- ``health``: the health gate's figures, or None when it did not run (``iapc export``, the first
  engine of a run);
- ``timing``: ``{"export_s", "build_s", "ready_s", "latency_ms"}`` where measured (``build_s``:
  the engine build, ``ready_s``: export, build and load until the gate could run it);
- ``backend``, ``precision``, ``device``: the engine target the version was built and gated for
  (:mod:`iapc.engines.targets`; the inference process serves only its own target);
- ``confidence``, ``dynamic_batch``;
- ``config``: the resolved config the weights were made with; ``losses``: the last step's.
"""

from __future__ import annotations

from typing import Any

INPUT_SIZE_KEY = "input_size"


def engine_manifest(*, model: str, num_classes: int, method: str, step: int,
                    input_size: tuple[int, int], parity: dict[str, Any],
                    health: dict[str, Any] | None, config: dict[str, Any],
                    backend: str = "onnxruntime", precision: str = "fp32", device: str = "",
                    confidence: bool = False, dynamic_batch: bool = False,
                    timing: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """The manifest fields of one engine version (``EngineStore.publish(manifest_extra=...)``)."""
    return {"model": model, "num_classes": int(num_classes), "method": method, "step": int(step),
            INPUT_SIZE_KEY: [int(input_size[0]), int(input_size[1])], "parity": parity,
            "health": health, "timing": timing or {}, "backend": backend,
            "precision": precision, "device": device, "confidence": bool(confidence),
            "dynamic_batch": bool(dynamic_batch), "config": config, **extra}


def manifest_input_size(manifest: dict[str, Any]) -> tuple[int, int] | None:
    """The ``[W, H]`` an engine version takes, or None for manifests that do not say."""
    size = manifest.get(INPUT_SIZE_KEY)
    return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) and len(size) == 2 else None
