"""Decoding Celery's events off Redis the way kombu does, without kombu's machinery."""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from healthcheck.intake.ear import _decode

EVENT = {"type": "worker-wear", "hostname": "w1@x", "timestamp": 1.5, "wear": {"cpu": [1, 2]}}


def envelope(event: object, **changes: object) -> dict[str, object]:
    return {"body": base64.b64encode(json.dumps(event).encode()).decode(),
            "content-encoding": "utf-8", "content-type": "application/json",
            "headers": {"hostname": "w1@x"},
            "properties": {"delivery_mode": 1, "body_encoding": "base64", "priority": 0},
            **changes}


def test_kombus_layout_and_any_other_decode_alike() -> None:
    plain = json.dumps(envelope(EVENT)).encode()
    reordered = json.dumps(dict(reversed(list(envelope(EVENT).items())))).encode()
    compact = json.dumps(envelope(EVENT), separators=(",", ":")).encode()
    assert _decode(plain) == _decode(reordered) == _decode(compact) == [EVENT]


def test_a_body_that_is_not_base64_encoded() -> None:
    raw = envelope(EVENT)
    raw["body"], raw["properties"] = json.dumps(EVENT), {}
    assert _decode(json.dumps(raw).encode()) == [EVENT]


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_anything_else_is_dropped_not_raised(data: bytes) -> None:
    result = _decode(data)
    assert isinstance(result, list) and all(isinstance(e, dict) for e in result)


def test_task_events_buffered_into_one_message_are_all_taken() -> None:
    """A worker with an event loop sends its task events in batches: a list body."""
    batch = [{"type": "task-received", "uuid": "a"}, {"type": "task-succeeded", "uuid": "a"}]
    assert _decode(json.dumps(envelope([*batch, 7])).encode()) == batch


def test_a_body_that_is_no_event_is_dropped() -> None:
    assert _decode(json.dumps(envelope("text")).encode()) == []
    assert _decode(b'{"body": "!!!", "properties": {"body_encoding": "base64"}}') == []
