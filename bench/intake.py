"""The checker's intake at fleet scale: a synthetic fleet against a real checker on one core.

Each synthetic worker sends one ``worker-wear`` event a second and a ``worker-heartbeat``
every two, byte for byte as Celery's own dispatcher puts them on Redis (the bytes are
captured from a real dispatcher once, then re-encoded per worker name), pre-encoded and
pipelined from this process on the other core, so that the generator is never the limit.
The checker is a real ``celery -A host healthcheck`` pinned to core 0; the generator and the
private redis-server share core 1.

Intake lag is measured by marker workers: twice a second a new worker's first report is
published, and the lag is the time until the checker has stored it (its state appears in the
store); a marker never stored is lost. The knee is the first offered rate at which lag p99
passes 1 s.

With ``--shards N`` the checker is one shard's leader (shard 0 of N): the whole fleet's events
are offered as before, wear reports on their buckets' channels as workers publish them, and
the markers are shard 0's workers. What one shard's checker then spends is what sharding buys.

    python bench/intake.py [--workers 2000,4000,10000] [--seconds 20] [--shards N] [--json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from broker_config import keys  # noqa: E402
from broker_config.settings import Settings  # noqa: E402
from broker_config.shards import shard_of, wear_routing_key  # noqa: E402
from harness.processes import wait_until  # noqa: E402
from harness.redis_server import RedisServer, free_port  # noqa: E402
from workers.app import create_app  # noqa: E402

#: A wear report as a healthy worker sends it (the checker reads every field it needs).
WEAR_FIELDS: dict[str, Any] = {
    "seq": 1, "boot": "bench", "interval": 1.0,
    "wear": {"cpu_percent": [21.0, 30.0], "memory_percent": [40.0, 41.0],
             "rss_bytes": [2.0e8, 2.1e8], "load_per_core": [0.4, 0.6],
             "open_files": [30.0, 31.0], "open_files_percent": [3.0, 3.1]},
    "tasks": {"completed": 50, "failed": 0, "failure_rate": 0.0, "consecutive_failures": 0,
              "runtime_p50": 0.004, "runtime_p95": 0.009, "queue_wait_p95": 0.02},
    "inflight": 1, "queues": ["bulk", "default", "tweets"], "requeued": {},
    "inbound": {"analysed": 1000, "rejected": 0},
    "tweets": {"positive": 400, "neutral": 300, "negative": 300}, "control_refused": {},
    "dead_letters": {}, "subscriptions_undone": {}, "gate": "open", "gate_reason": "clean start",
    "gate_changed_at": 0.0, "self_protected": None,
    "consuming": ["bulk", "default", "tweets"], "at": 0.0, "inject": None, "cost_s": 0.004,
}


def capture(url: str) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """One real message of each kind, as Celery's dispatcher publishes it: (channel, envelope)."""
    app = create_app(Settings(broker_url=url))
    sub = redis.Redis.from_url(url).pubsub()
    sub.psubscribe("*")
    wait_until(lambda: sub.get_message(timeout=0.1), 5, "the subscription")
    captured: dict[str, tuple[bytes, dict[str, Any]]] = {}
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, hostname="template@bench")
        dispatcher.send("worker-wear", **WEAR_FIELDS)
        dispatcher.send("worker-heartbeat", freq=2.0, active=1, processed=10)
    deadline = time.monotonic() + 5
    while len(captured) < 2 and time.monotonic() < deadline:
        m = sub.get_message(timeout=0.5)
        if m and m["type"] == "pmessage":
            envelope = json.loads(m["data"])
            kind = json.loads(base64.b64decode(envelope["body"]))["type"]
            captured[kind] = (m["channel"], envelope)
    sub.close()
    if len(captured) < 2:
        raise RuntimeError(f"captured only {sorted(captured)} from Celery's dispatcher")
    return captured


def encode(template: tuple[bytes, dict[str, Any]], hostname: str,
           **fields: Any) -> tuple[bytes, bytes]:
    """The template's message for another worker (and other fields): the same envelope, its
    body re-encoded."""
    channel, envelope = template
    body = json.loads(base64.b64decode(envelope["body"]))
    if body["type"] == "worker-wear":  # a worker publishes its report on its bucket's key
        channel = channel.rsplit(b"/", 1)[0] + b"/" + wear_routing_key(hostname).encode()
    body.update(hostname=hostname, timestamp=time.time(), **fields)
    copy = {**envelope, "body": base64.b64encode(json.dumps(body).encode()).decode()}
    return channel, json.dumps(copy).encode()


class Fleet:
    """Publishes the synthetic fleet's events in 10 ms slots, and markers twice a second."""

    def __init__(self, url: str, templates: dict[str, tuple[bytes, dict[str, Any]]],
                 workers: int, shards: int = 1) -> None:
        self.client = redis.Redis.from_url(url)
        self.templates = templates
        names = [f"synthetic-{i}@bench" for i in range(workers)]
        self.wear = [encode(templates["worker-wear"], n) for n in names]
        self.beats = [encode(templates["worker-heartbeat"], n) for n in names]
        self.names = names
        self.markers: dict[str, float] = {}
        # Markers are workers of the measured checker's shard (0).
        self._marker_names = (n for n in (f"marker-{i}@bench" for i in range(10**9))
                              if shard_of(n, shards) == 0)
        self.sent = 0
        self.stop = threading.Event()

    def wear_out(self, n: int) -> None:
        """The first ``n`` workers report a CPU over the hard limit from now on (they never
        answer the drains that follow: they do not exist)."""
        hot = {**WEAR_FIELDS["wear"], "cpu_percent": [100.0, 100.0]}
        for i in range(n):
            self.wear[i] = encode(self.templates["worker-wear"], self.names[i], wear=hot)

    def run(self, seconds: float) -> None:
        slots = 100  # 10 ms each
        start = time.monotonic()
        tick = 0
        while not self.stop.is_set() and time.monotonic() - start < seconds:
            second, slot = divmod(tick, slots)
            pipe = self.client.pipeline(transaction=False)
            for channel, data in self.wear[slot::slots]:
                pipe.publish(channel, data)
            if second % 2 == 0:
                for channel, data in self.beats[slot::slots]:
                    pipe.publish(channel, data)
            if slot % 50 == 0:
                name = next(self._marker_names)
                channel, data = encode(self.templates["worker-wear"], name)
                pipe.publish(channel, data)
                self.markers[name] = time.monotonic()
            self.sent += len(pipe)
            pipe.execute()
            tick += 1
            delay = start + tick / slots - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def watch_markers(url: str, fleet: Fleet, seen: dict[str, float], stop: threading.Event) -> None:
    """Note when each marker's state first appears in the store."""
    client = redis.Redis.from_url(url)
    while not stop.is_set():
        pending = [m for m in list(fleet.markers) if m not in seen]
        if pending:
            for name, found in zip(pending, client.hmget(keys.WORKERS, pending), strict=True):
                if found is not None:
                    seen[name] = time.monotonic()
        time.sleep(0.02)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def measure(workers: int, seconds: float, profile: str = "", wave: int = 0,
            shards: int = 1) -> dict[str, Any]:
    """One level: a fresh Redis, a fresh checker (shard 0 of ``shards``), ``workers``
    synthetic workers."""
    server = RedisServer().start()
    assert server.proc is not None
    os.sched_setaffinity(server.proc.pid, {1})  # the broker with the generator: core 0 is the checker's
    port = free_port()
    env = {**os.environ, "HOST_BROKER_URL": server.url, "HOST_LOG_LEVEL": "WARNING",
           "HOST_LOG_FORMAT": "json", "HOST_CHECKER_SHARDS": str(shards)}
    log = Path(tempfile.mkdtemp(prefix="intake-")) / "checker.log"
    checker = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "celery", "-A",
                                "host", "healthcheck", "--metrics-port", str(port),
                                "--shard", "0"],
                               cwd=REPO, env=env, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _ready(port), 30, "the checker to be ready")
        os.sched_setaffinity(0, {1})
        fleet = Fleet(server.url, capture(server.url), workers, shards)
        seen: dict[str, float] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=watch_markers, args=(server.url, fleet, seen, stop),
                                   daemon=True)
        watcher.start()
        proc = psutil.Process(checker.pid)
        warm = 5.0
        sender = threading.Thread(target=fleet.run, args=(warm + seconds,), daemon=True)
        sender.start()
        time.sleep(warm)  # the join storm, then steady state
        if wave:
            fleet.wear_out(wave)
        spy = (subprocess.Popen(["py-spy", "record", "-p", str(checker.pid), "-d",
                                 str(int(seconds)), "-f", "speedscope", "-o",
                                 f"{profile}/checker-{workers}.json", "-r", "50", "--gil"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               if profile else None)
        cpu0, t0, sent0 = sum(proc.cpu_times()[:2]), time.monotonic(), fleet.sent
        measured_from = time.monotonic()
        sender.join()
        if spy is not None:
            spy.wait(30)
        cpu = (sum(proc.cpu_times()[:2]) - cpu0) / (time.monotonic() - t0)
        offered = (fleet.sent - sent0) / (time.monotonic() - t0)
        time.sleep(3)  # late markers
        stop.set()
        markers = {m: at for m, at in fleet.markers.items() if at >= measured_from}
        lags = [seen[m] - at for m, at in markers.items() if m in seen]
        lost = sum(1 for m in markers if m not in seen)
        drains = sum(1 for w in fleet.names[:wave] if (s := redis.Redis.from_url(server.url)
                                                          .hget(keys.WORKERS, w)) and
                     json.loads(s)["state"] in ("DRAINING", "QUARANTINED"))
        return {"workers": workers, "shards": shards, "wave": wave, "drained": drains,
                "offered_per_s": round(offered), "markers": len(markers),
                "lost": lost, "lag_p50_s": round(percentile(lags, 50), 3),
                "lag_p99_s": round(percentile(lags, 99), 3), "checker_cpu": round(cpu, 2),
                "checker_alive": checker.poll() is None, "checker_log": str(log)}
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        checker.terminate()
        try:
            checker.wait(15)
        except subprocess.TimeoutExpired:
            checker.kill()
        server.stop()


def join_storm(workers: int) -> dict[str, Any]:
    """A checker (re)starting in front of ``workers`` live workers: until ready, until every
    worker is stored, and how many writes that took."""
    server = RedisServer().start()
    assert server.proc is not None
    os.sched_setaffinity(server.proc.pid, {1})
    port = free_port()
    env = {**os.environ, "HOST_BROKER_URL": server.url, "HOST_LOG_LEVEL": "WARNING",
           "HOST_LOG_FORMAT": "json"}
    client = redis.Redis.from_url(server.url)
    os.sched_setaffinity(0, {1})
    fleet = Fleet(server.url, capture(server.url), workers)
    sender = threading.Thread(target=fleet.run, args=(60.0,), daemon=True)
    sender.start()
    time.sleep(2)  # the fleet is talking before the checker starts
    client.config_resetstat()
    started = time.monotonic()
    checker = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "celery", "-A",
                                "host", "healthcheck", "--metrics-port", str(port)],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _ready(port), 60, "the checker to be ready")
        ready = time.monotonic() - started
        wait_until(lambda: client.hlen(keys.WORKERS) >= workers, 60, "every worker stored")
        caught_up = time.monotonic() - started
        stats = client.info("commandstats")
        writes = sum(int(v["calls"]) for k, v in stats.items()
                     if k in ("cmdstat_evalsha", "cmdstat_eval"))
        commands = sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_publish")
        return {"workers": workers, "ready_s": round(ready, 2), "caught_up_s": round(caught_up, 2),
                "store_writes": writes, "commands": commands}
    finally:
        fleet.stop.set()
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        checker.terminate()
        checker.wait(15)
        server.stop()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="2000,4000,10000",
                        help="comma-separated fleet sizes, one run each (ascending)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", default="", help="a folder: py-spy profiles of the checker")
    parser.add_argument("--wave", type=int, default=0,
                        help="that many workers report a hard CPU breach after the warm-up and "
                             "never answer the drains (acting must not stall watching)")
    parser.add_argument("--shards", type=int, default=1,
                        help="the checker leads shard 0 of this many (the fleet's whole stream "
                             "is offered; markers are shard 0's)")
    parser.add_argument("--join-storm", type=int, default=0, metavar="N",
                        help="also: start a checker in front of N live workers; time it")
    args = parser.parse_args()
    rows = [measure(int(n), args.seconds, args.profile, args.wave, args.shards)
            for n in args.workers.split(",")]
    storm = join_storm(args.join_storm) if args.join_storm else None
    if args.json:
        print(json.dumps({"levels": rows, "join_storm": storm}))
        return
    if args.shards > 1:
        print(f"one checker: shard 0 of {args.shards} (the whole fleet's events offered)")
    print(f"{'workers':>8} {'events/s':>9} {'lag p50':>8} {'lag p99':>8} {'lost':>9} "
          f"{'checker CPU':>12}")
    for r in rows:
        print(f"{r['workers']:>8} {r['offered_per_s']:>9} {r['lag_p50_s']:>7}s "
              f"{r['lag_p99_s']:>7}s {r['lost']:>4} of {r['markers']:<3} {r['checker_cpu']:>8} core"
              + ("" if r["checker_alive"] else "  (checker died)"))
    if args.wave:
        print(f"wave: {args.wave} workers breached and never answered a drain; "
              + ", ".join(f"{r['drained']} drained at {r['workers']}" for r in rows))
    if storm:
        print(f"join storm: a checker started in front of {storm['workers']} live workers was "
              f"ready in {storm['ready_s']} s and had stored all of them in "
              f"{storm['caught_up_s']} s, with {storm['store_writes']} store writes "
              f"({storm['commands']} Redis commands)")
    knee = next((r for r in rows if not r["lag_p99_s"] <= 1.0 or r["lost"]), None)
    print("knee: " + (f"lag p99 passes 1 s (or markers are lost) by {knee['offered_per_s']} "
                      f"events/s ({knee['workers']} workers)" if knee else
                      f"not reached up to {rows[-1]['offered_per_s']} events/s"))


if __name__ == "__main__":
    main()
