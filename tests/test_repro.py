"""``python -m experiments.repro``: the DVC stages of a DAG, several at a time.

The scheduler is checked on made-up graphs (limits, order, failure), the driver on a small real DVC
project whose two middle stages record when they run: with ``--jobs 2`` they overlap, every stage is
in ``dvc.lock``, ``dvc status`` is clean and a second run executes no command.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from experiments.repro import parse_dot, schedule

DOT = """strict digraph {
"prepare";
"train@a";
"train@b";
"report";
"lonely";
"prepare" -> "train@a";
"prepare" -> "train@b";
"train@a" -> "report";
"train@b" -> "report";
}
"""


def test_parse_dot_reads_stages_in_order_and_their_upstream():
    order, up = parse_dot(DOT)
    assert order == ["prepare", "train@a", "train@b", "report", "lonely"]
    assert up == {"prepare": set(), "train@a": {"prepare"}, "train@b": {"prepare"},
                  "report": {"train@a", "train@b"}, "lonely": set()}


class FakeStages:
    """Stages that finish after a given number of polls, with given exit statuses."""

    def __init__(self, polls: dict[str, int], status: dict[str, int] | None = None):
        self.polls, self.status = polls, status or {}
        self.left: dict[str, int] = {}
        self.started: list[str] = []
        self.finished: list[str] = []
        self.peak = 0

    def start(self, stage):
        self.started.append(stage)
        self.left[stage] = self.polls.get(stage, 1)
        self.peak = max(self.peak, len(self.left))
        return stage

    def poll(self, stage):
        self.left[stage] -= 1
        if self.left[stage] > 0:
            return None
        del self.left[stage]
        self.finished.append(stage)
        return self.status.get(stage, 0)


def test_schedule_respects_upstream_and_the_job_limit():
    order, up = parse_dot(DOT)
    fake = FakeStages({"prepare": 2, "train@a": 3, "train@b": 1, "lonely": 5})
    lines = []
    assert schedule(order, up, 2, fake.start, fake.poll, say=lines.append, sleep=0) == 0
    assert sorted(fake.started) == sorted(order)
    assert fake.peak == 2
    for stage in order:  # a stage starts only after each of its upstream stages finished
        for u in up[stage]:
            assert fake.finished.index(u) < fake.started.index(stage)
    # 'lonely' has no upstream: it starts beside 'prepare', before either train stage
    assert fake.started[:2] == ["prepare", "lonely"]
    assert any("report: finished" in line for line in lines)


def test_schedule_with_one_job_is_the_sequential_order():
    order, up = parse_dot(DOT)
    fake = FakeStages({})
    assert schedule(order, up, 1, fake.start, fake.poll, say=lambda m: None, sleep=0) == 0
    assert fake.started == order and fake.peak == 1


def test_a_failure_starts_nothing_new_and_returns_its_status():
    order, up = parse_dot(DOT)
    fake = FakeStages({"train@a": 1, "train@b": 4}, status={"train@a": 3})
    lines = []
    assert schedule(order, up, 3, fake.start, fake.poll, say=lines.append, sleep=0) == 3
    assert "report" not in fake.started          # downstream of the failure
    assert "train@b" in fake.finished            # the running stage was waited for
    assert any("train@a: FAILED with exit status 3" in line for line in lines)
    assert "stopped: train@a failed" in lines[-1]


def test_an_alone_stage_runs_with_nothing_beside_it():
    order, up = parse_dot(DOT)
    fake = FakeStages({"prepare": 2, "lonely": 3, "train@a": 2, "train@b": 2})
    running_with = {}
    start = fake.start

    def spy(stage):
        running_with[stage] = set(fake.left)
        return start(stage)

    assert schedule(order, up, 2, spy, fake.poll, say=lambda m: None, sleep=0, alone=("lone*",)) == 0
    assert running_with["lonely"] == set()                      # nothing ran when it started
    assert all("lonely" not in running_with[s] for s in order)   # nothing started while it ran
    assert fake.peak == 2                                       # the others still ran two at a time


def test_bad_graphs_and_job_counts_are_refused():
    with pytest.raises(ValueError, match="--jobs must be at least 1"):
        schedule(["a"], {"a": set()}, 0, None, None)
    with pytest.raises(ValueError, match=r"upstream stages \['x'\]"):
        schedule(["a"], {"a": {"x"}}, 1, None, None)
    fake = FakeStages({})
    with pytest.raises(ValueError, match="can never start"):
        schedule(["a", "b"], {"a": {"b"}, "b": {"a"}}, 1, fake.start, fake.poll, say=lambda m: None, sleep=0)


STAGE = textwrap.dedent("""\
    import json, os, sys, time
    name, out, partner = sys.argv[1], sys.argv[2], sys.argv[3]
    t0 = time.time()
    open(f"{name}.started", "w").close()
    if partner != "-":  # wait until the partner stage runs too: only possible if both run at once
        while not os.path.exists(f"{partner}.started"):
            if time.time() - t0 > 120:
                sys.exit(f"{name}: {partner} did not start while {name} ran")
            time.sleep(0.05)
    json.dump({"stage": name, "start": t0, "end": time.time()}, open(out, "w"))
    """)

DVC_YAML = textwrap.dedent("""\
    stages:
      first:
        cmd: python stage.py first first.json -
        deps: [stage.py]
        outs: [first.json]
      middle:
        foreach:
          a: {partner: b}
          b: {partner: a}
        do:
          cmd: python stage.py ${key} mid_${key}.json ${item.partner}
          deps: [first.json]
          outs:
            - mid_${key}.json
      last:
        cmd: python stage.py last last.json -
        deps: [mid_a.json, mid_b.json]
        outs: [last.json]
    """)


def test_two_jobs_run_independent_dvc_stages_at_once_and_commit_every_stage(tmp_path):
    dvc = str(Path(sys.executable).parent / "dvc")
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "stage.py").write_text(STAGE)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, env=env, check=True)

    def drive():
        return subprocess.run([sys.executable, "-m", "experiments.repro", "--jobs", "2", "--dvc", dvc],
                              cwd=tmp_path, env=dict(env, PYTHONPATH=str(Path(__file__).resolve().parents[1])),
                              capture_output=True, text=True)

    res = drive()
    assert res.returncode == 0, res.stdout + res.stderr
    times = {n: json.loads((tmp_path / f).read_text())
             for n, f in [("first", "first.json"), ("a", "mid_a.json"), ("b", "mid_b.json"), ("last", "last.json")]}
    a, b = times["a"], times["b"]   # each middle stage waited for the other to start: they overlapped
    assert a["start"] < b["end"] and b["start"] < a["end"]
    assert times["first"]["end"] <= min(a["start"], b["start"])
    assert max(a["end"], b["end"]) <= times["last"]["start"]
    assert "[repro] all 4 stages up to date" in res.stdout
    import yaml

    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]
    assert sorted(lock) == ["first", "last", "middle@a", "middle@b"]
    status = subprocess.run([dvc, "status", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert json.loads(status.stdout) == {}, status.stdout
    again = drive()  # nothing changed: every stage is skipped, no command runs
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads((tmp_path / "mid_a.json").read_text()) == a
    assert "Running stage" not in again.stdout + again.stderr


def test_a_failing_dvc_stage_fails_the_driver_with_its_status(tmp_path):
    dvc = str(Path(sys.executable).parent / "dvc")
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "dvc.yaml").write_text(textwrap.dedent("""\
        stages:
          broken:
            cmd: python -c "import sys; sys.exit(7)"
            outs: [broken.txt]
          after:
            cmd: python -c "open('after.txt', 'w').write('x')"
            deps: [broken.txt]
            outs: [after.txt]
        """))
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, env=env, check=True)
    res = subprocess.run([sys.executable, "-m", "experiments.repro", "-j", "2", "--dvc", dvc], cwd=tmp_path,
                         env=dict(env, PYTHONPATH=str(Path(__file__).resolve().parents[1])),
                         capture_output=True, text=True)
    assert res.returncode != 0
    assert "broken: FAILED" in res.stdout
    assert not (tmp_path / "after.txt").exists()
