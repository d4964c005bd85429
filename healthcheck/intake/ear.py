"""The checker's ear: every Celery event off the broker, to a callback, reconnecting.

A subscription can die without a word: a cut that drops packets leaves the socket open while
Redis, its output buffer full, has long dropped the subscriber. So the ear can be told to
resubscribe (``resubscribe``), which the checker does when it hears nothing from a fleet that
should be talking; kombu's consumer checks for that every second even when nothing arrives.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from broker_config.logs import get_logger
from broker_config.redis_url import RedisAddress, address

log = get_logger(__name__)


class Ear:
    """Feeds every Celery event to ``on_event`` until ``stop``; reconnects when the broker drops.

    Args:
        app: the host app.
        on_event: called with each event (on the ear's thread).
        stop: set to stop listening.
        on_subscribed: called each time a subscription stands (events flow from then on).
        on_lost: called each time a subscription is lost (or given up).
    """

    def __init__(self, app: Celery, on_event: Callable[[dict[str, Any]], None],
                 stop: threading.Event, on_subscribed: Callable[[], None] | None = None,
                 on_lost: Callable[[], None] | None = None) -> None:
        self.app = app
        self.on_event = on_event
        self.stop = stop
        self.on_subscribed = on_subscribed or (lambda: None)
        self.on_lost = on_lost or (lambda: None)
        self._recv: Any = None

    def resubscribe(self, why: str) -> None:
        """Drop the current subscription and take a new one (any thread)."""
        recv = self._recv
        if recv is not None and not recv.should_stop:
            log.warning("event_subscription_renewed", reason=why)
            recv.should_stop = True

    def run(self) -> None:
        """Listen until ``stop`` (the ear's thread)."""
        delay = 0.5
        watcher = threading.Thread(target=self._stop_when_told, daemon=True)
        watcher.start()
        while not self.stop.is_set():
            try:
                with self.app.connection() as conn:
                    recv = self._recv = self.app.events.Receiver(conn,
                                                                 handlers={"*": self.on_event})
                    recv.on_consume_ready = _then(recv.on_consume_ready, self._subscribed)
                    delay = 0.5
                    recv.capture(limit=None, timeout=None, wakeup=False)
            except Exception as exc:  # the broker went away: wait and reconnect
                log.warning("event_receiver_reconnecting", error=str(exc), delay_s=delay)
                self.on_lost()
                self.stop.wait(delay)
                delay = min(delay * 2, 10.0)
            else:
                self.on_lost()

    def _subscribed(self) -> None:
        self.on_subscribed()

    def _stop_when_told(self) -> None:
        self.stop.wait()
        if self._recv is not None:
            self._recv.should_stop = True


class RedisEar(Ear):
    """The same ear on a Redis broker, reading Celery's event channel directly.

    Celery's dispatcher publishes each event on the pub/sub channel
    ``/<db>.celeryev/<routing key>`` as a kombu envelope (JSON, the body base64-encoded JSON).
    At fleet scale kombu's consumer machinery around each message cost the checker about as
    much as everything it then does with the event; this reads the same messages with
    redis-py (and its C parser), decodes them the way kombu does, and hands the same event
    dicts on. A message that does not decode is dropped.

    Args:
        url: the Redis broker's URL.
        routing_keys: listen to these events' routing keys only (one shard's checker: its
            buckets' wear reports, and workers coming and going); None: to every event.
        (the rest as ``Ear``)
    """

    def __init__(self, url: RedisAddress | str, on_events: Callable[[list[dict[str, Any]]], None],
                 stop: threading.Event, on_subscribed: Callable[[], None] | None = None,
                 on_lost: Callable[[], None] | None = None, batch: int = 500,
                 routing_keys: list[str] | None = None) -> None:
        super().__init__(None, lambda e: on_events([e]), stop, on_subscribed,  # type: ignore[arg-type]
                         on_lost)
        self.on_events = on_events
        self.batch = batch
        self.url = url
        self._renew = threading.Event()
        db = address(url).db
        self.pattern = f"/{db}.celeryev/*"
        self.channels = [f"/{db}.celeryev/{key}" for key in routing_keys or ()]

    def resubscribe(self, why: str) -> None:
        if not self._renew.is_set():
            log.warning("event_subscription_renewed", reason=why)
            self._renew.set()

    def run(self) -> None:
        self.delay = 0.5
        while not self.stop.is_set():
            client = address(self.url).client(socket_connect_timeout=5, socket_keepalive=True)
            pubsub = client.pubsub()
            try:
                if self.channels:
                    pubsub.subscribe(*self.channels)
                else:
                    pubsub.psubscribe(self.pattern)
                self._renew.clear()
                self._listen(pubsub)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("event_receiver_reconnecting", error=str(exc), delay_s=self.delay)
                self.stop.wait(self.delay)
                self.delay = min(self.delay * 2, 10.0)
            finally:
                self.on_lost()
                with contextlib.suppress(Exception):
                    pubsub.close()
                    client.close()

    def _listen(self, pubsub: Any) -> None:
        """Hand events on in batches of what is already there (one hand-over, not one per
        event: the loop and this thread share the interpreter)."""
        decode = _decode
        while not (self.stop.is_set() or self._renew.is_set()):
            message = pubsub.get_message(timeout=1.0)
            events = []
            while message is not None:
                kind = message["type"]
                if kind in ("pmessage", "message"):
                    events.extend(decode(message["data"]))
                elif kind == "psubscribe" or (kind == "subscribe"
                                              and message["data"] == len(self.channels)):
                    self.delay = 0.5
                    self._subscribed()
                if len(events) >= self.batch:
                    break
                try:
                    message = pubsub.get_message(timeout=0)
                except redis.TimeoutError:
                    break  # the rest of a message is still on its way: wait for it above
            if events:
                self.on_events(events)


#: kombu's envelope as its JSON encoder writes it: the body first, base64 has no quotes.
_BODY = re.compile(rb'^\{"body": "([A-Za-z0-9+/=]*)"')
_BASE64 = b'"body_encoding": "base64"'


def _decode(data: bytes) -> list[dict[str, Any]]:
    """The Celery events in a kombu envelope: one, or the list a worker's dispatcher buffers
    its task events into; none for anything else. (The body is taken out without parsing the
    envelope when it has kombu's usual layout; any other layout is parsed in full.)"""
    try:
        found = _BODY.match(data)
        if found is not None and _BASE64 in data:
            body: Any = base64.b64decode(found.group(1))
        else:
            envelope = json.loads(data)
            body = envelope["body"]
            if (envelope.get("properties") or {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
        event = json.loads(body)
    except (ValueError, TypeError, KeyError, AttributeError):
        return []
    if isinstance(event, dict):
        return [event]
    if isinstance(event, list):
        return [e for e in event if isinstance(e, dict)]
    return []


def _then(first: Callable[..., Any], second: Callable[[], None]) -> Callable[..., None]:
    def both(*args: Any, **kwargs: Any) -> None:
        first(*args, **kwargs)
        second()

    return both
