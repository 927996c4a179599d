"""Tidy tables from zero-shot metric JSON: ``alignzeg analyse --results DIR --out DIR``.

Input layout (written by the DVC evaluation stages)::

    RESULTS/<method>/seed<k>/zeroshot_metrics.json          metric JSON (alignzeg.evaluation)
    RESULTS/<method>/seed<k>/scores.npz                     optional analysis extras
    RESULTS/ablation/<variant>/components.json               {"mrpe": bool, "fes": bool, "bds": bool, "pbc": bool}
    RESULTS/ablation/<variant>/seed<k>/zeroshot_metrics.json

Which runs are read: with ``--params`` exactly the runs that params.yaml declares (:func:`declared_runs`)::

    evaluate.methods x base.seeds                      RESULTS/<method>/seed<k>/
    evaluate.training_free, seed 0 only                RESULTS/<method>/seed0/
    (ablate.variants + keys of ablate.from_main) x base.seeds   RESULTS/ablation/<variant>/seed<k>/

A declared run without its metric JSON, or a folder under RESULTS that no declared run explains (an old
method, a seed no longer in base.seeds, a dropped variant), stops the analysis with one message that lists
every such path; folders whose name starts with "." are ignored. Without ``--params`` (library use) every
``seed<k>`` folder found under RESULTS is read (:func:`discover_runs`).

Outputs (written atomically into ``--out``)::

    runs_long.csv        one row per (group, method, seed, metric): the tidy table every other table comes from
    per_class.csv        one row per (group, method, seed, class) with IoU, Acc, pixel counts
    per_class_mean.csv   per (method, class): IoU mean, std and number of seeds
    main_table.csv/.md   method x {S, U, hIoU, mIoU, aAcc, unseen->seen}: mean, std, n seeds
    ablation_table.csv/.md   the paper-style component ablation (only if RESULTS/ablation exists)
    unseen_to_seen_confusion.csv   share of each unseen class's pixels predicted as each seen class
    summary.json         winner on hIoU with its margin and seed spread, run inventory, settings
    figures/*.png|svg, figures.json   plots (analysis.plots) and the numbers their captions use

Statistics: every "std" is the *sample* standard deviation over seeds (``ddof=1``, as pandas' default).
With a single seed it is undefined: stored as NaN in CSV/JSON (``null``) and shown as "–" in Markdown.
Metric values are percentages (0..100) exactly as the metric JSON stores them, unrounded; rounding
happens only in Markdown.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

METRICS_FILE = "zeroshot_metrics.json"
PROTOCOL_FILE = "protocol.json"   # {"uses_unseen_locations": bool}, written by the evaluation
SCORES_FILE = "scores.npz"
COMPONENTS_FILE = "components.json"
ABLATION_DIR = "ablation"
TRANSDUCTIVE_DIR = "transductive"   # self-trained runs (group "transductive"), kept apart from the inductive rows
ORACLE_DIR = "oracle"        # the oracle ceilings of a study (experiments.pipeline oracle); not a run
COMPONENTS = ("mrpe", "fes", "bds", "pbc")
COMPONENT_LABELS = {"mrpe": "MRPE", "fes": "FES", "bds": "BDS", "pbc": "PBC"}
SEED_DIR = re.compile(r"^seed(\d+)$")

# metric JSON key -> short column name used in tables
MAIN_METRICS: dict[str, str] = {
    "mIoU_seen": "S",
    "mIoU_unseen": "U",
    "hIoU": "hIoU",
    "mIoU": "mIoU",
    "aAcc": "aAcc",
    "unseen_to_seen": "unseen→seen",
}
REQUIRED_KEYS = tuple(MAIN_METRICS)
# written where the split names its stuff classes; carried into the main table when present
OPTIONAL_COLUMNS: dict[str, str] = {"mIoU_unseen_stuff": "U-stuff", "mIoU_unseen_objects": "U-objects",
                                    "AUSUC": "AUSUC", "hIoU_cal": "hIoU cal.",
                                    "unseen_to_seen_balanced": "u→s bal.", "seen_to_unseen_balanced": "s→u bal."}
# from the metric JSON's gamma_sweep (alignzeg.evaluation.calibration): AUSUC x 100, and the metrics at the
# seen-score offset chosen on val
CALIBRATED = {"mIoU_seen_cal": "S", "mIoU_unseen_cal": "U", "hIoU_cal": "hIoU"}
DERIVED_METRICS = ("seen_unseen_gap",)  # S - U: the misalignment gap, per run
DASH = "–"


# --------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One evaluated run: ``group`` is "main", "ablation" or "transductive"; ``method`` is the folder name."""

    group: str
    method: str
    seed: int
    path: Path
    metrics: dict[str, Any]
    scores_path: Path | None = None
    components: dict[str, bool] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def hiou(seen: float, unseen: float) -> float:
    """Harmonic mean of seen and unseen mIoU, ``2SU/(S+U)``; 0 when both are 0."""
    s, u = float(seen), float(unseen)
    return 0.0 if s + u == 0 else 2.0 * s * u / (s + u)


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read and validate one metric JSON; errors name the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise ValueError(f"{path}: missing field '{key}' (metric JSON needs {', '.join(REQUIRED_KEYS)})")
        value = data[key]
        if value is None:  # the metric writes NaN as null (e.g. no unseen pixel in the evaluation set)
            log.warning("%s: field '%s' is null (undefined); it counts as NaN", path, key)
            data[key] = float("nan")
        elif not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{path}: field '{key}' must be a number or null, got {value!r}")
    for i, row in enumerate(data.get("per_class") or []):
        for key in ("class", "split", "IoU"):
            if key not in row:
                raise ValueError(f"{path}: per_class[{i}] lacks field '{key}'")
        if row["split"] not in ("seen", "unseen"):
            raise ValueError(f"{path}: per_class[{i}].split must be 'seen' or 'unseen', got {row['split']!r}")
    conf = data.get("confusion")
    if conf is not None:
        if not isinstance(conf, dict) or "classes" not in conf or "matrix" not in conf:
            raise ValueError(f"{path}: field 'confusion' needs 'classes' and 'matrix'")
        n = len(conf["classes"])
        mat = np.asarray(conf["matrix"])
        if mat.shape != (n, n):
            raise ValueError(f"{path}: confusion.matrix has shape {mat.shape}, expected ({n}, {n}) "
                             f"from confusion.classes")
    s, u, h = float(data["mIoU_seen"]), float(data["mIoU_unseen"]), float(data["hIoU"])
    if all(map(math.isfinite, (s, u, h))) and abs(hiou(s, u) - h) > 1e-3:
        log.warning("%s: hIoU %.4f differs from 2SU/(S+U) = %.4f; the stored value is used", path, h, hiou(s, u))
    return data


def load_components(path: Path) -> dict[str, bool]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object like {{\"mrpe\": true, ...}}")
    out = {}
    for key in COMPONENTS:
        if key not in data:
            raise ValueError(f"{path}: missing switch '{key}' (needs {', '.join(COMPONENTS)})")
        if not isinstance(data[key], bool):
            raise ValueError(f"{path}: switch '{key}' must be true or false, got {data[key]!r}")
        out[key] = data[key]
    return out


def variant_components(variant_dir: Path) -> dict[str, bool] | None:
    """Switches of an ablation variant: ``<variant>/components.json``, else the ``seed<k>/components.json``
    files (one per run, as the DVC pipeline writes them), which must all agree."""
    top = variant_dir / COMPONENTS_FILE
    if top.is_file():
        return load_components(top)
    found = {p: load_components(p) for p in sorted(variant_dir.glob(f"seed*/{COMPONENTS_FILE}"))
             if SEED_DIR.match(p.parent.name)}
    if not found:
        return None
    (first_path, first), *rest = found.items()
    for path, comps in rest:
        if comps != first:
            raise ValueError(f"{path}: switches {comps} differ from {first_path}: {first}")
    return first


def _load_run(seed_dir: Path, group: str, method: str, seed: int, components=None) -> Run:
    metrics_path = seed_dir / METRICS_FILE
    scores = seed_dir / SCORES_FILE
    extras = {}
    protocol = seed_dir / PROTOCOL_FILE
    if protocol.is_file():
        try:
            extras["uses_unseen_locations"] = bool(json.loads(protocol.read_text())["uses_unseen_locations"])
        except (ValueError, KeyError) as err:
            raise ValueError(f"{protocol}: expected JSON with 'uses_unseen_locations' ({err})") from err
    return Run(group=group, method=method, seed=seed, path=metrics_path, metrics=load_metrics(metrics_path),
               scores_path=scores if scores.is_file() else None, components=components, extras=extras)


def uses_unseen_locations(runs: Iterable[Run]) -> set[str]:
    """Main-study methods with a run trained on where the unseen pixels lie (``protocol.json``)."""
    return {r.method for r in runs if r.group == "main" and r.extras.get("uses_unseen_locations")}


def _seed_runs(method_dir: Path, group: str, method: str, components=None) -> list[Run]:
    runs = []
    for sub in sorted(method_dir.iterdir()):
        m = SEED_DIR.match(sub.name)
        if not sub.is_dir() or not m:
            continue
        if not (sub / METRICS_FILE).is_file():
            log.warning("%s: no %s, run skipped", sub, METRICS_FILE)
            continue
        runs.append(_load_run(sub, group, method, int(m.group(1)), components))
    return sorted(runs, key=lambda r: r.seed)


def discover_runs(results: str | Path) -> list[Run]:
    """Every run under ``results`` (main methods and ``ablation/<variant>``), sorted by method and seed."""
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"--results {results}: folder not found")
    runs: list[Run] = []
    for method_dir in sorted(p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if method_dir.name == ABLATION_DIR:
            for variant_dir in sorted(p for p in method_dir.iterdir() if p.is_dir()):
                comps = variant_components(variant_dir)
                if comps is None:
                    log.warning("%s: no %s, ablation variant skipped", variant_dir, COMPONENTS_FILE)
                    continue
                runs += _seed_runs(variant_dir, "ablation", variant_dir.name, comps)
            continue
        if method_dir.name == TRANSDUCTIVE_DIR:
            for sub in sorted(p for p in method_dir.iterdir() if p.is_dir()):
                runs += _seed_runs(sub, "transductive", sub.name)
            continue
        found = _seed_runs(method_dir, "main", method_dir.name)
        if not found:
            log.info("%s: no seed<k>/%s, not a method folder", method_dir, METRICS_FILE)
        runs += found
    if not runs:
        raise FileNotFoundError(f"--results {results}: no <method>/seed<k>/{METRICS_FILE} found")
    return runs


# --------------------------------------------------------------------------------------------- declared runs
class RunSetError(ValueError):
    """The params do not declare a run set, or the results folder does not hold exactly that set."""


def _str_list(value: Any, where: str, source: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RunSetError(f"{source}: {where} must be a list of names, got {value!r}")
    return list(value)


def declared_runs(params: dict[str, Any], source: str = "params") -> list[tuple[str, str, int]]:
    """The (group, method, seed) runs a params mapping declares, in declaration order, without repeats.

    Main runs (group "main"): ``evaluate.methods`` x ``base.seeds`` and ``evaluate.training_free`` with
    seed 0 only (training-free methods are evaluated once). Ablation runs (group "ablation"):
    ``ablate.variants`` and the keys of ``ablate.from_main`` (rows copied from the main study), each x
    ``base.seeds``. ``base.seeds`` and ``evaluate.methods`` are required; ``evaluate.training_free`` and
    the ``ablate`` section may be absent (none). Errors name ``source`` and the field.
    """
    if not isinstance(params, dict):
        raise RunSetError(f"{source}: expected a mapping of sections, got {type(params).__name__}")
    sections = {}
    for name in ("base", "evaluate", "ablate"):
        sec = params.get(name)
        if sec is not None and not isinstance(sec, dict):
            raise RunSetError(f"{source}: section '{name}' must be a mapping, got {sec!r}")
        sections[name] = sec or {}
    base, ev, ab = sections["base"], sections["evaluate"], sections["ablate"]
    for where, sec, key in (("base.seeds", base, "seeds"), ("evaluate.methods", ev, "methods")):
        if key not in sec:
            raise RunSetError(f"{source}: missing field {where} (the analysis reads the runs it declares)")
    seeds = base["seeds"]
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise RunSetError(f"{source}: base.seeds must be a non-empty list of non-negative integers, got {seeds!r}")
    methods = _str_list(ev["methods"], "evaluate.methods", source)
    training_free = _str_list(ev.get("training_free") or [], "evaluate.training_free", source)
    variants = _str_list(ab.get("variants") or [], "ablate.variants", source)
    from_main = ab.get("from_main") or {}
    if not isinstance(from_main, dict):
        raise RunSetError(f"{source}: ablate.from_main must be a mapping variant -> main method, got {from_main!r}")
    variants += [str(v) for v in from_main]
    for where, names in (("evaluate.methods", methods), ("evaluate.training_free", training_free)):
        if ABLATION_DIR in names:
            raise RunSetError(f"{source}: {where} names '{ABLATION_DIR}', the folder reserved for ablation runs")
    runs = [("main", m, s) for m in methods for s in seeds]
    runs += [("main", m, 0) for m in training_free]
    runs += [("ablation", v, s) for v in variants for s in seeds]
    st = params.get("self_train") or {}
    if not isinstance(st, dict):
        raise RunSetError(f"{source}: section 'self_train' must be a mapping, got {st!r}")
    runs += [("transductive", m, s) for m in _str_list(st.get("methods") or [], "self_train.methods", source)
             for s in seeds]
    for where, names in (("evaluate.methods", methods), ("evaluate.training_free", training_free)):
        if TRANSDUCTIVE_DIR in names:
            raise RunSetError(f"{source}: {where} names '{TRANSDUCTIVE_DIR}', the folder reserved for "
                              f"self-trained runs")
    return list(dict.fromkeys(runs))


def _run_folder(results: Path, group: str, method: str, seed: int) -> Path:
    sub = {"ablation": ABLATION_DIR, "transductive": TRANSDUCTIVE_DIR}.get(group)
    return (results / sub if sub else results) / method / f"seed{seed}"


def load_declared_runs(results: str | Path, declared: Iterable[tuple[str, str, int]],
                       source: str = "params") -> list[Run]:
    """The ``declared`` runs (see :func:`declared_runs`) read from ``results``, sorted as :func:`discover_runs`.

    Raises :class:`RunSetError` listing every declared run without its metric JSON and every folder under
    ``results`` that no declared run explains (hidden folders, starting with ".", are ignored; files are
    not runs and are ignored too). A run folder's contents belong to the run and are not checked.
    """
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"--results {results}: folder not found")
    expected = {_run_folder(results, *run): run for run in dict.fromkeys(declared)}
    if not expected:
        raise RunSetError(f"{source}: declares no run")
    parents = {p for folder in expected for p in folder.parents if results in p.parents}
    missing = [folder / METRICS_FILE for folder in expected if not (folder / METRICS_FILE).is_file()]
    undeclared: list[Path] = []

    def walk(folder: Path) -> None:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder == results and sub.name == ORACLE_DIR and (sub / "ceilings.json").is_file():
                continue
            if sub in parents:
                walk(sub)
            elif sub not in expected:
                undeclared.append(sub)

    walk(results)
    if missing or undeclared:
        lines = [f"--results {results}: the runs there are not the runs {source} declares "
                 "(evaluate.methods x base.seeds, evaluate.training_free x seed 0, "
                 "ablate.variants and ablate.from_main x base.seeds, self_train.methods x base.seeds)"]
        if missing:
            lines.append(f"  {len(missing)} declared run(s) without {METRICS_FILE}:")
            lines += [f"    {p}" for p in missing]
        if undeclared:
            lines.append(f"  {len(undeclared)} folder(s) no declared run explains (declare them in {source} "
                         "or remove them):")
            lines += [f"    {p}" for p in undeclared]
        raise RunSetError("\n".join(lines))
    components: dict[str, dict[str, bool]] = {}
    for group, method, _ in expected.values():
        if group == "ablation" and method not in components:
            variant_dir = results / ABLATION_DIR / method
            comps = variant_components(variant_dir)
            if comps is None:
                raise RunSetError(f"{variant_dir}: ablation variant declared by {source} has no {COMPONENTS_FILE} "
                                  f"(neither in the folder nor in its seed<k> folders)")
            components[method] = comps
    runs = [_load_run(folder, group, method, seed, components.get(method) if group == "ablation" else None)
            for folder, (group, method, seed) in expected.items()]
    # the order discover_runs gives: folder names under results, "ablation" sorted among the methods
    return sorted(runs, key=lambda r: (r.method, "", r.seed) if r.group == "main"
                  else ({"ablation": ABLATION_DIR}.get(r.group, TRANSDUCTIVE_DIR), r.method, r.seed))


# --------------------------------------------------------------------------------------------- tables
def tidy_runs(runs: Iterable[Run]) -> pd.DataFrame:
    """Long table: one row per (group, method, seed, metric) with the unrounded value."""
    rows = []
    for r in runs:
        for key in REQUIRED_KEYS:
            rows.append((r.group, r.method, r.seed, key, float(r.metrics[key])))
        for key in OPTIONAL_COLUMNS:
            if r.metrics.get(key) is not None:
                rows.append((r.group, r.method, r.seed, key, float(r.metrics[key])))
        sweep = r.metrics.get("gamma_sweep") or {}
        if sweep.get("ausuc") is not None:
            rows.append((r.group, r.method, r.seed, "AUSUC", 100.0 * float(sweep["ausuc"])))
        cal = sweep.get("calibrated") or {}
        for key, src in (("mIoU_seen_cal", "S"), ("mIoU_unseen_cal", "U"), ("hIoU_cal", "hIoU"),
                         ("gamma_cal", "gamma")):
            if cal.get(src) is not None:
                rows.append((r.group, r.method, r.seed, key, float(cal[src])))
        rows.append((r.group, r.method, r.seed, "seen_unseen_gap",
                     float(r.metrics["mIoU_seen"]) - float(r.metrics["mIoU_unseen"])))
        rows.append((r.group, r.method, r.seed, "collapsed", run_collapsed(r.metrics)))
    return pd.DataFrame(rows, columns=["group", "method", "seed", "metric", "value"])


def run_collapsed(metrics: dict) -> float:
    """1.0 when a run's predictions collapsed (the metric's ``collapsed`` flag; for metric JSON written
    before the flag existed, recomputed from its confusion matrix), else 0.0."""
    if metrics.get("collapsed") is not None:
        return float(bool(metrics["collapsed"]))
    conf = metrics.get("confusion")
    if not conf:
        return 0.0
    from alignzeg.evaluation.confusion import collapse_report

    unseen = {row["class"] for row in metrics.get("per_class") or [] if row.get("split") == "unseen"}
    is_unseen = np.array([c in unseen for c in conf["classes"]], dtype=bool)
    rep = collapse_report(np.asarray(conf["matrix"]), conf["classes"], float(metrics["mIoU_seen"]),
                          float(metrics["mIoU_unseen"]), is_unseen)
    return float(rep["collapsed"])


def _collapsed_counts(tidy: pd.DataFrame, group: str) -> dict[str, int]:
    sub = tidy[(tidy["group"] == group) & (tidy["metric"] == "collapsed")]
    return {m: int(v.sum()) for m, v in sub.groupby("method")["value"]}


def _seeds_cell(r) -> str:
    n = str(int(r["n_seeds"]))
    k = int(r.get("n_collapsed", 0) or 0)
    return f"{n} (⚠ {k} collapsed)" if k else n


COLLAPSE_NOTE = ("⚠ k collapsed: k seeds whose predictions collapsed (one class on most pixels, or seen or "
                 "unseen mIoU below 1 point; see `collapse` in their zeroshot_metrics.json); such a row is a "
                 "bug to explain, not a result.")


def per_class_table(runs: Iterable[Run]) -> pd.DataFrame:
    cols = ["group", "method", "seed", "class", "split", "IoU", "Acc", "gt_pixels", "pred_pixels"]
    rows = []
    for r in runs:
        for row in r.metrics.get("per_class") or []:
            rows.append((r.group, r.method, r.seed, row["class"], row["split"], _num(row.get("IoU")),
                         _num(row.get("Acc")), _num(row.get("gt_pixels")), _num(row.get("pred_pixels"))))
    return pd.DataFrame(rows, columns=cols)


def per_class_mean(per_class: pd.DataFrame) -> pd.DataFrame:
    """Per (group, method, class): IoU mean, sample std (ddof=1) and number of seeds; class order kept."""
    if per_class.empty:
        return pd.DataFrame(columns=["group", "method", "class", "split", "IoU_mean", "IoU_std", "n"])
    g = per_class.groupby(["group", "method", "class", "split"], sort=False)["IoU"]
    out = g.agg(IoU_mean="mean", IoU_std=lambda x: x.std(ddof=1), n="count").reset_index()
    return out


def _num(x):
    return float("nan") if x is None else float(x)


def ci95(std: float, n: int) -> float:
    """Half-width of the two-sided 95 % Student-t interval of a mean: ``t(0.975, n-1) * std / sqrt(n)``.

    NaN for fewer than two seeds. With 3 seeds ``t = 4.303``, so the interval is 2.48 sample stds wide
    on each side: few seeds make wide intervals, which is the point.
    """
    if n is None or n < 2 or std is None or (isinstance(std, float) and math.isnan(std)):
        return float("nan")
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def summarise(tidy: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for one seed), n and the 95 % interval half-width per (group, method, metric)."""
    g = tidy.groupby(["group", "method", "metric"], sort=False)["value"]
    out = g.agg(mean="mean", std=lambda x: x.std(ddof=1), n="count").reset_index()
    out["ci95"] = [ci95(sd, int(n)) for sd, n in zip(out["std"], out["n"])]
    return out


def fmt(x: float, decimals: int = 2) -> str:
    return DASH if _missing(x) else f"{x:.{decimals}f}"


def fmt_pm(mean: float, std: float, decimals: int = 2) -> str:
    """``mean ± half-width``; the mean alone when there is no interval (one seed), ``–`` when no mean."""
    if _missing(mean):
        return DASH
    return fmt(mean, decimals) if _missing(std) else f"{fmt(mean, decimals)} ± {fmt(std, decimals)}"


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def ordered_methods(methods: Iterable[str], order: Iterable[str] | None) -> list[str]:
    """``order`` first (those present), then the rest alphabetically."""
    methods = list(dict.fromkeys(methods))
    first = [m for m in (order or []) if m in methods]
    return first + sorted(m for m in methods if m not in first)


def main_table(tidy: pd.DataFrame, names: dict[str, str] | None = None,
               order: Iterable[str] | None = None, group: str = "main",
               bootstraps: dict[str, list[dict]] | None = None) -> pd.DataFrame:
    """Method x metric table with ``<col>_mean``/``<col>_std`` columns and ``n_seeds``; numeric, unrounded.

    ``bootstraps``: method -> the ``bootstrap`` entries of its runs' metric JSON; a method with a single
    run gets ``S/U/hIoU_boot_lo/hi`` (its per-image bootstrap interval, shown instead of a seed interval)."""
    names = names or {}
    bootstraps = bootstraps or {}
    stats = summarise(tidy[tidy["group"] == group])
    collapsed = _collapsed_counts(tidy, group)
    methods = ordered_methods(stats["method"], order)
    rows = []
    for m in methods:
        s = stats[stats["method"] == m].set_index("metric")
        row: dict[str, Any] = {"method": m, "display": names.get(m, m), "n_seeds": int(s["n"].max())}
        present = {k: c for k, c in OPTIONAL_COLUMNS.items() if k in s.index}
        for key, col in {**MAIN_METRICS, **present}.items():
            for stat in ("mean", "std", "ci95"):
                row[f"{col}_{stat}"] = float(s.at[key, stat])
        row["n_collapsed"] = collapsed.get(m, 0)
        row["kind"] = "method"
        boots = bootstraps.get(m) or []
        if row["n_seeds"] == 1 and len(boots) == 1:  # one run: its per-image bootstrap interval
            for key, col in (("mIoU_seen", "S"), ("mIoU_unseen", "U"), ("hIoU", "hIoU")):
                lo, hi = (boots[0].get(key) or [None, None])
                row[f"{col}_boot_lo"] = float("nan") if lo is None else float(lo)
                row[f"{col}_boot_hi"] = float("nan") if hi is None else float(hi)
        rows.append(row)
    return pd.DataFrame(rows)


def add_calibrated_rows(table: pd.DataFrame, tidy: pd.DataFrame, methods: Iterable[str],
                        group: str = "main") -> pd.DataFrame:
    """Insert, below each of ``methods``, a row of its runs at the seen-score offset γ chosen on val
    (calibrated stacking, Chao et al. ECCV 2016): S, U, hIoU from ``mIoU_seen_cal`` etc., the other
    columns empty. Methods without calibrated metrics get no row."""
    if table.empty:
        return table
    stats = summarise(tidy[(tidy["group"] == group) & tidy["metric"].isin(list(CALIBRATED) + ["gamma_cal"])])
    out = []
    for _, r in table.iterrows():
        out.append(r.to_dict())
        m = r["method"]
        if m not in set(methods) or r.get("kind") != "method":
            continue
        s = stats[stats["method"] == m].set_index("metric")
        if "hIoU_cal" not in s.index:
            continue
        row = {k: (float("nan") if k.endswith(("_mean", "_std", "_ci95")) else v) for k, v in r.items()}
        for key, col in CALIBRATED.items():
            for stat in ("mean", "std", "ci95"):
                row[f"{col}_{stat}"] = float(s.at[key, stat])
        row.update(method=f"{m}+cal", display=f"{r['display']} + γ from val", kind="calibrated",
                   gamma_mean=float(s.at["gamma_cal", "mean"]) if "gamma_cal" in s.index else float("nan"))
        out.append(row)
    return pd.DataFrame(out)


def main_table_markdown(table: pd.DataFrame, decimals: int = 2, ours: str | None = None) -> str:
    cols = list(MAIN_METRICS.values()) + [c for c in OPTIONAL_COLUMNS.values() if f"{c}_mean" in table]
    header = ["Method"] + [f"{c} (%)" for c in cols]
    header += ["seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    methods_only = table[table["kind"] == "method"] if "kind" in table else table
    best_h = methods_only["hIoU_mean"].max() if not table.empty else None
    for _, r in table.iterrows():
        name = r["display"] + (" (ours)" if ours and r["method"] == ours else "")
        cells = [name]
        for col in cols:
            cell = fmt_pm(r[f"{col}_mean"], r[f"{col}_ci95"], decimals)
            lo, hi = r.get(f"{col}_boot_lo"), r.get(f"{col}_boot_hi")
            if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
                cell = f"{fmt(r[f'{col}_mean'], decimals)} [{lo:.{decimals}f}, {hi:.{decimals}f}]"
            if col == "hIoU" and r["hIoU_mean"] == best_h and r.get("kind", "method") == "method":
                cell = f"**{cell}**"
            cells.append(cell)
        cells.append(_seeds_cell(r))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    boot_note = ("; [a, b] = a single run's 95 % per-image bootstrap interval"
                 if any(c.endswith("_boot_lo") for c in table.columns) else "")
    lines.append(f"Mean ± half-width of the 95 % Student-t interval over seeds; a value without ± = one seed; "
                 f"{DASH} = not defined for that row{boot_note}. "
                 "S/U = mIoU over seen/unseen classes, "
                 "hIoU = 2SU/(S+U) per run, unseen→seen = share of unseen-class pixels predicted as a seen class "
                 "(lower is better)" + ("; U-stuff / U-objects = unseen mIoU over the unseen stuff / object classes"
                                        if "U-stuff" in cols else "")
                 + ("; AUSUC = area under the seen-unseen curve of a constant seen-score offset γ swept from "
                    "'all seen' to 'all unseen' (x 100, S and U as fractions); hIoU cal. = hIoU at the γ "
                    "with the best val hIoU, applied on test" if "AUSUC" in cols or "hIoU cal." in cols else "")
                 + ("; u→s bal. / s→u bal. = unseen→seen and seen→unseen error rates averaged over classes "
                    "(each class weighs the same)" if "u→s bal." in cols else "")
                 + ("; '+ γ from val' rows: that method at its val-chosen γ (calibrated stacking)"
                    if "kind" in table and (table["kind"] == "calibrated").any() else "")
                 + ". Bold: highest mean hIoU of a method.")
    if "n_collapsed" in table and table["n_collapsed"].sum():
        lines.append("")
        lines.append(COLLAPSE_NOTE)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- oracle
def load_oracle(results: Path) -> dict[str, Any] | None:
    """``results/oracle/ceilings.json`` (the recognition and proposal ceilings), or None without one."""
    path = Path(results) / ORACLE_DIR / "ceilings.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    for kind in ("recognition", "proposal"):
        if not isinstance(data.get(kind), dict) or any(k not in data[kind] for k in ("mIoU_seen", "mIoU_unseen", "hIoU")):
            raise ValueError(f"{path}: field {kind!r} needs mIoU_seen, mIoU_unseen and hIoU")
    data.pop("seconds", None)  # a timing, not a result: the summary holds only what a rerun reproduces
    return data


def oracle_markdown(oracle: dict[str, Any], decimals: int = 2) -> str:
    """The two ceilings as a small table (one deterministic number each, no seeds)."""
    cols = [("mIoU_seen", "S"), ("mIoU_unseen", "U"), ("hIoU", "hIoU"), ("mIoU_unseen_stuff", "U-stuff"),
            ("mIoU_unseen_objects", "U-objects")]
    lines = ["| Oracle ceiling | " + " | ".join(f"{c} (%)" for _, c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    labels = {"recognition": "ground-truth masks, classified by the CLIP (recognition ceiling)",
              "proposal": f"ground-truth masks, best seen/unseen calibration γ = {oracle.get('gamma', 0):+.2f} "
                          "(proposal ceiling)"}
    for kind in ("recognition", "proposal"):
        m = oracle[kind]
        lines.append(f"| {labels[kind]} | " + " | ".join(fmt(m.get(k), decimals) for k, _ in cols) + " |")
    lines.append("")
    lines.append(f"On the {oracle.get('split', 'test')} split ({oracle.get('num_images', '?')} images, "
                 f"{oracle.get('num_segments', '?')} segments): every ground-truth segment is classified by the "
                 "study's CLIP against all class names; γ is subtracted from the seen-class scores and chosen on "
                 "these images (an oracle). A method far below the first row loses mostly on its masks.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- ablation
def _variant_label(comps: dict[str, bool]) -> tuple[str, str, int]:
    """(kind, label, sort key) of a switch combination, paper style."""
    on = [c for c in COMPONENTS if comps[c]]
    off = [c for c in COMPONENTS if not comps[c]]
    if not on:
        return "parent", "parent (all off)", 0
    if not off:
        return "full", "full", 99
    if len(on) == 1:
        return "add", f"+ {COMPONENT_LABELS[on[0]]}", 1 + COMPONENTS.index(on[0])
    if len(off) == 1:
        return "remove", f"full − {COMPONENT_LABELS[off[0]]}", 20 + COMPONENTS.index(off[0])
    return "other", "+ " + " + ".join(COMPONENT_LABELS[c] for c in on), 10 + len(on)


def _paired_diff(a: pd.Series, b: pd.Series) -> tuple[float, int]:
    """Sample std (ddof=1) of per-seed differences a-b on the seeds both have, and their count."""
    common = a.index.intersection(b.index)
    if len(common) < 2:
        return float("nan"), len(common)
    d = (a.loc[common] - b.loc[common]).to_numpy(dtype=float)
    return float(np.std(d, ddof=1)), len(common)


def ablation_table(runs: Iterable[Run], tidy: pd.DataFrame) -> pd.DataFrame:
    """Paper-form ablation: parent, each component added alone, each removed from full, full.

    Columns: variant, kind, label, the four switches (bool), S/U/hIoU mean and std, n seeds,
    ``delta_hIoU`` = mean hIoU of the row minus mean hIoU of the parent (all switches off), and
    ``delta_hIoU_std`` = sample std of the per-seed differences on seeds both rows have (NaN if < 2),
    ``delta_hIoU_ci95`` its 95 % interval half-width; ``delta_full_hIoU`` / ``delta_full_hIoU_ci95`` the same
    against the full model (all switches on; NaN on the full row or without one).
    Variants that fit no paper row (two switches on) are kept, between the add and remove rows.
    """
    comps = {r.method: r.components for r in runs if r.group == "ablation"}
    if not comps:
        return pd.DataFrame()
    abl = tidy[tidy["group"] == "ablation"]
    stats = summarise(abl)
    collapsed = _collapsed_counts(tidy, "ablation")
    per_seed_h = {v: abl[(abl["method"] == v) & (abl["metric"] == "hIoU")].set_index("seed")["value"]
                  for v in comps}
    per_seed_u = {v: abl[(abl["method"] == v) & (abl["metric"] == "mIoU_unseen")].set_index("seed")["value"]
                  for v in comps}
    parents = [v for v, c in comps.items() if not any(c.values())]
    if len(parents) > 1:
        raise ValueError(f"ablation: several variants have every switch off: {parents}")
    parent = parents[0] if parents else None
    fulls = [v for v, c in comps.items() if c and all(c.values())]
    full = fulls[0] if len(fulls) == 1 else None
    if parent is None:
        log.warning("ablation: no variant with all switches off; Δ hIoU is left empty")
    rows = []
    seen_combo: dict[tuple, str] = {}
    for v, c in comps.items():
        key = tuple(c[k] for k in COMPONENTS)
        if key in seen_combo:
            raise ValueError(f"ablation: variants '{seen_combo[key]}' and '{v}' have the same switches {c}")
        seen_combo[key] = v
        kind, label, order = _variant_label(c)
        s = stats[stats["method"] == v].set_index("metric")
        row: dict[str, Any] = {"variant": v, "kind": kind, "label": label, "_order": order}
        row.update({k: c[k] for k in COMPONENTS})
        for key_, col in (("mIoU_seen", "S"), ("mIoU_unseen", "U"), ("hIoU", "hIoU")):
            row[f"{col}_mean"] = float(s.at[key_, "mean"])
            row[f"{col}_std"] = float(s.at[key_, "std"])
            row[f"{col}_ci95"] = float(s.at[key_, "ci95"])
        row["n_seeds"] = int(s["n"].max())
        row["n_collapsed"] = collapsed.get(v, 0)
        if parent is not None:
            ph = per_seed_h[parent]
            row["delta_hIoU"] = row["hIoU_mean"] - float(ph.mean())
            row["delta_hIoU_std"], row["delta_n_paired"] = _paired_diff(per_seed_h[v], ph)
            if v == parent:
                row["delta_hIoU_std"] = float("nan")
        else:
            row["delta_hIoU"], row["delta_hIoU_std"], row["delta_n_paired"] = float("nan"), float("nan"), 0
        row["delta_hIoU_ci95"] = ci95(row["delta_hIoU_std"], row["delta_n_paired"])
        if parent is not None and v != parent:  # the same for unseen mIoU (the ablation forest plot)
            pu = per_seed_u[parent]
            row["delta_U"] = row["U_mean"] - float(pu.mean())
            std, n = _paired_diff(per_seed_u[v], pu)
            row["delta_U_ci95"] = ci95(std, n)
        else:
            row["delta_U"], row["delta_U_ci95"] = (0.0 if v == parent else float("nan")), float("nan")
        # against the full model (the paired interval of the "removed" rows)
        if full is not None and v != full:
            fh = per_seed_h[full]
            row["delta_full_hIoU"] = row["hIoU_mean"] - float(fh.mean())
            std, n = _paired_diff(per_seed_h[v], fh)
            row["delta_full_hIoU_ci95"] = ci95(std, n)
        else:
            row["delta_full_hIoU"], row["delta_full_hIoU_ci95"] = float("nan"), float("nan")
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["_order", "variant"]).drop(columns="_order").reset_index(drop=True)
    for kind, n_expected in (("parent", 1), ("add", 4), ("remove", 4), ("full", 1)):
        n = int((table["kind"] == kind).sum())
        if n < n_expected:
            log.warning("ablation: %d of %d '%s' rows present", n, n_expected, kind)
    return table


def ablation_markdown(table: pd.DataFrame, decimals: int = 2) -> str:
    header = ["Variant"] + [COMPONENT_LABELS[c] for c in COMPONENTS] + ["S (%)", "U (%)", "hIoU (%)", "Δ hIoU", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * 4 + ["---:"] * 5) + "|"]
    for _, r in table.iterrows():
        cells = [r["label"]] + ["✓" if r[c] else DASH for c in COMPONENTS]
        cells += [fmt_pm(r[f"{c}_mean"], r[f"{c}_ci95"], decimals) for c in ("S", "U", "hIoU")]
        if r["kind"] == "parent":
            cells.append("0 (reference)")
        elif math.isnan(r["delta_hIoU"]):
            cells.append(DASH)
        else:
            d = f"{r['delta_hIoU']:+.{decimals}f}"
            if not math.isnan(r["delta_hIoU_ci95"]):
                d += f" ± {r['delta_hIoU_ci95']:.{decimals}f}"
                if abs(r["delta_hIoU"]) <= r["delta_hIoU_ci95"]:
                    d += " (n.s.)"
            cells.append(d)
        cells.append(_seeds_cell(r))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Mean ± half-width of the 95 % Student-t interval over seeds; {DASH} in a switch column = off; "
                 "a number without ± = one seed. Δ hIoU = difference of mean hIoU to the parent (all off); its ± is the 95 % "
                 "interval of the paired per-seed differences on seeds both variants share; (n.s.) = the interval "
                 "contains zero: no measurable difference.")
    if "n_collapsed" in table and table["n_collapsed"].sum():
        lines.append("")
        lines.append(COLLAPSE_NOTE)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- winner
def paired_differences(tidy: pd.DataFrame, ours: str | None, methods: Iterable[str],
                       calibrated: Iterable[str] = (), group: str = "main") -> pd.DataFrame:
    """``ours`` minus every other method, per seed both have: hIoU and unseen mIoU, with the 95 %
    Student-t interval of the paired differences; for each method in ``calibrated`` also ``ours`` minus
    that method at its val-chosen γ (``hIoU_cal``, ``mIoU_unseen_cal``). ``significant`` is False when the
    interval contains zero (or is undefined)."""
    rows = []
    if ours is None:
        return pd.DataFrame(rows)
    sel = tidy[tidy["group"] == group]

    def per_seed(method: str, metric: str) -> pd.Series:
        return sel[(sel["method"] == method) & (sel["metric"] == metric)].set_index("seed")["value"]

    pairs = [(m, m, metric, metric) for m in methods if m != ours for metric in ("hIoU", "mIoU_unseen")]
    pairs += [(f"{m}+cal", m, metric, metric + "_cal") for m in calibrated
              for metric in ("hIoU", "mIoU_unseen")]
    for label, other, metric, other_metric in pairs:
        stats = _paired_stats(per_seed(ours, metric), per_seed(other, other_metric))
        if stats is not None:
            rows.append({"ours": ours, "other": label, "metric": metric, **stats})
    return pd.DataFrame(rows)


def _paired_stats(a: pd.Series, b: pd.Series) -> dict[str, Any] | None:
    """``a`` minus ``b`` on the seeds (index) both have: ``n``, ``diff_mean``, ``diff_std`` (ddof=1),
    ``diff_ci95`` (95 % Student-t half-width) and ``significant`` (the interval excludes zero); None
    when they share no seed."""
    common = a.index.intersection(b.index)
    if len(common) == 0:
        return None
    d = (a.loc[common] - b.loc[common]).to_numpy(dtype=float)
    std = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
    half = ci95(std, len(d))
    return {"n": int(len(d)), "diff_mean": float(d.mean()), "diff_std": std, "diff_ci95": half,
            "significant": bool(math.isfinite(half) and abs(float(d.mean())) > half)}


def _diff_cell(g: pd.DataFrame, metric: str, decimals: int) -> str:
    """A difference row of ``metric`` as ``+m ± h`` with "(n.s.)" when not significant; – when absent."""
    r = g[g["metric"] == metric]
    if r.empty:
        return DASH
    r = r.iloc[0]
    cell = f"{r['diff_mean']:+.{decimals}f}" + (f" ± {r['diff_ci95']:.{decimals}f}"
                                                if math.isfinite(r["diff_ci95"]) else "")
    return cell + ("" if r["significant"] else " (n.s.)")


def setting_differences(tidy: pd.DataFrame, methods: Iterable[str]) -> pd.DataFrame:
    """What self-training changes: per method, its transductive run minus its inductive run of the same
    seed (the self-trained run starts from that one), on S, U and hIoU, with the 95 % Student-t interval
    of the paired differences; ``significant`` is False when the interval contains zero."""
    def per_seed(group: str, method: str, metric: str) -> pd.Series:
        sel = tidy[(tidy["group"] == group) & (tidy["method"] == method) & (tidy["metric"] == metric)]
        return sel.set_index("seed")["value"]

    rows = []
    for m in methods:
        for metric in ("mIoU_seen", "mIoU_unseen", "hIoU"):
            stats = _paired_stats(per_seed("transductive", m, metric), per_seed("main", m, metric))
            if stats is not None:
                rows.append({"method": m, "metric": metric, **stats})
    return pd.DataFrame(rows)


def setting_markdown(table: pd.DataFrame, names: dict[str, str], decimals: int = 2) -> str:
    if table.empty:
        return ""
    lines = ["| Self-trained minus inductive | Δ S | Δ U | Δ hIoU | seeds |", "|---|---:|---:|---:|---:|"]
    for m, g in table.groupby("method", sort=False):
        cells = [_diff_cell(g, metric, decimals) for metric in ("mIoU_seen", "mIoU_unseen", "hIoU")]
        lines.append(f"| {names.get(m, m)} | {' | '.join(cells)} | {int(g['n'].max())} |")
    lines.append("")
    lines.append("Per seed, the self-trained run minus the inductive run it starts from; mean ± half-width of the "
                 "95 % Student-t interval; (n.s.) = the interval contains zero: no measurable difference.")
    return "\n".join(lines) + "\n"


def paired_markdown(table: pd.DataFrame, names: dict[str, str], decimals: int = 2) -> str:
    if table.empty:
        return ""
    ours = names.get(table["ours"].iloc[0], table["ours"].iloc[0])
    lines = [f"| {ours} minus | Δ hIoU | Δ U | seeds |", "|---|---:|---:|---:|"]
    for other, g in table.groupby("other", sort=False):
        base = other[:-4] if other.endswith("+cal") else other
        label = names.get(base, base) + (" + γ from val" if other.endswith("+cal") else "")
        cells = [_diff_cell(g, metric, decimals) for metric in ("hIoU", "mIoU_unseen")]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {int(g['n'].max())} |")
    lines.append("")
    lines.append("Paired per-seed differences (same seed), mean ± half-width of their 95 % Student-t interval; "
                 "(n.s.) = the interval contains zero (or one seed only): no measurable difference.")
    return "\n".join(lines) + "\n"


def compare(tidy: pd.DataFrame, a: str, b: str, metric: str = "hIoU", group: str = "main") -> dict[str, Any]:
    """Method ``a`` minus method ``b`` on ``metric``.

    ``margin`` = difference of the means over each method's seeds. On seeds both methods have
    (paired), ``paired_std`` = sample std (ddof=1) of the per-seed differences, ``paired_wins`` =
    seeds where ``a`` is strictly higher. ``unpaired_se`` = sqrt(sa²/na + sb²/nb), for unpaired seeds.
    """
    sel = tidy[(tidy["group"] == group) & (tidy["metric"] == metric)]
    va = sel[sel["method"] == a].set_index("seed")["value"]
    vb = sel[sel["method"] == b].set_index("seed")["value"]
    common = va.index.intersection(vb.index).sort_values()
    d = (va.loc[common] - vb.loc[common]).to_numpy(dtype=float)
    sa = float(va.std(ddof=1)) if len(va) > 1 else float("nan")
    sb = float(vb.std(ddof=1)) if len(vb) > 1 else float("nan")
    return {
        "a": a, "b": b, "metric": metric,
        "mean_a": float(va.mean()), "mean_b": float(vb.mean()),
        "std_a": sa, "std_b": sb, "n_a": int(len(va)), "n_b": int(len(vb)),
        "margin": float(va.mean() - vb.mean()),
        "paired_seeds": [int(s) for s in common],
        "paired_mean_diff": float(d.mean()) if len(d) else float("nan"),
        "paired_std": float(np.std(d, ddof=1)) if len(d) > 1 else float("nan"),
        "paired_wins": int((d > 0).sum()),
        "unpaired_se": float(math.sqrt(sa ** 2 / len(va) + sb ** 2 / len(vb))) if len(va) > 1 and len(vb) > 1
        else float("nan"),
    }


def winner_summary(tidy: pd.DataFrame, metric: str = "hIoU", ours: str | None = None,
                   names: dict[str, str] | None = None, order: Iterable[str] | None = None) -> dict[str, Any]:
    """Ranking of the main methods by mean ``metric``; winner vs runner-up; ``ours`` vs the best other.

    The best other method is the one, ``ours`` excluded, with the highest mean ``metric`` over its seeds
    (ties: the first name in sort order), whatever the display order; ``ours_vs_best_other_unseen`` does the
    same on unseen mIoU.
    """
    names = names or {}
    sel = tidy[(tidy["group"] == "main") & (tidy["metric"] == metric)]
    if sel.empty:
        return {"metric": metric, "ranking": [], "winner": None}
    methods = ordered_methods(sel["method"], order)
    means = sel.groupby("method")["value"].mean()
    # stable: ties keep the given method order; methods whose metric is undefined (NaN) go last
    finite = [m for m in methods if math.isfinite(means[m])]
    if not finite:
        return {"metric": metric, "ranking": [], "winner": None,
                "undefined": [m for m in methods]}
    ranking = sorted(finite, key=lambda m: -means[m]) + [m for m in methods if m not in finite]
    out: dict[str, Any] = {
        "metric": metric,
        "ranking": [{"method": m, "display": names.get(m, m), "mean": float(means[m]),
                     "std": float(sel[sel["method"] == m]["value"].std(ddof=1)),
                     "n": int((sel["method"] == m).sum())} for m in ranking],
        "winner": ranking[0],
        "winner_display": names.get(ranking[0], ranking[0]),
        "tie": len(finite) > 1 and means[ranking[0]] == means[ranking[1]],
        "undefined": [m for m in methods if m not in finite],
    }
    if len(finite) > 1:
        out["runner_up"] = ranking[1]
        out["runner_up_display"] = names.get(ranking[1], ranking[1])
        out["vs_runner_up"] = compare(tidy, ranking[0], ranking[1], metric)
    if ours is not None:
        if ours not in methods:
            log.warning("ours='%s' has no run among %s", ours, methods)
        else:
            others = [m for m in finite if m != ours]
            out["ours"] = ours
            out["ours_display"] = names.get(ours, ours)
            out["ours_rank"] = ranking.index(ours) + 1
            if others and ours in finite:
                out["ours_vs_best_other"] = compare(tidy, ours, _strongest(others, means.to_dict()), metric)
                u_means = {m: _mean(tidy, m, "mIoU_unseen") for m in others}
                u_others = [m for m in others if math.isfinite(u_means[m])]
                if u_others and math.isfinite(_mean(tidy, ours, "mIoU_unseen")):
                    out["ours_vs_best_other_unseen"] = compare(tidy, ours, _strongest(u_others, u_means),
                                                               "mIoU_unseen")
    return out


def _strongest(methods: Iterable[str], means: dict[str, float]) -> str:
    """The method with the highest mean; ties go to the first name in sort order (not display order)."""
    return min(methods, key=lambda m: (-means[m], m))


def _mean(tidy: pd.DataFrame, method: str, metric: str, group: str = "main") -> float:
    sel = tidy[(tidy["group"] == group) & (tidy["method"] == method) & (tidy["metric"] == metric)]
    return float(sel["value"].mean())


# --------------------------------------------------------------------------------------------- confusion
def unseen_to_seen_shares(runs: Iterable[Run]) -> dict[str, dict[str, Any]]:
    """Per main method: the unseen-row x seen-column block of the summed confusion, row-normalised.

    Confusion counts are summed over the method's seeds (all seeds evaluate the same images, so this
    equals the mean of the per-seed shares up to rows a seed did not see). Share = pixels of unseen
    class u predicted as seen class s / all pixels of class u. Rows with no pixels are dropped.
    Returns {method: {"unseen": [...], "seen": [...], "share": 2-D array (percent), "n_runs": k}}.
    """
    acc: dict[str, dict[str, Any]] = {}
    for r in runs:
        if r.group != "main":
            continue
        conf = r.metrics.get("confusion")
        pc = r.metrics.get("per_class")
        if not conf or not pc:
            continue
        classes = list(conf["classes"])
        split = {row["class"]: row["split"] for row in pc}
        missing = [c for c in classes if c not in split]
        if missing:
            raise ValueError(f"{r.path}: confusion classes {missing[:5]} have no per_class entry (seen/unseen)")
        mat = np.asarray(conf["matrix"], dtype=np.float64)
        entry = acc.setdefault(r.method, {"classes": classes, "split": split, "matrix": np.zeros_like(mat),
                                          "n_runs": 0})
        if entry["classes"] != classes:
            raise ValueError(f"{r.path}: confusion classes differ from another seed of '{r.method}'")
        entry["matrix"] += mat
        entry["n_runs"] += 1
    out = {}
    for m, e in acc.items():
        classes, split, mat = e["classes"], e["split"], e["matrix"]
        ui = [i for i, c in enumerate(classes) if split[c] == "unseen"]
        si = [i for i, c in enumerate(classes) if split[c] == "seen"]
        totals = mat[ui].sum(axis=1)
        keep = totals > 0
        if not keep.all():
            log.info("%s: unseen classes without pixels dropped from the confusion: %s", m,
                     [classes[ui[k]] for k in np.flatnonzero(~keep)])
        ui = [u for u, k in zip(ui, keep) if k]
        share = 100.0 * mat[np.ix_(ui, si)] / totals[keep][:, None] if ui else np.zeros((0, len(si)))
        out[m] = {"unseen": [classes[i] for i in ui], "seen": [classes[i] for i in si], "share": share,
                  "n_runs": e["n_runs"]}
    return out


def confusion_long(shares: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for m, e in shares.items():
        for i, u in enumerate(e["unseen"]):
            for j, s in enumerate(e["seen"]):
                rows.append((m, u, s, float(e["share"][i, j])))
    return pd.DataFrame(rows, columns=["method", "unseen_class", "seen_class", "share"])


# --------------------------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """What ``alignzeg analyse`` reads from the params section (all optional) or the command line."""

    names: dict[str, str] = field(default_factory=dict)   # folder name -> display name; order = table order
    ours: str | None = None
    dataset: str | None = None                            # dataset key for published comparisons
    setting: str = "inductive"                            # inductive | transductive
    metric: str = "hIoU"
    top_k: int = 10
    decimals: int = 2
    plots: bool = True
    params: str | None = None                             # the params file these settings come from
    calibrated: list[str] = field(default_factory=list)   # methods shown again at their val-chosen γ

    def to_dict(self) -> dict[str, Any]:
        return {"names": self.names, "order": list(self.names), "ours": self.ours, "dataset": self.dataset,
                "setting": self.setting, "metric": self.metric, "top_k": self.top_k, "decimals": self.decimals}


def read_params(path: str | Path) -> dict[str, Any]:
    """The params YAML as a mapping; errors name the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--params {path}: file not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--params {path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load_settings(params: str | Path | None, section: str = "analyse") -> Settings:
    """Read ``section`` of a params YAML: keys ``methods`` (mapping folder -> display name, or a list of
    folder names), ``ours``, ``dataset``, ``setting``, ``metric``, ``top_k``, ``decimals``.
    ``dataset``/``setting`` fall back to the ``base`` section when absent."""
    st = Settings()
    if params is None:
        return st
    path = Path(params)
    data = read_params(path)
    st.params = str(path)
    if section not in data:
        raise KeyError(f"--params {path}: no section '{section}' (sections: {', '.join(map(str, data))})")
    sec = data[section] or {}
    base = data.get("base") or {}
    methods = sec.get("methods") or {}
    if isinstance(methods, list):
        methods = {str(m): str(m) for m in methods}
    elif not isinstance(methods, dict):
        raise ValueError(f"--params {path}: {section}.methods must be a mapping folder -> display name or a list")
    st.names = {str(k): str(v if v is not None else k) for k, v in methods.items()}
    st.ours = sec.get("ours")
    st.dataset = sec.get("dataset", base.get("dataset"))
    st.setting = str(sec.get("setting", base.get("setting", st.setting)))
    st.metric = str(sec.get("metric", st.metric))
    st.top_k = int(sec.get("top_k", st.top_k))
    st.decimals = int(sec.get("decimals", st.decimals))
    st.calibrated = [str(m) for m in (sec.get("calibrated") or [])]
    if st.metric not in REQUIRED_KEYS:
        raise ValueError(f"--params {path}: {section}.metric must be one of {REQUIRED_KEYS}, got {st.metric!r}")
    if st.setting not in ("inductive", "transductive"):
        raise ValueError(f"--params {path}: {section}.setting must be inductive or transductive, got {st.setting!r}")
    return st


# --------------------------------------------------------------------------------------------- driver
def _json_safe(obj):
    """NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return None if not math.isfinite(f) else f
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def analyse(results: str | Path, out: str | Path, settings: Settings | None = None,
            declared: Iterable[tuple[str, str, int]] | None = None) -> dict[str, Any]:
    """Build every table (and, unless ``settings.plots`` is false, every figure) into ``out``.

    ``declared``: the (group, method, seed) runs to read (:func:`declared_runs`), checked against the
    folder by :func:`load_declared_runs`; None reads whatever :func:`discover_runs` finds.
    Returns the summary dict that is also written to ``out/summary.json``.
    """
    from alignzeg.utils import atomic_output_dir

    st = settings or Settings()
    results = Path(results)
    if declared is None:
        runs = discover_runs(results)
    else:
        runs = load_declared_runs(results, declared, f"--params {st.params}" if st.params else "params")
    tidy = tidy_runs(runs)
    pcls = per_class_table(runs)
    pmean = per_class_mean(pcls)
    unseen_loc = uses_unseen_locations(runs)
    all_main = ordered_methods([r.method for r in runs if r.group == "main"], st.names)
    main_methods = [m for m in all_main if m not in unseen_loc]
    loc_methods = [m for m in all_main if m in unseen_loc]
    boots: dict[str, list[dict]] = {}
    for r in runs:
        if r.group == "main" and r.metrics.get("bootstrap"):
            boots.setdefault(r.method, []).append(r.metrics["bootstrap"])
    table = main_table(tidy[~tidy["method"].isin(loc_methods)], st.names, main_methods, bootstraps=boots) \
        if main_methods else pd.DataFrame()
    table = add_calibrated_rows(table, tidy, st.calibrated)
    loc_table = main_table(tidy[tidy["method"].isin(loc_methods)], st.names, loc_methods) if loc_methods \
        else pd.DataFrame()
    abl = ablation_table(runs, tidy)
    trans_methods = ordered_methods([r.method for r in runs if r.group == "transductive"], st.names)
    trans_table = pd.DataFrame()
    if trans_methods:
        trans_boots = {r.method: [r.metrics["bootstrap"]] for r in runs
                       if r.group == "transductive" and r.metrics.get("bootstrap")}
        trans_table = main_table(tidy, st.names, trans_methods, group="transductive", bootstraps=trans_boots)
        trans_table = add_calibrated_rows(trans_table, tidy, [m for m in st.calibrated if m in trans_methods],
                                          group="transductive")
    st_effect = setting_differences(tidy, trans_methods)
    shares = unseen_to_seen_shares(runs)
    summary: dict[str, Any] = {
        "results": str(results),
        "settings": st.to_dict(),
        "runs_declared_by": (st.params or "params") if declared is not None else None,
        "std": "sample standard deviation over seeds (ddof=1); null when a method has one seed",
        "runs": [{"group": r.group, "method": r.method, "seed": r.seed, "metrics": str(r.path),
                  "scores": str(r.scores_path) if r.scores_path else None} for r in runs],
        "methods": main_methods,
        "display": {m: st.names.get(m, m) for m in main_methods},
        "winner": winner_summary(tidy, st.metric, st.ours, st.names, main_methods),
        "main_table": table.to_dict(orient="records"),
        "uses_unseen_locations": loc_methods,
        "unseen_locations_table": loc_table.to_dict(orient="records"),
        "ablation": abl.to_dict(orient="records") if not abl.empty else [],
        "transductive_methods": trans_methods,
        "transductive_table": trans_table.to_dict(orient="records"),
        "self_training_effect": st_effect.to_dict(orient="records"),
        "oracle": load_oracle(results),
    }
    with atomic_output_dir(out) as tmp:
        tidy.to_csv(tmp / "runs_long.csv", index=False)
        pcls.to_csv(tmp / "per_class.csv", index=False)
        pmean.to_csv(tmp / "per_class_mean.csv", index=False)
        if not table.empty:
            table.to_csv(tmp / "main_table.csv", index=False)
            md = main_table_markdown(table, st.decimals, st.ours)
            if not loc_table.empty:
                md += ("\nNot strictly inductive (the class indicator learns from where the unseen pixels lie; "
                       "not comparable with the rows above):\n\n" + main_table_markdown(loc_table, st.decimals))
            paired = paired_differences(tidy, st.ours if st.ours in main_methods else None, main_methods,
                                        [m for m in st.calibrated if m in main_methods])
            if not paired.empty:
                paired.to_csv(tmp / "paired_differences.csv", index=False)
                md += "\n" + paired_markdown(paired, st.names, st.decimals)
            if summary["oracle"]:
                md += "\n" + oracle_markdown(summary["oracle"], st.decimals)
            (tmp / "main_table.md").write_text(md)
        if not trans_table.empty:
            trans_table.to_csv(tmp / "transductive_table.csv", index=False)
            md = main_table_markdown(trans_table, st.decimals, st.ours)
            paired = paired_differences(tidy, st.ours if st.ours in trans_methods else None, trans_methods,
                                        group="transductive")
            if not paired.empty:
                md += "\n" + paired_markdown(paired, st.names, st.decimals)
            if not st_effect.empty:
                st_effect.to_csv(tmp / "self_training_effect.csv", index=False)
                md += "\n" + setting_markdown(st_effect, st.names, st.decimals)
            (tmp / "transductive_table.md").write_text(md)
        if not abl.empty:
            abl.to_csv(tmp / "ablation_table.csv", index=False)
            (tmp / "ablation_table.md").write_text(ablation_markdown(abl, st.decimals))
        confusion_long(shares).to_csv(tmp / "unseen_to_seen_confusion.csv", index=False)
        figures: dict[str, Any] = {}
        if st.plots:
            from analysis import plots

            methods_only = table[table["kind"] == "method"] if "kind" in table else table
            figures = plots.make_all(runs, methods_only, pmean, shares, tmp / "figures", st, abl)
        (tmp / "figures.json").write_text(json.dumps(_json_safe(figures), indent=1) + "\n")
        (tmp / "summary.json").write_text(json.dumps(_json_safe(summary), indent=1) + "\n")
        _readable(tmp)
    log.info("analysis of %d runs written to %s", len(runs), out)
    return summary


def _readable(folder: Path) -> None:
    """Temporary folders and files are created private (0700/0600); give the outputs the usual modes."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    for p in [folder, *folder.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", required=True, help="results root: <method>/seed<k>/zeroshot_metrics.json "
                        "and ablation/<variant>/seed<k>/...")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--params", default=None, help="params.yaml: display names, 'ours', dataset from --section, "
                        "and the runs to read (evaluate.methods, evaluate.training_free, ablate.variants, "
                        "ablate.from_main, base.seeds); without it every seed<k> folder found is read")
    parser.add_argument("--section", default="analyse", help="section of --params (default: analyse)")
    parser.add_argument("--name", action="append", default=[], metavar="FOLDER=DISPLAY",
                        help="display name of a method folder; repeat; order = table order (overrides params)")
    parser.add_argument("--ours", default=None, help="method folder that is 'ours' (overrides params)")
    parser.add_argument("--dataset", default=None, help="dataset key for the published-number comparison")
    parser.add_argument("--setting", default=None, choices=["inductive", "transductive"])
    parser.add_argument("--top-k", type=int, default=None, help="seen columns in the confusion heat map")
    parser.add_argument("--decimals", type=int, default=None, help="decimals in Markdown tables")
    parser.add_argument("--no-plots", action="store_true", help="tables only")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    st = load_settings(args.params, args.section)
    try:
        declared = declared_runs(read_params(args.params), f"--params {args.params}") if args.params else None
    except RunSetError as exc:
        raise SystemExit(str(exc)) from None
    if args.name:
        names = {}
        for item in args.name:
            if "=" not in item:
                raise SystemExit(f"--name {item!r}: expected FOLDER=DISPLAY")
            k, v = item.split("=", 1)
            names[k] = v
        st.names = names
    for attr in ("ours", "dataset", "setting", "top_k", "decimals"):
        if getattr(args, attr) is not None:
            setattr(st, attr, getattr(args, attr))
    st.plots = not args.no_plots
    try:
        analyse(args.results, args.out, st, declared)
    except RunSetError as exc:
        raise SystemExit(str(exc)) from None
    return 0
