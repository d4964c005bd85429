"""A nemesis run: the fleet on this machine, the real tweets streamed through the producer paths,
faults on a schedule drawn from the seed, then a check of every promise against the records.

    python -m tests.nemesis --seed 7 --minutes 3 [--workers 4] [--profile redis|amqp|shards]
                            [--dir DIR] [--json]

Prints the seed and the schedule first (the same seed replays the same schedule), then each
fault as it begins and ends, then the report; exits 0 when no promise was broken, 1 otherwise.
docs/operations.md ("Reading a nemesis report") says how to read one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.nemesis.check import Report, check
from tests.nemesis.fleet import PROFILES, Fleet
from tests.nemesis.schedule import Fault, draw, dumps
from tests.nemesis.workload import Workload
from tests.support.netns import Link

#: After the last fault heals: the most the fleet may take to be back in full rotation with
#: every input answered.
RECOVERY_S = 120.0


def run(seed: int, minutes: float, workers: int, run_dir: Path, say: Any = print,
        profile: str = "redis") -> tuple[Report, dict[str, Any]]:
    seconds = minutes * 60
    network = Link.unavailable()
    faults = draw(seed, seconds, workers, checkers=4 if profile == "shards" else 2,
                  network=network is None)
    say(f"nemesis: seed {seed}, {minutes:g} min, {workers} workers, profile {profile}, "
        f"{len(faults)} faults" + (f" (no network faults: {network})" if network else ""))
    for f in faults:
        say(f"  {f}")
    (run_dir / "schedule.json").write_text(dumps(faults))
    fleet = Fleet(run_dir, workers, profile)
    events = (run_dir / "events.jsonl").open("a", encoding="utf-8")
    timings: dict[str, Any] = {"seed": seed, "minutes": minutes, "faults": len(faults),
                               "profile": profile}
    try:
        fleet.start()
        assert fleet.api is not None
        work = Workload(run_dir, fleet.env, fleet.api.url, fleet.token, seed)
        work.start()
        begun = time.time()
        _play(fleet, work, faults, begun, events, say)
        time.sleep(max(0.0, begun + seconds - time.time()))
        healed = fleet.heal()
        say(f"t={time.time() - begun:7.2f}s heal: {'; '.join(h for h in healed if h)}")
        work.finish(timeout=60)
        recovered = _recover(fleet, work, begun, say)
        timings["recovery_s"] = recovered
        outcomes = work.outcomes(timeout=60)
        audit = _audit(fleet)
        report = check(run_dir, faults, begun, audit, outcomes, workers)
        if recovered is None:
            report.violations.insert(0, _late(fleet.not_back))
    finally:
        events.close()
        fleet.stop()
    return report, timings


def _play(fleet: Fleet, work: Workload, faults: list[Fault], begun: float, events: Any,
          say: Any) -> None:
    """Each fault at its time, in a thread of its own (faults overlap)."""
    def one(f: Fault) -> None:
        time.sleep(max(0.0, begun + f.at - time.time()))
        if f.kind == "bad_inputs":
            work.bad_inputs()
        said = _safely(fleet.begin, f)
        _log(events, begun, f, "begin", said, say)
        if f.duration > 0 or f.kind not in ("pool_kill", "bad_inputs"):
            time.sleep(f.duration)
            said = _safely(fleet.end, f)
            _log(events, begun, f, "end", said, say)
    for f in faults:
        threading.Thread(target=one, args=(f,), daemon=True, name=f"fault-{f.kind}").start()


def _safely(fn: Any, f: Fault) -> str:
    try:
        return str(fn(f.kind, f.target))
    except Exception as exc:
        return f"could not: {type(exc).__name__}: {exc}"


def _log(events: Any, begun: float, f: Fault, phase: str, said: str, say: Any) -> None:
    t = time.time() - begun
    events.write(json.dumps({"t": round(t, 3), "phase": phase, "kind": f.kind,
                             "target": f.target, "said": said}) + "\n")
    events.flush()
    say(f"t={t:7.2f}s {phase:<5} {f.kind}[{f.target}]: {said}")


def _recover(fleet: Fleet, work: Workload, begun: float, say: Any) -> float | None:
    """Seconds until every worker is back in rotation — by the checker's word and by its own
    report — and every input is answered (restoring any worker still held out, as an operator
    would); None past RECOVERY_S."""
    healed = time.time()
    restored: set[int] = set()
    why: dict[str, str] = {}
    while time.time() - healed < RECOVERY_S:
        states = fleet.states()
        why = fleet.in_rotation()
        for i, w in enumerate(fleet.workers):
            if states.get(w.name) in ("QUARANTINED", "MAINTENANCE") and i not in restored:
                restored.add(i)
                say(f"restore {w.name}: {fleet.restore_if_out(i)}")
        report_path = fleet.dir / "feed-report.json"
        if not any(why.values()) and report_path.exists():
            took = time.time() - healed
            say(f"t={time.time() - begun:7.2f}s recovered: every worker HEALTHY and consuming, "
                f"the feed done, {took:.1f}s after the heal")
            return round(took, 1)
        time.sleep(1)
    fleet.not_back = {w: r for w, r in why.items() if r}
    return None


def _audit(fleet: Fleet) -> list[dict[str, Any]]:
    from healthcheck.store import RedisHealthStore

    store = RedisHealthStore.from_url(fleet.store.url)
    return store.history(limit=1_000_000)


def _late(not_back: dict[str, str]) -> Any:
    from tests.nemesis.check import Violation

    workers = "; ".join(f"{w}: {why}" for w, why in sorted(not_back.items())) or "none"
    return Violation("recovery", f"the fleet was not back in full rotation with every input "
                     f"answered within {RECOVERY_S:.0f}s of the last fault healing (not back: "
                     f"{workers})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--profile", choices=PROFILES, default="redis",
                        help="redis; amqp (a RabbitMQ broker); shards (two checker shards)")
    parser.add_argument("--dir", type=Path, default=None, help="keep the run's files here")
    parser.add_argument("--json", action="store_true", help="the report as one JSON line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="host-nemesis-") as tmp:
        run_dir = args.dir or Path(tmp)
        run_dir.mkdir(parents=True, exist_ok=True)
        report, timings = run(args.seed, args.minutes, args.workers, run_dir,
                              say=(lambda *_: None) if args.json else print,
                              profile=args.profile)
        if args.json:
            print(json.dumps({**timings, **report.as_dict()}))
        else:
            print_report(report, timings)
    return 0 if report.ok else 1


def print_report(report: Report, timings: dict[str, Any]) -> None:
    print(f"\nnemesis report: seed {timings['seed']}, {timings['minutes']:g} min, "
          f"profile {timings.get('profile', 'redis')}, "
          f"{timings['faults']} faults; recovered in {timings.get('recovery_s')} s")
    print(f"  inputs sent {report.sent}, answered {report.answered}; by status "
          f"{report.by_status}")
    print(f"  checked: {report.checked}")
    if report.ok:
        print("  every promise held")
    for v in report.violations[:50]:
        print(f"  VIOLATION [{v.promise}] {v.what}")
        for f in v.faults[:6]:
            print(f"      around: {f}")
    if len(report.violations) > 50:
        print(f"  ... and {len(report.violations) - 50} more")


if __name__ == "__main__":
    sys.exit(main())
