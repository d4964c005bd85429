"""Messages written straight onto a queue, as any producer (or an attacker) could: on Redis the
kombu envelope host's workers read, on RabbitMQ an AMQP message, and every way of getting
either wrong."""

from __future__ import annotations

import base64
import json
import pickle
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def envelope(body: bytes, headers: dict[str, Any] | None, queue: str = "tweets",
             content_type: str = "application/json") -> bytes:
    """A kombu Redis envelope carrying ``body`` (as kombu itself writes one)."""
    return json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": "utf-8",
        "content-type": content_type, "headers": headers,
        "properties": {"correlation_id": (headers or {}).get("id", ""), "reply_to": "",
                       "delivery_mode": 2, "priority": 0, "body_encoding": "base64",
                       "delivery_info": {"exchange": queue, "routing_key": queue},
                       "delivery_tag": str(uuid.uuid4())},
    }).encode()


def _tampered(task: bytes, **changes: Any) -> bytes:
    """A kombu envelope of a good task with some of its fields made wrong."""
    raw = json.loads(envelope(task, task_headers()))
    for key, value in changes.items():
        if key in ("body_encoding",):
            raw["properties"][key] = value
        elif key == "routing_key":
            raw["properties"]["delivery_info"][key] = value
        else:
            raw[key] = value
    return json.dumps(raw).encode()


def task_headers(task: str = "host.analyse", task_id: str | None = None,
                 **extra: Any) -> dict[str, Any]:
    """Protocol 2 headers for ``task``."""
    return {"lang": "py", "task": task, "id": task_id or str(uuid.uuid4()), "retries": 0,
            "root_id": None, "parent_id": None, "group": None, "argsrepr": "", "kwargsrepr": "",
            "origin": "raw-test", **extra}


def task_body(*args: Any, **kwargs: Any) -> bytes:
    """Protocol 2 body: [args, kwargs, embed]."""
    return json.dumps([list(args), kwargs, {"callbacks": None, "errbacks": None,
                                           "chain": None, "chord": None}]).encode()


@dataclass(frozen=True)
class RawMessage:
    """A task message as any producer could publish it, on either broker."""

    body: bytes
    headers: dict[str, Any]
    content_type: str = "application/json"


def bad_messages() -> dict[str, RawMessage]:
    """One message per class of bad task message, by the dead-letter reason it must get: the
    classes a producer can send on any broker (Redis or RabbitMQ)."""
    good = {"data": {"id": "1", "text": "fine"}}
    return {
        "unsupported_protocol": RawMessage(json.dumps(
            {"task": "host.analyse", "id": str(uuid.uuid4()), "args": [good], "kwargs": {}})
            .encode(), {}),
        "content_disallowed": RawMessage(pickle.dumps(([good], {}, {})), task_headers(),
                                         "application/x-python-serialize"),
        "content_disallowed:yaml": RawMessage(b"- 1", task_headers(), "application/x-yaml"),
        "content_disallowed:compression": RawMessage(
            zlib.compress(task_body(good)), task_headers(compression="application/x-gzip")),
        "undecodable:compression": RawMessage(task_body(good),
                                              task_headers(compression="application/x-gzip")),
        "undecodable": RawMessage(b"\xff\xfe not json", task_headers()),
        "invalid_task": RawMessage(b'{"args": []}', task_headers()),
        "unknown_task": RawMessage(task_body(good), task_headers("host.analyze")),
        "bad_arguments": RawMessage(task_body(good, "one too many"), task_headers()),
        "bad_arguments:kwargs": RawMessage(task_body(good, colour="red"), task_headers()),
        "oversize": RawMessage(task_body("x" * 9_000_000), task_headers()),
        "invalid_task:task_not_a_string": RawMessage(task_body(good),
                                                     {**task_headers(), "task": ["x"]}),
        "invalid_task:task_a_number": RawMessage(task_body(good), {**task_headers(), "task": 123}),
        "invalid_task:no_id": RawMessage(task_body(good), {
            k: v for k, v in task_headers().items() if k != "id"}),
        "invalid_task:bad_eta": RawMessage(task_body(good), task_headers(eta={"not": "a date"})),
        "invalid_task:bad_retries": RawMessage(task_body(good), task_headers(retries="many")),
        "invalid_task:bad_timelimit": RawMessage(task_body(good), task_headers(timelimit="1")),
        "invalid_task:eta_not_a_date": RawMessage(task_body(good), task_headers(eta="yesterday")),
    }


def malformed() -> dict[str, bytes]:
    """One raw Redis queue item per class of bad message, by the dead-letter reason it must
    get: items that are no kombu envelope at all, and every bad task message, enveloped."""
    good = {"data": {"id": "1", "text": "fine"}}
    items = {
        "not_json": b"not json {",
        "not_a_message": b'{"hello": "world"}',
        "not_a_message:list": b"[1, 2, 3]",
        "not_a_message:headers": json.dumps({**json.loads(envelope(task_body(good), None)),
                                             "headers": "oops"}).encode(),
        "not_a_message:body_encoding": _tampered(task_body(good), body_encoding="rot13"),
        "not_a_message:not_base64": _tampered(b"", body="%%% not base64 %%%"),
        "not_a_message:content_type": _tampered(task_body(good), **{"content-type": 123}),
        "not_a_message:routing_key": _tampered(task_body(good), routing_key=5),
    }
    for kind, m in bad_messages().items():
        items[kind] = envelope(m.body, m.headers, content_type=m.content_type)
    return items


def publish_amqp(url: str, messages: Iterable[RawMessage], queue: str = "tweets") -> None:
    """Publish each message as it is (no serializer) to ``queue`` on a RabbitMQ broker."""
    from kombu import Connection, Producer

    with Connection(url) as conn:
        producer = Producer(conn.channel())
        for m in messages:
            producer.publish(m.body, exchange="", routing_key=queue, headers=m.headers,
                             content_type=m.content_type, content_encoding="utf-8",
                             delivery_mode=2)
