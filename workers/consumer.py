"""The worker's message consumer: what arrives on a queue is either a valid host task or a dead
letter, and nothing starts while the worker is out of rotation.

Celery's own consumer ends the worker on some malformed messages and drops others with only a
log line. ``HostConsumer`` looks at every message before Celery's task strategy does:

* out of rotation (the local gate closed): a work-queue message is handed back at once, and the
  work-queue subscriptions are undone, so a worker somebody re-subscribed hands back at most
  what it had reserved — it never spins;
* not a task host can run — another serializer or compression than JSON, protocol v1, a body
  that is not JSON or not ``[args, kwargs, embed]``, an unknown task name, arguments that do not
  bind to the task's signature, a message over ``HOST_MAX_MESSAGE_BYTES`` — becomes a
  dead-letter record (reason code, queue, the raw message truncated) and is acknowledged: the
  worker keeps serving, the failure is charged to the sender, never to the worker.

Messages that are not even a kombu envelope never reach here: the Redis transport hands them
to ``dead_letter_raw`` (see broker_config.transport).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from datetime import UTC, datetime
from functools import cache
from typing import Any

import orjson
from celery.worker.consumer import Consumer

from broker_config.app import settings_of
from broker_config.logs import get_logger
from broker_config.queues import is_dead_queue
from workers import gate, handback
from workers.deadletter import store_of
from workers.inbound import truncate
from workers.runtime import RUNTIME

log = get_logger(__name__)
#: kombu's *_log_error helpers format %-style: they get a standard logger.
_kombu_log = logging.getLogger(__name__)

#: The reasons RabbitMQ gives for dead-lettering (x-death); any other value is a forgery.
BROKER_DEATHS = frozenset({"delivery_limit", "rejected", "expired", "maxlen"})


class HostConsumer(Consumer):
    """Celery's consumer with host's checks in front of every task message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        RUNTIME.consumer = self

    def cancel_task_queue(self, queue: Any) -> None:
        """Stop consuming ``queue``, noting first which consumer tag read it: a message it
        delivered may still be handed back to it (RabbitMQ) after the tag is gone."""
        if self.task_consumer is not None:  # type: ignore[attr-defined]
            handback.remember_tags(self.task_consumer)  # type: ignore[attr-defined]
        super().cancel_task_queue(queue)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's handler, behind the gate and the message checks."""
        receive = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            queue = str((message.delivery_info or {}).get("routing_key"))
            if gate.holds_back(queue):
                return self._hand_back(message, queue)
            if is_dead_queue(queue):
                return self._dead_lettered_by_broker(message)
            problem = self._problem(message)
            if problem is not None:
                return self._dead_letter(message, *problem)
            if self._due_past_horizon(message):
                return self._hold_then_hand_back(message, queue)
            return receive(message)

        return on_task_received

    # Celery's own dead ends, recorded before Celery logs and settles the message.

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        """An unregistered task name: a dead letter; the caller's result says NotRegistered."""
        self._record(message, "unknown_task", str(exc))
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A task message Celery cannot read."""
        self._record(message, "invalid_task", str(exc))
        super().on_invalid_task(body, message, exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """A body that does not decode."""
        self._record(message, "undecodable", str(exc))
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        """A message with no task in it."""
        self._record(message, "not_a_task", "no task name in the headers or body")
        super().on_unknown_message(body, message)

    # --- internals ------------------------------------------------------------------------

    def _problem(self, message: Any) -> tuple[str, str] | None:
        """(reason code, detail) when the message is no task host can run, else None."""
        settings = settings_of(self.app)
        headers = message.headers
        if not isinstance(headers, dict) or "task" not in headers:
            return ("unsupported_protocol", "no task header: protocol v1 or not a Celery message")
        if not isinstance(headers["task"], str) or not isinstance(headers.get("id"), str):
            return ("invalid_task", "the task and id headers must be strings")
        for key in ("retries", "eta", "expires", "timelimit", "parent_id", "root_id", "group"):
            if key in headers and not _plausible(key, headers[key]):
                return ("invalid_task", f"header {key}={truncate(headers[key], 40)!s}")
        if message.content_type != "application/json":
            return ("content_disallowed", f"content type {message.content_type!r}: host takes JSON")
        if headers.get("compression"):
            return ("content_disallowed", f"compression {headers['compression']!r}")
        body = message.body
        if len(body) > settings.max_message_bytes:
            return ("oversize", f"{len(body)} bytes > HOST_MAX_MESSAGE_BYTES "
                                f"({settings.max_message_bytes})")
        try:
            decoded = _decode(body)
        except (ValueError, RecursionError) as exc:
            return ("undecodable", f"body is not JSON: {exc}")
        if not (isinstance(decoded, list) and len(decoded) == 3 and isinstance(decoded[0], list)
                and isinstance(decoded[1], dict)):
            return ("invalid_task", "body is not [args, kwargs, embed]")
        task = self.app.tasks.get(str(headers["task"]))
        if task is None:
            return None  # Celery's on_unknown_task records it and fails the caller's result
        try:
            _signature(task).bind(*decoded[0], **decoded[1])
        except TypeError as exc:
            return ("bad_arguments", f"{headers['task']}: {exc}")
        return None

    def _due_past_horizon(self, message: Any) -> bool:
        """On RabbitMQ: a task due later than the hold horizon (half the broker's consumer
        timeout). Held until then, RabbitMQ would close the channel and the worker with it."""
        settings = settings_of(self.app)
        eta = message.headers.get("eta")
        if not settings.broker_is_amqp or not eta:
            return False
        try:
            due = datetime.fromisoformat(str(eta))
        except ValueError:
            return False
        if due.tzinfo is None:
            due = due.replace(tzinfo=UTC)
        return (due - datetime.now(UTC)).total_seconds() > settings.hold_horizon

    def _hold_then_hand_back(self, message: Any, queue: str) -> None:
        """Keep a task that is due too late for at most the hold horizon, then hand it back to
        the tail of its queue: one re-publish per horizon until it is due soon enough for
        Celery's own countdown, and never a message held past the broker's timeout."""
        settings = settings_of(self.app)
        source = handback.source_queue(message, self.task_consumer)  # type: ignore[attr-defined]
        headers = message.headers
        log.info("task_due_later_held", task_id=headers.get("id"), queue=queue,
                 eta=headers.get("eta"), hold_s=settings.hold_horizon)
        qos = self.qos  # type: ignore[attr-defined]
        qos.increment_eventually()  # a held message must not take the worker's prefetch slot

        def give_back() -> None:
            try:
                handback.hand_back(self.app, message, source or queue,
                                   self.connection_errors)  # type: ignore[attr-defined]
            finally:
                qos.decrement_eventually()

        self.timer.call_after(settings.hold_horizon, give_back)

    def _dead_lettered_by_broker(self, message: Any) -> None:
        """A message RabbitMQ dead-lettered (past a quorum queue's delivery limit): a record
        with the broker's reason and the queue it left, and the caller told; never run."""
        headers = message.headers if isinstance(message.headers, dict) else {}
        deaths = headers.get("x-death")
        death = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
        reason = str(death.get("reason") or headers.get("x-first-death-reason") or "")
        reason = reason if reason in BROKER_DEATHS else "dead_lettered"  # bounded: a metric label
        origin = str(death.get("queue") or headers.get("x-first-death-queue") or "?")
        detail = (f"RabbitMQ dead-lettered it from {origin} ({reason}, "
                  f"{death.get('count', '?')} time(s)) before it ran")
        self._record(message, reason, detail, queue=origin, stage="broker")
        _settle(message, self.connection_errors)  # type: ignore[attr-defined]
        self._fail_caller(message, reason, detail)

    def _dead_letter(self, message: Any, code: str, detail: str) -> None:
        self._record(message, code, detail)
        _settle(message, self.connection_errors)  # type: ignore[attr-defined]
        self._fail_caller(message, code, detail)

    def _record(self, message: Any, code: str, detail: str, queue: str | None = None,
                stage: str = "consumer") -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        queue = queue or (message.delivery_info or {}).get("routing_key")
        RUNTIME.rejected[code] += 1
        log.warning("message_dead_lettered", reason=code, detail=detail, queue=queue,
                    task_id=headers.get("id"), task=headers.get("task"), worker=self.hostname)
        record = {"status": "rejected", "ref": str(headers.get("id") or ""), "reason": code,
                  "detail": detail, "raw": truncate(message.body), "stage": stage,
                  "queue": queue, "task": headers.get("task"), "worker": self.hostname,
                  "at": time.time()}
        try:
            store_of(self.app).record([record])
        except Exception as exc:  # the record is logged above: never lose the worker for it
            log.error("dead_letter_write_failed", error=str(exc), reason=code)

    def _fail_caller(self, message: Any, code: str, detail: str) -> None:
        """Tell a waiting caller its message was rejected (its result would stay PENDING)."""
        headers = message.headers if isinstance(message.headers, dict) else {}
        task_id = headers.get("id")
        if not isinstance(task_id, str) or not task_id:
            return
        try:
            self.app.backend.store_result(
                task_id, {"status": "rejected", "reason": code, "detail": detail}, "SUCCESS")
        except Exception as exc:
            log.error("rejection_result_failed", error=str(exc), task_id=task_id)

    def _hand_back(self, message: Any, queue: str) -> None:
        RUNTIME.requeued[queue] += 1
        headers = message.headers if isinstance(message.headers, dict) else {}
        source = handback.source_queue(message, self.task_consumer)  # type: ignore[attr-defined]
        log.info("task_requeued_by_gate", task_id=headers.get("id"), queue=queue,
                 worker=self.hostname, reason="gate closed; unstarted")
        handback.hand_back(self.app, message, source or queue,
                           self.connection_errors)  # type: ignore[attr-defined]
        gate.undo_subscriptions(self, f"received from {queue} while out of rotation")


def _plausible(key: str, value: Any) -> bool:
    """Whether a protocol-2 header has a shape Celery can use (None is always fine)."""
    if value is None:
        return True
    if key == "retries":
        return isinstance(value, int) and not isinstance(value, bool)
    if key == "timelimit":
        return isinstance(value, (list, tuple)) and len(value) == 2 and all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value)
    if key in ("eta", "expires"):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "expires":
            return True
        try:
            datetime.fromisoformat(str(value))
        except ValueError:
            return False
        return isinstance(value, str)
    return isinstance(value, str)


def dead_letter_raw(app: Any, raw: bytes, queue: str, code: str, detail: str) -> None:
    """A message taken off ``queue`` that is not even a kombu envelope (the Redis transport's
    hook): recorded as a dead letter, never redelivered."""
    RUNTIME.rejected[code] += 1
    log.warning("message_dead_lettered", reason=code, detail=detail, queue=queue)
    record = {"status": "rejected", "ref": "", "reason": code, "detail": detail,
              "raw": truncate(raw), "stage": "transport", "queue": queue, "at": time.time()}
    try:
        store_of(app).record([record])
    except Exception as exc:
        log.error("dead_letter_write_failed", error=str(exc), reason=code)


def _decode(body: bytes | str) -> Any:
    """The body as JSON, to check it: orjson (a fifth of the time), or the standard library
    where orjson refuses what Celery's reader accepts (NaN, a lone surrogate, deep nesting)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def _settle(message: Any, errors: Any) -> None:
    """Acknowledge a dead-lettered message: it is recorded, and must not come back."""
    message.ack_log_error(_kombu_log, errors)


@cache
def _signature(task: Any) -> inspect.Signature:
    return inspect.signature(task.run)
