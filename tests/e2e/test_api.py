"""The HTTP API as its consumers meet it: a real HTTP client against `celery -A host api`, real
Redis, real workers (and a checker where the fleet's state matters)."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from broker_config import keys
from tests.conftest import GROUND_TRUTH, ApiFactory, CheckerFactory, WorkerFactory
from tests.support.api_server import ApiServer, poll_messages
from tests.support.brokers import on_both_brokers
from tests.support.cli import REPO, celery
from tests.support.polling import wait_until

FAST = {"HOST_WEAR_INTERVAL": "0.25"}
VADER = SentimentIntensityAnalyzer()


def tweets(n: int) -> list[tuple[str, str]]:
    rows = GROUND_TRUTH.read_text(encoding="utf-8").splitlines()[:n]
    return [(r.split("\t")[0], r.split("\t")[2]) for r in rows]


def counts(server: ApiServer, token: str) -> dict[str, int]:
    with server.client(token) as c:
        got: dict[str, int] = c.get("/v1/key").json()["counts"]
        return got


async def submit_each(server: ApiServer, token: str, texts: list[str], concurrency: int = 32,
                      headers: dict[str, str] | None = None) -> list[httpx.Response]:
    """One request per text, ``concurrency`` at once, on kept-alive connections."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0, headers={
            "Authorization": f"Bearer {token}", **(headers or {})}) as client:
        async def one(i: int, text: str) -> httpx.Response:
            async with limit:
                return await client.post("/v1/messages", json={"text": text, "ref": f"r{i}"})
        return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(texts))))


class TestSubmitAndRead:
    @on_both_brokers
    def test_every_layout_is_analysed_as_vader_scores_it_and_read_back_by_id(
            self, start_worker: WorkerFactory, start_api: ApiFactory) -> None:
        start_worker("aw1")
        server = start_api()
        token = server.key()
        with server.client(token) as c:
            r = c.post("/v1/messages", params={"wait": 10}, json=[
                {"text": "what a great day", "ref": "mine-1"},
                {"data": {"id": "77", "text": "this is awful"}},
                {"id_str": "78", "text": "not bad at all", "user": {"screen_name": "x"}}])
            assert r.status_code == 200, r.text
            got = r.json()["messages"]
            assert [m["ref"] for m in got] == ["mine-1", "77", "78"]
            for m, text in zip(got, ("what a great day", "this is awful", "not bad at all"),
                               strict=True):
                assert m["status"] == "analysed" and m["result"]["compound"] == \
                    VADER.polarity_scores(text)["compound"], m
                assert c.get(f"/v1/messages/{m['id']}").json()["result"] == m["result"]
            # the other layouts, answered at once with ids, then read by id
            bodies = {"text/plain": "good morning\nsad news today\n",
                      "application/x-ndjson": '{"text": "love it", "ref": "n1"}\n'
                                              '{"data": {"id": "9", "text": "meh"}}\n',
                      "text/tab-separated-values": "t1\t1.5\thappy happy\n"}
            ids = []
            for ctype, body in bodies.items():
                r = c.post("/v1/messages", content=body, headers={"Content-Type": ctype})
                assert r.status_code == 202, r.text
                assert all(m["status"] in ("pending", "analysed") for m in r.json()["messages"])
                ids += [m["id"] for m in r.json()["messages"]]
            done = poll_messages(c, ids, 30)
            assert len(done) == 5 and {m["status"] for m in done.values()} == {"analysed"}
            assert {m["ref"] for m in done.values()} >= {"n1", "9", "t1"}
            assert c.get("/v1/messages/" + "0" * 32).status_code == 404
        # another key cannot read these
        with server.client(server.key(name="other")) as other:
            assert other.get(f"/v1/messages/{ids[0]}").status_code == 404

    def test_a_refused_input_refuses_the_request_whole(
            self, start_worker: WorkerFactory, start_api: ApiFactory,
            redis_client: redis.Redis) -> None:
        start_worker("aw1")
        server = start_api()
        token = server.key()
        with server.client(token) as c:
            r = c.post("/v1/messages", json=[{"text": "fine"}, {"text": ""}, {"foo": 1}, 7,
                                             {"text": "x" * 10_001}])
            assert r.status_code == 422, r.text
            problems = r.json()["problems"]
            assert [(p["index"], p["reason"]) for p in problems] == [
                (1, "empty_text"), (2, "unrecognised_json"), (3, "unrecognised_json"),
                (4, "text_too_long")]
            assert r.json()["error"] == "inputs_refused"
        assert "accepted" not in counts(server, token)
        assert not list(redis_client.scan_iter(keys.api_message("*")))

    def test_what_a_key_sends_is_counted_by_outcome_and_reason(
            self, start_worker: WorkerFactory, start_api: ApiFactory) -> None:
        """Analysed, dead-lettered by a worker (too_expensive: over HOST_MAX_EMOJI) and
        refused at the door (empty_text), in the key's own view and in /metrics."""
        start_worker("ak1", env={"HOST_MAX_EMOJI": "5"})
        server = start_api(env={"HOST_MAX_EMOJI": "5"})
        token = server.key(name="counted")
        key_id = token.split("_")[1]
        with server.client(token) as c:
            r = c.post("/v1/messages", params={"wait": 10},
                       json=[{"text": "fine words"}, {"text": "\U0001F600" * 9}])
            assert r.status_code == 200, r.text
            rejected = r.json()["messages"][1]
            assert rejected["status"] == "rejected"
            assert rejected["result"]["reason"] == "too_expensive"
            assert c.post("/v1/messages", json={"text": " "}).status_code == 422
            assert c.get("/v1/key").json()["counts"] == {
                "accepted": 2, "analysed": 1, "rejected:too_expensive": 1, "refused:empty_text": 1}
        metrics = httpx.get(server.url + "/metrics").text
        for line in (f'host_api_key_messages_total{{key="{key_id}",outcome="rejected"}} 1.0',
                     f'host_api_key_dead_letters_total{{key="{key_id}",reason="too_expensive"}} 1.0',
                     f'host_api_key_dead_letters_total{{key="{key_id}",reason="empty_text"}} 1.0',
                     f'host_api_key_messages_total{{key="{key_id}",outcome="refused"}} 1.0'):
            assert line in metrics, line
        assert 'host_api_requests_total{method="POST",route="/v1/messages",status="422"} 1.0' \
            in metrics

    def test_bad_requests_get_a_status_and_a_reason(
            self, start_worker: WorkerFactory, start_api: ApiFactory) -> None:
        start_worker("aw1")
        server = start_api(env={"HOST_API_MAX_BODY": "2000", "HOST_API_MAX_MESSAGES": "5"})
        token = server.key()
        with server.client(token) as c:
            def post(**kw: Any) -> httpx.Response:
                return c.post("/v1/messages", **kw)
            assert post(content=b"{nope", headers={"Content-Type": "application/json"}
                        ).json()["error"] == "invalid_json"
            assert post(content=b"\xff\xfe", headers={"Content-Type": "text/plain"}
                        ).status_code == 400
            r = post(content=b"hello", headers={"Content-Type": "application/xml"})
            assert r.status_code == 415 and "application/json" in r.json()["detail"]
            assert post(content=b"x" * 2001, headers={"Content-Type": "text/plain"}
                        ).status_code == 413
            # a body with no length announced is counted as it comes, and refused past the limit
            r = post(content=iter([b"a\n" * 600, b"b\n" * 600]), headers={
                "Content-Type": "text/plain"})
            assert r.status_code == 413 and r.json()["error"] == "body_too_large"
            assert post(json=[{"text": "t"}] * 6).json()["error"] == "too_many_messages"
            assert post(json=[]).json()["error"] == "no_messages"
            assert c.post("/v1/messages", params={"wait": 11}, json={"text": "x"}
                          ).status_code == 422
        assert httpx.post(server.url + "/v1/messages", json={"text": "x"}).status_code == 401
        r = httpx.post(server.url + "/v1/messages", json={"text": "x"},
                       headers={"Authorization": "Bearer hk_nope_nope"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"

    def test_scopes_rates_and_revoking_without_a_restart(
            self, start_worker: WorkerFactory, start_api: ApiFactory,
            host_env: dict[str, str]) -> None:
        start_worker("aw1")
        server = start_api()
        reader = server.key(scopes=("read",))
        with server.client(reader) as c:
            r = c.post("/v1/messages", json={"text": "hi"})
            assert r.status_code == 403 and "submit" in r.json()["detail"]
            assert c.get("/v1/fleet").status_code == 200
            assert c.get("/v1/jobs").status_code == 403
        slow = server.key(rate=2)
        with server.client(slow) as c:
            statuses = [c.get("/v1/key").status_code for _ in range(6)]
            assert statuses.count(429) >= 3, statuses
            r = c.get("/v1/key")
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        added = celery("api", "keys", "add", "ops-made", "--scopes", "submit,read", "--json",
                       env=host_env)
        assert added.returncode == 0, added.stderr
        made = json.loads(added.stdout)
        with server.client(made["token"]) as c:
            wait_until(lambda: c.get("/v1/key").status_code == 200, 5, "the new key to work")
            assert celery("api", "keys", "revoke", made["id"], env=host_env).returncode == 0
            revoked = time.monotonic()
            wait_until(lambda: c.get("/v1/key").status_code == 401, 5, "the key to be refused")
            print(f"api: a revoked key refused {time.monotonic() - revoked:.2f}s after")
        listed = json.loads(celery("api", "keys", "list", "--json", env=host_env).stdout)
        assert {k["id"]: bool(k["revoked_at"]) for k in listed}[made["id"]] is True
        assert all("digest" not in k and "token" not in k for k in listed)


class TestAcceptedMeansAnswered:
    @pytest.mark.background  # waits with every worker drained, then for the answers
    def test_every_worker_drained_submissions_wait_in_the_broker_and_are_answered_once(
            self, start_worker: WorkerFactory, start_checker: CheckerFactory,
            start_api: ApiFactory, host_env: dict[str, str]) -> None:
        """Both workers drained, the checker then down: 1,000 one-tweet requests accepted;
        restored, 1,000 answers, each once."""
        workers = [start_worker(f"ad{i}", env=FAST) for i in (1, 2)]
        checker = start_checker("--tick", "0.1")
        server = start_api()
        token = server.key(rate=10_000)
        for w in workers:
            proc = celery("fleet", "drain", w.name, "--reason", "api test", "--yes", env=host_env)
            assert proc.returncode == 0, proc.stderr
        with server.client(token) as c:
            wait_until(lambda: c.get("/v1/fleet").json()["healthy_consumers"]["tweets"] == 0,
                       20, "no healthy consumer of tweets")
        checker.stop()
        texts = [t for _, t in tweets(1000)]
        responses = asyncio.run(submit_each(server, token, texts))
        assert {r.status_code for r in responses} == {202}
        ids = [r.json()["messages"][0]["id"] for r in responses]
        assert len(set(ids)) == 1000
        with server.client(token) as c:
            assert c.get(f"/v1/messages/{ids[0]}").json()["status"] == "pending"
            assert c.get("/readyz").status_code == 200  # up and answering throughout
        start_checker("--tick", "0.1")
        for w in workers:
            assert celery("fleet", "restore", w.name, env=host_env).returncode == 0
        with server.client(token) as c:
            done = poll_messages(c, ids, 120)
        assert len(done) == 1000 and {m["status"] for m in done.values()} == {"analysed"}
        for i, text in enumerate(texts[:50]):
            assert done[ids[i]]["result"]["compound"] == VADER.polarity_scores(text)["compound"]
        tally = counts(server, token)
        assert tally["accepted"] == 1000 and tally["analysed"] == 1000, tally

    @on_both_brokers
    def test_a_full_backlog_answers_503_and_never_accepts_what_it_would_lose(
            self, start_worker: WorkerFactory, start_api: ApiFactory) -> None:
        server = start_api(env={"HOST_API_BACKLOG_MAX": "100"})  # no worker consumes yet
        token = server.key()
        accepted: list[str] = []
        refused = []
        with server.client(token) as c:
            for i in range(160):
                r = c.post("/v1/messages", json={"text": f"message {i} is fine"})
                if r.status_code == 202:
                    accepted.append(r.json()["messages"][0]["id"])
                else:
                    refused.append(r)
        assert 90 <= len(accepted) <= 100, len(accepted)  # never past the bound
        assert refused and all(r.status_code == 503 and r.json()["error"] == "backlog_full"
                               and int(r.headers["retry-after"]) > 0 for r in refused)
        start_worker("ab1")
        with server.client(token) as c:
            done = poll_messages(c, accepted, 60)
            assert len(done) == len(accepted)
            wait_until(lambda: c.post("/v1/messages", json={"text": "room again"}).status_code
                       == 202, 20, "the backlog to drain")

    def test_an_idempotency_key_makes_a_resent_submission_enqueue_nothing_twice(
            self, start_worker: WorkerFactory, start_api: ApiFactory) -> None:
        start_worker("ai1")
        server = start_api()
        token = server.key()
        first: dict[int, list[str]] = {}
        with server.client(token, timeout=httpx.Timeout(0.002)) as hasty:
            for i in range(100):
                try:
                    r = hasty.post("/v1/messages", json={"text": f"retry me {i}"},
                                   headers={"Idempotency-Key": f"req-{i}"})
                    if r.status_code == 202:
                        first[i] = [m["id"] for m in r.json()["messages"]]
                except httpx.TimeoutException:
                    pass  # the client gave up; the server may or may not have accepted it
        again: dict[int, list[str]] = {}
        with server.client(token) as c:
            for i in range(100):
                for _ in range(50):
                    r = c.post("/v1/messages", json={"text": f"retry me {i}"},
                               headers={"Idempotency-Key": f"req-{i}"})
                    if r.status_code != 409:  # still being answered: as told, try again
                        break
                    time.sleep(float(r.headers["retry-after"]) / 10)
                assert r.status_code == 202, r.text
                again[i] = [m["id"] for m in r.json()["messages"]]
            r = c.post("/v1/messages", json={"text": "another body"},
                       headers={"Idempotency-Key": "req-0"})
            assert r.status_code == 422 and r.json()["error"] == "idempotency_key_reused"
            assert all(again[i] == ids for i, ids in first.items())
            done = poll_messages(c, [ids[0] for ids in again.values()], 60)
        assert len(done) == 100
        tally = counts(server, token)
        assert tally["accepted"] == 100 and tally["analysed"] == 100, tally
        print(f"api: {100 - len(first)} of 100 first tries timed out on the client; "
              f"100 accepted in all")


class TestJobs:
    def test_a_job_uploaded_followed_and_read_from_offsets_is_the_cli_job(
            self, start_worker: WorkerFactory, start_checker: CheckerFactory,
            start_api: ApiFactory, host_env: dict[str, str], tmp_path: Path) -> None:
        start_worker("aj1", queues=("tweets", "bulk"), env=FAST)
        start_checker("--tick", "0.1")
        server = start_api()
        token = server.key(scopes=("jobs",))
        data = GROUND_TRUTH.read_bytes()
        with server.client(token) as c:
            r = c.post("/v1/jobs", params={"format": "tsv"}, content=iter(
                [data[i:i + 50_000] for i in range(0, len(data), 50_000)]))
            assert r.status_code == 201, r.text
            job_id = r.json()["job"]
            assert r.json()["total"] == 4200 and r.json()["via"] == "api"
            out, offset, state = bytearray(), 0, "running"
            deadline = time.monotonic() + 120
            while state == "running" and time.monotonic() < deadline:
                r = c.get(f"/v1/jobs/{job_id}/results", params={"offset": offset})
                assert r.status_code == 200, r.text
                out += r.content
                offset, state = int(r.headers["x-next-offset"]), r.headers["x-job-state"]
                assert offset == len(out)
                time.sleep(0.2)
            out += c.get(f"/v1/jobs/{job_id}/results", params={"offset": offset}).content
            records = [json.loads(line) for line in out.decode().splitlines()]
            assert len(records) == 4200 and {r["status"] for r in records} == {"analysed"}
            assert c.get(f"/v1/jobs/{job_id}/results", params={"offset": 1}).status_code == 400
            # the CLI sees the API's job ...
            shown = json.loads(celery("job", "status", job_id, "--json", env=host_env).stdout)
            assert shown["state"] == "done" and shown["items_written"] == 4200
            # ... and the API sees the CLI's, and cancels it
            src = tmp_path / "cli.tsv"
            src.write_bytes(data * 40)  # long enough to be cancelled while it runs
            runner = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "job", "run",
                                       str(src), "--out", str(tmp_path / "cli.out"), "--json"],
                                      env=host_env, cwd=REPO, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
            cli_job = wait_until(lambda: next((j["job"] for j in c.get("/v1/jobs").json()
                                               if j["via"] == "cli"), None), 30, "the CLI's job")
            r = c.get(f"/v1/jobs/{cli_job}/results")
            assert r.status_code == 409 and r.json()["error"] == "results_elsewhere"
            assert c.delete(f"/v1/jobs/{cli_job}").json()["state"] == "cancelled"
            assert runner.wait(60) == 1  # as `job cancel`: its producer stops, incomplete
            assert c.delete(f"/v1/jobs/{job_id}").status_code == 409  # done: nothing to cancel

    def test_a_job_whose_api_was_killed_goes_on_when_it_starts_again(
            self, start_worker: WorkerFactory, start_api: ApiFactory) -> None:
        """SIGKILL mid-job; the next API process on the same directory finishes it: every
        item once, in input order."""
        start_worker("ar1", queues=("tweets", "bulk"))
        first = start_api(name="api-1")
        token = first.key(scopes=("jobs",))
        data = GROUND_TRUTH.read_bytes() * 5
        with first.client(token) as c:
            job_id = c.post("/v1/jobs", params={"format": "tsv", "chunk_cpu": "0.05"},
                            content=data).json()["job"]
            wait_until(lambda: c.get(f"/v1/jobs/{job_id}").json()["items_written"] > 0, 30,
                       "some of the job written")
        assert first.proc is not None
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
        second = start_api(name="api-2")
        assert job_id in wait_until(lambda: "api_jobs_resumed" in (
            text := second.log_path.read_text()) and text, 10, "the job resumed")
        with second.client(token) as c:
            wait_until(lambda: c.get(f"/v1/jobs/{job_id}").json()["state"] == "done", 120,
                       "the job done by the next API process")
            out = c.get(f"/v1/jobs/{job_id}/results").content.decode().splitlines()
        refs = [json.loads(line)["ref"] for line in out]
        assert len(refs) == 21_000 and len(set(refs)) == 21_000
        assert [int(r.rsplit(":", 1)[1]) for r in refs] == list(range(1, 21_001))

    def test_a_large_upload_is_streamed_not_held(self, start_api: ApiFactory) -> None:
        psutil = pytest.importorskip("psutil")
        server = start_api()
        token = server.key(scopes=("jobs",))
        assert server.proc is not None
        proc = psutil.Process(server.proc.pid)
        before = proc.memory_info().rss
        peak = [before]
        line = b"an uploaded line of text that is long enough to matter somewhat\n"
        size = 200 * 1024 * 1024

        def body() -> Any:
            piece = line * (1024 * 1024 // len(line))
            sent = 0
            while sent < size:
                yield piece
                sent += len(piece)
                if sent % (8 * len(piece)) == 0:
                    peak.append(proc.memory_info().rss)
        with server.client(token, timeout=120) as c:
            r = c.post("/v1/jobs", params={"format": "text"}, content=body())
            assert r.status_code == 201, r.text
            job_id = r.json()["job"]
            assert c.delete(f"/v1/jobs/{job_id}").status_code == 202
        grown = (max(peak) - before) / 2**20
        print(f"api: a {size / 2**20:.0f} MB upload grew the API's memory by {grown:.1f} MB")
        assert grown < 150, grown


class TestTheDoorAndTheControlPlane:
    def test_the_api_refuses_to_start_with_the_control_secret(
            self, host_env: dict[str, str]) -> None:
        proc = celery("api", "--port", "1", env={**host_env, "HOST_CONTROL_SECRET": "s3cret"},
                      timeout=60)
        assert proc.returncode == 78, proc.stderr
        assert "HOST_CONTROL_SECRET" in proc.stderr and "must not be set" in proc.stderr

    def test_no_route_changes_a_worker_state(
            self, start_worker: WorkerFactory, start_checker: CheckerFactory,
            start_api: ApiFactory, host_env: dict[str, str], redis_client: redis.Redis) -> None:
        """Every route of the schema called with a key of every scope: the routes are the
        known ones, none named for control, and no worker's state or gate moved."""
        worker = start_worker("ac1", env=FAST)
        start_checker("--tick", "0.1")
        server = start_api()
        token = server.key()
        schema = httpx.get(server.url + "/openapi.json").json()
        routes = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
        assert routes == {
            ("POST", "/v1/messages"), ("GET", "/v1/messages/{message_id}"),
            ("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/{job_id}"),
            ("GET", "/v1/jobs/{job_id}/results"), ("DELETE", "/v1/jobs/{job_id}"),
            ("GET", "/v1/fleet"), ("GET", "/v1/key"), ("GET", "/healthz"),
            ("GET", "/readyz"), ("GET", "/metrics")}, routes
        words = ("drain", "quarantine", "restore", "inject", "control", "admit", "shutdown")
        assert not any(w in p for _, p in routes for w in words)
        with server.client(token) as c:
            wait_until(lambda: c.get("/v1/fleet").json()["workers"].get("HEALTHY") == 1, 20,
                       "the worker healthy")
            for method, path in sorted(routes):
                url = path.replace("{message_id}", worker.name).replace("{job_id}", worker.name)
                r = c.request(method, url, json={"text": "quarantine " + worker.name})
                assert r.status_code < 500, (method, path, r.text)
            assert c.get("/v1/fleet").json()["workers"] == {"HEALTHY": 1}
        assert redis_client.llen(keys.OPERATOR_REQUESTS) == 0
        assert not any(redis_client.scan_iter(keys.PREFIX + "gate*"))


class TestServing:
    def test_a_stopping_api_answers_the_requests_in_flight(
            self, start_worker: WorkerFactory, start_api: ApiFactory) -> None:
        """SIGTERM while a submission waits for its analysis (the worker is slow to start):
        the request is answered, then the process exits 0."""
        server = start_api()
        token = server.key()
        result: dict[str, Any] = {}

        def waiting() -> None:
            with server.client(token) as c:
                r = c.post("/v1/messages", params={"wait": 10}, json={"text": "wait for me"})
                result.update(status=r.status_code, body=r.json())
        t = threading.Thread(target=waiting)
        t.start()
        time.sleep(1.0)
        start_worker("as1", wait=False)
        code = server.stop()
        t.join(30)
        assert result["status"] in (200, 202), result
        # uvicorn ends by the signal it was sent, once it has shut down cleanly
        assert code in (0, -signal.SIGTERM), code
        assert "Application shutdown complete" in server.log_path.read_text()

    @pytest.mark.background
    def test_trickling_and_idle_clients_do_not_stop_others_being_answered(
            self, start_api: ApiFactory) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert hard > 10_500, f"this machine allows {hard} open files; the test needs 10,500"
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the API inherits it
        server = start_api(env={"HOST_API_BODY_TIMEOUT": "2"})
        token = server.key()
        idle = []
        for _ in range(10_000):
            s = socket.create_connection(("127.0.0.1", server.port))
            idle.append(s)
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + token.encode() + b"\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 100\r\n\r\n")
        started = time.monotonic()
        answered = []
        with server.client(token) as c:
            for _ in range(5):
                t0 = time.monotonic()
                assert c.get("/healthz").status_code == 200
                answered.append(time.monotonic() - t0)
                slow.sendall(b"x")
                time.sleep(0.5)
        slow.settimeout(10)
        reply = slow.recv(4096)
        took = time.monotonic() - started
        assert b" 408 " in reply.split(b"\r\n")[0], reply[:200]
        assert took < 8, took
        print(f"api: 10,000 idle connections; others answered in at most {max(answered):.3f}s; "
              f"a trickling body cut off after {took:.1f}s")
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
