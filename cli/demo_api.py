"""The demo's HTTP side: an API process beside the fleet, and a share of the demo's messages
sent through it, one request each, as a service that speaks HTTP would send them."""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from api.keys import RedisKeyStore, new_key
from broker_config.settings import Settings
from harness.api_server import ApiServer, api_env
from workers.inbound import Line, detect_format

CONTENT_TYPE = {"jsonl": "application/x-ndjson", "tsv": "text/tab-separated-values",
                "text": "text/plain"}
#: Requests in flight at once.
THREADS = 4


class ApiSide:
    """Sends the lines it is given to the API, one request each, and counts the outcomes."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.lines: queue.Queue[Line | None] = queue.Queue(maxsize=1000)
        self.sent = self.analysed = self.failed = 0
        self.rejected: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(THREADS)]
        for t in self._threads:
            t.start()

    @property
    def answered(self) -> int:
        return self.analysed + sum(self.rejected.values())

    @property
    def complete(self) -> bool:
        return self.answered == self.sent

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "analysed": self.analysed, "rejected": dict(self.rejected),
                "failed": self.failed, "complete": self.complete}

    def divert(self, lines: Iterable[Line], share: float) -> Iterator[Line]:
        """``lines`` less a ``share`` of them (spread evenly), which go to the API instead."""
        owed = 0.0
        for line in lines:
            owed += share
            if owed >= 1.0:
                owed -= 1.0
                self.lines.put(line)
                with self._lock:
                    self.sent += 1
            else:
                yield line

    def finish(self, timeout: float = 120.0) -> None:
        for _ in self._threads:
            self.lines.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while (line := self.lines.get()) is not None:
            outcome = self._send(line)
            with self._lock:
                if outcome == "analysed":
                    self.analysed += 1
                elif outcome == "failed":
                    self.failed += 1
                else:
                    self.rejected[outcome] += 1

    def _send(self, line: Line) -> str:
        if line.text is None:  # not even a line (too long, not UTF-8): refused before sending
            return line.rejection.code if line.rejection else "unreadable"
        request = urllib.request.Request(
            f"{self.url}/v1/messages?wait=10", data=line.text.encode("utf-8"), method="POST",
            headers={"Authorization": f"Bearer {self.token}",
                     "Content-Type": CONTENT_TYPE[detect_format(line.text)]})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:
            problems = json.load(err).get("problems") or [{"reason": f"http_{err.code}"}]
            return str(problems[0]["reason"])
        except (urllib.error.URLError, OSError, ValueError):
            return "failed"
        statuses = [m["status"] for m in body["messages"]]
        if statuses and all(s == "analysed" for s in statuses):
            return "analysed"
        reasons = [m["result"].get("reason") for m in body["messages"] if m.get("result")]
        return str(reasons[0]) if "rejected" in statuses and reasons else "failed"


@contextmanager
def api_side(env: dict[str, str], settings: Settings, tmp: Path,
             console: Console) -> Iterator[ApiSide]:
    """An API process (no control secret) and a key for the demo's HTTP share."""
    server = ApiServer({**api_env(env), "HOST_API_RATE": "100000",
                        "HOST_API_JOBS_DIR": str(tmp / "api-jobs")}, tmp / "api.log")
    key, token = new_key("demo", ("submit", "read"))
    RedisKeyStore(settings.store.client(decode_responses=True)).put(key)
    try:  # an interrupt while it starts stops it too
        server.start()
        console.print(f"HTTP API: {server.url}/openapi.json (key {key.id})")
        yield ApiSide(server.url, token)
    finally:
        console.print("stopping the API")
        server.stop()
