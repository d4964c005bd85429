"""host_recycle in a real worker: refused in rotation; out of rotation, the pool's processes are
replaced and what a real leak grew is gone."""

from __future__ import annotations

from typing import Any

from broker_config.app import HostCelery
from broker_config.contract import envelope
from healthcheck.actuator import control_reply
from tests.conftest import WorkerFactory
from tests.support.events import EventTap
from tests.support.polling import wait_until

MIB = 2**20


def pool_pids(app: HostCelery, worker: str) -> list[int]:
    stats: dict[str, Any] = app.control.inspect(destination=[worker], timeout=3).stats() or {}
    return sorted(stats.get(worker, {}).get("pool", {}).get("processes", []))


def rss_reported(tap: EventTap, worker: str) -> dict[str, Any]:
    return tap.wait_for("worker-wear", lambda e: "rss_percent" in e["wear"], hostname=worker,
                        timeout=10)


class TestRecycle:
    def test_refused_in_rotation_and_out_of_it_the_leak_is_gone(
            self, app: HostCelery, start_worker: WorkerFactory) -> None:
        worker = start_worker("rc1", concurrency=2, env={
            "HOST_WEAR_INTERVAL": "0.25", "HOST_WEAR_INJECT": "leak=40",
            "HOST_WORKER_MEMORY_LIMIT": str(2048 * MIB)})
        # In rotation: refused, nothing restarted
        before = pool_pids(app, worker.name)
        assert len(before) == 2
        reply = control_reply(app, "host_recycle", worker.name, {"reason": "test"})
        assert reply is not None and "in rotation" in reply.get("error", ""), reply
        assert pool_pids(app, worker.name) == before
        with EventTap(app) as tap:
            baseline = rss_reported(tap, worker.name)["last"]["rss_bytes"]
            # A real leak: 40 MiB held per task, 8 tasks
            results = [app.send_task("host.analyse", args=[envelope(f"rc:{i}", "a fine day")])
                       for i in range(8)]
            assert all(r.get(timeout=30)["status"] == "analysed" for r in results)
            grown = wait_until(lambda: next((e for e in reversed(tap.of("worker-wear",
                                                                         worker.name))
                                             if e["last"]["rss_bytes"] > baseline + 250 * MIB),
                                            None), 10, "the leak seen")
            # Out of rotation: the pool is replaced and the leak with it
            drained = control_reply(app, "host_drain", worker.name, {"reason": "test"})
            assert drained is not None and drained["gate"] == "closed"
            reply = control_reply(app, "host_recycle", worker.name, {"reason": "leak"})
            assert reply is not None and reply.get("ok") and reply["restarted"] == 2, reply
            wait_until(lambda: (lambda pids: len(pids) == 2 and not set(pids) & set(before))(
                pool_pids(app, worker.name)), 20, "two new pool processes")
            healed = wait_until(lambda: next((e for e in reversed(tap.of("worker-wear",
                                                                          worker.name))
                                              if e["last"]["rss_bytes"]
                                              < grown["last"]["rss_bytes"] - 250 * MIB), None),
                                20, "the leaked memory freed")
        print(f"rss before the recycle {grown['last']['rss_bytes'] / MIB:.0f} MiB, after "
              f"{healed['last']['rss_bytes'] / MIB:.0f} MiB")
        # And the worker works again once admitted
        assert control_reply(app, "host_admit", worker.name, {"reason": "test"}) is not None
        again = app.send_task("host.analyse", args=[envelope("rc:after", "still fine")])
        assert again.get(timeout=30)["status"] == "analysed"
