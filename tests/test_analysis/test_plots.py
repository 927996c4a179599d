"""Plot maths (hIoU iso-curves, rank ROC AUC) against hand values; figures written and parseable."""
from __future__ import annotations

import itertools
import json
import logging
import xml.etree.ElementTree as ET

import matplotlib.image as mpimg
import numpy as np
import pytest

from analysis import plots as P
from analysis import tables as T
from tests.test_analysis.conftest import hiou

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_iso_hiou_curve_has_constant_harmonic_mean():
    s = np.linspace(25.0, 100.0, 50)
    for h in (10.0, 40.0, 49.0):
        u = P.iso_hiou(h, s)
        ok = np.isfinite(u)
        assert ok.all()  # every S > h/2 = at most 24.5
        np.testing.assert_allclose([hiou(a, b) for a, b in zip(s, u)], h, rtol=1e-12)
    assert P.iso_hiou(40.0, 50.0) == pytest.approx(40 * 50 / 60)  # hand: hS/(2S-h)
    assert P.iso_hiou(40.0, 40.0) == pytest.approx(40.0)  # S = U = h on the diagonal
    assert np.isnan(P.iso_hiou(40.0, 20.0)) and np.isnan(P.iso_hiou(40.0, 10.0))


@pytest.mark.parametrize("scores,labels,expected", [
    ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),            # perfectly separated
    ([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0], 0.0),            # reversed
    ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),            # 2 x 2, all tied
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),          # 3 of 4 pairs ordered
    ([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1], 3.5 / 4),        # one tied pair counts one half
])
def test_roc_auc_hand_cases(scores, labels, expected):
    assert P.roc_auc(np.array(scores), np.array(labels)) == pytest.approx(expected)


def test_roc_auc_equals_pair_count_and_curve_area():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 6, 40).astype(float)  # many ties
    y = rng.random(40) < 0.4
    pos, neg = s[y], s[~y]
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, b in itertools.product(pos, neg)]
    auc = P.roc_auc(s, y)
    assert auc == pytest.approx(np.mean(pairs))
    fpr, tpr, thr = P.roc_curve(s, y)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(auc)
    assert np.isnan(P.roc_auc([0.1, 0.2], [1, 1]))
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        P.roc_auc([0.1, 0.2, 0.3], [1, 0])


def _check_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_SIGNATURE, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def _check_svg(path):
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg"), path
    assert path.stat().st_size > 1000


def test_every_figure_written_as_png_and_svg(analysed):
    figures = json.loads((analysed / "figures.json").read_text())
    expected = {"per_class_iou/alignzeg", "per_class_iou/zegclip", "unseen_to_seen/alignzeg",
                "unseen_to_seen/zegclip", "score_distributions", "indicator_roc", "seen_unseen_scatter",
                "su_curves", "ablation_forest", "train_curves/alignzeg", "qualitative"}
    assert set(figures) == expected
    for fid, fig in figures.items():
        assert "skipped" not in fig, fid
        files = fig["files"]
        assert sorted(f.rsplit(".", 1)[1] for f in files) == ["png", "svg"]
        for f in files:
            path = analysed / f
            (_check_png if f.endswith(".png") else _check_svg)(path)
        assert fig["title"] and fig["stats"]


def test_figure_stats_match_inputs(analysed):
    figures = json.loads((analysed / "figures.json").read_text())
    roc = figures["indicator_roc"]["stats"]
    assert set(roc) == {"alignzeg"}  # only AlignZeg's runs carry indicator arrays
    assert roc["alignzeg"]["n_proposals"] == 180 and roc["alignzeg"]["n_seeds"] == 3
    assert 0.5 < roc["alignzeg"]["auc"] <= 1.0
    dist = figures["score_distributions"]["stats"]["zegclip"]
    assert dist["n"] == 1500
    # recompute the pooled share from the npz files
    ts, tu = [], []
    for seed in range(3):
        z = np.load(analysed.parent / "results" / "zegclip" / f"seed{seed}" / "scores.npz")
        ts.append(z["top_seen"]), tu.append(z["top_unseen"])
    assert dist["share_seen_wins"] == pytest.approx(100 * np.mean(np.concatenate(ts) > np.concatenate(tu)))
    scatter = figures["seen_unseen_scatter"]["stats"]
    assert scatter["seen_minus_unseen"]["zegclip"] == pytest.approx(45.0 - 21.0)
    heat = figures["unseen_to_seen/alignzeg"]["stats"]
    assert heat["top_unseen"] in ("cow", "giraffe") and heat["n_runs"] == 3


def test_missing_scores_are_skipped_and_logged(results_no_scores, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="analysis.plots"):
        T.analyse(results_no_scores, tmp_path / "out", T.Settings())
    figures = json.loads((tmp_path / "out" / "figures.json").read_text())
    assert "scores.npz" in figures["score_distributions"]["skipped"]
    assert "indicator" in figures["indicator_roc"]["skipped"]
    assert "files" in figures["seen_unseen_scatter"] and "files" in figures["per_class_iou/maskclip"]
    assert "figure score_distributions skipped" in caplog.text
    assert "figure indicator_roc skipped" in caplog.text


def test_load_scores_checks_paired_lengths(tmp_path):
    path = tmp_path / "scores.npz"
    np.savez(path, top_seen=np.zeros(5), top_unseen=np.zeros(4))
    with pytest.raises(ValueError, match=r"scores\.npz: fields 'top_seen' \(5\) and 'top_unseen' \(4\)"):
        P.load_scores(path)
    np.savez(path, indicator_prob=np.zeros(3))
    with pytest.raises(ValueError, match="'indicator_prob' present without 'indicator_is_unseen'"):
        P.load_scores(path)


def test_real_metric_json_with_undefined_values_plots(tmp_path):
    """A class absent from the evaluation (IoU null) and a method without unseen pixels still plot."""
    from alignzeg.evaluation.confusion import metrics_from_confusion, nan_to_none
    from tests.test_analysis.conftest import write_run

    classes = ["sky", "road", "car", "cow", "giraffe"]
    m = np.array([[50, 2, 0, 0, 0], [3, 40, 0, 0, 0], [0, 0, 0, 0, 0], [6, 0, 0, 20, 4], [0, 5, 0, 5, 30]])
    write_run(tmp_path / "r" / "a" / "seed0", nan_to_none(metrics_from_confusion(m, classes, ["cow", "giraffe"])))
    m2 = m.copy()
    m2[3:, :] = 0  # no unseen ground truth: unseen mIoU, hIoU, unseen_to_seen undefined
    write_run(tmp_path / "r" / "b" / "seed0", nan_to_none(metrics_from_confusion(m2, classes, ["cow", "giraffe"])))
    T.analyse(tmp_path / "r", tmp_path / "out", T.Settings())
    figures = json.loads((tmp_path / "out" / "figures.json").read_text())
    for fid in ("per_class_iou/a", "unseen_to_seen/a", "seen_unseen_scatter", "per_class_iou/b"):
        assert "files" in figures[fid], fid
        _check_png(tmp_path / "out" / figures[fid]["files"][0])
    assert "skipped" in figures["unseen_to_seen/b"]
    assert figures["seen_unseen_scatter"]["stats"]["seen_minus_unseen"].keys() == {"a"}
    from analysis.report import build_report

    text = build_report(tmp_path / "out", tmp_path / "report.md")
    assert "Only one method has a defined hIoU: a" in text and "hIoU is undefined for b" in text


def test_ablation_forest_stats_are_the_paired_differences(analysed):
    """Δ hIoU and Δ U of '+ PBC' against the parent, recomputed from the fixture's per-seed numbers."""
    from tests.test_analysis.conftest import ABLATION, hiou

    stats = json.loads((analysed / "figures.json").read_text())["ablation_forest"]["stats"]
    assert "parent" not in stats and len(stats) == len(ABLATION) - 1
    p, a = ABLATION["parent"][1], ABLATION["add_pbc"][1]
    dh = np.array([hiou(*a[k]) - hiou(*p[k]) for k in (0, 1)])
    du = np.array([a[k][1] - p[k][1] for k in (0, 1)])
    t1 = 12.706204736174707  # two seeds: 1 degree of freedom
    assert stats["add_pbc"]["hIoU"]["delta"] == pytest.approx(dh.mean())
    assert stats["add_pbc"]["hIoU"]["ci95"] == pytest.approx(t1 * dh.std(ddof=1) / np.sqrt(2))
    assert stats["add_pbc"]["U"]["delta"] == pytest.approx(du.mean())
    assert stats["add_pbc"]["U"]["ci95"] == pytest.approx(t1 * du.std(ddof=1) / np.sqrt(2))


def test_train_curves_are_the_mean_over_seeds(analysed):
    stats = json.loads((analysed / "figures.json").read_text())["train_curves/alignzeg"]["stats"]
    assert stats["n_runs"] == 3 and stats["steps"] == [1, 2, 4]
    # loss at step 4 per seed: 10/4 + seed, seeds 0..2 -> mean 3.5; the class term 5/4 in every seed
    assert stats["final"] == {"loss": pytest.approx(3.5), "decode.loss_cls": pytest.approx(1.25)}


def test_qualitative_grid_has_every_saved_image_and_method(analysed):
    q = json.loads((analysed / "figures.json").read_text())["qualitative"]["stats"]
    assert q == {"images": ["img_a", "img_b"], "methods": ["alignzeg", "zegclip"]}
    img = mpimg.imread(analysed / "figures" / "qualitative.png")
    assert img.shape[1] > img.shape[0]  # 4 columns (image, ground truth, two methods), 2 rows
