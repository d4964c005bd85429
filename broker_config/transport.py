"""kombu's Redis transport with an atomic hand-off from queue to worker.

kombu takes a message off its Redis list with BRPOP and then, in a second round trip, records
it as unacknowledged (a hash entry plus a sorted-set index) — the record that lets the message
be handed out again if the worker never acknowledges it. Anything that comes between the two
loses the message: Redis restarting, or a network cut that swallows BRPOP's reply (Redis has
popped it; the worker never sees it; kombu gives up after ~27 s and reconnects).

Here the two steps are one: a Lua script (take.lua) pops the next message of the first
non-empty queue and writes its unacknowledged record in the same atomic step. Whatever happens
to the reply, the message is in a queue or in the unacknowledged hash, and kombu's visibility
sweep hands it out again once its timeout passes without an acknowledgement. A script cannot
block, so after an empty take the channel waits server-side for a moment (a BLPOP with a short
timeout on a key nobody writes: 5 ms, doubling to 100 ms while the queues stay empty) and takes
again; under load it takes back to back. The cost is one script call per message instead of one
BRPOP, and an idle worker's 10-200 small commands a second.

A popped item that is not a kombu envelope at all (not JSON, or JSON of another shape) would
end the worker inside kombu; here it goes to the ``undeliverable`` hook (workers record it as a
dead letter) and the worker goes on.

``register()`` makes this the transport of every ``redis://`` URL of the process, so that the
broker URL keeps its scheme: tools that read it (Flower's broker page) see a Redis broker.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from importlib import resources
from queue import Empty
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import NoScriptError

from broker_config.kombu_envelope import envelope_problem
from broker_config.logs import get_logger

log = get_logger(__name__)

#: The atomic take (take.lua).
TAKE_SCRIPT = (resources.files("broker_config") / "take.lua").read_text(encoding="utf-8")
TAKE_SHA = hashlib.sha1(TAKE_SCRIPT.encode()).hexdigest()
#: A key nobody writes: a short BLPOP on it is a wait that keeps the event loop free.
IDLE_KEY = "host:transport:idle"


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
    """Serve ``redis://`` and ``sentinel://`` with these transports in this process
    (idempotent)."""
    TRANSPORT_ALIASES["redis"] = "broker_config.transport:Transport"
    TRANSPORT_ALIASES["sentinel"] = "broker_config.transport:SentinelTransport"


class QoS(kombu_redis.QoS):
    """kombu's, without its second write of a record the take already made.

    kombu records every delivered message as unacknowledged (a pipeline of HSET and ZADD) when
    it hands it to the consumer. A message that came through the take was recorded in the same
    atomic step that popped it: writing it again cost the worker's event loop a round trip per
    message (12% of its CPU in the per-task benchmark). Messages from anywhere else (kombu's
    ``basic_get``) are recorded as kombu does.
    """

    def append(self, message: Any, delivery_tag: Any) -> None:
        recorded: set[str] = self.channel.recorded_by_take  # type: ignore[attr-defined]
        if str(delivery_tag) in recorded:
            recorded.discard(str(delivery_tag))
            virtual.QoS.append(self, message, delivery_tag)  # the in-memory bookkeeping only
            return
        super().append(message, delivery_tag)

    # A broker restart closes the channel's connection while tasks still run. Acknowledging,
    # rejecting or restoring through that channel afterwards made kombu build a Redis client
    # from a connection that is no longer there: AttributeError, and the worker stopped
    # ("Unrecoverable error"; seen twice while a job ran across a Redis restart). On such a
    # channel these only forget the message in memory: it stays recorded as unacknowledged,
    # and the visibility sweep hands it out again once the broker is back (a job's chunk, or
    # a result ingest already has, is taken once however often it runs).

    def _gone(self) -> bool:
        return getattr(self.channel.connection, "client", None) is None

    def ack(self, delivery_tag: Any) -> None:
        if self._gone():
            virtual.QoS.ack(self, delivery_tag)
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self._gone():
            virtual.QoS.ack(self, delivery_tag)
            return
        super().reject(delivery_tag, requeue)

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        if self._gone():
            self._on_collect.cancel()  # type: ignore[attr-defined]
            return None
        return super().restore_unacked_once(stderr)


class Channel(kombu_redis.Channel):
    """Takes messages atomically (pop + unacknowledged record), in place of BRPOP."""

    QoS = QoS

    #: Seconds of server-side wait after an empty take, doubling from the first to the last.
    IDLE_WAIT_S = (0.005, 0.1)
    _idle_s = 0.0
    _sent = ""
    _load = True
    #: Queues consumed with no_ack (reply queues): popped, never recorded.
    _no_ack: frozenset[str] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Delivery tags the take recorded, until kombu's QoS takes them (see ``QoS``).
        self.recorded_by_take: set[str] = set()
        super().__init__(*args, **kwargs)

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))  # type: ignore[attr-defined]
        if not queues:
            return
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        prefix = self.global_keyprefix or ""
        if self._idle_s:
            self._sent = "BLPOP"
            self.client.connection.send_command("BLPOP", prefix + IDLE_KEY,
                                                f"{self._idle_s:.3f}")
            return
        order = [(queue, pri) for pri in self.priority_steps for queue in queues]
        keys = [prefix + self._q_for_pri(q, pri) for q, pri in order]  # type: ignore[attr-defined]
        acked = ["0" if q in self._no_ack else "1" for q, _ in order]
        # By its digest once Redis knows the script; by its text after a NOSCRIPT (a new or
        # restarted Redis), which also loads it.
        self._sent = "EVAL" if self._load else "EVALSHA"
        self.client.connection.send_command(
            self._sent, TAKE_SCRIPT if self._load else TAKE_SHA, len(keys) + 2, *keys,
            prefix + self.unacked_key, prefix + self.unacked_index_key, repr(time.time()),
            *acked)

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        """kombu's, remembering the queues consumed without acknowledgements."""
        if no_ack:
            self._no_ack = self._no_ack | {queue}
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        """kombu's, forgetting a cancelled no-ack queue."""
        queue = self._tag_to_queue.get(consumer_tag)
        self._no_ack = self._no_ack - {queue}
        return super().basic_cancel(consumer_tag)

    def _brpop_read(self, **options: Any) -> bool:
        sent, self._sent = self._sent, ""
        try:
            try:
                reply = self.client.parse_response(self.client.connection, sent, **options)
            except self.connection_errors:  # type: ignore[attr-defined]
                self.client.connection.disconnect()
                raise
            except NoScriptError:
                self._load = True  # nothing was taken: send the script itself next time
                raise Empty() from None
            if sent == "EVAL":
                self._load = False
            if sent == "BLPOP":
                self._idle_s = 0.0  # waited: take again
                # A consumer without an event loop (no sweep timer) swept for expired messages
                # when a poll came back empty; these waits end with a reply, so sweep here.
                transport: Any = self.connection
                if not transport.in_event_loop:
                    transport.cycle.maybe_restore_messages()
                raise Empty()
            if not reply:
                low, high = self.IDLE_WAIT_S
                self._idle_s = min(max(self._idle_s * 2, low), high)
                raise Empty()
            self._idle_s = 0.0
            key, item = reply
            queue = bytes_to_str(key)[len(self.global_keyprefix or ""):].rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)  # type: ignore[attr-defined]
            self._deliver_raw(item, queue)
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _deliver_raw(self, item: bytes, queue: str) -> None:
        try:
            payload = loads(bytes_to_str(item))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            undeliverable(item, queue, "not_json", f"not a JSON envelope: {exc}")
            return
        problem = envelope_problem(payload)
        if problem is not None:
            self._forget(payload)
            undeliverable(item, queue, "not_a_message", problem)
            return
        tag = str(payload["properties"]["delivery_tag"])
        if queue not in self._no_ack:
            self.recorded_by_take.add(tag)
        try:
            self.connection._deliver(payload, queue)
        except self.connection_errors:  # type: ignore[attr-defined]
            raise  # kombu reconnects; the message is recorded and comes back
        except Exception as exc:
            # Anything else a message makes the consumer raise would end the worker (Celery's
            # "Unrecoverable error"): it is the message's fault, so it is the dead letter.
            log.exception("message_not_deliverable", queue=queue)
            self.recorded_by_take.discard(tag)
            self._forget(payload)
            undeliverable(item, queue, "not_a_message", f"{type(exc).__name__}: {exc}"[:300])

    def _forget(self, payload: Any) -> None:
        """Drop the unacknowledged record the take may have written for a bad envelope."""
        properties = payload.get("properties") if isinstance(payload, dict) else None
        tag = properties.get("delivery_tag") if isinstance(properties, dict) else None
        if tag is None:
            return
        try:
            with self.conn_or_acquire() as client:
                client.pipeline().hdel(self.unacked_key, str(tag)).zrem(
                    self.unacked_index_key, str(tag)).execute()
        except self.connection_errors:  # type: ignore[attr-defined]
            pass  # the sweep hands it out once more, and it is dead-lettered then


class Transport(kombu_redis.Transport):
    """``redis://`` as kombu does it, with the atomic take."""

    Channel = Channel
    #: True once a worker's event loop drives it (its timer sweeps for expired messages).
    in_event_loop = False

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """kombu's, remembering that a loop (and its sweep timer) drives this transport."""
        self.in_event_loop = True
        super().register_with_event_loop(connection, loop)


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The atomic take, on the master a group of sentinels names (kombu's Sentinel channel
    finds it, again after every reconnect)."""


class SentinelTransport(Transport):
    """``sentinel://`` as kombu does it, with the atomic take."""

    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port
    driver_name = kombu_redis.SentinelTransport.driver_name
