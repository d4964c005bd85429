"""The workload: the 4,200 real tweets in a loop, through the producer paths, with malformed
and expensive inputs among them. Its history (what was sent, under which ref) is written as it
goes; what came back is read from the results, not from here."""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from broker_config.settings import Settings
from producer.feed import feed
from tests.conftest import GROUND_TRUTH
from workers.app import create_app
from workers.deadletter import RedisDeadLetterStore
from workers.inbound import Line

#: Inputs no worker may analyse, and inputs that cost far more than a tweet.
BAD = ['{"data": 5}', "", "\x00nul", '{"data": {"id": "1", "text": ""}}', "[1, 2",
       "not good " * 1111, "\U0001F600 but " * 900, "x" * 10_001]


def tweets() -> list[str]:
    return [row.split("\t", 2)[2] for row in
            GROUND_TRUTH.read_text(encoding="utf-8").splitlines() if row.count("\t") >= 2]


class Workload:
    """``feed`` (ingest's engine, batches of 5) at ``rate`` inputs a second and one-message API
    requests at ``api_rate`` a second, until ``stop``."""

    def __init__(self, run_dir: Path, env: dict[str, str], api_url: str, token: str,
                 seed: int, rate: float = 60.0, api_rate: float = 8.0) -> None:
        self.dir, self.env, self.api_url, self.token = run_dir, env, api_url, token
        self.rng = random.Random(seed)
        self.rate, self.api_rate = rate, api_rate
        self.texts = tweets()
        self.stop = threading.Event()
        self.bad: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.sent = (run_dir / "sent.jsonl").open("a", encoding="utf-8")
        self.lock = threading.Lock()
        self.api_ids: dict[str, str] = {}  # ref -> message id
        self.threads = [threading.Thread(target=self._feed, name="nemesis-feed"),
                        threading.Thread(target=self._api, name="nemesis-api")]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def bad_inputs(self) -> None:
        """A burst of malformed and expensive inputs, on both paths."""
        for text in BAD:
            self.bad.put(text)

    def finish(self, timeout: float) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
        self.sent.close()

    def _record(self, path: str, ref: str, **extra: Any) -> None:
        with self.lock:
            self.sent.write(json.dumps({"path": path, "ref": ref, "at": time.time(), **extra})
                            + "\n")
            self.sent.flush()

    # --- ingest's engine --------------------------------------------------------------------

    def _lines(self) -> Iterator[Line]:
        for n in itertools.count():
            if self.stop.is_set():
                return
            text = self.texts[n % len(self.texts)]
            with contextlib.suppress(queue.Empty):
                text = self.bad.get_nowait()
            ref = f"f{n}"
            self._record("feed", ref)
            yield Line(ref, text)

    def _feed(self) -> None:
        settings = Settings.from_env(self.env)
        app = create_app(settings)
        store = RedisDeadLetterStore.from_url(settings.store, settings.deadletter_keep)
        with (self.dir / "feed.jsonl").open("w", encoding="utf-8") as out:
            report = feed(app, self._lines(), out, store, fmt="auto", batch=5,
                          idle_timeout=600, rate=self.rate)
        (self.dir / "feed-report.json").write_text(json.dumps(report.as_dict()))

    # --- the HTTP API -----------------------------------------------------------------------

    def _api(self) -> None:
        for n in itertools.count():
            if self.stop.is_set():
                return
            time.sleep(self.rng.expovariate(self.api_rate))
            text = self.texts[(n * 7919) % len(self.texts)]
            ref = f"a{n}"
            message_id = self._submit(ref, text)
            if message_id is not None:
                self._record("api", ref, id=message_id)
                self.api_ids[ref] = message_id

    def _submit(self, ref: str, text: str) -> str | None:
        """One message, retried with its Idempotency-Key until the API says yes or no: a
        careful client, as docs/api.md asks for. None when the run ends first."""
        body = json.dumps({"text": text, "ref": ref}).encode()
        while not self.stop.is_set():
            request = urllib.request.Request(
                f"{self.api_url}/v1/messages", data=body, method="POST", headers={
                    "Authorization": f"Bearer {self.token}", "Idempotency-Key": ref,
                    "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    return str(json.load(resp)["messages"][0]["id"])
            except urllib.error.HTTPError as err:
                if err.code == 422:
                    return None  # refused whole: nothing was accepted
                time.sleep(float(err.headers.get("Retry-After") or 1))
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(1)
        return None

    def outcomes(self, timeout: float) -> dict[str, dict[str, Any]]:
        """Every API message's outcome, by ref, read by id until none is pending."""
        got: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(got) < len(self.api_ids):
            for ref, message_id in list(self.api_ids.items()):
                if ref in got:
                    continue
                request = urllib.request.Request(
                    f"{self.api_url}/v1/messages/{message_id}",
                    headers={"Authorization": f"Bearer {self.token}"})
                with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                    with urllib.request.urlopen(request, timeout=10) as resp:
                        body = json.load(resp)
                    if body["status"] != "pending":
                        got[ref] = body
            if len(got) < len(self.api_ids):
                time.sleep(1)
        return got
