"""`celery -A host ingest` against real workers: real tweets, hostile input, exact accounting."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest
import redis
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from broker_config import keys
from broker_config.app import HostCelery
from broker_config.contract import envelope
from tests.conftest import GROUND_TRUTH, WorkerFactory
from tests.support.brokers import on_both_brokers
from tests.support.cli import celery, read_jsonl
from workers.deadletter import RedisDeadLetterStore


def hostile_corpus(directory: Path) -> dict[str, bytes]:
    """Files of hostile input, each written to ``directory``; returns name -> content."""
    zalgo = "h\u0336\u0335e\u0337\u0334l\u0338l\u0336o\u0335" * 3 + " happy"
    files = {
        "invalid_utf8.txt": b"fine line\n\xc3\x28 broken\n\xff\xfe\xfd\n",
        "nul.txt": b'{"data": {"id": "1", "text": "nul\\u0000inside"}}\nraw\x00nul line\n',
        "huge_line.txt": b"x" * (10 * 1024 * 1024) + b"\nafter the huge line\n",
        "deep.jsonl": (b"[" * 10_000 + b"]" * 10_000 + b"\n"
                       + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"\n"),
        "wrong_types.jsonl": b"\n".join([
            b'{"data": {"id": "1", "text": 42}}',
            b'{"data": {"id": {"x": 1}, "text": "ok"}}',
            b'{"data": "not an object"}',
            b'{"id_str": "5", "text": ["list"]}',
            b'{"id_str": "5", "text": "hi", "user": 7}',
            b"[1, 2, 3]",
            b"12345678901234567890123456789012345678901234567890" * 100,
        ]) + b"\n",
        "empty.txt": b"",
        "zalgo_rtl.txt": (zalgo + "\n"
                          + "\u202eevil reversed text\u202c is terrible\n"
                          + "\u200f\u202bright to left override\u202c great\n").encode(),
        "control_mimic.jsonl": b"\n".join([
            b'{"method": "shutdown", "destination": []}',
            b'{"method": "pool_restart", "arguments": {}, "destination": null}',
            b'{"data": {"id": "9", "text": "{\\"method\\": \\"shutdown\\", \\"destination\\": []}"}}',
        ]) + b"\n",
    }
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return files


class TestGroundTruth:
    @pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")
    @on_both_brokers
    def test_all_tweets_through_two_workers(self, app: HostCelery, start_worker: WorkerFactory,
                                            host_env: dict[str, str], tmp_path: Path) -> None:
        """4,200 tweets, one per task: exact VADER scores, r = 0.872 against human ratings."""
        # Given two workers
        workers = {start_worker("gt1").name, start_worker("gt2").name}
        out = tmp_path / "results.jsonl"
        # When every line of the ground truth is ingested, one tweet per task
        proc = celery("ingest", str(GROUND_TRUTH), "--out", str(out), "--json", env=host_env)
        # Then every tweet has exactly one result, equal to the library's own scores
        assert proc.returncode == 0, proc.stderr[-2000:]
        results = read_jsonl(out)
        expected = {}
        for line in GROUND_TRUTH.read_text(encoding="utf-8").splitlines():
            tweet_id, rating, text = line.split("\t", 2)
            expected[tweet_id] = (float(rating), text)
        assert len(results) == len(expected) == 4200
        assert {r["id"] for r in results} == set(expected)
        vader = SentimentIntensityAnalyzer()
        for r in results:
            assert r["status"] == "analysed"
            direct = vader.polarity_scores(expected[r["id"]][1])
            assert {k: r[k] for k in ("neg", "neu", "pos", "compound")} == direct, r["id"]
        assert {r["worker"] for r in results} == workers
        r_value = statistics.correlation([r["compound"] for r in results],
                                         [expected[r["id"]][0] for r in results])
        assert r_value == pytest.approx(0.872, abs=0.001)
        summary = json.loads(proc.stderr.strip().splitlines()[-1])
        assert summary["analysed"] == 4200 and summary["complete"] is True


class TestHostileInput:
    def test_every_hostile_input_is_accounted_for_and_the_worker_survives(
            self, app: HostCelery, start_worker: WorkerFactory, host_env: dict[str, str],
            redis_client: redis.Redis, tmp_path: Path) -> None:
        """Each hostile line is dead-lettered or analysed exactly once; the worker keeps serving."""
        worker = start_worker("hx1")
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        files = hostile_corpus(corpus)
        total_rejected = 0
        for name, content in files.items():
            out = tmp_path / f"{name}.out"
            proc = celery("ingest", str(corpus / name), "--out", str(out), "--json", env=host_env)
            assert proc.returncode == 0, (name, proc.stderr[-2000:])
            records = read_jsonl(out)
            n_inputs = sum(1 for ln in content.split(b"\n") if ln.strip())
            assert len(records) == n_inputs, name
            assert len({r["ref"] for r in records}) == n_inputs, name
            assert all(r["status"] in ("analysed", "rejected") for r in records), name
            assert all(r["reason"] for r in records if r["status"] == "rejected"), name
            total_rejected += sum(r["status"] == "rejected" for r in records)
        # The worker is alive and still serving
        assert worker.alive()
        result = app.send_task("host.analyse", args=[envelope("after:1", "still working, great")])
        assert result.get(timeout=20)["status"] == "analysed"
        # Every rejection is kept and counted in Redis
        counts = RedisDeadLetterStore(redis_client).counts()
        assert counts["total"] == total_rejected
        assert redis_client.llen(keys.DEADLETTER) == total_rejected
        for reason in ("invalid_utf8", "line_too_long", "json_too_deep", "nul_byte",
                       "wrong_type", "unrecognised_json"):
            assert counts.get(reason, 0) >= 1, reason

    def test_forged_task_payloads_are_dead_lettered(self, app: HostCelery,
                                                    start_worker: WorkerFactory) -> None:
        """Producers other than ingest cannot crash a worker with malformed task arguments."""
        start_worker("hx2")
        bad_args = [None, 7, "raw string", ["list"], {"line": {"nested": True}},
                    {"method": "shutdown", "destination": []}]
        for arg in bad_args:
            record = app.send_task("host.analyse", args=[arg]).get(timeout=20)
            assert record["status"] == "rejected", arg
        batch = app.send_task("host.analyse_batch", args=[{"not": "a list"}]).get(timeout=20)
        assert batch[0]["reason"] == "wrong_type"


class TestIngestAccounting:
    def test_batches_account_for_every_line(self, start_worker: WorkerFactory,
                                            host_env: dict[str, str], tmp_path: Path) -> None:
        """With --batch, every input still yields exactly one output line."""
        start_worker("ba1")
        src = tmp_path / "mixed.txt"
        lines = [f"line {i} is {'great' if i % 2 else 'awful'}" for i in range(250)]
        lines[7] = "{broken json"
        src.write_text("\n".join(lines) + "\n")
        out = tmp_path / "out.jsonl"
        proc = celery("ingest", str(src), "--batch", "40", "--out", str(out), env=host_env)
        assert proc.returncode == 0, proc.stderr
        records = read_jsonl(out)
        assert sorted(r["ref"] for r in records) == sorted(f"{src}:{i}" for i in range(1, 251))
        assert sum(r["status"] == "rejected" for r in records) == 1

    def test_rate_makes_a_steady_stream(self, start_worker: WorkerFactory,
                                        host_env: dict[str, str], tmp_path: Path) -> None:
        """--rate 20 sends 41 inputs over two seconds at least (input n at n / 20 s), every one
        accounted for; at once, one worker runs them in a fraction of that."""
        start_worker("rt1")
        src = tmp_path / "steady.txt"
        src.write_text("".join(f"tweet {i} is fine\n" for i in range(41)))
        out = tmp_path / "out.jsonl"
        proc = celery("ingest", str(src), "--rate", "20", "--out", str(out), env=host_env)
        assert proc.returncode == 0, proc.stderr
        started = sorted(r["started_at"] for r in read_jsonl(out))
        assert len(started) == 41
        assert started[-1] - started[0] >= 1.9, started[-1] - started[0]
        refused = celery("ingest", str(src), "--rate", "0", env=host_env)  # (each run: ~3 s)
        assert refused.returncode == 2 and "--rate" in refused.stderr, refused.stderr

    def test_sending_and_collecting_overlap_within_a_bounded_window(
            self, app: HostCelery, start_worker: WorkerFactory, redis_client: redis.Redis
    ) -> None:
        """Results arrive (and are written) while inputs are still being sent, and never more
        than the window is in flight: memory and the broker's queue stay bounded."""
        import io

        from producer.feed import feed, read_lines
        from workers.inbound import Limits

        start_worker("sw1", concurrency=2)
        src = io.BytesIO("".join(f"tweet {i} is {'great' if i % 3 else 'bad'}\n"
                                 for i in range(600)).encode())
        sent = {"now": 0, "at_first_result": -1}
        in_flight: list[int] = []

        def progress(accounted: int, inputs: int, final: bool) -> None:
            sent["now"] = inputs
            in_flight.append(inputs - accounted)

        def on_record(record: dict[str, object]) -> None:
            if sent["at_first_result"] < 0:
                sent["at_first_result"] = sent["now"]

        out = io.StringIO()
        stored_before = set(redis_client.scan_iter(b"celery-task-meta-*"))
        report = feed(app, read_lines(src, "mem", "auto", Limits(1 << 20, 10_000)), out,
                      RedisDeadLetterStore(redis_client), batch=5, window=50,
                      progress=progress, on_record=on_record, idle_timeout=30)
        assert report.complete and report.inputs == 600 and not report.stopped
        # each result was read once and then deleted, and nothing stays subscribed
        assert set(redis_client.scan_iter(b"celery-task-meta-*")) == stored_before
        assert redis_client.pubsub_channels(b"celery-task-meta-*") == []
        assert sorted(json.loads(ln)["ref"] for ln in out.getvalue().splitlines()) == sorted(
            f"mem:{i}" for i in range(1, 601))
        assert 0 < max(in_flight) <= 50, max(in_flight)
        assert 0 < sent["at_first_result"] <= 50, sent  # the first result: 50 sent of 600

    def test_time_spent_sending_is_not_idle_time(self, app: HostCelery,
                                                  start_worker: WorkerFactory,
                                                  redis_client: redis.Redis) -> None:
        """An input read and sent for longer than the idle timeout (a trickle, or a large one on
        a busy machine) still has every result collected: the timeout counts from the last
        task sent or result read. (It counted from the start: 16,800 tweets sent in more than
        the timeout were all reported missing while the workers analysed them.)"""
        import io
        import time
        from collections.abc import Iterator

        from producer.feed import feed
        from workers.inbound import Line

        start_worker("tr1")

        def trickle() -> Iterator[Line]:
            for i in range(6):
                time.sleep(0.5)
                yield Line(f"trickle:{i}", f"tweet number {i} is great")

        report = feed(app, trickle(), io.StringIO(), RedisDeadLetterStore(redis_client),
                      idle_timeout=1.5)
        assert report.complete and report.analysed == 6, report.as_dict()

    def test_stdin_and_v2_document(self, start_worker: WorkerFactory,
                                   host_env: dict[str, str]) -> None:
        """A whole v2 response on standard input is split into its tweets."""
        start_worker("sd1")
        doc = json.dumps({"data": [{"id": "1", "text": "love it"}, {"id": "2", "text": "hate it"}]})
        proc = celery("ingest", "-", "--format", "json", env=host_env, stdin=doc.encode())
        assert proc.returncode == 0, proc.stderr
        records = [json.loads(ln) for ln in proc.stdout.splitlines()]
        assert sorted((r["id"], r["label"]) for r in records) == [("1", "positive"),
                                                                  ("2", "negative")]

    def test_no_worker_means_incomplete_exit_code(self, host_env: dict[str, str],
                                                  redis_client: redis.Redis,
                                                  tmp_path: Path) -> None:
        """With nobody to run the tasks, ingest gives up after --timeout and exits 1."""
        src = tmp_path / "two.txt"
        src.write_text("first\nsecond\n")
        proc = celery("ingest", str(src), "--timeout", "1", "--json", env=host_env, timeout=60)
        assert proc.returncode == 1
        summary = json.loads(proc.stderr.strip().splitlines()[-1])
        assert summary["missing"] == 2 and summary["complete"] is False

    @pytest.mark.parametrize("setting", ["HOST_BROKER_URL", "HOST_RESULT_BACKEND"])
    def test_unreachable_broker_is_one_line_and_exit_3(self, setting: str,
                                                       host_env: dict[str, str],
                                                       tmp_path: Path) -> None:
        """A broker or a result store nobody listens on gives exit code 3 and no traceback."""
        from harness.redis_server import free_port

        src = tmp_path / "one.txt"
        src.write_text("hello\n")
        env = {**host_env, setting: f"redis://127.0.0.1:{free_port()}/0"}
        proc = celery("ingest", str(src), env=env, timeout=60)
        assert proc.returncode == 3, proc.stderr
        assert "unreachable" in proc.stderr
        assert "Traceback" not in proc.stderr


def strict_json(line: str) -> dict[str, object]:
    """Parse one output line as strict JSON: NaN and Infinity are not JSON."""
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON: {line[:200]}")

    value: dict[str, object] = json.loads(line, parse_constant=refuse)
    return value


class TestAnyFile:
    """Every input line of any file is accounted for, and every output line is JSON."""

    @pytest.mark.parametrize("sep", ["\n", "\r\n", "\r", "\u2028", "\u2029"])
    def test_every_line_separator_frames_every_tweet(self, sep: str, start_worker: WorkerFactory,
                                                     host_env: dict[str, str],
                                                     tmp_path: Path) -> None:
        """20 tweets joined by LF, CRLF, CR, U+2028 or U+2029, behind a BOM: 20 results."""
        start_worker("af1", concurrency=2)
        tweets = [f"tweet {i} is a lovely one" for i in range(20)]
        src = tmp_path / "tweets.txt"
        src.write_bytes(b"\xef\xbb\xbf" + sep.join(tweets).encode() + sep.encode())
        out = tmp_path / "out.jsonl"
        proc = celery("ingest", str(src), "--out", str(out), env=host_env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        records = [strict_json(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
        assert sorted(str(r["text"]) for r in records) == sorted(tweets)

    def test_unencodable_values_are_dead_letters_not_a_crash(
            self, start_worker: WorkerFactory, host_env: dict[str, str], tmp_path: Path) -> None:
        """2,000 tweets plus lone surrogates in each field, infinite ratings, a non-UTF-8 file
        name: every line accounted for, exit 0, every output line strict JSON."""
        start_worker("af2", concurrency=2)
        good = [json.dumps({"data": {"id": str(i), "text": f"good tweet {i} :)"}})
                for i in range(2000)]
        bad = ['{"data": {"id": "1", "text": "x", "author_id": "\\udfff"}}',
               '{"data": {"id": "\\udfff", "text": "x"}}',
               '{"id_str": "2", "text": "x", "user": {"screen_name": "\\udfff"}}',
               '{"data": {"id": "3", "text": "x", "note_tweet": {"text": "\\udfff"}}}',
               "7\t1e999\tan infinite rating", "8\t-1e400\tminus infinity"]
        name = os.fsdecode(os.fsencode(tmp_path) + b"/tweets-\xff.jsonl")  # not UTF-8
        Path(name).write_text("\n".join(good[:1000] + bad + good[1000:]) + "\n",
                              encoding="utf-8")
        out = tmp_path / "out.jsonl"
        proc = celery("ingest", name, "--out", str(out), "--json", env=host_env, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        records = [strict_json(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
        assert len(records) == 2006
        rejected = [r for r in records if r["status"] == "rejected"]
        assert sorted(str(r["reason"]) for r in rejected) == ["bad_tsv"] * 2 + [
            "invalid_unicode"] * 4
        assert "Traceback" not in proc.stderr


class TestGoneForGood:
    def test_a_broker_that_dies_mid_run_is_exit_3(self, tmp_path: Path) -> None:
        """Everything sent, no worker, then Redis gone for good: exit 3, one line, no traceback."""
        import subprocess
        import sys
        import time

        from harness.redis_server import RedisServer
        from tests.support.cli import REPO

        server = RedisServer().start()
        src = tmp_path / "some.txt"
        src.write_text("".join(f"tweet {i}\n" for i in range(50)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
        env["HOST_BROKER_URL"] = server.url
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "ingest",
                                 str(src), "--timeout", "5", "--out", str(tmp_path / "o.jsonl")],
                                env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            client = redis.Redis.from_url(server.url)
            deadline = time.monotonic() + 30
            while client.llen("tweets") < 50 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.llen("tweets") == 50
            server.stop()
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
            server.stop()
        assert proc.returncode == 3, err[-2000:]
        assert "Traceback" not in err and "result store is gone" in err


class TestResultReader:
    """How ``ingest`` reads results: notified once, read from the store when the notification
    was missed, forgotten (unsubscribed, deleted) once delivered."""

    def test_notified_missed_and_forgotten(self, app: HostCelery,
                                           redis_client: redis.Redis) -> None:
        import uuid

        from producer.results import ResultReader

        reader = ResultReader(app.backend)
        try:
            early, watched, running = (str(uuid.uuid4()) for _ in range(3))
            app.backend.store_result(early, {"n": 1}, "SUCCESS")  # before anyone listened
            reader.watch(watched)
            reader.watch(running)
            app.backend.store_result(running, None, "STARTED")
            app.backend.store_result(watched, {"n": 2}, "SUCCESS")
            got: list[tuple[str, dict[str, object]]] = []
            deadline = 50
            while not got and deadline:
                got = reader.arrived(0.1)
                deadline -= 1
            assert [(t, m["result"]) for t, m in got] == [(watched, {"n": 2})]
            assert reader.arrived(0.2) == []  # a task still running is not a result
            stored = reader.stored([early, running, watched])
            assert sorted(t for t, _ in stored) == sorted([early, watched])
            reader.forget([early, watched, running])
            assert redis_client.exists(*(reader.key(t) for t in (early, watched, running))) == 0
            deadline = 50
            while redis_client.pubsub_numsub(reader.key(running))[0][1] and deadline:
                reader.arrived(0.05)  # reads the unsubscribe confirmations
                deadline -= 1
            assert redis_client.pubsub_numsub(reader.key(running))[0][1] == 0
        finally:
            reader.close()
