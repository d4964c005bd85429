"""The fleet page's endpoints and view, called as a WSGI app (no sockets)."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CollectorRegistry

from healthcheck.errors import StoreUnavailable
from healthcheck.http import app
from healthcheck.page import WearHistory, fleet_view, html
from healthcheck.policy import Fleet, Reading, State, WorkerHealth
from healthcheck.store import InMemoryHealthStore


def call(handler: Any, path: str) -> tuple[str, dict[str, str], bytes]:
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        got["status"], got["headers"] = status, dict(headers)

    body = b"".join(handler({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, start_response))
    return got["status"], got["headers"], body


def fleet() -> Fleet:
    return Fleet(workers={
        "w1": WorkerHealth(name="w1", state=State.QUARANTINED, since=100.0, last_seen=150.0,
                           reason="<b>cpu</b> 99 >= hard 97", queues=("tweets",)),
        "w2": WorkerHealth(name="w2", since=100.0, last_seen=150.0, queues=("tweets", "bulk")),
    })


class TestFleetPage:
    def test_the_page_is_one_self_contained_file(self) -> None:
        page = html().decode()
        assert "<script>" in page and "fleet.json" in page
        assert "src=" not in page and "href=" not in page  # nothing loaded from elsewhere
        assert "innerHTML" not in page  # network text is only ever set as text

    def test_routes_and_headers(self) -> None:
        view: dict[str, Any] = {"workers": [], "queues": []}
        handler = app(CollectorRegistry(), lambda: True, lambda: True, lambda: view)
        status, headers, body = call(handler, "/")
        assert status == "200 OK" and headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        status, headers, body = call(handler, "/fleet.json")
        assert headers["Content-Type"] == "application/json" and json.loads(body) == view
        assert call(app(CollectorRegistry(), lambda: True, lambda: True), "/")[0].startswith("404")

    def test_the_view(self) -> None:
        store = InMemoryHealthStore()
        store.append([{"kind": "transition", "worker": "w1", "from": "DRAINING",
                       "to": "QUARANTINED", "reason": "drained", "at": 140.0},
                      {"kind": "drain_confirmed", "worker": "w1", "at": 139.0}])
        history = WearHistory(points=3)
        for cpu in (10, 20, 30, 40):
            history.add("w1", {"cpu_percent": Reading(cpu, cpu)})
        view = fleet_view(fleet(), history, store, leading=True, depths=lambda: {"tweets": 4},
                          clock=lambda: 200.0)
        w1 = view["workers"][0]
        assert (w1["name"], w1["state"], w1["since"]) == ("w1", "QUARANTINED", 100.0)
        assert w1["wear"]["cpu_percent"] == [20, 30, 40]
        assert view["queues"][0] == {"queue": "tweets", "healthy_consumers": 1, "messages": 4}
        assert view["transitions"] == [{"at": 140.0, "worker": "w1", "from": "DRAINING",
                                        "to": "QUARANTINED", "reason": "drained"}]
        assert view["leading"] is True and view["store_ok"] is True

    def test_a_store_outage_still_shows_the_fleet(self) -> None:
        class Down(InMemoryHealthStore):
            def history(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
                raise StoreUnavailable("down")

        view = fleet_view(fleet(), WearHistory(), Down(), leading=False)
        assert len(view["workers"]) == 2 and view["store_ok"] is False
        assert view["transitions"] == []
