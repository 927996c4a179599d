"""Collapsed predictions are detected by the metric, not averaged away (hand-built confusion matrices)."""
from __future__ import annotations

import numpy as np
import pytest

from alignzeg.evaluation.confusion import COLLAPSE_MIN_MIOU, collapse_report, metrics_from_confusion

CLASSES = ["sky", "grass", "red circle", "blue square"]
UNSEEN = ["blue square"]


def test_healthy_run_is_not_collapsed():
    m = np.diag([400, 300, 200, 100])
    m[3, 2] = 50  # some unseen pixels taken by a seen class: bias, not collapse
    out = metrics_from_confusion(m, CLASSES, UNSEEN)
    assert out["collapsed"] == 0.0 and out["collapse"]["reasons"] == []
    assert out["collapse"]["top_class"] == "sky"
    assert out["collapse"]["top_share"] == pytest.approx(400 / 1050)


def test_one_class_painted_everywhere_is_collapsed():
    # most pixels are predicted as 'blue square' (unseen): 80 + 80 + 60 + 100 = 320 of 400
    m = np.array([[20, 0, 0, 80],
                  [0, 20, 0, 80],
                  [0, 0, 40, 60],
                  [0, 0, 0, 100]])
    out = metrics_from_confusion(m, CLASSES, UNSEEN)
    rep = out["collapse"]
    assert out["collapsed"] == 1.0 and rep["top_class"] == "blue square"
    assert rep["top_share"] == pytest.approx(320 / 400)
    assert rep["top_gt_share"] == pytest.approx(100 / 400)
    assert any("'blue square' predicted on 80.0% of the pixels (ground truth 25.0%)" in r for r in rep["reasons"])


def test_large_true_class_is_not_collapse():
    # 'sky' covers 70 % of the ground truth and is predicted there: a big class, correctly predicted
    m = np.diag([700, 100, 100, 100])
    rep = collapse_report(m, CLASSES, 100.0, 100.0, np.array([False, False, False, True]))
    assert not rep["collapsed"] and rep["top_share"] == pytest.approx(0.7)


def test_near_zero_seen_or_unseen_miou_is_collapse():
    m = np.diag([100, 100, 100, 0])
    m[3, 0] = 100  # no unseen pixel right: unseen mIoU 0
    out = metrics_from_confusion(m, CLASSES, UNSEEN)
    assert out["mIoU_unseen"] == 0.0 and out["collapsed"] == 1.0
    assert out["collapse"]["reasons"] == [f"unseen mIoU 0.00 < {COLLAPSE_MIN_MIOU}"]


def test_tables_flag_collapsed_runs():
    pd = pytest.importorskip("pandas")
    from analysis.tables import Run, main_table, main_table_markdown, tidy_runs

    good = metrics_from_confusion(np.diag([400, 300, 200, 100]), CLASSES, UNSEEN)
    bad = metrics_from_confusion(np.array([[20, 0, 0, 80], [0, 20, 0, 80], [0, 0, 40, 60], [0, 0, 0, 100]]),
                                 CLASSES, UNSEEN)
    runs = [Run(group="main", method="a", seed=0, metrics=good, path=None),
            Run(group="main", method="a", seed=1, metrics=bad, path=None),
            Run(group="main", method="b", seed=0, metrics=good, path=None)]
    tidy = tidy_runs(runs)
    table = main_table(tidy).set_index("method")
    assert table.loc["a", "n_collapsed"] == 1 and table.loc["b", "n_collapsed"] == 0
    md = main_table_markdown(main_table(tidy))
    assert "| 2 (⚠ 1 collapsed) |" in md and "bug to explain" in md
    assert isinstance(tidy, pd.DataFrame)
