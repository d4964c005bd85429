"""The checker's ear: every Celery event off the broker, to a callback, reconnecting."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from celery import Celery

from broker_config.logs import get_logger

log = get_logger(__name__)


def receive_events(app: Celery, on_event: Callable[[dict[str, Any]], None],
                   stop: threading.Event, on_subscribed: Callable[[], None] | None = None) -> None:
    """Feed every Celery event to ``on_event`` until ``stop``; reconnect when the broker drops.

    ``on_subscribed`` is called each time the receiver is subscribed (events flow from then on).
    """
    delay = 0.5
    while not stop.is_set():
        try:
            with app.connection() as conn:
                recv = app.events.Receiver(conn, handlers={"*": on_event})
                if on_subscribed is not None:
                    recv.on_consume_ready = _then(recv.on_consume_ready, on_subscribed)
                watcher = threading.Thread(target=_stop_when, args=(stop, recv), daemon=True)
                watcher.start()
                delay = 0.5
                recv.capture(limit=None, timeout=None, wakeup=False)
        except Exception as exc:  # the broker went away: wait and reconnect
            log.warning("event_receiver_reconnecting", error=str(exc), delay_s=delay)
            stop.wait(delay)
            delay = min(delay * 2, 10.0)


def _then(first: Callable[..., Any], second: Callable[[], None]) -> Callable[..., None]:
    def both(*args: Any, **kwargs: Any) -> None:
        first(*args, **kwargs)
        second()

    return both


def _stop_when(stop: threading.Event, recv: Any) -> None:
    stop.wait()
    recv.should_stop = True
