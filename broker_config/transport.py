"""kombu's Redis transport with one window of its acknowledgement emulation closed.

kombu takes a message off its Redis list with BRPOP and then, in a second round trip, records
it as unacknowledged (a hash entry plus a sorted-set index) — the record that lets the message
be handed out again if the worker never acknowledges it. When Redis goes away between the two
(a restart, a failover, a network cut), the message is in no Redis structure any more, and
Celery drops its in-memory copy when the connection resets: it is lost.

Here a message whose unacknowledged record could not be written is kept in the process as an
orphan, and put back at the head of its queue as soon as the channel can talk to Redis again,
before the next BRPOP. If the record had in fact been written (only the reply was lost), the
orphan is not put back: the record brings the message back after the visibility timeout, and
no message is run twice for this reason.

What stays open: Redis killed after it executed a BRPOP (and wrote it to its append-only file)
but before the reply reached the worker. That is one event-loop turn of the server, not a round
trip of the client.

A popped item that is not a kombu envelope at all (not JSON, or JSON of another shape) would
end the worker inside kombu; here it goes to the ``undeliverable`` hook (workers record it as a
dead letter) and the worker goes on.

``register()`` makes this the transport of every ``redis://`` URL of the process, so that the
broker URL keeps its scheme: tools that read it (Flower's broker page) see a Redis broker.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from queue import Empty
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from workers.logs import get_logger

log = get_logger(__name__)

#: (payload, exchange, routing key, delivery tag) of messages taken off a queue whose
#: unacknowledged record could not be written; shared by every channel of the process.
_ORPHANS: list[tuple[dict[str, Any], str, str, str]] = []
_LOCK = threading.Lock()


def _log_undeliverable(raw: bytes, queue: str, code: str, detail: str) -> None:
    log.warning("message_undeliverable", queue=queue, reason=code, detail=detail,
                size=len(raw))


#: Called with (raw bytes, queue, reason code, detail) for a popped item that is no envelope.
undeliverable: Callable[[bytes, str, str, str], None] = _log_undeliverable


def on_undeliverable(hook: Callable[[bytes, str, str, str], None]) -> None:
    """Where popped items that are not kombu envelopes go (workers: the dead letters)."""
    global undeliverable
    undeliverable = hook


def register() -> None:
    """Serve ``redis://`` with this transport in this process (idempotent)."""
    TRANSPORT_ALIASES["redis"] = "broker_config.transport:Transport"


def envelope_problem(payload: Any) -> str | None:
    """Why ``payload`` cannot be a kombu message (None when it can)."""
    if not isinstance(payload, dict):
        return "a JSON " + type(payload).__name__ + ", not an envelope"
    properties = payload.get("properties")
    if not isinstance(properties, dict) or "delivery_tag" not in properties:
        return "no properties.delivery_tag"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "properties.delivery_info is not an object"
    if not isinstance(payload.get("body", ""), str):
        return "body is not a string"
    headers = payload.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return "headers is not an object"
    return None


def orphans() -> int:
    """How many taken messages wait to be put back (for tests and reports)."""
    with _LOCK:
        return len(_ORPHANS)


class QoS(kombu_redis.QoS):
    """Remembers a message whose unacknowledged record failed, instead of forgetting it."""

    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)
        except self.channel.connection_errors:  # type: ignore[attr-defined]
            delivery = message.delivery_info
            with _LOCK:
                _ORPHANS.append((message._raw, delivery["exchange"], delivery["routing_key"],
                                 delivery_tag))
            log.warning("message_orphaned", delivery_tag=delivery_tag,
                        routing_key=delivery["routing_key"],
                        note="broker lost while recording it; put back on reconnect")
            raise


class Channel(kombu_redis.Channel):
    """Puts orphans back before every BRPOP, once Redis answers again."""

    QoS = QoS

    def _brpop_start(self, timeout: float | None = None) -> None:
        if _ORPHANS:
            self._put_back_orphans()
        super()._brpop_start(timeout)  # type: ignore[misc]

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's own, but an item that is no envelope goes to the hook instead of raising
        # out of the event loop (which ends the worker, and loses the item).
        try:
            try:
                dest_item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:  # type: ignore[attr-defined]
                self.client.connection.disconnect()
                raise
            if not dest_item:
                raise Empty()
            dest, item = dest_item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)  # type: ignore[attr-defined]
            try:
                payload = loads(bytes_to_str(item))
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                undeliverable(item, dest, "not_json", f"not a JSON envelope: {exc}")
                return True
            problem = envelope_problem(payload)
            if problem is not None:
                undeliverable(item, dest, "not_a_message", problem)
                return True
            self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _put_back_orphans(self) -> None:
        with _LOCK:
            pending = list(_ORPHANS)
            _ORPHANS.clear()
        while pending:
            payload, exchange, routing_key, tag = pending[0]
            try:
                with self.conn_or_acquire() as client:
                    put = client.transaction(
                        functools.partial(self._put_back, payload=payload, exchange=exchange,
                                          routing_key=routing_key, tag=tag),
                        self.unacked_key, value_from_callable=True)
            except self.connection_errors:  # type: ignore[attr-defined]
                with _LOCK:
                    _ORPHANS[:0] = pending  # still unreachable: try again before the next BRPOP
                return
            pending.pop(0)
            log.warning("message_put_back" if put else "message_recorded_after_all",
                        delivery_tag=tag, routing_key=routing_key)

    def _put_back(self, pipe: Any, payload: dict[str, Any], exchange: str, routing_key: str,
                  tag: str) -> bool:
        recorded = pipe.hexists(self.unacked_key, tag)
        pipe.multi()
        if not recorded:
            self._do_restore_message(payload, exchange, routing_key, pipe, leftmost=False)  # type: ignore[attr-defined]
        return not recorded


class Transport(kombu_redis.Transport):
    """``redis://`` as kombu does it, with the orphan-keeping channel."""

    Channel = Channel
