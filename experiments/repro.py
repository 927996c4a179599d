"""Run the DVC pipeline with several stages at once (``python -m experiments.repro --jobs N``).

``dvc repro`` runs one stage after another. DVC's documented way to run independent branches of a
pipeline in parallel is several ``dvc repro`` processes in the same workspace ("Parallel stage
execution", https://dvc.org/doc/command-reference/repro): each holds the repository lock only while it
collects, checks and commits a stage, not while the stage's command runs, and ``--wait-for-lock`` makes
a process wait for that lock instead of failing.

This driver is the scheduler on top: it reads the stage graph (``dvc dag --dot``), starts every stage
as ``dvc --wait-for-lock repro --single-item STAGE`` once all its upstream stages have finished, with at
most ``--jobs`` at a time (stages in ``dvc.yaml`` order among the ready ones), like ``make -j``. Each
``dvc repro`` decides as usual whether its stage changed: an unchanged stage is skipped, a changed one
runs and is committed to ``dvc.lock`` (DVC merges each stage's entry under the lock). After a failure no
new stage starts; the running ones finish, and the exit status is the failed stage's. With ``--jobs 1``
the stages run one at a time, each after its upstream stages, as in ``dvc repro``.

Every stage start and end is a line ``[repro k/N done] STAGE ...`` with its time, and the stage's own output
goes to the terminal as it comes. Why several jobs pay on a 2-core machine: a training stage with one
torch thread uses a core better than one stage with two (README "Cost"), so the default study runs two
stages at once with ``base.num_threads: 1``.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

# bench measures time; pretrain_clip uses both cores (2 threads) and every training stage waits for it, so
# a small stage beside it only slows the whole pipeline down (849 s against 718 s alone, README "Cost")
DEFAULT_ALONE = ("bench", "pretrain_clip")
_NODE = re.compile(r'^\s*"([^"]+)";\s*$')
_EDGE = re.compile(r'^\s*"([^"]+)"\s*->\s*"([^"]+)";\s*$')


def parse_dot(text: str) -> tuple[list[str], dict[str, set[str]]]:
    """Stages (in the order ``dvc dag --dot`` lists them) and each stage's upstream stages."""
    order: list[str] = []
    upstream: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = _EDGE.match(line)
        if m:
            a, b = m.groups()
            for s in (a, b):
                if s not in upstream:
                    order.append(s)
                    upstream[s] = set()
            upstream[b].add(a)
            continue
        m = _NODE.match(line)
        if m and m.group(1) not in upstream:
            order.append(m.group(1))
            upstream[m.group(1)] = set()
    return order, upstream


def stage_graph(dvc: str, cwd: str | Path = ".") -> tuple[list[str], dict[str, set[str]]]:
    """The pipeline's stage graph from ``dvc dag --dot``."""
    res = subprocess.run([dvc, "dag", "--dot"], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"'{dvc} dag --dot' failed ({res.returncode}): {res.stderr.strip()}")
    order, upstream = parse_dot(res.stdout)
    if not order:
        raise SystemExit(f"'{dvc} dag --dot' in {Path(cwd).resolve()} listed no stage")
    return order, upstream


def schedule(order: list[str], upstream: dict[str, set[str]], jobs: int, start, poll, *, say=None,
             alone: tuple[str, ...] = (), sleep: float = 0.2) -> int:
    """Run the stages of a DAG, at most ``jobs`` at once; return 0 or the first failure's exit status.

    ``start(stage)`` starts a stage and returns a handle; ``poll(handle)`` returns ``None`` while it runs,
    else its exit status. A stage starts when all its upstream stages finished with status 0; among the
    ready ones, the first in ``order``. A stage matching one of the ``alone`` patterns (fnmatch) runs with
    no other stage beside it (a timing benchmark). After a failure nothing new starts.
    """
    from fnmatch import fnmatchcase

    def is_alone(stage):
        return any(fnmatchcase(stage, pat) for pat in alone)

    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if say is None:
        def say(msg):
            print(msg, flush=True)
    unknown = sorted({u for s in order for u in upstream.get(s, ())} - set(order))
    if unknown:
        raise ValueError(f"stage graph: upstream stages {unknown} are not stages of the graph")
    pending = list(order)
    running: dict[str, tuple[object, float]] = {}
    done: set[str] = set()
    failed: tuple[str, int] | None = None
    total = len(order)
    while pending or running:
        if failed is None and not any(is_alone(s) for s in running):
            for stage in [s for s in pending if upstream.get(s, set()) <= done]:
                if len(running) >= jobs:
                    break
                if is_alone(stage) and running:
                    continue  # waits until nothing runs
                pending.remove(stage)
                say(f"[repro {len(done)}/{total} done] {stage}: started "
                    + ("(alone)" if is_alone(stage) else f"({len(running) + 1} running)"))
                running[stage] = (start(stage), time.perf_counter())
                if is_alone(stage):
                    break
        if not running:
            if failed is None and pending:  # nothing runs and nothing can start: a cycle
                raise ValueError(f"stage graph: {pending} can never start (their upstream stages do not finish)")
            break
        for stage, (handle, t0) in list(running.items()):
            rc = poll(handle)
            if rc is None:
                continue
            del running[stage]
            if rc == 0:
                done.add(stage)
                say(f"[repro {len(done)}/{total} done] {stage}: finished in {time.perf_counter() - t0:.0f} s")
            else:
                say(f"[repro] {stage}: FAILED with exit status {rc} after {time.perf_counter() - t0:.0f} s"
                    + ("; waiting for the running stages, starting no new one" if running else ""))
                if failed is None:
                    failed = (stage, rc)
        time.sleep(sleep)
    if failed is not None:
        say(f"[repro] stopped: {failed[0]} failed ({len(done)} of {total} stages finished); "
            f"rerun to resume, finished stages are not run again")
        return failed[1]
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.repro", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", "-j", type=int, default=1, help="stages at a time (default 1)")
    parser.add_argument("--dvc", default="dvc", help="the dvc executable (default: dvc on PATH)")
    parser.add_argument("--alone", action="append", default=None, metavar="PATTERN",
                        help="stages (fnmatch pattern) that run with no other stage beside them; repeatable "
                             f"(default: {' '.join(DEFAULT_ALONE)}: the timing benchmark and the two-thread pre-training)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    order, upstream = stage_graph(args.dvc)
    t0 = time.perf_counter()

    def start(stage):
        return subprocess.Popen([args.dvc, "--wait-for-lock", "repro", "--single-item", stage])

    alone = tuple(DEFAULT_ALONE if args.alone is None else args.alone)
    rc = schedule(order, upstream, args.jobs, start, lambda p: p.poll(), alone=alone)
    if rc == 0:
        print(f"[repro] all {len(order)} stages up to date in {time.perf_counter() - t0:.0f} s "
              f"({args.jobs} at a time)", flush=True)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
