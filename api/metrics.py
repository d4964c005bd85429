"""The API's own metrics (``/metrics`` of the API process): requests by route and status, their
latency, what is in flight, what was accepted and not answered yet, and what each key sent."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Latency buckets (seconds): a submission answered at once is milliseconds; one that waits
#: for its analysis is up to HOST_API_WAIT_MAX.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("host_api_requests", "HTTP requests answered, by route and status.",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("host_api_request_seconds", "Time to answer a request, by route.",
                                 ["route", "method"], buckets=BUCKETS, registry=r)
        self.in_flight = Gauge("host_api_requests_in_flight", "Requests being answered now.",
                               registry=r)
        self.unanswered = Gauge("host_api_messages_unanswered",
                                "Messages this process accepted whose outcome has not arrived.",
                                registry=r)
        self.unsent = Gauge("host_api_messages_unsent",
                            "Messages handed to the dispatcher and not published yet.", registry=r)
        self.backlog = Gauge("host_api_queue_messages",
                             "Messages waiting in a work queue, as the API last read it.",
                             ["queue"], registry=r)
        self.by_key = Counter("host_api_key_messages",
                              "Messages by API key and outcome (accepted, analysed, rejected, "
                              "failed, refused).", ["key", "outcome"], registry=r)
        self.dead_letters = Counter("host_api_key_dead_letters",
                                    "Messages of a key dead-lettered or refused, by reason.",
                                    ["key", "reason"], registry=r)

    def tally(self, key: str, what: str, n: int) -> None:
        """One of the dispatcher's tallies: ``accepted``, ``analysed``, ``failed`` or
        ``rejected:<reason>``; also ``refused:<reason>`` for inputs a request was refused for."""
        outcome, _, reason = what.partition(":")
        self.by_key.labels(key, outcome).inc(n)
        if reason:
            self.dead_letters.labels(key, reason).inc(n)

    def middleware(self, app: App) -> App:
        """Counts and times every request by its route's template (never its raw path)."""

        async def measured(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            status = [500]

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            self.in_flight.inc()
            started = time.perf_counter()
            try:
                await app(scope, receive, sending)
            finally:
                self.in_flight.dec()
                route = scope.get("route")
                name = getattr(route, "path", None) or "unmatched"
                method = scope.get("method", "")
                self.requests.labels(name, method, str(status[0])).inc()
                self.latency.labels(name, method).observe(time.perf_counter() - started)
        return measured
