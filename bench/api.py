"""The HTTP API under load: one tweet per request, many kept-alive clients, each waiting for its
own analysis (``?wait=``), beside ``ingest --batch 1000`` and raw VADER on the same cores in
the same run.

A private redis-server, one host worker (``-c`` one child per core), the API process, and the
clients in this process (asyncio on raw sockets: a client costs far less than a server, so the
clients measure the API and not themselves). Two figures per run: the peak (every client sends
its next tweet when its last is answered) and the latency at half that rate (requests sent on
a fixed schedule).

    python bench/api.py [--clients 256] [--seconds 10] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.throughput import Config, _run_raw, load_tweets, run_ingest  # noqa: E402
from broker_config.settings import Settings  # noqa: E402
from harness.processes import WorkerProcess, node_name  # noqa: E402
from harness.redis_server import RedisServer  # noqa: E402
from tests.support.api_server import ApiServer  # noqa: E402
from workers.app import create_app  # noqa: E402


class Client:
    """One kept-alive connection sending one tweet per request and reading its answer."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def send(self, text: str) -> int:
        assert self.reader is not None and self.writer is not None
        body = json.dumps({"text": text}).encode()
        self.writer.write(b"POST /v1/messages?wait=10 HTTP/1.1\r\nHost: bench\r\n"
                          b"Authorization: Bearer " + self.token.encode() +
                          b"\r\nContent-Type: application/json\r\nContent-Length: "
                          + str(len(body)).encode() + b"\r\n\r\n" + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status


async def peak(clients: list[Client], texts: list[str], seconds: float) -> tuple[float, int]:
    """Every client in a closed loop for ``seconds``: (answered tweets a second, errors)."""
    done, errors = [0], [0]
    stop = time.perf_counter() + seconds

    async def loop(c: Client, offset: int) -> None:
        i = offset
        while time.perf_counter() < stop:
            status = await c.send(texts[i % len(texts)])
            if status == 200:
                done[0] += 1
            else:
                errors[0] += 1
            i += len(clients)
    start = time.perf_counter()
    await asyncio.gather(*(loop(c, k) for k, c in enumerate(clients)))
    return done[0] / (time.perf_counter() - start), errors[0]


async def paced(clients: list[Client], texts: list[str], rate: float,
                seconds: float) -> list[float]:
    """Requests sent on a fixed schedule at ``rate`` a second: each one's latency (seconds,
    counted from when it was due, so that a late start counts against the server)."""
    free: asyncio.Queue[Client] = asyncio.Queue()
    for c in clients:
        free.put_nowait(c)
    latencies: list[float] = []
    tasks = []

    async def one(due: float, text: str) -> None:
        c = await free.get()
        try:
            status = await c.send(text)
            if status == 200:
                latencies.append(time.perf_counter() - due)
        finally:
            free.put_nowait(c)
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(due, texts[i % len(texts)])))
    await asyncio.gather(*tasks)
    return latencies


def run_api(server: ApiServer, token: str, texts: list[str], n_clients: int,
            seconds: float) -> dict[str, float]:
    async def go() -> dict[str, float]:
        clients = [Client(server.port, token) for _ in range(n_clients)]
        await asyncio.gather(*(c.connect() for c in clients))
        await peak(clients, texts, 1.0)  # warm up
        rate, errors = await peak(clients, texts, seconds)
        lat = sorted(await paced(clients, texts, rate / 2, seconds))
        for c in clients:
            assert c.writer is not None
            c.writer.close()
        return {"tweets_per_s": rate, "errors": errors, "half_rate": rate / 2,
                "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(len(lat) * 0.99)]}
    try:
        import uvloop
        return uvloop.run(go())
    except ImportError:
        return asyncio.run(go())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bulk-tweets", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tweets = load_tweets(args.bulk_tweets)
    texts = [t for _, t in tweets]
    cores = os.cpu_count() or 1
    rows: dict[str, list[float]] = {"api": [], "ingest": [], "raw": []}
    lat: dict[str, list[float]] = {"p50_ms": [], "p99_ms": []}
    redis_ = RedisServer().start()
    with tempfile.TemporaryDirectory(prefix="host-bench-api-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
        env.update(HOST_BROKER_URL=redis_.url, HOST_LOG_FORMAT="json", HOST_LOG_LEVEL="WARNING",
                   HOST_API_RATE="1000000", HOST_API_JOBS_DIR=str(Path(tmp) / "jobs"))
        worker = WorkerProcess(node_name("bench-api"), env, (), cores,
                               log_path=Path(tmp) / "worker.log").start()
        app = create_app(Settings.from_env(env))
        worker.wait_ready(app)
        server = ApiServer(env, Path(tmp) / "api.log").start()
        token = server.key()
        ingest = run_ingest(1000)
        cfg = Config("ingest", app, "", env)
        try:
            for _ in range(args.runs):  # interleaved: the machine's noise falls on every row
                got = run_api(server, token, texts, args.clients, args.seconds)
                rows["api"].append(got["tweets_per_s"])
                lat["p50_ms"].append(got["p50_ms"])
                lat["p99_ms"].append(got["p99_ms"])
                rows["ingest"].append(ingest(cfg, tweets))
                rows["raw"].append(_run_raw("vaderSentiment", tweets))
        finally:
            server.stop()
            worker.stop()
            redis_.stop()
    med = {k: statistics.median(v) for k, v in rows.items()}
    result = {"clients": args.clients, "runs": args.runs,
              "api_tweets_per_s": round(med["api"], 1),
              "ingest_batch_1000_tweets_per_s": round(med["ingest"], 1),
              "raw_vader_tweets_per_s": round(med["raw"], 1),
              "api_vs_raw_vader": round(med["api"] / med["raw"], 3),
              "api_vs_ingest": round(med["api"] / med["ingest"], 3),
              "p50_ms_at_half_peak": round(statistics.median(lat["p50_ms"]), 1),
              "p99_ms_at_half_peak": round(statistics.median(lat["p99_ms"]), 1)}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"\nAPI, one tweet per request, {args.clients} kept-alive clients waiting for their "
          f"analysis; medians of {args.runs} runs on {cores} cores")
    print(f"{'':42} {'tweets/s':>10} {'÷ raw VADER':>12}")
    for name, key in (("API (one tweet per request)", "api"),
                      ("ingest --batch 1000", "ingest"),
                      (f"raw VADER, {cores} processes", "raw")):
        print(f"{name:42} {med[key]:10.0f} {med[key] / med['raw']:12.3f}")
    print(f"latency at half the peak ({med['api'] / 2:.0f}/s): p50 "
          f"{result['p50_ms_at_half_peak']} ms, p99 {result['p99_ms_at_half_peak']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
