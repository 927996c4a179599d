"""Synthetic results trees with known numbers for the analysis tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["sky", "road", "car", "tree", "cow", "giraffe"]
UNSEEN = ["cow", "giraffe"]

# per-seed (S, U) of the main methods: 2 methods x 3 paired seeds
MAIN = {
    "alignzeg": {0: (40.0, 30.0), 1: (42.0, 33.0), 2: (41.0, 29.0)},
    "zegclip": {0: (45.0, 20.0), 1: (44.0, 22.0), 2: (46.0, 21.0)},
}

# ablation variants: name -> (switches, {seed: (S, U)})
ABLATION = {
    "parent": ((False, False, False, False), {0: (40.0, 20.0), 1: (41.0, 22.0)}),
    "add_mrpe": ((True, False, False, False), {0: (41.0, 22.0), 1: (41.0, 23.0)}),
    "add_fes": ((False, True, False, False), {0: (40.0, 23.0), 1: (40.0, 24.0)}),
    "add_bds": ((False, False, True, False), {0: (40.0, 21.0), 1: (41.0, 22.0)}),
    "add_pbc": ((False, False, False, True), {0: (38.0, 26.0), 1: (39.0, 27.0)}),
    "minus_mrpe": ((False, True, True, True), {0: (40.0, 28.0), 1: (40.0, 29.0)}),
    "minus_fes": ((True, False, True, True), {0: (41.0, 27.0), 1: (41.0, 27.0)}),
    "minus_bds": ((True, True, False, True), {0: (41.0, 29.0), 1: (41.0, 30.0)}),
    "minus_pbc": ((True, True, True, False), {0: (43.0, 25.0), 1: (43.0, 26.0)}),
    "full": ((True, True, True, True), {0: (41.0, 30.0), 1: (42.0, 31.0)}),
}


def hiou(s: float, u: float) -> float:
    return 2 * s * u / (s + u)


def metric_json(s: float, u: float, seed: int, aacc: float = 80.0, u2s: float | None = None) -> dict:
    """A metric JSON whose top-level numbers are the given ones; per_class and confusion come from a
    random confusion matrix (they feed the plots, not the main-table numbers)."""
    rng = np.random.default_rng(seed)
    n = len(CLASSES)
    mat = rng.integers(0, 30, size=(n, n)) + np.diag(rng.integers(100, 300, size=n))
    tp = np.diag(mat).astype(float)
    gt, pred = mat.sum(1), mat.sum(0)
    per_class = [{"class": c, "split": "unseen" if c in UNSEEN else "seen",
                  "IoU": float(100 * tp[i] / (gt[i] + pred[i] - tp[i])), "Acc": float(100 * tp[i] / gt[i]),
                  "gt_pixels": int(gt[i]), "pred_pixels": int(pred[i])} for i, c in enumerate(CLASSES)]
    return {"mIoU": (4 * s + 2 * u) / 6, "mIoU_seen": s, "mIoU_unseen": u, "hIoU": hiou(s, u), "aAcc": aacc,
            "unseen_to_seen": 10.0 + seed if u2s is None else u2s, "per_class": per_class,
            "confusion": {"classes": CLASSES, "matrix": mat.tolist()}}


def gamma_sweep_json(s: float, u: float) -> dict:
    """A hand-made seen-unseen curve through (s, u) at γ = 0; the val-chosen γ is 1 (S - 10, U + 5)."""
    from alignzeg.evaluation.calibration import ausuc

    S = [s + 10, s + 5, s, s - 10, 0.0]
    U = [0.0, u - 5, u, u + 5, u + 8]
    return {"gammas": ["-inf", -1.0, 0.0, 1.0, "inf"], "S": S, "U": U, "hIoU": [hiou(a, b) for a, b in zip(S, U)],
            "ausuc": ausuc(S, U), "calibrated": {"gamma": 1.0, "S": s - 10, "U": u + 5, "hIoU": hiou(s - 10, u + 5)}}


def write_run(folder: Path, metrics: dict, scores: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zeroshot_metrics.json").write_text(json.dumps(metrics))
    if scores is not None:
        np.savez(folder / "scores.npz", **scores)


def build_results(root: Path) -> Path:
    """MAIN (with scores.npz; indicator arrays for alignzeg) and ABLATION under ``root``."""
    for m, seeds in MAIN.items():
        for seed, (s, u) in seeds.items():
            rng = np.random.default_rng(100 + seed)
            scores = {"top_seen": rng.uniform(0.3, 0.9, 500).astype(np.float32),
                      "top_unseen": rng.uniform(0.1, 0.8, 500).astype(np.float32)}
            if m == "alignzeg":
                y = rng.random(60) < 0.4
                scores["indicator_prob"] = np.clip(0.5 * y + rng.normal(0.3, 0.2, 60), 0, 1)
                scores["indicator_is_unseen"] = y
            write_run(root / m / f"seed{seed}", dict(metric_json(s, u, seed), gamma_sweep=gamma_sweep_json(s, u)),
                      scores)
            if seed == 0:  # saved predictions of two fixed test images (the qualitative figure)
                from PIL import Image

                q = root / m / "seed0" / "qualitative"
                q.mkdir()
                for k, stem in enumerate(("img_a", "img_b")):
                    lab = (np.arange(64).reshape(8, 8) // 11 + k) % len(CLASSES)
                    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(q / f"{stem}_image.png")
                    Image.fromarray(lab.astype(np.uint8)).save(q / f"{stem}_gt.png")
                    Image.fromarray(((lab + (m == "zegclip")) % len(CLASSES)).astype(np.uint8)).save(
                        q / f"{stem}_pred.png")
            if m == "alignzeg":  # a training curve, as the pipeline writes it
                (root / m / f"seed{seed}" / "train_curve.csv").write_text(
                    "step,lr,loss,decode.loss_cls\n" + "".join(
                        f"{k},{0.1 / k},{10.0 / k + seed},{5.0 / k}\n" for k in (1, 2, 4)))
    for v, (sw, seeds) in ABLATION.items():
        vdir = root / "ablation" / v
        vdir.mkdir(parents=True)
        (vdir / "components.json").write_text(json.dumps(dict(zip(("mrpe", "fes", "bds", "pbc"), sw))))
        for seed, (s, u) in seeds.items():
            write_run(vdir / f"seed{seed}", metric_json(s, u, seed))
    return root


NAMES = {"alignzeg": "AlignZeg", "zegclip": "ZegCLIP"}


@pytest.fixture
def results_root(tmp_path: Path) -> Path:
    return build_results(tmp_path / "results")


@pytest.fixture(scope="session")
def analysed(tmp_path_factory) -> Path:
    """The synthetic results analysed once (tables and figures), shared by the read-only tests."""
    from analysis.tables import Settings, analyse

    base = tmp_path_factory.mktemp("analysed")
    root = build_results(base / "results")
    analyse(root, base / "analysis", Settings(names=dict(NAMES), ours="alignzeg", dataset="voc12aug",
                                              calibrated=["zegclip"]))
    return base / "analysis"


@pytest.fixture
def results_no_scores(tmp_path: Path) -> Path:
    """One method with a single seed, no scores.npz, no ablation."""
    root = tmp_path / "results_min"
    write_run(root / "maskclip" / "seed0", metric_json(30.0, 10.0, 0))
    return root


# per-seed (S, U) of five main methods for the "best other method" tests. In display order
# MANY_ORDER, the strongest other method on hIoU (two-stage) and on seen mIoU (zegclip) is neither the
# first nor the last of the others; maskclip is training-free (seed 0 only).
MANY = {
    "alignzeg": {0: (40.0, 30.0), 1: (42.0, 33.0), 2: (41.0, 29.0)},
    "san-parent": {0: (36.0, 28.0), 1: (37.0, 29.0), 2: (35.0, 30.0)},
    "zegclip": {0: (45.0, 20.0), 1: (44.0, 22.0), 2: (46.0, 21.0)},
    "two-stage": {0: (43.0, 27.0), 1: (44.0, 26.0), 2: (42.0, 28.0)},
    "maskclip": {0: (30.0, 10.0)},
}
MANY_ORDER = ["alignzeg", "san-parent", "zegclip", "two-stage", "maskclip"]
MANY_NAMES = {"alignzeg": "AlignZeg", "san-parent": "SAN-style parent", "zegclip": "ZegCLIP",
              "two-stage": "Two-stage (zsseg)", "maskclip": "MaskCLIP"}


def build_many(root: Path) -> Path:
    for m, seeds in MANY.items():
        for seed, (s, u) in seeds.items():
            write_run(root / m / f"seed{seed}", metric_json(s, u, seed))
    return root
