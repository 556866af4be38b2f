"""The one typed list of events the adaptation daemon and the supervisor send to the inference
process (over :class:`~iapc.contracts.handoff.EventSender`), and of the decisions they count.

Senders build events with :func:`event` (an :class:`EventType` and its fields); the inference
loop republishes every event but ``stats`` on the status topic as kind ``adaptation`` (its ``type``
is the event's) and counts it as a decision (:func:`decision_of`: heartbeat ``decisions``,
``iapc_runtime_events``); the replay report and the tests read them by the same names.
docs/PROTOCOL.md's table of events is generated from :data:`EVENT_SPECS`
(:func:`event_reference_markdown`, a test compares). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping

GATES = ("parity", "health")  # the gates a candidate engine passes, in order


class EventType(str, Enum):
    """Every ``type`` of event sent to the inference process."""

    VERSION = "version"
    REJECTED = "rejected"
    ROLLBACK = "rollback"
    EXPORT_FAILED = "export_failed"
    DOMAIN_SHIFT = "domain_shift"
    STATS = "stats"
    DAEMON_HUNG = "daemon_hung"
    DAEMON_RESTART = "daemon_restart"


@dataclass(frozen=True)
class EventSpec:
    type: EventType
    sender: str  # "daemon" or "supervisor"
    meaning: str
    decisions: tuple[str, ...]  # the decision kinds it counts ("" none: not a decision)


EVENT_SPECS: tuple[EventSpec, ...] = (
    EventSpec(EventType.VERSION, "daemon", "a new engine passed parity and health and was stored",
              ("deployed",)),
    EventSpec(EventType.REJECTED, "daemon", "a gate refused a candidate",
              tuple(f"rejected_{gate}" for gate in GATES)),
    EventSpec(EventType.ROLLBACK, "daemon",
              "adaptation state returned to the last deployed one", ("rollback",)),
    EventSpec(EventType.EXPORT_FAILED, "daemon", "writing the engine failed, e.g. disk full",
              ("export_failed",)),
    EventSpec(EventType.DOMAIN_SHIFT, "daemon", "the frames moved to another domain: its banked "
              "engine (a new domain: the source network's) is served at once, then its state is "
              "exported", ("domain_shift",)),
    EventSpec(EventType.STATS, "daemon", "adaptation figures every 5 steps (not republished: "
              "they become the heartbeat's `adaptation`)", ()),
    EventSpec(EventType.DAEMON_HUNG, "supervisor", "the adaptation daemon's heartbeat stopped: "
              "it is killed", ("daemon_hung",)),
    EventSpec(EventType.DAEMON_RESTART, "supervisor", "the supervisor restarted the adaptation "
              "daemon", ("daemon_restart",)),
)
# Decisions and faults the inference process counts itself (heartbeat ``decisions``).
LOCAL_DECISIONS = ("engine_rejected", "bad_frame", "source_lost", "source_resumed")
DECISIONS = tuple(d for spec in EVENT_SPECS for d in spec.decisions) + LOCAL_DECISIONS


def event(kind: EventType, **fields: Any) -> dict[str, Any]:
    """The JSON object of one event: ``{"type": kind, **fields}``."""
    return {"type": EventType(kind).value, **fields}


def event_type(message: Mapping[str, Any]) -> EventType | None:
    """The type of a received event, None for a type this version does not know."""
    try:
        return EventType(message.get("type"))
    except ValueError:
        return None


def decision_of(message: Mapping[str, Any]) -> str:
    """The decision kind a received event counts as: ``deployed``, ``rejected_health``, ...
    (an unknown type counts under its own name)."""
    kind = event_type(message)
    if kind is EventType.REJECTED:
        gate = message.get("gate", GATES[0])
        return f"rejected_{gate}"
    spec = next((s for s in EVENT_SPECS if s.type is kind), None)
    if spec is None or not spec.decisions:
        return str(message.get("type", "unknown"))
    return spec.decisions[0]


def adaptation_types_meaning() -> str:
    """The ``type`` field of the ``adaptation`` status kind, for docs/PROTOCOL.md."""
    return ", ".join(f"`{s.type.value}` ({s.meaning})" for s in EVENT_SPECS
                     if s.type is not EventType.STATS)


def event_reference_markdown() -> str:
    """The events table of docs/PROTOCOL.md, made from EVENT_SPECS (a test compares)."""
    rows = "".join(f"| `{s.type.value}` | {s.sender} | {s.meaning} | "
                   f"{', '.join(f'`{d}`' for d in s.decisions) or '—'} |\n" for s in EVENT_SPECS)
    local = ", ".join(f"`{d}`" for d in LOCAL_DECISIONS)
    return ("| `type` | sent by | when | counted in `decisions` as |\n| --- | --- | --- | --- |\n"
            + rows + f"\nThe inference process counts {local} itself.\n")
