"""Figures of the analysis (headless): per-class IoU, unseen→seen confusion, seen-bias score
distributions, class-indicator ROC, and the seen-vs-unseen scatter with hIoU iso-curves.

Every figure is written as PNG and SVG. Each ``plot_*`` function returns a dict of the numbers its
caption in the report uses (``analysis.report`` turns them into text). Inputs that are absent (no
``scores.npz``, no indicator arrays, no confusion matrix) make the figure skip with a logged reason.

The ROC AUC uses the rank (Mann–Whitney) formula with average ranks for ties,
``AUC = (R+ − n+(n+ + 1)/2) / (n+ · n−)``, i.e. the probability that a random positive scores above
a random negative, ties counting one half.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

log = logging.getLogger(__name__)

SEEN_COLOR = "#1f77b4"
UNSEEN_COLOR = "#ff7f0e"
SCORE_KEYS = ("top_seen", "top_unseen")
INDICATOR_KEYS = ("indicator_prob", "indicator_is_unseen")


# --------------------------------------------------------------------------------------------- maths
def iso_hiou(h: float, seen: np.ndarray | float) -> np.ndarray:
    """Unseen mIoU that gives harmonic mean ``h`` with seen mIoU ``seen``: ``U = hS / (2S − h)``.

    Defined for ``S > h/2``; NaN elsewhere (no finite U reaches ``h`` there).
    """
    s = np.asarray(seen, dtype=np.float64)
    denom = 2.0 * s - h
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(denom > 0, h * s / np.where(denom > 0, denom, 1.0), np.nan)
    return u


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``; tied values share the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    start = 0
    n = len(x)
    while start < n:
        stop = start + 1
        while stop < n and xs[stop] == xs[start]:
            stop += 1
        ranks[order[start:stop]] = 0.5 * (start + 1 + stop)  # mean of ranks start+1 .. stop
        start = stop
    return ranks


def roc_auc(scores: Iterable[float], labels: Iterable[bool]) -> float:
    """Area under the ROC curve by the rank formula (positives = ``labels`` true); NaN if a class is empty."""
    s = np.asarray(list(scores) if not isinstance(scores, np.ndarray) else scores, dtype=np.float64).ravel()
    y = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"roc_auc: {s.shape[0]} scores but {y.shape[0]} labels")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, TPR, thresholds) sweeping the threshold down through the distinct scores (``score >= t``).

    Starts at (0, 0) with threshold +inf; tied scores move diagonally, so the trapezoid area equals
    :func:`roc_auc`.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.array([], dtype=int)
    tps = np.cumsum(y)[distinct]
    fps = np.cumsum(~y)[distinct]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thr = np.r_[np.inf, s[distinct]]
    return fpr, tpr, thr


# --------------------------------------------------------------------------------------------- io
def save_figure(fig, out_dir: str | Path, stem: str) -> list[str]:
    """Write ``stem.png`` and ``stem.svg`` atomically; close the figure; return the file names."""
    from alignzeg.utils import atomic_write_bytes

    out_dir = Path(out_dir)
    names = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=120, bbox_inches="tight")
        atomic_write_bytes(out_dir / f"{stem}.{ext}", buf.getvalue())
        names.append(f"{stem}.{ext}")
    plt.close(fig)
    return names


def load_scores(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``scores.npz``; validate the paired arrays; errors name the file and the field."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        data = {k: np.asarray(z[k]) for k in z.files}
    for a, b in (SCORE_KEYS, INDICATOR_KEYS):
        if (a in data) != (b in data):
            raise ValueError(f"{path}: field '{a if a in data else b}' present without '{b if a in data else a}'")
        if a in data and data[a].ravel().shape != data[b].ravel().shape:
            raise ValueError(f"{path}: fields '{a}' ({data[a].size}) and '{b}' ({data[b].size}) differ in length")
    return data


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


# --------------------------------------------------------------------------------------------- plots
def plot_per_class_iou(pmean: pd.DataFrame, method: str, display: str, out_dir: Path) -> dict[str, Any]:
    """Bars of per-class IoU (mean over seeds, sample-std error bars), seen and unseen coloured."""
    import seaborn as sns

    d = pmean[(pmean["group"] == "main") & (pmean["method"] == method)].copy()
    if d.empty:
        return {"skipped": f"{method}: no per_class entries in the metric JSON"}
    d["split"] = pd.Categorical(d["split"], ["seen", "unseen"])
    d = d.sort_values(["split", "IoU_mean"], ascending=[True, False]).reset_index(drop=True)
    n = len(d)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * n + 2), 4.0))
    palette = {"seen": SEEN_COLOR, "unseen": UNSEEN_COLOR}
    sns.barplot(data=d, x="class", y="IoU_mean", hue="split", palette=palette, dodge=False, ax=ax,
                order=list(d["class"]), hue_order=["seen", "unseen"], errorbar=None)
    err = d["IoU_std"].fillna(0.0).to_numpy()
    if err.any():
        ax.errorbar(np.arange(n), d["IoU_mean"].to_numpy(), yerr=err, fmt="none", ecolor="black",
                    elinewidth=0.8, capsize=2)
    for split, color in palette.items():
        sel = d[d["split"] == split]
        if len(sel):
            ax.axhline(sel["IoU_mean"].mean(), color=color, ls="--", lw=1)
    ax.set_xlabel("class")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{display}: per-class IoU (mean over {int(d['n'].max())} seed(s); dashed = split mean)")
    ax.tick_params(axis="x", rotation=90, labelsize=7 if n > 40 else 9)
    ax.legend(title="split", loc="upper right")
    files = save_figure(fig, out_dir, f"per_class_iou_{_slug(method)}")
    un = d[d["split"] == "unseen"]
    se = d[d["split"] == "seen"]
    stats = {"method": method, "n_classes": n, "n_seen": len(se), "n_unseen": len(un),
             "seen_mean": float(se["IoU_mean"].mean()) if len(se) else None,
             "unseen_mean": float(un["IoU_mean"].mean()) if len(un) else None}
    un = un[np.isfinite(un["IoU_mean"].astype(float))]  # classes absent from the evaluation have no IoU
    if len(un):
        best, worst = un.iloc[0], un.iloc[-1]
        stats.update(best_unseen=best["class"], best_unseen_iou=float(best["IoU_mean"]),
                     worst_unseen=worst["class"], worst_unseen_iou=float(worst["IoU_mean"]))
    return {"files": files, "stats": stats}


def plot_unseen_to_seen(entry: dict[str, Any], method: str, display: str, out_dir: Path,
                        top_k: int = 10) -> dict[str, Any]:
    """Heat map: rows unseen classes, columns the ``top_k`` seen classes that take most unseen pixels
    (summed share over unseen rows) plus "other seen"; cells = % of the unseen class's pixels."""
    import seaborn as sns

    share = np.asarray(entry["share"], dtype=np.float64)
    if share.size == 0:
        return {"skipped": f"{method}: no unseen pixels or no seen classes in the confusion"}
    seen = list(entry["seen"])
    unseen = list(entry["unseen"])
    col_total = share.sum(axis=0)
    k = min(top_k, len(seen))
    top = np.argsort(-col_total, kind="mergesort")[:k]
    rest = np.setdiff1d(np.arange(len(seen)), top)
    cols = [seen[j] for j in top]
    mat = share[:, top]
    if len(rest):
        mat = np.c_[mat, share[:, rest].sum(axis=1)]
        cols.append("other seen")
    frame = pd.DataFrame(mat, index=unseen, columns=cols)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(cols) + 3), max(3.0, 0.35 * len(unseen) + 1.5)))
    # colour scale from the named seen columns: "other seen" sums many classes and would wash them out
    vmax = max(float(share[:, top].max()) if k else float(mat.max()), 1e-9)
    label = "% of the unseen class's pixels" + (" (colour capped)" if float(mat.max()) > vmax else "")
    sns.heatmap(frame, annot=len(cols) * len(unseen) <= 300, fmt=".1f", cmap="Reds", vmin=0,
                vmax=vmax, cbar_kws={"label": label}, ax=ax)
    ax.set_xlabel("predicted seen class")
    ax.set_ylabel("ground-truth unseen class")
    ax.set_title(f"{display}: unseen pixels predicted as seen classes (top {k} columns)")
    files = save_figure(fig, out_dir, f"unseen_to_seen_{_slug(method)}")
    i, j = np.unravel_index(int(np.argmax(share)), share.shape)
    row_tot = share.sum(axis=1)
    r = int(np.argmax(row_tot))
    return {"files": files, "stats": {
        "method": method, "top_unseen": unseen[i], "top_seen": seen[j], "top_share": float(share[i, j]),
        "most_absorbing_seen": seen[int(top[0])], "most_absorbing_total": float(col_total[top[0]]),
        "most_confused_unseen": unseen[r], "most_confused_share": float(row_tot[r]),
        "mean_unseen_to_seen_share": float(row_tot.mean()), "n_runs": int(entry.get("n_runs", 1))}}


def plot_score_distributions(scores: dict[str, dict[str, np.ndarray]], names: dict[str, str],
                             out_dir: Path) -> dict[str, Any]:
    """Per method: histograms of the top seen-class and top unseen-class score on unseen-gt pixels."""
    import seaborn as sns

    methods = [m for m in scores if "top_seen" in scores[m]]
    if not methods:
        return {"skipped": "no scores.npz with top_seen/top_unseen in any run"}
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), squeeze=False)
    stats = {}
    for ax, m in zip(axes[0], methods):
        ts = scores[m]["top_seen"].astype(np.float64).ravel()
        tu = scores[m]["top_unseen"].astype(np.float64).ravel()
        frame = pd.DataFrame({"score": np.r_[ts, tu],
                              "max over": ["seen classes"] * len(ts) + ["unseen classes"] * len(tu)})
        sns.histplot(data=frame, x="score", hue="max over", stat="density", common_norm=False, element="step",
                     bins=40, palette={"seen classes": SEEN_COLOR, "unseen classes": UNSEEN_COLOR}, ax=ax)
        ax.set_title(f"{names.get(m, m)} (n={len(ts)} unseen pixels)")
        ax.set_xlabel("top class score on unseen-gt pixels")
        ax.set_ylabel("density")
        stats[m] = {"n": int(len(ts)), "median_top_seen": float(np.median(ts)),
                    "median_top_unseen": float(np.median(tu)),
                    "share_seen_wins": float(100.0 * np.mean(ts > tu)),
                    "mean_margin": float(np.mean(ts - tu))}
    fig.tight_layout()
    fig.suptitle("Seen-class bias: best seen vs best unseen score on unseen-class pixels", y=1.03)
    files = save_figure(fig, out_dir, "score_distributions")
    return {"files": files, "stats": stats}


def plot_indicator_roc(indicator: dict[str, list[tuple[np.ndarray, np.ndarray]]], names: dict[str, str],
                       out_dir: Path) -> dict[str, Any]:
    """ROC of the class indicator (positive = proposal matched to an unseen class), pooled over seeds;
    the legend also gives the per-seed AUC mean ± sample std."""
    methods = [m for m, lst in indicator.items() if lst]
    if not methods:
        return {"skipped": "no scores.npz with indicator_prob/indicator_is_unseen in any run"}
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    stats = {}
    for m in methods:
        probs = np.concatenate([p.ravel() for p, _ in indicator[m]]).astype(np.float64)
        labels = np.concatenate([y.ravel() for _, y in indicator[m]]).astype(bool)
        per_seed = [roc_auc(p, y) for p, y in indicator[m]]
        per_seed = [a for a in per_seed if not np.isnan(a)]
        auc = roc_auc(probs, labels)
        fpr, tpr, _ = roc_curve(probs, labels)
        std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else float("nan")
        label = f"{names.get(m, m)}: AUC {auc:.3f}"
        if len(per_seed) > 1:
            label += f" (per seed {np.mean(per_seed):.3f} ± {std:.3f})"
        ax.plot(fpr, tpr, lw=1.6, label=label)
        stats[m] = {"auc": auc, "auc_seed_mean": float(np.mean(per_seed)) if per_seed else None,
                    "auc_seed_std": std, "n_seeds": len(per_seed), "n_proposals": int(len(labels)),
                    "n_unseen": int(labels.sum())}
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance (AUC 0.5)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive rate (seen proposals flagged unseen)")
    ax.set_ylabel("true-positive rate (unseen proposals flagged)")
    ax.set_title("Class indicator ROC: unseen vs seen proposals")
    ax.legend(loc="lower right", fontsize=8)
    files = save_figure(fig, out_dir, "indicator_roc")
    return {"files": files, "stats": stats}


def plot_seen_unseen_scatter(table: pd.DataFrame, per_seed: pd.DataFrame | None, out_dir: Path,
                             ours: str | None = None, levels: Iterable[float] | None = None) -> dict[str, Any]:
    """Mean (S, U) per method with sample-std error bars, per-seed points faint, and hIoU iso-curves
    ``U = hS/(2S − h)``."""
    if table is None or table.empty:
        return {"skipped": "no main-method runs"}
    table = table[np.isfinite(table["S_mean"].astype(float)) & np.isfinite(table["U_mean"].astype(float))]
    if table.empty:
        return {"skipped": "no method has both a seen and an unseen mIoU"}
    s_all = list(table["S_mean"])
    u_all = list(table["U_mean"])
    if per_seed is not None and not per_seed.empty:
        per_seed = per_seed.astype({"mIoU_seen": float, "mIoU_unseen": float})
        per_seed = per_seed[np.isfinite(per_seed["mIoU_seen"]) & np.isfinite(per_seed["mIoU_unseen"])]
        s_all += list(per_seed["mIoU_seen"])
        u_all += list(per_seed["mIoU_unseen"])
    lo_s, hi_s = max(0.0, min(s_all) - 10), min(100.0, max(s_all) + 10)
    lo_u, hi_u = max(0.0, min(u_all) - 10), min(100.0, max(u_all) + 10)
    if levels is None:
        h = [v for v in table["hIoU_mean"] if np.isfinite(v)] or [50.0]
        step = 10.0 if max(h) - min(h) > 20 or len(h) == 1 else 5.0
        levels = np.arange(step, 100.0, step)
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    levels = [float(v) for v in levels]
    s_grid = np.linspace(max(lo_s, 1e-6), hi_s, 400)
    drawn = []
    for h in levels:
        u = iso_hiou(h, s_grid)
        ok = np.isfinite(u) & (u >= lo_u) & (u <= hi_u)
        if ok.sum() < 2:
            continue
        ax.plot(s_grid[ok], u[ok], color="lightgrey", lw=0.9, zorder=1)
        k = np.flatnonzero(ok)[len(np.flatnonzero(ok)) // 2]
        ax.text(s_grid[k], u[k], f"h={h:g}", fontsize=7, color="grey", zorder=1)
        drawn.append(h)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (_, r) in enumerate(table.iterrows()):
        c = colors[i % len(colors)]
        if per_seed is not None and not per_seed.empty:
            ps = per_seed[per_seed["method"] == r["method"]]
            ax.scatter(ps["mIoU_seen"], ps["mIoU_unseen"], color=c, alpha=0.35, s=14, zorder=2)
        xe = 0 if np.isnan(r["S_std"]) else r["S_std"]
        ye = 0 if np.isnan(r["U_std"]) else r["U_std"]
        marker = "*" if ours and r["method"] == ours else "o"
        ax.errorbar(r["S_mean"], r["U_mean"], xerr=xe, yerr=ye, fmt=marker, color=c, ms=10 if marker == "*" else 6,
                    capsize=3, zorder=3, label=f"{r['display']} (hIoU {r['hIoU_mean']:.1f})")
    ax.set_xlim(lo_s, hi_s)
    ax.set_ylim(lo_u, hi_u)
    ax.set_xlabel("seen mIoU S (%)")
    ax.set_ylabel("unseen mIoU U (%)")
    ax.set_title("Seen vs unseen mIoU; grey: hIoU iso-curves")
    ax.legend(loc="best", fontsize=8, title="mean ± std over seeds")
    files = save_figure(fig, out_dir, "seen_unseen_scatter")
    gaps = {r["method"]: float(r["S_mean"] - r["U_mean"]) for _, r in table.iterrows()}
    return {"files": files, "stats": {"levels": drawn, "seen_minus_unseen": gaps}}


def plot_su_curves(curves: dict[str, list[dict]], names: dict[str, str], out_dir: Path,
                   ours: str | None = None) -> dict[str, Any]:
    """Seen–unseen curves of a constant seen-score offset γ (one line per run, a method's seeds in one
    colour of the colour-blind-safe palette), the γ = 0 operating points marked, hIoU iso-curves in grey.
    ``curves``: method -> list of the runs' ``gamma_sweep`` dicts (metric JSON)."""
    import seaborn as sns

    curves = {m: [c for c in cs if c and c.get("S")] for m, cs in curves.items()}
    curves = {m: cs for m, cs in curves.items() if cs}
    if not curves:
        return {"skipped": "no run has a gamma sweep (evaluate.gamma_points = 0?)"}
    colors = sns.color_palette("colorblind", max(3, len(curves)))
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    s_grid = np.linspace(1e-6, 100.0, 400)
    for h in np.arange(10.0, 100.0, 10.0):
        u = iso_hiou(h, s_grid)
        ok = np.isfinite(u) & (u >= 0) & (u <= 100)
        if ok.sum() >= 2:
            ax.plot(s_grid[ok], u[ok], color="lightgrey", lw=0.8, zorder=1)
    stats = {}
    for i, (m, cs) in enumerate(curves.items()):
        areas = []
        for j, c in enumerate(cs):
            su = np.array([[x if x is not None else np.nan, y if y is not None else np.nan]
                           for x, y in zip(c["S"], c["U"])], dtype=float)
            label = f"{names.get(m, m)} (AUSUC {np.nanmean([d.get('ausuc') or np.nan for d in cs]):.3f})" \
                if j == 0 else None
            ax.plot(su[:, 0], su[:, 1], color=colors[i], lw=1.6 if m == ours else 1.0, alpha=0.85, zorder=2,
                    label=label)
            g = [str(x) for x in c["gammas"]]
            if "0.0" in g:
                k = g.index("0.0")
                ax.scatter([su[k, 0]], [su[k, 1]], color=colors[i], s=18, zorder=3)
            areas.append(c.get("ausuc"))
        stats[m] = {"ausuc_per_run": areas, "runs": len(cs)}
    top = max([v for cs in curves.values() for c in cs for v in list(c["S"]) + list(c["U"])
               if v is not None and np.isfinite(v)] or [90.0])
    ax.set_xlim(0, min(100.0, top + 10))
    ax.set_ylim(0, min(100.0, top + 10))
    ax.set_xlabel("seen mIoU S (%)")
    ax.set_ylabel("unseen mIoU U (%)")
    ax.set_title("Seen-unseen curves of a seen-score offset; dots: γ = 0")
    ax.legend(loc="best", fontsize=7)
    files = save_figure(fig, out_dir, "su_curves")
    return {"files": files, "stats": stats}


def plot_train_curves(curve_files: list[Path], method: str, display: str, out_dir: Path) -> dict[str, Any]:
    """Every logged loss term of a method against the iteration, mean over its seeds (``train_curve.csv``
    of each run, written by the pipeline from mmengine's visualisation backend)."""
    import seaborn as sns

    frames = [pd.read_csv(f) for f in curve_files if Path(f).is_file()]
    frames = [f for f in frames if not f.empty and "step" in f]
    if not frames:
        return {"skipped": f"{method}: no train_curve.csv (training-free, or trained outside the pipeline)"}
    data = pd.concat(frames, ignore_index=True)
    terms = [c for c in data.columns if "loss" in c]
    mean = data.groupby("step")[terms].mean()
    colors = sns.color_palette("colorblind", max(3, len(terms)))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for c, color in zip(terms, colors):
        ax.plot(mean.index, mean[c], marker="o", ms=3, lw=2.0 if c == "loss" else 1.0, color=color, label=c)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (logged mean)")
    ax.set_title(f"Training losses, {display} (mean over {len(frames)} seed(s))")
    ax.legend(fontsize=7, ncol=2)
    stem = "train_curves_" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in method)
    files = save_figure(fig, out_dir, stem)
    last = mean.iloc[-1]
    return {"files": files, "stats": {"method": method, "n_runs": len(frames), "steps": [int(x) for x in mean.index],
                                      "final": {c: float(last[c]) for c in terms}}}


def plot_qualitative(folders: dict[str, Path], names: dict[str, str], classes: list[str], unseen: list[str],
                     out_dir: Path) -> dict[str, Any]:
    """Fixed test images (chosen by the pipeline's rule, where seen and unseen classes meet most) in rows;
    columns: the image, its ground truth and each method's prediction (its lowest seed), label maps drawn
    with mmseg's ``SegLocalVisualizer`` over the image, the ground truth's unseen regions outlined (white
    over black, visible on any colour); each row is labelled with its ground-truth classes (unseen *)."""
    import seaborn as sns

    folders = {m: f for m, f in folders.items() if f.is_dir() and list(f.glob("*_pred.png"))}
    if not folders:
        return {"skipped": "no run saved qualitative predictions (evaluate.qualitative = 0?)"}
    from mmengine.structures import PixelData
    from mmseg.visualization import SegLocalVisualizer
    from PIL import Image
    import torch

    first = next(iter(folders.values()))
    stems = sorted(p.name[:-len("_pred.png")] for p in first.glob("*_pred.png"))
    palette = [tuple(int(255 * c) for c in rgb) for rgb in sns.color_palette("husl", len(classes))]
    vis = SegLocalVisualizer(name=f"qualitative-{id(out_dir)}", alpha=0.7)
    unseen_ids = [classes.index(c) for c in unseen if c in classes]
    cols = ["image", "ground truth"] + [names.get(m, m) for m in folders]
    fig, axes = plt.subplots(len(stems), len(cols), figsize=(1.9 * len(cols), 1.9 * len(stems)), squeeze=False)

    def draw(img, label):
        return vis._draw_sem_seg(img.copy(), PixelData(data=torch.from_numpy(label.astype(np.int64))[None]),
                                 classes, palette, with_labels=False)

    for i, stem in enumerate(stems):
        img = np.asarray(Image.open(first / f"{stem}_image.png").convert("RGB"))
        gt = np.asarray(Image.open(first / f"{stem}_gt.png"))
        panels = [img, draw(img, np.where(gt == 255, 0, gt))]
        for m, f in folders.items():
            pred = f / f"{stem}_pred.png"
            panels.append(draw(img, np.asarray(Image.open(pred))) if pred.is_file() else np.zeros_like(img))
        outline = np.isin(gt, unseen_ids).astype(float)
        for j, panel in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(panel, interpolation="nearest")
            if j > 0 and outline.any():
                ax.contour(outline, levels=[0.5], colors="black", linewidths=2.0)
                ax.contour(outline, levels=[0.5], colors="white", linewidths=0.9)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                present = [int(c) for c in np.unique(gt) if c != 255 and int(c) < len(classes)]
                ax.set_ylabel("\n".join(classes[c] + (" *" if c in unseen_ids else "") for c in present),
                              fontsize=6, rotation=0, ha="right", va="center")
            if i == 0:
                ax.set_title(cols[j], fontsize=7)
    fig.suptitle("Qualitative results; outline: unseen classes in the ground truth (* in the row labels)",
                 fontsize=8)
    files = save_figure(fig, out_dir, "qualitative")
    return {"files": files, "stats": {"images": stems, "methods": list(folders)}}


def plot_ablation_forest(abl: pd.DataFrame, out_dir: Path) -> dict[str, Any]:
    """The ablation as a forest plot: per row, Δ hIoU and Δ unseen mIoU against the parent with the 95 %
    interval of the paired per-seed differences; the zero line is 'no difference'."""
    import seaborn as sns

    if abl is None or abl.empty or "delta_U" not in abl:
        return {"skipped": "no ablation table"}
    rows = abl[abl["kind"] != "parent"].reset_index(drop=True)
    if rows.empty:
        return {"skipped": "no ablation row besides the parent"}
    colors = sns.color_palette("colorblind", 2)
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 0.45 * len(rows) + 1.4), sharey=True)
    y = np.arange(len(rows))[::-1]
    stats = {}
    for ax, (col, label), color in zip(axes, (("hIoU", "Δ hIoU"), ("U", "Δ unseen mIoU")), colors):
        mean = rows[f"delta_{col}"].to_numpy(dtype=float)
        half = rows[f"delta_{col}_ci95"].to_numpy(dtype=float)
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.errorbar(mean, y, xerr=np.where(np.isfinite(half), half, 0.0), fmt="o", color=color, capsize=3)
        ax.set_xlabel(f"{label} vs parent (points)")
        for r, m, h in zip(rows["variant"], mean, half):
            stats.setdefault(r, {})[col] = {"delta": float(m), "ci95": float(h),
                                            "significant": bool(np.isfinite(h) and abs(m) > h)}
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(rows["label"])
    fig.suptitle("Ablation against the parent: mean ± 95 % paired interval over seeds", fontsize=9)
    files = save_figure(fig, out_dir, "ablation_forest")
    return {"files": files, "stats": stats}


# --------------------------------------------------------------------------------------------- driver
def make_all(runs, table: pd.DataFrame, pmean: pd.DataFrame, shares: dict[str, dict[str, Any]],
             out_dir: str | Path, settings, ablation: pd.DataFrame | None = None) -> dict[str, Any]:
    """Every figure for the runs of ``analysis.tables``; returns {figure id: {title, files, stats} or skipped}.

    ``files`` are relative to the analysis folder (``figures/<name>``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = dict(settings.names)
    main_runs = [r for r in runs if r.group == "main"]
    methods = list(table["method"]) if table is not None and not table.empty else []
    figures: dict[str, Any] = {}

    def record(fid: str, title: str, res: dict[str, Any]) -> None:
        if "skipped" in res:
            log.info("figure %s skipped: %s", fid, res["skipped"])
            figures[fid] = {"title": title, "skipped": res["skipped"]}
        else:
            figures[fid] = {"title": title, "files": [f"{out_dir.name}/{f}" for f in res["files"]],
                            "stats": res["stats"]}

    for m in methods:
        record(f"per_class_iou/{m}", f"Per-class IoU, {names.get(m, m)}",
               plot_per_class_iou(pmean, m, names.get(m, m), out_dir))
    for m in methods:
        title = f"Unseen→seen confusion, {names.get(m, m)}"
        if m in shares:
            record(f"unseen_to_seen/{m}", title,
                   plot_unseen_to_seen(shares[m], m, names.get(m, m), out_dir, settings.top_k))
        else:
            record(f"unseen_to_seen/{m}", title, {"skipped": f"{m}: no confusion matrix in the metric JSON"})

    scores: dict[str, dict[str, list]] = {}
    indicator: dict[str, list] = {}
    for r in main_runs:
        if r.scores_path is None:
            continue
        data = load_scores(r.scores_path)
        if "top_seen" in data:
            acc = scores.setdefault(r.method, {"top_seen": [], "top_unseen": []})
            acc["top_seen"].append(data["top_seen"].ravel())
            acc["top_unseen"].append(data["top_unseen"].ravel())
        if "indicator_prob" in data:
            indicator.setdefault(r.method, []).append((data["indicator_prob"], data["indicator_is_unseen"]))
    missing = sorted({r.method for r in main_runs if r.scores_path is None})
    if missing:
        log.info("no scores.npz for some runs of: %s", ", ".join(missing))
    pooled = {m: {k: np.concatenate(v) for k, v in d.items()} for m, d in scores.items()}
    pooled = {m: pooled[m] for m in methods if m in pooled}
    record("score_distributions", "Top seen vs top unseen scores on unseen pixels",
           plot_score_distributions(pooled, names, out_dir))
    record("indicator_roc", "Class indicator ROC",
           plot_indicator_roc({m: indicator[m] for m in methods if m in indicator}, names, out_dir))
    per_seed = None
    if main_runs:
        per_seed = pd.DataFrame([{"method": r.method, "seed": r.seed, "mIoU_seen": r.metrics["mIoU_seen"],
                                  "mIoU_unseen": r.metrics["mIoU_unseen"]} for r in main_runs])
    record("seen_unseen_scatter", "Seen vs unseen mIoU with hIoU iso-curves",
           plot_seen_unseen_scatter(table, per_seed, out_dir, settings.ours))
    record("su_curves", "Seen-unseen curves of a constant seen-score offset (calibrated stacking)",
           plot_su_curves({m: [r.metrics.get("gamma_sweep") for r in main_runs if r.method == m] for m in methods},
                          names, out_dir, settings.ours))
    for m in methods:
        files = [Path(r.path).parent / "train_curve.csv" for r in main_runs if r.method == m]
        if any(f.is_file() for f in files):
            record(f"train_curves/{m}", f"Training losses, {names.get(m, m)}",
                   plot_train_curves(files, m, names.get(m, m), out_dir))
    q_folders = {}
    for m in methods:
        mine = sorted((r for r in main_runs if r.method == m), key=lambda r: r.seed)
        if mine:
            q_folders[m] = Path(mine[0].path).parent / "qualitative"
    if any(f.is_dir() for f in q_folders.values()) and main_runs:
        pc = main_runs[0].metrics.get("per_class") or []
        record("qualitative", "Qualitative results on fixed test images",
               plot_qualitative(q_folders, names, [r["class"] for r in pc],
                                [r["class"] for r in pc if r["split"] == "unseen"], out_dir))
    if ablation is not None and not ablation.empty:
        record("ablation_forest", "Ablation: Δ hIoU and Δ unseen mIoU against the parent",
               plot_ablation_forest(ablation, out_dir))
    return figures
