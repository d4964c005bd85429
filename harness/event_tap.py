"""Listening to a fleet's Celery events (the tests, the benchmarks), and waiting on them with a deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

Event = dict[str, Any]


class EventTap:
    """Captures every Celery event in a background thread until stopped."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EventTap:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("event receiver did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._recv is not None:
            self._recv.should_stop = True
        self._thread.join(10)

    _recv: Any = None

    def _run(self) -> None:
        # One uninterrupted capture: on Redis, events are pub/sub, and any gap between two
        # subscriptions would lose the events published in it.
        with self.app.connection() as conn:
            recv = self._recv = self.app.events.Receiver(conn, handlers={"*": self._on_event})
            subscribed = recv.on_consume_ready

            def on_consume_ready(*args: Any, **kwargs: Any) -> None:
                subscribed(*args, **kwargs)
                self._ready.set()

            recv.on_consume_ready = on_consume_ready
            for _ in recv.consume(limit=None, timeout=None, safety_interval=0.5, wakeup=False):
                if self._stop.is_set():
                    return

    def _on_event(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: str, hostname: str | None = None) -> list[Event]:
        """Captured events of one type (and one worker)."""
        with self._lock:
            return [e for e in self.events if e.get("type") == kind
                    and (hostname is None or e.get("hostname") == hostname)]

    def wait_for(self, kind: str, predicate: Callable[[Event], bool] = lambda e: True,
                 hostname: str | None = None, timeout: float = 15.0) -> Event:
        """The first event of ``kind`` matching ``predicate``, polling until ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.of(kind, hostname):
                if predicate(event):
                    return event
            time.sleep(0.05)
        seen = self.of(kind, hostname)[-3:]
        raise AssertionError(f"no matching {kind} within {timeout}s; last seen: {seen}")
