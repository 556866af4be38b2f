"""The wire format: byte-exact round trips, specific errors for each malformation, fuzzing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iapc.runtime import protocol as p
from iapc.runtime.protocol import MaskHeader


def make_header(**overrides) -> MaskHeader:
    fields = dict(frame_id=7, capture_ns=1_700_000_000_123_456_789, publish_ns=1_700_000_000_200_000_000,
                  engine_version=3, height=4, width=6, num_classes=19)
    fields.update(overrides)
    return MaskHeader(**fields)


def header_dict(**overrides) -> dict:
    return {**make_header().to_dict(), **overrides}


def frames_with(header_obj: dict, payload: bytes = bytes(24), topic: bytes = p.TOPIC_MASK) -> list:
    return [topic, json.dumps(header_obj).encode(), payload]


def test_header_json_is_compact_and_has_every_field():
    obj = json.loads(make_header().encode())
    assert obj == {"v": 1, "frame_id": 7, "capture_ns": 1_700_000_000_123_456_789,
                   "publish_ns": 1_700_000_000_200_000_000, "engine_version": 3, "height": 4,
                   "width": 6, "dtype": "uint8", "encoding": "class_ids", "num_classes": 19}
    assert b" " not in make_header().encode()


def test_mask_round_trip_is_byte_exact():
    mask = np.arange(24, dtype=np.uint8).reshape(4, 6)
    frames = p.encode_mask_message(p.TOPIC_MASK, make_header(), mask)
    # what goes on the wire, as a receiver sees it
    wire = [bytes(memoryview(f)) for f in frames]
    assert wire[2] == mask.tobytes()
    topic, header, array = p.decode_mask_message(wire)
    assert topic == p.TOPIC_MASK and header == make_header()
    assert array.dtype == np.uint8 and array.shape == (4, 6)
    assert array.tobytes() == mask.tobytes()
    assert not array.flags.writeable  # a view over the received bytes


def test_payload_frame_is_the_array_itself_not_a_copy():
    mask = np.zeros((4, 6), np.uint8)
    payload = p.encode_mask_message(p.TOPIC_MASK, make_header(), mask)[2]
    assert np.shares_memory(payload, mask)


def test_confidence_topic_round_trip():
    conf = np.full((4, 6), 200, np.uint8)
    header = make_header(encoding=p.ENCODING_CONFIDENCE)
    topic, decoded, array = p.decode_mask_message(p.encode_mask_message(p.TOPIC_CONF, header, conf))
    assert topic == p.TOPIC_CONF and decoded.encoding == "confidence_u8"
    assert np.array_equal(array, conf)


def test_unknown_keys_are_kept_as_extra_and_ignored():
    frames = frames_with(header_dict(exposure_us=120, camera="front"))
    _, header, _ = p.decode_mask_message(frames)
    assert header.extra == {"exposure_us": 120, "camera": "front"}
    assert json.loads(header.encode())["camera"] == "front"


@pytest.mark.parametrize(
    "frames, error, words",
    [
        ([p.TOPIC_MASK, make_header().encode()], p.FrameCountError, "exactly 3 frames"),
        ([p.TOPIC_MASK, make_header().encode(), bytes(24), b""], p.FrameCountError, "got 4"),
        ([p.TOPIC_MASK, b"{not json", bytes(24)], p.HeaderJSONError, "not valid JSON"),
        ([p.TOPIC_MASK, b"\xff\xfe", bytes(24)], p.HeaderJSONError, "not UTF-8"),
        ([p.TOPIC_MASK, b"[1, 2]", bytes(24)], p.HeaderJSONError, "JSON object"),
        ([p.TOPIC_MASK, b'{"v": NaN}', bytes(24)], p.HeaderJSONError, "NaN"),
        (frames_with(header_dict(), payload=bytes(23)), p.PayloadSizeError, "23 bytes"),
        (frames_with(header_dict(v=2)), p.UnsupportedVersionError, "version 2"),
        (frames_with({k: v for k, v in header_dict().items() if k != "width"}),
         p.MissingFieldError, "'width'"),
        (frames_with(header_dict(height="4")), p.FieldTypeError, "'height' must be a JSON integer"),
        (frames_with(header_dict(frame_id=True)), p.FieldTypeError, "'frame_id'"),
        (frames_with(header_dict(height=-4)), p.DimensionError, "'height'"),
        (frames_with(header_dict(width=100_000)), p.DimensionError, "'width'=100000"),
        (frames_with(header_dict(capture_ns=2**64)), p.DimensionError, "'capture_ns'"),
        (frames_with(header_dict(dtype="float32")), p.UnsupportedDtypeError, "float32"),
        (frames_with(header_dict(encoding="rle")), p.UnsupportedDtypeError, "rle"),
        (frames_with(header_dict(), topic=b"depth"), p.UnknownTopicError, "depth"),
        (frames_with(header_dict(), topic=p.TOPIC_CONF), p.UnsupportedDtypeError, "confidence_u8"),
    ],
)
def test_malformed_messages_raise_specific_errors(frames, error, words):
    with pytest.raises(error, match=None) as info:
        p.decode_mask_message(frames)
    assert words in str(info.value)


def test_version_is_checked_before_other_fields():
    # a future major version may rename everything: the client must say "version", not "missing"
    with pytest.raises(p.UnsupportedVersionError):
        p.decode_mask_message(frames_with({"v": 2, "something": "else"}))


def test_encoder_refuses_array_that_does_not_match_header():
    with pytest.raises(p.PayloadSizeError, match="does not match"):
        p.encode_mask_message(p.TOPIC_MASK, make_header(), np.zeros((6, 4), np.uint8))
    with pytest.raises(p.PayloadSizeError):
        p.encode_mask_message(p.TOPIC_MASK, make_header(), np.zeros((4, 6), np.int64))
    with pytest.raises(p.DimensionError):
        p.encode_mask_message(p.TOPIC_MASK, make_header(height=0), np.zeros((0, 6), np.uint8))


def test_status_round_trip():
    frames = p.encode_status({"kind": "swap", "from": 2, "to": 3, "at_frame": 99})
    assert frames[0] == p.TOPIC_STATUS and frames[2] == b""
    status = p.decode_status([bytes(f) for f in frames])
    assert status["v"] == 1 and status["kind"] == "swap" and status["to"] == 3
    assert isinstance(status["publish_ns"], int) and status["publish_ns"] > 0


def test_status_values_are_made_plain_json():
    status = {"kind": "heartbeat", "fps": np.float32(29.5), "loss": float("nan"),
              "latency_ms": {"p50": np.float64("inf"), "p99": 3.5}, "versions": (1, np.int64(2))}
    text = p.encode_status(status)[1]
    assert b"NaN" not in text and b"Infinity" not in text
    decoded = p.decode_status([p.TOPIC_STATUS, text, b""])
    assert decoded["fps"] == 29.5 and decoded["loss"] is None
    assert decoded["latency_ms"] == {"p50": None, "p99": 3.5} and decoded["versions"] == [1, 2]


def test_status_errors():
    with pytest.raises(p.MissingFieldError, match="'kind'"):
        p.encode_status({"engine_version": 3})
    with pytest.raises(p.UnknownTopicError):
        p.decode_status([p.TOPIC_MASK, b'{"v":1,"kind":"x","publish_ns":1}', b""])
    with pytest.raises(p.UnsupportedVersionError):
        p.decode_status([p.TOPIC_STATUS, b'{"v":9,"kind":"x","publish_ns":1}', b""])
    with pytest.raises(p.FrameCountError):
        p.decode_status([p.TOPIC_STATUS, b'{"v":1,"kind":"x","publish_ns":1}'])


# -- fuzzing: whatever arrives, the decoders raise ProtocolError or return, nothing else ---------

_frame = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([p.TOPIC_MASK, p.TOPIC_CONF, p.TOPIC_STATUS]),
    st.builds(lambda d: json.dumps(d).encode(),
              st.dictionaries(st.sampled_from(list(header_dict()) + ["kind", "x"]),
                              st.one_of(st.integers(-2**70, 2**70), st.text(max_size=8),
                                        st.booleans(), st.none(), st.floats()),
                              max_size=12)),
    st.builds(lambda d: json.dumps(d).encode(),
              st.fixed_dictionaries({k: st.just(v) for k, v in header_dict().items()})),
    st.text(max_size=32).map(str.encode),
)
_frames = st.one_of(
    st.lists(_frame, max_size=5),
    st.tuples(st.sampled_from([p.TOPIC_MASK, p.TOPIC_CONF]), _frame, st.binary(max_size=48)),
    st.one_of(st.none(), st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=3)),
)


# derandomize: the same 400 examples on every run; no deadline: on a loaded machine a time limit
# per example would fail by chance (decoding cost is bounded by test_deeply_nested_json_...)
@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(_frames)
def test_fuzzed_frames_only_raise_protocol_error(frames):
    for decode in (p.decode_mask_message, p.decode_status):
        try:
            decode(frames)
        except p.ProtocolError:
            pass


def test_deeply_nested_json_is_a_protocol_error():
    with pytest.raises(p.HeaderJSONError):
        p.decode_mask_message([p.TOPIC_MASK, b"[" * 30_000 + b"]" * 30_000, b""])
    with pytest.raises(p.HeaderJSONError, match="exceeds"):
        p.decode_mask_message([p.TOPIC_MASK, b"[" * 100_000, b""])


def test_protocol_document_lists_every_status_kind_and_field_from_the_typed_list():
    """docs/PROTOCOL.md's status tables are generated from STATUS_SPECS and must stay equal."""
    from pathlib import Path

    from iapc.runtime.protocol import STATUS_SPECS, StatusKind, status_reference_markdown

    from iapc.runtime.protocol import generated_sections

    doc = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()
    for in_document, generated in generated_sections(doc):
        assert in_document == generated, \
            "regenerate: python -m iapc.runtime.protocol docs/PROTOCOL.md"
    assert status_reference_markdown() in doc
    assert {spec.kind for spec in STATUS_SPECS} == set(StatusKind)
    for key in ("boot_id", "Security (CURVE)", "ZMQ_CURVE_SERVERKEY", "handoff_dropped",
                "CLOCK_REALTIME", "before the first mask of the new engine", "Slow clients"):
        assert key in doc, key


def test_the_runtime_sends_status_kinds_and_events_of_the_typed_lists_only():
    """Senders and readers name status kinds and events through StatusKind and EventType: no
    string literal of either is left, and every event type has a sender."""
    import re
    from pathlib import Path

    from iapc.contracts.events import EventType

    root = Path(__file__).resolve().parents[2]
    senders = {"daemon": sorted(str(p.relative_to(root)) for p in (root / "daemon").glob("*.py")),
               "supervisor": ["runtime/supervisor.py"]}
    readers = ["runtime/loop.py", "runtime/sources.py", "runtime/cli.py", "replay/report.py"]
    for path in readers + [p for paths in senders.values() for p in paths]:
        text = (root / path).read_text()
        assert not re.findall(r'"kind"\)? ?[:=!]=? ?"\w+"', text), path
        assert not re.findall(r'"type"\)? ?[:=!]=? ?"\w+"', text), path
    from iapc.contracts.events import EVENT_SPECS

    for spec in EVENT_SPECS:
        sent = "".join((root / p).read_text() for p in senders[spec.sender])
        assert f"EventType.{spec.type.name}" in sent, f"{spec.type.value} has no sender"
    assert {spec.type for spec in EVENT_SPECS} == set(EventType)


def test_events_count_as_their_decisions():
    from iapc.contracts.events import DECISIONS, EventType, decision_of, event

    assert decision_of(event(EventType.VERSION, version=3)) == "deployed"
    assert decision_of(event(EventType.REJECTED, gate="health")) == "rejected_health"
    assert decision_of(event(EventType.REJECTED)) == "rejected_parity"
    assert decision_of(event(EventType.DAEMON_HUNG, reason="x")) == "daemon_hung"
    assert decision_of({"type": "from_a_newer_daemon"}) == "from_a_newer_daemon"
    assert len(set(DECISIONS)) == len(DECISIONS)
    with pytest.raises(ValueError):
        event("not_a_type")
