"""Run the nemesis against a build broken on purpose (see the package's docstring)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Broken:
    promises: tuple[str, ...]  # what the report must name (any of them)
    seed: int
    what: str


#: Each patch in this directory: the promise it breaks and a seed whose run shows it.
BUILDS = {
    "answered": Broken(("answered", "exactly once"), 355,
                       "a batch's last answer replaced by a copy of its first: one input "
                       "answered twice, another never"),
    "out_of_rotation": Broken(("out of rotation",), 1,
                              "the drain does nothing on the worker and the gate key is not read"),
    "blast_radius": Broken(("blast radius",), 17,
                           "the guard's bound removed (in Python and the admission script)"),
    "earned_way_back": Broken(("earned way back",), 355,
                              "a platform's stop drain moves a worker already out to "
                              "MAINTENANCE/stopping"),
    "audited": Broken(("audited",), 355, "the checker writes no audit record"),
    "recovery": Broken(("recovery",), 355, "an admit does nothing on the worker: once out, "
                       "it never consumes again, whatever the checker's word"),
    "fencing": Broken(("fencing",), 355,
                      "split brain: a checker whose lease ran out goes on leading, its writes "
                      "unfenced, and workers obey a command of any epoch (seed 355 pauses the "
                      "leader for 7.7 s at 55 s: the standby takes over)"),
}


def patch_of(name: str) -> Path:
    return HERE / f"{name}.patch"


def applies(name: str, tree: Path = REPO) -> bool:
    return subprocess.run(["git", "apply", "--check", str(patch_of(name))], cwd=tree,
                          capture_output=True, check=False).returncode == 0


def run(name: str, seed: int, minutes: float, keep: Path | None = None) -> int:
    build = BUILDS[name]
    with tempfile.TemporaryDirectory(prefix=f"host-broken-{name}-") as tmp:
        tree = Path(tmp) / REPO.name
        (Path(tmp) / "shared").symlink_to(REPO.parent / "shared")  # the tweets, as beside REPO
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), "HEAD"], cwd=REPO,
                       capture_output=True, check=True)
        try:
            if not applies(name, tree):
                print(f"{name}: {patch_of(name).name} no longer applies to HEAD")
                return 2
            subprocess.run(["git", "apply", str(patch_of(name))], cwd=tree, check=True)
            print(f"{name}: {build.what}; seed {seed}, {minutes:g} min", flush=True)
            where = ["--dir", str(keep / name)] if keep else []
            proc = subprocess.run([sys.executable, "-m", "tests.nemesis", "--seed", str(seed),
                                   "--minutes", str(minutes), "--json", *where], cwd=tree,
                                  capture_output=True, text=True, check=False)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                           capture_output=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        print(f"{name}: the run printed no report\n{proc.stderr[-3000:]}")
        return 1
    report = json.loads(lines[-1])
    named = sorted({v["promise"] for v in report["violations"]})
    caught = any(p in named for p in build.promises)
    print(f"{name}: {'caught' if caught else 'NOT CAUGHT'}: the report names {named or 'nothing'}"
          f" ({report['checked']})")
    for v in [v for v in report["violations"] if v["promise"] in build.promises][:3]:
        print(f"  [{v['promise']}] {v['what']}")
    return 0 if caught else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=[*BUILDS, "all"])
    parser.add_argument("--seed", type=int, default=None, help="default: the build's own")
    parser.add_argument("--minutes", type=float, default=2.5)
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each run's files under this directory (one folder a build)")
    args = parser.parse_args()
    names = list(BUILDS) if args.name == "all" else [args.name]
    worst = 0
    for name in names:
        seed = BUILDS[name].seed if args.seed is None else args.seed
        worst = max(worst, run(name, seed, args.minutes, args.keep))
    return worst


if __name__ == "__main__":
    sys.exit(main())
