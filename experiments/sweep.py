"""Learning-rate selection on val, with the same budget for every trainable method.

Each method's config sets its own base learning rate. This tool trains every method at the same grid of
factors of that rate (seed ``--seed``, the study's schedule from ``params.yaml``), evaluates each run on
the **val** images (never test) and writes a table; the factor with the best val hIoU is the one a config
should carry. Every method gets the same number of trainings, the same seed and the same selection rule,
so no method is tuned harder than another. Methods that are one network with different switches (the
AlignZeg parent and the full model, between which the ablation rows sit) share one factor (``--tie``):
the one with the best mean val hIoU over them, so the ablation compares components, not learning rates.
A run flagged collapsed is never chosen; a method with no valid factor keeps none and the table says so.

    python -m experiments.sweep --methods alignzeg san-parent zegclip two-stage \
        --factors 0.1 0.25 0.5 1 2 --seed 0 --jobs 2 --tie alignzeg san-parent

Runs live in ``<runs_dir>/lr-sweep/x<factor>/<method>/seed<k>`` and their val results in
``<results_dir>/lr-sweep/x<factor>/<method>/seed<k>/val``; the table is
``<results_dir>/lr-sweep/summary.json`` and ``summary.md``. A rerun reuses finished runs of the same
fingerprint (:func:`experiments.pipeline.train_run`). ``--jobs N`` runs N trainings at once, each with
``base.num_threads / N`` threads (at least 1).
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from experiments.params import ParamsError
from experiments.params import load as load_params

SELECT = "hIoU"
COLUMNS = ("mIoU_seen", "mIoU_unseen", "hIoU", "collapsed")


def _tag(factor: float) -> str:
    return f"x{factor:g}"


def sweep_params(params: dict, factor: float) -> dict:
    """``params`` with the run and result folders moved under ``lr-sweep/x<factor>``."""
    p = copy.deepcopy(params)
    p["base"]["runs_dir"] = str(Path(params["base"]["runs_dir"]) / "lr-sweep" / _tag(factor))
    p["base"]["results_dir"] = str(Path(params["base"]["results_dir"]) / "lr-sweep" / _tag(factor))
    return p


def run_one(params: dict, method: str, factor: float, seed: int) -> dict:
    """Configure ``method`` with its base lr times ``factor``, train it and evaluate it on val."""
    from alignzeg.utils import atomic_write_text
    from experiments.pipeline import config_path, evaluate_run, method_config, train_run

    if factor <= 0:
        raise SystemExit(f"--factors: a learning-rate factor must be positive, got {factor}")
    if method in params["evaluate"]["training_free"]:
        raise SystemExit(f"--methods: {method} is training-free (evaluate.training_free); it has no lr")
    p = sweep_params(params, factor)
    cfg = method_config(p, method)
    base_lr = float(cfg.optim_wrapper.optimizer.lr)
    cfg.optim_wrapper.optimizer.lr = base_lr * factor
    atomic_write_text(config_path(p, method), cfg.pretty_text + "\n")
    train_run(p, method, seed)
    flat = evaluate_run(p, method, seed, split="val")
    return {"method": method, "factor": factor, "base_lr": base_lr, "lr": base_lr * factor, "seed": seed,
            **{k: flat[k] for k in COLUMNS if k in flat}}


def choose(rows: list[dict], ties: list[list[str]] | None = None) -> dict[str, dict]:
    """Per method, the row with the best val hIoU among runs that did not collapse (ties: smaller factor).

    ``ties``: groups of methods that must share one factor (the AlignZeg parent and the full model are
    the same network with switches, and the ablation rows sit between them); a group takes the factor
    with the best mean val hIoU over its members, at which none of them collapsed.
    """
    best: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: (r["method"], r["factor"])):
        if row.get("collapsed"):
            continue
        cur = best.get(row["method"])
        if cur is None or row[SELECT] > cur[SELECT]:
            best[row["method"]] = row
    for group in ties or []:
        by_factor: dict[float, list[dict]] = {}
        for row in rows:
            if row["method"] in group:
                by_factor.setdefault(row["factor"], []).append(row)
        scored = [(sum(r[SELECT] for r in rs) / len(rs), -f, rs) for f, rs in by_factor.items()
                  if len(rs) == len(group) and not any(r.get("collapsed") for r in rs)]
        for m in group:
            best.pop(m, None)
        if scored:
            _, _, rs = max(scored, key=lambda x: (x[0], x[1]))
            best.update({r["method"]: r for r in rs})
    return best


def summary_markdown(rows: list[dict], best: dict[str, dict]) -> str:
    lines = [f"Learning-rate factors on val (seed {rows[0]['seed'] if rows else '-'}); chosen by val {SELECT}, "
             "collapsed runs excluded.", "",
             "| method | factor | lr | seen | unseen | hIoU | collapsed | chosen |",
             "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in sorted(rows, key=lambda r: (r["method"], r["factor"])):
        chosen = "✓" if best.get(r["method"]) is r else ""
        lines.append(f"| {r['method']} | {r['factor']:g} | {r['lr']:.3g} | {r['mIoU_seen']:.2f} | "
                     f"{r['mIoU_unseen']:.2f} | {r['hIoU']:.2f} | {int(r.get('collapsed', 0))} | {chosen} |")
    missing = sorted({r["method"] for r in rows} - set(best))
    if missing:
        lines += ["", "No factor chosen (every run collapsed or, for a tied group, some member did): "
                  + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", help="methods (keys of train.configs); default train.methods")
    parser.add_argument("--factors", nargs="+", type=float, default=[0.1, 0.25, 0.5, 1.0, 2.0],
                        help="multiples of each config's base learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once")
    parser.add_argument("--tie", nargs="+", action="append", metavar="METHOD",
                        help="methods that share one factor, chosen by their mean val hIoU (repeatable)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "FACTOR"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    if args.threads:
        params["base"]["num_threads"] = args.threads
    if args.one:
        row = run_one(params, args.one[0], float(args.one[1]), args.seed)
        print("[sweep] " + json.dumps(row), flush=True)
        return 0
    methods = args.methods or list(params["train"]["methods"])
    unknown = [m for m in methods if m not in params["train"]["configs"]]
    if unknown:
        parser.error(f"--methods: {unknown} not in train.configs ({sorted(params['train']['configs'])})")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    threads = max(1, int(params["base"].get("num_threads") or 1) // args.jobs)
    jobs = [(m, f) for m in methods for f in args.factors]

    def launch(job):
        m, f = job
        cmd = [sys.executable, "-m", "experiments.sweep", "--params", args.params, "--seed", str(args.seed),
               "--threads", str(threads), "--one", m, repr(f)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"[sweep] {m} x{f:g} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("[sweep] ")][-1]
        row = json.loads(line[len("[sweep] "):])
        print(f"[sweep] {m} x{f:g}: val seen {row['mIoU_seen']:.2f} unseen {row['mIoU_unseen']:.2f} "
              f"hIoU {row['hIoU']:.2f}", flush=True)
        return row

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(launch, jobs))
    best = choose(rows, args.tie)
    from alignzeg.utils import atomic_write_json, atomic_write_text

    out = Path(params["base"]["results_dir"]) / "lr-sweep"
    atomic_write_json(out / "summary.json", {"select": f"val {SELECT}", "seed": args.seed, "rows": rows,
                                             "ties": args.tie or [],
                                             "chosen": {m: r["factor"] for m, r in best.items()}})
    atomic_write_text(out / "summary.md", summary_markdown(rows, best))
    print(summary_markdown(rows, best), end="")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
