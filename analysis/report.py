"""``alignzeg report --analysis DIR --out report.md``: the analysis folder as one Markdown report.

Reads what ``alignzeg analyse`` wrote (``summary.json``, ``main_table.csv/.md``,
``ablation_table.csv/.md``, ``figures.json`` and ``figures/``) and writes ``report.md`` with the
tables, every figure with a paragraph generated from its numbers, and a "Published numbers" section
from ``analysis/paper_table.yaml``: published numbers are put beside reproduced ones only where the
analysed runs are on the same dataset (key or alias) and setting; otherwise the row says
"no run on this dataset". Relative claims (AlignZeg's abstract) are shown as claims, next to the
same difference measured in this suite, never as table numbers.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.tables import COMPONENT_LABELS, DASH, ci95, fmt, fmt_pm

log = logging.getLogger(__name__)

PAPER_TABLE = Path(__file__).with_name("paper_table.yaml")


# --------------------------------------------------------------------------------------------- inputs
def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run 'alignzeg analyse' first)")
    return json.loads(path.read_text())


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def load_paper_table(path: str | Path = PAPER_TABLE) -> dict[str, Any]:
    """Read and validate the published-numbers YAML; errors name the file and the entry."""
    import yaml

    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    datasets = data.get("datasets") or {}
    sources = data.get("sources") or {}
    for i, r in enumerate(data.get("results") or []):
        for key in ("method", "dataset", "setting", "S", "U", "hIoU", "source"):
            if key not in r:
                raise ValueError(f"{path}: results[{i}] lacks '{key}'")
        if r["dataset"] not in datasets:
            raise ValueError(f"{path}: results[{i}].dataset '{r['dataset']}' is not under 'datasets'")
        if r["source"] not in sources:
            raise ValueError(f"{path}: results[{i}].source '{r['source']}' is not under 'sources'")
    for i, c in enumerate(data.get("claims") or []):
        for key in ("method", "metric", "delta", "text", "source"):
            if key not in c:
                raise ValueError(f"{path}: claims[{i}] lacks '{key}'")
        if c["source"] not in sources:
            raise ValueError(f"{path}: claims[{i}].source '{c['source']}' is not under 'sources'")
    return data


def match_dataset(key: str | None, datasets: dict[str, Any]) -> str | None:
    """The paper-table dataset key that ``key`` names (the key itself or an alias), or None."""
    if not key:
        return None
    k = str(key).lower()
    for name, d in datasets.items():
        if k == name.lower() or k in [str(a).lower() for a in (d.get("aliases") or [])]:
            return name
    return None


# --------------------------------------------------------------------------------------------- text
def _pm(mean, std, d=2) -> str:
    return fmt_pm(_nan(mean), _nan(std), d)


def _ci(mean, std, n, d=2) -> str:
    """``mean ± half-width of the 95 % Student-t interval`` from a sample std over ``n`` seeds."""
    return fmt_pm(_nan(mean), ci95(_nan(std), n), d)


def _difference(diff: float, half: float, d: int, unit: str = "points") -> str:
    """A paired difference with its 95 % interval; 'no measurable difference' when it contains zero."""
    if math.isnan(half):
        return f"{diff:+.{d}f} {unit} (interval undefined)"
    text = f"{diff:+.{d}f} ± {half:.{d}f} {unit}"
    if abs(diff) <= half:
        text += " (no measurable difference)"
    return text


def winner_paragraph(summary: dict[str, Any], d: int = 2) -> str:
    """The ranking in words; every ± is the half-width of the 95 % Student-t interval over seeds, and a
    paired difference whose interval contains zero is called "no measurable difference"."""
    w = summary.get("winner") or {}
    ranking = w.get("ranking") or []
    metric = w.get("metric", "hIoU")
    if not ranking:
        if w.get("undefined"):
            return f"{metric} is undefined (no unseen pixels?) for every method: " + ", ".join(
                _disp(summary, m) for m in w["undefined"]) + "."
        return "No main-method runs were found."
    top = ranking[0]
    undefined = w.get("undefined") or []
    note = (f" {metric} is undefined for " + ", ".join(_disp(summary, m) for m in undefined) + "."
            if undefined else "")
    if "vs_runner_up" not in w:
        lead = "Only one method was run" if len(ranking) == 1 else f"Only one method has a defined {metric}"
        return (f"{lead}: {top['display']} reaches {metric} {_ci(top['mean'], top['std'], top['n'], d)} "
                f"over {top['n']} seed(s)." + note)
    cmp_ = w["vs_runner_up"]
    k = len(cmp_["paired_seeds"])
    half = ci95(_nan(cmp_["paired_std"]), k) if k >= 2 else float("nan")
    measurable = k >= 2 and not math.isnan(half) and abs(cmp_["paired_mean_diff"]) > half
    verb = "ties for" if w.get("tie") else ("has" if measurable or k < 2 else "has, without a measurable margin,")
    text = (f"{w['winner_display']} {verb} the highest mean {metric} "
            f"({_ci(cmp_['mean_a'], cmp_['std_a'], cmp_['n_a'], d)} over {cmp_['n_a']} seed(s)), "
            f"{cmp_['margin']:.{d}f} points above {w['runner_up_display']} "
            f"({_ci(cmp_['mean_b'], cmp_['std_b'], cmp_['n_b'], d)}).")
    if k >= 2:
        text += (f" On the {k} seeds both share, the paired difference with its 95 % interval is "
                 f"{_difference(cmp_['paired_mean_diff'], half, d)}; "
                 f"{w['winner_display']} is ahead on {cmp_['paired_wins']} of {k}.")
    elif k == 1:
        text += " Only one seed is shared, so the difference has no interval."
    if "ours_vs_best_other" in w and w["ours"] != w["winner"]:
        o = w["ours_vs_best_other"]
        text += f" {w['ours_display']} ranks {w['ours_rank']} of {len(ranking)}, {o['margin']:.{d}f} points "
        text += f"from {_disp(summary, o['b'])}"
        ko = len(o.get("paired_seeds") or [])
        if ko >= 2:
            text += (f"; paired difference {_difference(o['paired_mean_diff'], ci95(_nan(o['paired_std']), ko), d)}")
        text += "."
    return text + note


def _disp(summary: dict[str, Any], method: str) -> str:
    return (summary.get("display") or {}).get(method, method)


def ablation_paragraph(abl: pd.DataFrame, d: int = 2) -> str:
    if abl.empty:
        return ""
    parts = []
    full = abl[abl["kind"] == "full"]
    parent = abl[abl["kind"] == "parent"]
    if len(full) and len(parent):
        f, p = full.iloc[0], parent.iloc[0]
        delta = (_difference(f["delta_hIoU"], _nan(f.get("delta_hIoU_ci95", float("nan"))), d)
                 if "delta_hIoU_ci95" in f else f"{f['delta_hIoU']:+.{d}f} points")
        parts.append(f"With every component on, hIoU is {_pm(f['hIoU_mean'], f['hIoU_ci95'], d)} against the "
                     f"parent's {_pm(p['hIoU_mean'], p['hIoU_ci95'], d)}, a paired difference of {delta}; "
                     f"unseen mIoU moves from {fmt(p['U_mean'], d)} to {fmt(f['U_mean'], d)} and seen mIoU from "
                     f"{fmt(p['S_mean'], d)} to {fmt(f['S_mean'], d)}.")
    add = abl[abl["kind"] == "add"]
    if len(add) and len(parent):
        b = add.loc[add["delta_hIoU"].idxmax()]
        parts.append(f"Added alone, {b['label'][2:]} has the largest Δ hIoU against the parent: "
                     f"{_difference(b['delta_hIoU'], _nan(b.get('delta_hIoU_ci95', float('nan'))), d)}.")
    rem = abl[abl["kind"] == "remove"]
    if len(rem) and len(full) and "delta_full_hIoU" in rem:
        r = rem.loc[rem["delta_full_hIoU"].idxmin()]
        comp = r["label"].split("−", 1)[-1].strip()
        parts.append(f"Removed from the full model, {comp} costs most ({fmt(r['hIoU_mean'], d)} vs "
                     f"{fmt(full.iloc[0]['hIoU_mean'], d)}): "
                     f"{_difference(r['delta_full_hIoU'], _nan(r['delta_full_hIoU_ci95']), d)}.")
        up = [rr["label"].split("−", 1)[-1].strip() for _, rr in rem.iterrows()
              if rr["delta_full_hIoU"] > _nan(rr["delta_full_hIoU_ci95"])]
        if up:
            parts.append(f"Removing {', '.join(up)} raises hIoU beyond its 95 % interval.")
    n_sig = sum(1 for _, rr in abl.iterrows() if rr["kind"] in ("add", "remove")
                and abs(rr["delta_hIoU"]) > _nan(rr.get("delta_hIoU_ci95", float("nan"))))
    if len(parent):
        parts.append(f"{n_sig} of {int(abl['kind'].isin(['add', 'remove']).sum())} add/remove rows differ "
                     "measurably from the parent (paired 95 % interval excludes zero).")
    return " ".join(parts)


def per_class_unseen_section(pmean: pd.DataFrame, summary: dict[str, Any], d: int = 2) -> list[str]:
    """Unseen classes x main methods: IoU mean over seeds (the per-class view of the unseen mIoU)."""
    if pmean.empty or "split" not in pmean:
        return []
    rows = pmean[(pmean["group"] == "main") & (pmean["split"] == "unseen")]
    methods = [m for m in (summary.get("methods") or []) if m in set(rows["method"])]
    if rows.empty or not methods:
        return []
    classes = list(dict.fromkeys(rows["class"]))
    lines = ["## Per-class unseen IoU", "",
             "| Unseen class | " + " | ".join(_disp(summary, m) for m in methods) + " |",
             "|---|" + "---:|" * len(methods)]
    for c in classes:
        cells = []
        for m in methods:
            v = rows[(rows["class"] == c) & (rows["method"] == m)]["IoU_mean"]
            cells.append(fmt(float(v.iloc[0]), d) if len(v) else DASH)
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += ["", "IoU (%) of each unseen class, mean over seeds (all values: `per_class_mean.csv`).", ""]
    return lines


def figure_paragraph(fid: str, fig: dict[str, Any], summary: dict[str, Any], d: int = 2) -> str:
    if "skipped" in fig:
        return f"Not drawn: {fig['skipped']}."
    st = fig.get("stats") or {}
    kind = fid.split("/")[0]
    if kind == "per_class_iou":
        name = _disp(summary, st["method"])
        text = (f"Per-class IoU of {name}, each bar the mean over seeds (error bar: sample std), seen classes in "
                f"blue, unseen in orange. Averaged over classes, seen IoU is {fmt(_nan(st.get('seen_mean')), d)} "
                f"and unseen IoU {fmt(_nan(st.get('unseen_mean')), d)} ({st['n_seen']} seen, "
                f"{st['n_unseen']} unseen classes).")
        if st.get("best_unseen") is not None:
            text += (f" The best unseen class is {st['best_unseen']} ({fmt(_nan(st['best_unseen_iou']), d)}), the "
                     f"worst {st['worst_unseen']} ({fmt(_nan(st['worst_unseen_iou']), d)}).")
        return text
    if kind == "unseen_to_seen":
        name = _disp(summary, st["method"])
        return (f"Where {name} sends unseen-class pixels: each row is an unseen class, each cell the share of its "
                f"pixels predicted as a seen class (confusion summed over {st['n_runs']} seed(s)). On average over "
                f"unseen classes, {st['mean_unseen_to_seen_share']:.1f}% of an unseen class's pixels go to seen "
                f"classes; the worst is {st['most_confused_unseen']} ({st['most_confused_share']:.1f}%). The "
                f"largest single flow is {st['top_unseen']} → {st['top_seen']} ({st['top_share']:.1f}%), and "
                f"{st['most_absorbing_seen']} absorbs the most unseen pixels overall.")
    if kind == "score_distributions":
        items = sorted(st.items(), key=lambda kv: kv[1]["share_seen_wins"])
        bits = [f"{_disp(summary, m)} {v['share_seen_wins']:.1f}% (median best seen {v['median_top_seen']:.3f} vs "
                f"best unseen {v['median_top_unseen']:.3f}, n={v['n']})" for m, v in items]
        text = ("The seen-class bias the paper names: on pixels whose ground truth is an unseen class, the best "
                "seen-class score is compared with the best unseen-class score. The share of such pixels where a "
                "seen class scores higher is " + "; ".join(bits) + ".")
        if len(items) > 1 and items[0][1]["share_seen_wins"] < items[1][1]["share_seen_wins"]:
            text += f" {_disp(summary, items[0][0])} is the least biased by this measure."
        return text
    if kind == "indicator_roc":
        bits = []
        for m, v in st.items():
            b = (f"{_disp(summary, m)}'s class indicator separates unseen from seen proposals with AUC "
                 f"{v['auc']:.3f} ({v['n_proposals']} proposals, {v['n_unseen']} matched to unseen classes, pooled "
                 f"over {v['n_seeds']} seed(s)")
            if v["n_seeds"] > 1:
                b += f"; per seed {v['auc_seed_mean']:.3f} ± {fmt(_nan(v['auc_seed_std']), 3)}"
            bits.append(b + ")")
        return ". ".join(bits) + ". AUC 0.5 is chance, 1.0 perfect separation (rank formula, ties count one half)."
    if kind == "seen_unseen_scatter":
        gaps = st.get("seen_minus_unseen") or {}
        text = ("Each method at its mean (seen mIoU, unseen mIoU) with sample-std error bars and faint per-seed "
                "points; grey curves join points of equal hIoU, U = hS/(2S − h).")
        if gaps:
            order = sorted(gaps.items(), key=lambda kv: kv[1])
            text += (" Seen minus unseen mIoU (the misalignment gap): "
                     + ", ".join(f"{_disp(summary, m)} {g:.{d}f}" for m, g in order) + ".")
            if len(order) > 1 and order[0][1] < order[1][1]:
                text += f" {_disp(summary, order[0][0])} has the smallest gap."
        return text
    if kind == "qualitative":
        return (f"Test images {', '.join(st.get('images') or [])}: the ones where seen and unseen classes "
                "meet most (largest min(seen pixels, unseen pixels): a fixed rule, the same for every method); "
                "each method's prediction is its lowest seed's. Row labels list the ground-truth classes, "
                "unseen ones marked *.")
    if kind == "train_curves":
        final = st.get("final") or {}
        return (f"Mean over {st.get('n_runs', '?')} run(s) of every logged loss term at each logged iteration "
                "(`train_curve.csv` per run, also shown by `dvc plots show`); final total loss "
                f"{final.get('loss', float('nan')):.3f}.")
    if kind == "ablation_forest":
        sig = [v for v, cols in st.items() for c, x in cols.items() if x.get("significant")]
        return ("Each row: the variant's mean difference to the parent over the seeds both have, with the 95 % "
                "interval of the paired differences; an interval that crosses the grey zero line is no "
                "measurable difference. " + (f"Measurable: {', '.join(sorted(set(sig)))}." if sig else
                                             "No row differs measurably from the parent."))
    if kind == "su_curves":
        parts = []
        for m, v in st.items():
            areas = [a for a in (v.get("ausuc_per_run") or []) if a is not None]
            if areas:
                n = len(areas)
                mean = sum(areas) / n
                sd = (sum((a - mean) ** 2 for a in areas) / (n - 1)) ** 0.5 if n > 1 else float("nan")
                parts.append(f"{_disp(summary, m)} {_ci(100 * mean, 100 * sd, n, d)}")
        return ("Each line is one run: a constant γ subtracted from every seen-class score, swept from 'all "
                "seen' (U = 0) to 'all unseen' (S = 0); the dot is the method's own operating point (γ = 0); "
                "grey curves join points of equal hIoU. Area under each curve (AUSUC × 100, mean ± 95 % "
                "interval over seeds): " + ", ".join(parts) + ".") if parts else ""
    return ""


# --------------------------------------------------------------------------------------------- cost
def cost_section(bench: dict[str, Any], rel: Path) -> str:
    """The Cost section from `alignzeg bench`'s JSON: ratios first, absolute times and the machine after."""
    m = bench.get("machine") or {}
    lines = ["## Cost", "",
             f"`alignzeg bench --size {bench.get('size')}` ({bench.get('image')}×{bench.get('image')} inputs) on "
             f"{m.get('processor') or '?'}, {m.get('cpu_count')} CPU(s), {m.get('threads')} torch thread(s)"
             + (f", {m['cuda']}" if m.get("cuda") else ", no GPU") + f", torch {m.get('torch')}. Each ratio is "
             "measured in one run on the same inputs.", "",
             "| Method | inference ÷ frozen CLIP encoder | ms per image | training s / iteration | data wait (%) |",
             "|---|---:|---:|---:|---:|"]
    for name, row in (bench.get("methods") or {}).items():
        inf, tr = row.get("inference") or {}, row.get("training")
        cells = [name, f"{inf.get('ratio_to_clip', float('nan')):.2f}×", f"{1000 * inf.get('seconds_per_image', 0):.1f}"]
        cells += ([f"{tr['seconds_per_iter']:.3f} (batch {tr['batch_size']})", f"{100 * tr['data_wait_share']:.1f}"]
                  if tr else ["– (training-free)", DASH])
        lines.append("| " + " | ".join(cells) + " |")
    ev, tx = bench.get("evaluation") or {}, bench.get("text") or {}
    lines += ["", f"Metric accumulation: {ev.get('throughput_ratio_to_bincount', float('nan')):.2f}× the throughput of "
              f"a bare `torch.bincount` over the same {ev.get('images')} images (target ≥ 0.8); peak memory for 4× the "
              f"images: {ev.get('peak_ratio_4n_to_n', float('nan')):.2f}× (flat = 1). Text embeddings: the cached "
              f"second run is {tx.get('speedup', float('nan')):.0f}× faster than the first (target ≥ 20).", ""]
    fig = bench.get("figure")
    if fig:
        lines += [f"![Inference cost per method]({(rel / fig).as_posix()})", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- published
def published_hiou_consistent(s: float, u: float, h: float, decimals: int = 1) -> bool:
    """Whether a printed hIoU equals 2SU/(S+U) of the printed S and U, to the printed precision (any S, U
    within half a unit of the last printed digit may have produced it)."""
    half = 0.5 * 10 ** -decimals
    lo = min(2 * a * b / (a + b) for a in (s - half, s + half) for b in (u - half, u + half) if a + b > 0)
    hi = max(2 * a * b / (a + b) for a in (s - half, s + half) for b in (u - half, u + half) if a + b > 0)
    return lo - half <= h <= hi + half


def published_section(paper: dict[str, Any], summary: dict[str, Any], main: pd.DataFrame,
                      dataset: str | None, setting: str, d: int = 2,
                      transductive: pd.DataFrame | None = None) -> str:
    """Every published row beside this suite's reproduction of it: inductive rows against the main table,
    transductive rows against the self-trained runs (``transductive``; with ``setting='transductive'`` the
    main runs themselves are the transductive ones)."""
    datasets, sources = paper.get("datasets") or {}, paper.get("sources") or {}
    ours_key = match_dataset(dataset, datasets)
    lines = ["## Published numbers", ""]
    if dataset is None:
        where = "The analysed runs name no dataset key (params `analyse.dataset`), so none is compared."
    elif ours_key is None:
        where = (f"The analysed runs are on dataset `{dataset}` ({setting}), which has no published entry here.")
    else:
        where = (f"The analysed runs are on dataset `{dataset}` = {datasets[ours_key].get('name', ours_key)} "
                 f"({setting}).")
    lines += [where + " Published values are mIoU (%) from the cited source, with the backbone it lists; reproduced values are "
              "mean ± 95 % interval over this suite's seeds. ⚑ marks a published hIoU that is not "
              "2SU/(S+U) of its own S and U (to the printed precision).", ""]
    lines += ["| Method | Backbone | Dataset | Setting | S | U | hIoU | Source | Reproduced S / U / hIoU | Δ hIoU |",
              "|---|---|---|---|---:|---:|---:|---|---|---:|"]
    flagged, notes = [], []
    for r in paper.get("results") or []:
        ds = datasets[r["dataset"]].get("name", r["dataset"])
        src = sources[r["source"]]
        src_md = f"[{r['source']}]({src['url']})" if src.get("url") else r["source"]
        consistent = published_hiou_consistent(r["S"], r["U"], r["hIoU"])
        h_cell = f"{r['hIoU']:.1f}" + ("" if consistent else " ⚑")
        if not consistent:
            flagged.append(f"{r.get('display', r['method'])} {ds} {r['setting']}: 2·{r['S']}·{r['U']}/"
                           f"({r['S']}+{r['U']}) = {2 * r['S'] * r['U'] / (r['S'] + r['U']):.2f}, "
                           f"printed {r['hIoU']}")
        if r.get("note"):
            notes.append(f"{r.get('display', r['method'])} {ds} {r['setting']}: {r['note']}")
        cells = [r.get("display", r["method"]), r.get("backbone", ""), ds, r["setting"],
                 f"{r['S']:.1f}", f"{r['U']:.1f}", h_cell, src_md]
        tables = {setting: main}
        if setting == "inductive" and transductive is not None and not transductive.empty:
            tables["transductive"] = transductive
        if ours_key != r["dataset"] or r["setting"] not in tables:
            cells += ["no run on this dataset" if ours_key != r["dataset"] else f"no {r['setting']} run on this dataset", DASH]
        else:
            row = _find_method(tables[r["setting"]], r["method"], r.get("display"))
            if row is None:
                cells += [f"no run of {r.get('display', r['method'])} on this dataset", DASH]
            else:
                cells += [" / ".join(_pm(row[f"{c}_mean"], row[f"{c}_ci95"], d) for c in ("S", "U", "hIoU")),
                          f"{row['hIoU_mean'] - r['hIoU']:+.{d}f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if flagged:
        lines += ["⚑ " + "; ".join(flagged) + ".", ""]
    if notes:
        lines += ["Notes: " + "; ".join(notes) + ".", ""]
    claims = paper.get("claims") or []
    if claims:
        lines += ["Claims recorded as claims (relative numbers, not table entries):", ""]
        w = summary.get("winner") or {}
        for c in claims:
            src = sources[c["source"]]
            line = f"- {c.get('display', c['method'])}: {c['text']} ({c.get('scope', '')}; source: "
            line += f"[{src.get('title', c['source'])}]({src['url']}))." if src.get("url") else f"{c['source']})."
            # the best other method is the strongest by mean of the claim's metric (analysis.tables.winner_summary)
            key = "ours_vs_best_other" if c["metric"] == w.get("metric") else (
                "ours_vs_best_other_unseen" if c["metric"] == "mIoU_unseen" else None)
            if key is None and w.get("ours") == c["method"]:
                line += (f" Not measured here: the analysis ranks methods by {w.get('metric')} "
                         f"(analyse.metric), not {c['metric']}.")
            elif w.get("ours") == c["method"] and key in w:
                o = w[key]
                metric_name = {"hIoU": "hIoU", "mIoU_unseen": "unseen mIoU"}.get(c["metric"], c["metric"])
                line += (f" In this suite ({dataset or 'unnamed dataset'}, {setting}): {w['ours_display']} minus the "
                         f"best other method ({_disp(summary, o['b'])}) is {o['margin']:+.{d}f} {metric_name}")
                k = len(o["paired_seeds"])
                if k >= 2:
                    line += (f" (paired over {k} seeds: "
                             f"{_difference(o['paired_mean_diff'], ci95(_nan(o['paired_std']), k), d)}, 95 % interval)")
                line += f" vs the claimed {c['delta']:+.1f}."
            else:
                line += " No run of this method with a comparison method in the analysed results."
            lines.append(line)
        lines.append("")
    notes = paper.get("notes")
    if notes:
        lines += [str(notes), ""]
    return "\n".join(lines)


def _find_method(main: pd.DataFrame, key: str, display: str | None):
    if main.empty:
        return None
    wanted = {str(key).lower(), str(display or key).lower()}
    for _, row in main.iterrows():
        if str(row["method"]).lower() in wanted or str(row["display"]).lower() in wanted:
            return row
    return None


def transductive_section(analysis: Path, summary: dict[str, Any], d: int = 2) -> list[str]:
    """The self-trained runs: their own table (never mixed with the inductive rows) and what
    self-training changed per method, seed by seed."""
    L = ["## Transductive setting (self-training)", ""]
    L += ["Each inductive run above, trained further with the unseen class names known and pseudo-labels for "
          "the unseen classes on the unlabelled pixels (ZegCLIP's rule, `alignzeg/models/self_training.py`; "
          "params `self_train`). These runs see the unlabelled unseen pixels of the training images, so they "
          "are a different protocol: compare them with each other, with the inductive run they start from "
          "(last table) and with the published transductive numbers, never with the inductive rows.", ""]
    L += [(analysis / "transductive_table.md").read_text().rstrip(), ""]
    effect = summary.get("self_training_effect") or []
    names = (summary.get("settings") or {}).get("names") or {}
    said = []
    for m in dict.fromkeys(e["method"] for e in effect):
        rows = {e["metric"]: e for e in effect if e["method"] == m}
        h = rows.get("hIoU")
        if h is None:
            continue
        verdict = ("no measurable difference" if not h["significant"] else
                   ("higher" if h["diff_mean"] > 0 else "lower"))
        u = rows.get("mIoU_unseen")
        part = f"{names.get(m, m)}: hIoU {h['diff_mean']:+.{d}f} ({verdict})"
        if u is not None:
            part += f", unseen {u['diff_mean']:+.{d}f}"
        said.append(part)
    if said:
        L += ["Self-trained minus inductive, per method: " + "; ".join(said) + ".", ""]
    return L


# --------------------------------------------------------------------------------------------- report
def build_report(analysis: str | Path, out: str | Path, paper_table: str | Path = PAPER_TABLE,
                 dataset: str | None = None, setting: str | None = None, title: str | None = None,
                 bench: str | Path | None = None) -> str:
    """Compose ``report.md`` text from an analysis folder and write it to ``out``; return the text."""
    from alignzeg.utils import atomic_write_text

    analysis, out = Path(analysis), Path(out)
    summary = _read_json(analysis / "summary.json")
    figures = _read_json(analysis / "figures.json") if (analysis / "figures.json").is_file() else {}
    st = summary.get("settings") or {}
    d = int(st.get("decimals", 2))
    dataset = dataset if dataset is not None else st.get("dataset")
    setting = setting or st.get("setting") or "inductive"
    main = pd.read_csv(analysis / "main_table.csv") if (analysis / "main_table.csv").is_file() else pd.DataFrame()
    abl = (pd.read_csv(analysis / "ablation_table.csv") if (analysis / "ablation_table.csv").is_file()
           else pd.DataFrame())
    rel = Path(os.path.relpath(analysis.resolve(), out.resolve().parent))

    runs = summary.get("runs") or []
    n_main = sum(1 for r in runs if r["group"] == "main")
    n_abl = sum(1 for r in runs if r["group"] == "ablation")
    n_st = sum(1 for r in runs if r["group"] == "transductive")
    L = [f"# {title or 'Zero-shot segmentation results'}", ""]
    L += [f"Runs: {n_main} main-method run(s)" + (f", {n_abl} ablation run(s)" if n_abl else "")
          + (f", {n_st} self-trained (transductive) run(s)" if n_st else "")
          + f" from `{summary.get('results', '?')}`; dataset `{dataset or 'unnamed'}`, {setting} setting. "
          "All numbers are percentages; in the tables and the text ± is the half-width of the 95 % "
          "Student-t interval over seeds (figure captions say where error bars are sample standard "
          "deviations), and a difference whose interval contains zero is no measurable difference; "
          f"{DASH} where a method has a single seed. Metrics are measured in the joint label space "
          "(seen and unseen classes compete in one prediction).", ""]

    L += ["## Main results", ""]
    md = analysis / "main_table.md"
    L += [md.read_text().rstrip() if md.is_file() else "No main-method runs.", ""]
    L += [winner_paragraph(summary, d), ""]

    pmean_path = analysis / "per_class_mean.csv"
    if pmean_path.is_file():
        L += per_class_unseen_section(pd.read_csv(pmean_path), summary, d)

    if not abl.empty:
        L += ["## Ablation", ""]
        L += [(analysis / "ablation_table.md").read_text().rstrip(), ""]
        L += [f"Rows: the parent (all of {', '.join(COMPONENT_LABELS.values())} off), each component added "
              "alone, each removed from the full model, and the full model. " + ablation_paragraph(abl, d), ""]

    trans = (pd.read_csv(analysis / "transductive_table.csv") if (analysis / "transductive_table.csv").is_file()
             else pd.DataFrame())
    if not trans.empty:
        L += transductive_section(analysis, summary, d)

    if figures:
        L += ["## Figures", ""]
        for fid, fig in figures.items():
            L += [f"### {fig.get('title', fid)}", ""]
            files = fig.get("files") or []
            png = next((f for f in files if f.endswith(".png")), None)
            if png:
                svg = next((f for f in files if f.endswith(".svg")), None)
                L += [f"![{fig.get('title', fid)}]({(rel / png).as_posix()})"]
                if svg:
                    L += ["", f"Vector version: [{Path(svg).name}]({(rel / svg).as_posix()})"]
                L += [""]
            L += [figure_paragraph(fid, fig, summary, d), ""]

    if bench is not None:
        L += [cost_section(_read_json(Path(bench)), Path(os.path.relpath(Path(bench).parent, out.parent)))]
    L += [published_section(load_paper_table(paper_table), summary, main, dataset, setting, d, trans)]
    text = "\n".join(L).rstrip() + "\n"
    atomic_write_text(out, text)
    html = out.with_suffix(".html")
    atomic_write_text(html, report_html(text, out.parent, title or "Zero-shot segmentation results"))
    umask = os.umask(0)
    os.umask(umask)
    for path in (out, html):
        os.chmod(path, 0o666 & ~umask)  # the atomic write's temporary file is private
    log.info("report written to %s and %s", out, html)
    return text


HTML_STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;line-height:1.45;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .5em}th{background:#f3f3f3}td{text-align:right}
td:first-child{text-align:left}img{max-width:100%;height:auto}code{background:#f6f6f6;padding:0 .2em}"""


def report_html(markdown_text: str, base: Path, title: str) -> str:
    """The report as one HTML page that opens offline: Markdown rendered by markdown-it-py (CommonMark +
    tables), every local PNG figure embedded as a base64 data URI (links to other files stay relative)."""
    import base64
    import html as html_lib
    import re

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)

    def embed(m: re.Match) -> str:
        src = html_lib.unescape(m.group(2))
        path = (base / src)
        if re.match(r"^[a-z]+:", src) or not path.is_file() or path.suffix.lower() != ".png":
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'{m.group(1)}data:image/png;base64,{data}{m.group(3)}'

    body = re.sub(r'(<img src=")([^"]+)(")', embed, body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html_lib.escape(title)}</title><style>{HTML_STYLE}</style></head>\n<body>\n{body}</body></html>\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--analysis", required=True, help="folder written by 'alignzeg analyse'")
    parser.add_argument("--out", required=True, help="report Markdown file to write")
    parser.add_argument("--paper-table", default=str(PAPER_TABLE), help="published numbers YAML")
    parser.add_argument("--dataset", default=None, help="dataset key (default: the one recorded by analyse)")
    parser.add_argument("--setting", default=None, choices=["inductive", "transductive"])
    parser.add_argument("--title", default=None)
    parser.add_argument("--bench", default=None, help="bench.json of `alignzeg bench` (adds the Cost section)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_report(args.analysis, args.out, args.paper_table, args.dataset, args.setting, args.title, args.bench)
    return 0
