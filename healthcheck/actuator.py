"""Acting on verdicts: host's control commands, addressed to one worker and confirmed by its reply."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from celery import Celery
from kombu.exceptions import OperationalError

from broker_config.signing import sign
from healthcheck.errors import ControlUnavailable


@dataclass(frozen=True, slots=True)
class Reply:
    """A worker's answer to a control command.

    ``sent_at`` is the checker's clock; the times in ``body`` are the worker's, and are never
    subtracted from the checker's.
    """

    worker: str
    command: str
    sent_at: float
    answered: bool
    body: dict[str, Any] = field(default_factory=dict)


def control_reply(app: Celery, command: str, worker: str, arguments: dict[str, Any] | None = None,
                  timeout: float = 1.0, connection: Any = None,
                  secret: str = "") -> dict[str, Any] | None:
    """Send ``command`` to ``worker`` alone, signed with ``secret``; its reply, or None.

    Raises:
        ValueError: no worker named (kombu would broadcast to every worker).
        ControlUnavailable: the broker could not carry the command.
    """
    if not worker or not worker.strip():
        raise ValueError("a control command needs one named worker; refusing to broadcast")
    broken: tuple[type[BaseException], ...] = (OperationalError, OSError,
                                               *_errors_of(connection))
    try:
        signed = sign(secret, command, arguments or {}, worker, time.time())
        replies = app.control.broadcast(command, arguments=signed, destination=[worker],
                                        reply=True, timeout=timeout, connection=connection) or []
    except broken as exc:
        raise ControlUnavailable(f"{type(exc).__name__}: {exc}") from exc
    for reply in replies:
        if worker in reply:
            answer = reply[worker]
            return answer if isinstance(answer, dict) else {"ok": answer}
    return None


def _errors_of(connection: Any) -> tuple[type[BaseException], ...]:
    """The errors a broker connection's own client raises when the broker goes away (redis-py's
    ConnectionError on a connection the server closed, after a restart)."""
    if connection is None:
        return ()
    return (*connection.connection_errors, *connection.channel_errors)


class Actuator(Protocol):
    """Takes workers in and out of rotation, signing each command with the leader's ``epoch``."""

    epoch: int
    #: The shard the leader leads (None: unsharded): named in each command.
    shard: int | None

    def drain(self, worker: str, reason: str, hold: str = "") -> Reply:
        """Out of rotation: gate closed, work queues no longer consumed; ``hold``: what it is
        held out as (``STATE/cause``), which the worker reports back."""

    def admit(self, worker: str, reason: str) -> Reply:
        """Back in rotation."""

    def recycle(self, worker: str, reason: str) -> Reply:
        """Restart the pool of a worker out of rotation."""


class CeleryActuator:
    """The real one: ``host_drain`` / ``host_admit`` over Celery's remote control.

    Args:
        app: the host app.
        timeout: how long to wait for the worker's reply.
    """

    def __init__(self, app: Celery, timeout: float = 1.0, secret: str = "") -> None:
        self.app = app
        self.timeout = timeout
        self.secret = secret
        self.epoch = 0
        #: The shard this checker leads (named in every command of a sharded fleet's checker,
        #: so that the worker checks the epoch of that shard's lease); None: unsharded.
        self.shard: int | None = None
        # A long-lived connection per thread (commands run on the checker's pool, and a
        # connection is not to be shared): a fresh one costs tens of milliseconds.
        self._local = threading.local()

    @property
    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.app.connection_for_write()
        return conn

    def warm(self) -> None:
        """Open the connection and declare the reply queue before the first real command."""
        self.app.control.ping(destination=["host-checker-warmup@nowhere"], timeout=0.05,
                              connection=self._conn)

    def drain(self, worker: str, reason: str, hold: str = "") -> Reply:
        return self._send("host_drain", worker, reason, hold)

    def admit(self, worker: str, reason: str) -> Reply:
        return self._send("host_admit", worker, reason)

    def recycle(self, worker: str, reason: str) -> Reply:
        return self._send("host_recycle", worker, reason)

    def _send(self, command: str, worker: str, reason: str, hold: str = "") -> Reply:
        sent = time.time()
        arguments: dict[str, Any] = {"reason": reason, **({"hold": hold} if hold else {})}
        if self.epoch:
            arguments["epoch"] = self.epoch
        if self.shard is not None:
            arguments["shard"] = self.shard
        try:
            body = control_reply(self.app, command, worker, arguments, self.timeout,
                                 connection=self._conn, secret=self.secret)
        except ControlUnavailable:
            self._forget_connection()  # the next command starts on a fresh one
            raise
        return Reply(worker, command, sent, body is not None, body or {})

    def _forget_connection(self) -> None:
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.release()


class InMemoryActuator:
    """Records commands and answers them, for unit tests (``clock``: the workers' clock)."""

    def __init__(self, answering: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.answering = answering
        self.worker_clock = clock
        self.epoch = 0
        self.shard: int | None = None
        self.sent: list[tuple[str, str, str]] = []
        #: The hold each worker was last drained with.
        self.holds: dict[str, str] = {}

    def drain(self, worker: str, reason: str, hold: str = "") -> Reply:
        self.holds[worker] = hold
        return self._send("host_drain", worker, reason)

    def admit(self, worker: str, reason: str) -> Reply:
        return self._send("host_admit", worker, reason)

    def recycle(self, worker: str, reason: str) -> Reply:
        return self._send("host_recycle", worker, reason)

    def _send(self, command: str, worker: str, reason: str) -> Reply:
        self.sent.append((command, worker, reason))
        now = self.worker_clock()
        body = {"ok": True, "at": now} if self.answering else {}
        return Reply(worker, command, now, self.answering, body)


def judged(reply: Reply) -> tuple[str | None, str]:
    """(error, outcome) of a worker's answer: an answer that refuses (a stale epoch, a bad
    signature) is an answer, not a confirmation."""
    if not reply.answered:
        return "no reply", "no_reply"
    error = reply.body.get("error")
    return (None, "confirmed") if error is None else (str(error), "refused")


@dataclass
class Sent:
    """One control command: what was asked, and (once run) how it went."""

    command: str  # "drain", "admit" or "recycle"
    worker: str
    reason: str
    verdict_at: float | None  # when the drain's verdict took effect (None: a correction)
    hold: str = ""  # a drain's: what the worker is held out as
    reply: Reply | None = None
    error: str = ""
    answered_at: float = 0.0
