"""The ZeroMQ wire protocol: the one definition of how masks and status travel (docs/PROTOCOL.md).

Every message is a three-frame multipart message ``[topic, header, payload]``:

- ``topic``: ``b"mask"`` (uint8 class ids), ``b"conf"`` (uint8 confidence map) or ``b"status"``.
  It comes first so that SUB sockets can filter by prefix.
- ``header``: a small UTF-8 JSON object with the integer schema version ``"v"``.
- ``payload``: the raw row-major ``height * width`` bytes of the map (empty for ``status``).

This module has no socket code and no torch: the publisher and every Python client import it, and
it is what other-language clients are written against (through docs/PROTOCOL.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Sequence

import numpy as np

from iapc.contracts.events import DECISIONS, adaptation_types_meaning

PROTOCOL_VERSION = 1

TOPIC_MASK = b"mask"
TOPIC_CONF = b"conf"
TOPIC_STATUS = b"status"
MAP_TOPICS = (TOPIC_MASK, TOPIC_CONF)
TOPICS = (TOPIC_MASK, TOPIC_CONF, TOPIC_STATUS)

ENCODING_CLASS_IDS = "class_ids"
ENCODING_CONFIDENCE = "confidence_u8"
# Each map topic carries exactly one encoding, so a client can trust the topic alone.
TOPIC_ENCODING = {TOPIC_MASK: ENCODING_CLASS_IDS, TOPIC_CONF: ENCODING_CONFIDENCE}

DTYPES = {"uint8": np.dtype(np.uint8)}

MAX_DIM = 16384  # pixels per side; larger is a corrupt header, not a camera
MAX_HEADER_BYTES = 64 * 1024  # a real header is ~250 bytes; refuse to parse anything huge
MAX_INT = 2**63 - 1  # every integer fits an int64 in C++/Rust/Java; JS needs BigInt above 2**53
MAX_NUM_CLASSES = 255  # class ids are uint8 and 255 is "ignore"

NUMBER_OF_FRAMES = 3


# ---------------------------------------------------------------------------------------------
# Errors: one subclass per way a message can be wrong, so clients can count them separately.


class ProtocolError(ValueError):
    """A message that does not follow the wire protocol (docs/PROTOCOL.md)."""


class FrameCountError(ProtocolError):
    """The multipart message does not have exactly three frames."""


class UnknownTopicError(ProtocolError):
    """The topic frame names no topic of this protocol (or the wrong one for the decoder)."""


class HeaderJSONError(ProtocolError):
    """The header frame is not a UTF-8 JSON object."""


class MissingFieldError(ProtocolError):
    """A required header field is absent."""


class FieldTypeError(ProtocolError):
    """A header field has the wrong JSON type."""


class UnsupportedVersionError(ProtocolError):
    """The header's schema version ``v`` is not one this client understands."""


class DimensionError(ProtocolError):
    """Height or width is zero, negative or larger than MAX_DIM, or an integer is out of range."""


class UnsupportedDtypeError(ProtocolError):
    """The dtype or encoding is not one of the protocol's."""


class PayloadSizeError(ProtocolError):
    """The payload does not hold exactly ``height * width * itemsize`` bytes."""


# ---------------------------------------------------------------------------------------------
# Header


# name -> JSON type, in the order they are written (the order is cosmetic: clients look up keys).
_MASK_FIELDS: dict[str, type] = {
    "v": int,
    "frame_id": int,
    "capture_ns": int,
    "publish_ns": int,
    "engine_version": int,
    "height": int,
    "width": int,
    "dtype": str,
    "encoding": str,
    "num_classes": int,
}
# Optional keys: checked when present, absent from older publishers.
OPTIONAL_FIELDS: dict[str, type] = {
    "boot_id": str,  # one per start of the runtime: frame_id restarts at 0 under a new boot_id
}


@dataclass
class MaskHeader:
    """The JSON header of a ``mask`` or ``conf`` message.

    Times are wall-clock ``time.time_ns()`` integers so that a client on the same host (or a
    PTP-synchronised one) can compute capture-to-receive latency. ``extra`` holds keys that this
    version does not define; they survive a decode/encode round trip and are otherwise ignored.
    """

    frame_id: int
    capture_ns: int
    engine_version: int
    height: int
    width: int
    num_classes: int
    publish_ns: int = 0
    dtype: str = "uint8"
    encoding: str = ENCODING_CLASS_IDS
    v: int = PROTOCOL_VERSION
    boot_id: str = ""  # "" when the publisher sent none
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def payload_bytes(self) -> int:
        """Size the payload frame must have."""
        return self.height * self.width * DTYPES[self.dtype].itemsize

    def to_dict(self) -> dict[str, Any]:
        fields = {name: getattr(self, name) for name in _MASK_FIELDS}
        if self.boot_id:
            fields["boot_id"] = self.boot_id
        return {**self.extra, **fields}

    def encode(self) -> bytes:
        """Compact UTF-8 JSON; validates first so a publisher cannot emit a bad header."""
        validate_mask_fields(self.to_dict())
        return _dump_json(self.to_dict())

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> "MaskHeader":
        """Parse and validate a header frame; raises a specific :class:`ProtocolError`."""
        obj = parse_json_object(data)
        validate_mask_fields(obj)
        known = {name: obj[name] for name in _MASK_FIELDS}
        known.update({name: obj[name] for name in OPTIONAL_FIELDS if name in obj})
        extra = {k: v for k, v in obj.items() if k not in _MASK_FIELDS and k not in OPTIONAL_FIELDS}
        return cls(**known, extra=extra)


def _dump_json(obj: Mapping[str, Any]) -> bytes:
    # allow_nan=False: NaN/Infinity are not JSON and other-language parsers reject them.
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise FieldTypeError(f"header is not JSON-serialisable: {err}") from err
    return text.encode("utf-8")


def _reject_constant(name: str) -> None:
    raise HeaderJSONError(f"header contains {name}, which is not valid JSON")


def parse_json_object(data: Any) -> dict[str, Any]:
    """UTF-8 bytes -> dict, or :class:`HeaderJSONError` saying what is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise HeaderJSONError(f"header frame must be bytes, got {type(data).__name__}")
    if len(data) > MAX_HEADER_BYTES:
        raise HeaderJSONError(f"header of {len(data)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        text = bytes(data).decode("utf-8")
        obj = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as err:
        raise HeaderJSONError(f"header is not UTF-8: {err.reason} at byte {err.start}") from err
    except RecursionError as err:  # "[[[[...": nesting deeper than the parser's stack
        raise HeaderJSONError("header JSON is nested too deeply") from err
    except ValueError as err:  # JSONDecodeError, or an integer with too many digits
        raise HeaderJSONError(f"header is not valid JSON: {err}") from err
    if not isinstance(obj, dict):
        raise HeaderJSONError(f"header must be a JSON object, got {type(obj).__name__}")
    return obj


def _require(obj: Mapping[str, Any], name: str, kind: type) -> Any:
    if name not in obj:
        raise MissingFieldError(f"header is missing required field {name!r}")
    value = obj[name]
    # bool is an int subclass in Python, but true/false is not a number in JSON.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise FieldTypeError(
            f"header field {name!r} must be a JSON {_json_type(kind)}, got {type(value).__name__}"
        )
    if kind is int and not 0 <= value <= MAX_INT:
        raise DimensionError(f"header field {name!r}={value} is outside 0..{MAX_INT}")
    return value


def _check_optional(obj: Mapping[str, Any]) -> None:
    for name, kind in OPTIONAL_FIELDS.items():
        if name in obj and not isinstance(obj[name], kind):
            raise FieldTypeError(f"header field {name!r} must be a JSON {_json_type(kind)}, "
                                 f"got {type(obj[name]).__name__}")


def _json_type(kind: type) -> str:
    return {int: "integer", str: "string"}.get(kind, kind.__name__)


def check_version(obj: Mapping[str, Any]) -> None:
    """Reject any schema version but ours: a new major version may change any byte."""
    version = _require(obj, "v", int)
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersionError(
            f"protocol version {version} is not supported (this client speaks v{PROTOCOL_VERSION})"
        )


def validate_mask_fields(obj: Mapping[str, Any]) -> None:
    """Check a mask/conf header dict: version first, then types, ranges, dtype and encoding."""
    check_version(obj)
    for name, kind in _MASK_FIELDS.items():
        _require(obj, name, kind)
    _check_optional(obj)
    for name in ("height", "width"):
        if not 1 <= obj[name] <= MAX_DIM:
            raise DimensionError(f"header field {name!r}={obj[name]} is outside 1..{MAX_DIM}")
    if not 1 <= obj["num_classes"] <= MAX_NUM_CLASSES:
        raise DimensionError(f"num_classes={obj['num_classes']} is outside 1..{MAX_NUM_CLASSES}")
    if obj["dtype"] not in DTYPES:
        raise UnsupportedDtypeError(f"dtype {obj['dtype']!r} is not one of {sorted(DTYPES)}")
    if obj["encoding"] not in TOPIC_ENCODING.values():
        raise UnsupportedDtypeError(
            f"encoding {obj['encoding']!r} is not one of {sorted(TOPIC_ENCODING.values())}"
        )


# ---------------------------------------------------------------------------------------------
# Messages


def _frame_bytes(frame: Any) -> memoryview:
    """A received frame (bytes, or zmq.Frame when received with copy=False) as a memoryview."""
    buffer = getattr(frame, "buffer", frame)  # zmq.Frame exposes its memory without a copy
    try:
        view = memoryview(buffer)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except (TypeError, ValueError) as err:  # no buffer, or a non-contiguous one
        raise ProtocolError(f"frame must be contiguous bytes, got {type(frame).__name__}") from err


def _split_frames(frames: Any) -> tuple[bytes, memoryview, memoryview]:
    if not isinstance(frames, (list, tuple)):
        raise FrameCountError(f"a message is a list of frames, got {type(frames).__name__}")
    if len(frames) != NUMBER_OF_FRAMES:
        raise FrameCountError(
            f"a message has exactly {NUMBER_OF_FRAMES} frames [topic, header, payload], "
            f"got {len(frames)}"
        )
    topic, header, payload = (_frame_bytes(f) for f in frames)
    return bytes(topic), header, payload


def encode_mask_message(topic: bytes, header: MaskHeader, array: np.ndarray) -> list[Any]:
    """Frames ``[topic, header_json, array]`` ready for ``send_multipart(..., copy=False)``.

    The array itself is the payload frame (no copy): it must not be modified until ZeroMQ has
    sent it, so publish a fresh array per frame. A non-contiguous array is copied once.
    """
    if topic not in TOPIC_ENCODING:
        raise UnknownTopicError(f"topic {topic!r} carries no map; use one of {list(MAP_TOPICS)}")
    if header.encoding != TOPIC_ENCODING[topic]:
        raise UnsupportedDtypeError(
            f"topic {topic!r} carries encoding {TOPIC_ENCODING[topic]!r}, header says "
            f"{header.encoding!r}"
        )
    header_bytes = header.encode()
    array = np.asarray(array)
    if array.dtype != DTYPES[header.dtype] or array.shape != (header.height, header.width):
        raise PayloadSizeError(
            f"array {array.dtype}{list(array.shape)} does not match the header "
            f"{header.dtype}[{header.height}, {header.width}]"
        )
    return [topic, header_bytes, np.ascontiguousarray(array)]


def decode_mask_message(frames: Sequence[Any]) -> tuple[bytes, MaskHeader, np.ndarray]:
    """Validate and decode ``[topic, header, payload]`` into (topic, header, (H, W) array).

    The array is a read-only view over the received payload (no copy).
    """
    topic, header_frame, payload = _split_frames(frames)
    if topic not in TOPIC_ENCODING:
        raise UnknownTopicError(f"topic {topic!r} is not a map topic {list(MAP_TOPICS)}")
    header = MaskHeader.decode(header_frame)
    if header.encoding != TOPIC_ENCODING[topic]:
        raise UnsupportedDtypeError(
            f"topic {topic!r} must carry {TOPIC_ENCODING[topic]!r}, got {header.encoding!r}"
        )
    if payload.nbytes != header.payload_bytes:
        raise PayloadSizeError(
            f"payload has {payload.nbytes} bytes, header {header.height}x{header.width} "
            f"{header.dtype} needs {header.payload_bytes}"
        )
    array = np.frombuffer(payload, dtype=DTYPES[header.dtype]).reshape(header.height, header.width)
    array.flags.writeable = False
    return topic, header, array


# ---------------------------------------------------------------------------------------------
# Status


class StatusKind(str, Enum):
    """Every ``kind`` of status message the runtime sends (clients ignore kinds they do not know)."""

    HEARTBEAT = "heartbeat"
    SWAP = "swap"
    ADAPTATION = "adaptation"
    ENGINE = "engine"
    SOURCE = "source"
    END = "end"


@dataclass(frozen=True)
class StatusField:
    name: str
    json_type: str
    meaning: str


@dataclass(frozen=True)
class StatusSpec:
    kind: StatusKind
    sent: str
    fields: tuple[StatusField, ...]


def _f(name: str, json_type: str, meaning: str) -> StatusField:
    return StatusField(name, json_type, meaning)


# The one list of status kinds and their fields: loop.py sends them, docs/PROTOCOL.md's tables
# are generated from it (status_reference_markdown; a test compares).
STATUS_SPECS: tuple[StatusSpec, ...] = (
    StatusSpec(StatusKind.HEARTBEAT, "every `status_every` seconds (1.0 s) while the runtime runs", (
        _f("time_ns", "integer", "wall clock when the heartbeat was made"),
        _f("engine_version", "integer", "engine version in service"),
        _f("frames_in", "integer", "frames taken from the source so far"),
        _f("frames_published", "integer", "masks published so far"),
        _f("frames_failed", "integer", "frames skipped because they could not be segmented"),
        _f("frames_unreadable", "integer", "image files of an `--images` folder that could not be decoded"),
        _f("swaps", "integer", "hot-swaps so far"),
        _f("capture_dropped", "integer", "frames the capture thread replaced by a newer one before the loop took them"),
        _f("handoff_dropped", "integer", "frames *not offered to the adaptation daemon* (its queue was full); they were still segmented and published, so nothing is missing from the stream"),
        _f("publish_dropped", "integer", "masks the PUB socket refused (all subscriber queues full)"),
        _f("fps", "number", "published frames per second, recent average"),
        _f("latency_ms", "object", "`{\"p50\", \"p90\", \"p99\"}` capture-to-publish latency, numbers or null before the first frame"),
        _f("adaptation", "object", "latest adaptation statistics (`step`, `buffer`, one number per loss); `{}` before the first"),
        _f("decisions", "object", "count per decision kind: "
           + ", ".join(f"`{d}`" for d in DECISIONS)),
        _f("source", "object", "`{\"state\": \"ok\" | \"lost\", \"outages\": integer}`"),
        _f("miou", "number or null", "running mIoU of the published masks against the source's labels, when it has them"),
        _f("miou_recent", "object or null", "`{\"frames\", \"serving\", \"source\", \"gain\"}`: mIoU over the last (up to 100) labelled frames that were also segmented by the source engine (about 2 per second), for the engine in service and for the source engine, and their difference; null without labels or without the source engine"),
    )),
    StatusSpec(StatusKind.SWAP, "after each hot-swap, before the first mask of the new engine", (
        _f("from", "integer or null", "previous engine version"),
        _f("to", "integer", "new engine version"),
        _f("at_frame", "integer", "first `frame_id` segmented by the new engine"),
        _f("switch_ms", "number", "time the loop spent switching"),
        _f("ready_s", "number", "load and warm-up time, off the hot path"),
        _f("time_ns", "integer", "wall clock of the switch"),
    )),
    StatusSpec(StatusKind.ADAPTATION, "on each adaptation decision", (
        _f("type", "string", adaptation_types_meaning()
           + "; the events table below says who sends each"),
        _f("step", "integer", "adaptation step"),
        _f("version", "integer", "`version`: the stored engine version"),
        _f("parity", "number", "`version`: agreement of the engine with PyTorch"),
        _f("health", "object or null", "`version`/`rejected`: health gate figures"),
        _f("export_s", "number", "`version`: export time"),
        _f("statistics_updates", "integer", "`version`: no-gradient BatchNorm statistics updates of the state since it left the source model (the statistics phase of a new domain)"),
        _f("source_share", "number", "`version`: share of the source network's BatchNorm statistics in the engine's, chosen label-free before the export (methods that choose it: the stream preset)"),
        _f("republished_from", "integer", "`version`, on a domain shift only: the stored version whose engine is served again at once, without an export (the domain's banked engine, or the source network's for a new domain)"),
        _f("gate", "string", "`rejected`: `parity` or `health`"),
        _f("reason", "string", "`rejected`, `rollback`, `export_failed`, `daemon_*`: why"),
        _f("restarts", "integer", "`daemon_*`: restarts so far"),
        _f("domain", "integer", "`domain_shift`: the domain entered (ids of the daemon's bank); `version` with `republished_from`: the domain it is served for"),
        _f("from", "integer", "`domain_shift`: the domain left"),
        _f("known", "boolean", "`domain_shift`: true when the domain was seen before and its adapted state comes back"),
        _f("score", "number", "`domain_shift`: how far the new frames are from the domain left (descriptor z-score)"),
    )),
    StatusSpec(StatusKind.ENGINE, "when a stored engine cannot be used here", (
        _f("state", "string", "`rejected`: the engine failed to load (its files fail the store's check, or it was built for another engine target) or to warm up"),
        _f("version", "integer", "the rejected version"),
        _f("reason", "string", "why"),
        _f("in_service", "integer", "the version still serving"),
    )),
    StatusSpec(StatusKind.SOURCE, "on camera outages", (
        _f("state", "string", "`lost` (camera unplugged, read failures) or `resumed`"),
        _f("reason", "string", "`lost`: why"),
        _f("outages", "integer", "outages so far"),
        _f("at_frame", "integer", "`lost`: frames captured before the outage"),
        _f("outage_s", "number", "`resumed`: how long the source was gone"),
        _f("retries", "integer", "`resumed`: reopen attempts so far"),
        _f("time_ns", "integer", "wall clock of the event"),
    )),
    StatusSpec(StatusKind.END, "once, the last message of a stream, when the runtime stops", (
        _f("reason", "string", "`source_ended` (end of file/folder, or `--max-frames`) or `stopped` (SIGINT/SIGTERM)"),
        _f("frames_published", "integer", "masks published in this run"),
        _f("engine_version", "integer", "engine version in service at the end"),
        _f("time_ns", "integer", "wall clock of the end"),
    )),
)
STATUS_KINDS = tuple(kind.value for kind in StatusKind)  # documented kinds; clients ignore others


def encode_status(status: Mapping[str, Any], boot_id: str = "") -> list[bytes]:
    """Frames ``[b"status", json, b""]``. Needs a ``kind``; fills ``v``, ``publish_ns`` and
    ``boot_id`` (when given).

    Numpy scalars become JSON numbers and NaN/Infinity become null, so a statistic that is not
    (yet) finite cannot stop the loop from publishing its status.
    """
    obj = {"v": PROTOCOL_VERSION, "publish_ns": time.time_ns(), **json_safe(dict(status))}
    if boot_id:
        obj["boot_id"] = boot_id
    validate_status_fields(obj)
    return [TOPIC_STATUS, _dump_json(obj), b""]


def json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars -> Python, non-finite floats -> None, tuples -> lists."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def validate_status_fields(obj: Mapping[str, Any]) -> None:
    check_version(obj)
    _require(obj, "kind", str)
    _require(obj, "publish_ns", int)
    _check_optional(obj)


def decode_status(frames: Sequence[Any]) -> dict[str, Any]:
    """Validate and decode a status message into its JSON dict (payload frame ignored)."""
    topic, header_frame, _payload = _split_frames(frames)
    if topic != TOPIC_STATUS:
        raise UnknownTopicError(f"topic {topic!r} is not {TOPIC_STATUS!r}")
    obj = parse_json_object(header_frame)
    validate_status_fields(obj)
    return obj


def status_reference_markdown() -> str:
    """The status-kind tables of docs/PROTOCOL.md, made from STATUS_SPECS (a test compares)."""
    parts = []
    for spec in STATUS_SPECS:
        parts.append(f"#### `{spec.kind.value}`: sent {spec.sent}\n\n"
                     "| key | JSON type | meaning |\n| --- | --- | --- |\n"
                     + "".join(f"| `{f.name}` | {f.json_type} | {f.meaning} |\n"
                               for f in spec.fields))
    return "\n".join(parts)


# The generated sections of docs/PROTOCOL.md: (first line, last line, generator).
def _generated_sections():
    from iapc.contracts.events import event_reference_markdown

    return (("<!-- status kinds: generated from runtime/protocol.py STATUS_SPECS -->",
             "<!-- end of status kinds -->", status_reference_markdown),
            ("<!-- events: generated from iapc/contracts/events.py EVENT_SPECS -->",
             "<!-- end of events -->", event_reference_markdown))


def generated_sections(document: str) -> list[tuple[str, str]]:
    """(section as in ``document``, section as generated now) for each generated section."""
    pairs = []
    for first, last, make in _generated_sections():
        start = document.index(first) + len(first) + 1
        pairs.append((document[start:document.index(last)], make()))
    return pairs


def regenerate_document(document: str) -> str:
    """``document`` (docs/PROTOCOL.md) with its generated sections made anew."""
    for first, last, make in _generated_sections():
        start = document.index(first) + len(first) + 1
        document = document[:start] + make() + document[document.index(last):]
    return document


if __name__ == "__main__":  # python -m iapc.runtime.protocol docs/PROTOCOL.md
    import sys
    from pathlib import Path

    doc = Path(sys.argv[1])
    doc.write_text(regenerate_document(doc.read_text()))
