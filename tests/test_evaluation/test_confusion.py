"""Pure metric maths: hand-computed values, NaN handling, hIoU, unseen-to-seen, input checks."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from alignzeg.evaluation.confusion import (confusion_matrix, format_table, harmonic_iou,
                                           metrics_from_confusion, nan_to_none)

CLASSES = ["a", "b", "c", "d"]
UNSEEN = ["c", "d"]

# (gt, pred, count) pixel pairs. By hand, rows = gt, columns = pred:
#        a  b  c  d     gt
#   a  [ 3, 1, 0, 0 ]   4
#   b  [ 1, 4, 0, 0 ]   5
#   c  [ 1, 0, 2, 1 ]   4
#   d  [ 0, 2, 0, 1 ]   3
# pred   5  7  2  2     16 pixels, 10 correct; plus 3 ignored pixels (gt 255).
PAIRS = [(0, 0, 3), (0, 1, 1), (1, 1, 4), (1, 0, 1), (2, 2, 2), (2, 0, 1), (2, 3, 1),
         (3, 3, 1), (3, 1, 2), (255, 2, 2), (255, 3, 1)]
EXPECTED = np.array([[3, 1, 0, 0], [1, 4, 0, 0], [1, 0, 2, 1], [0, 2, 0, 1]])


def _maps():
    gt = np.concatenate([np.full(n, g) for g, _, n in PAIRS]).astype(np.uint8)
    pred = np.concatenate([np.full(n, p) for _, p, n in PAIRS]).astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(gt.size)
    return pred[order].reshape(1, -1), gt[order].reshape(1, -1)


def test_confusion_matrix_numpy_and_torch_match_hand_count():
    pred, gt = _maps()
    np.testing.assert_array_equal(confusion_matrix(pred, gt, 4), EXPECTED)
    m = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), 4)
    assert m.dtype == np.int64
    np.testing.assert_array_equal(m, EXPECTED)


def test_metrics_match_hand_computed_values():
    r = metrics_from_confusion(EXPECTED, CLASSES, UNSEEN)
    # IoU = tp / (gt + pred - tp)
    iou = {"a": 3 / (4 + 5 - 3), "b": 4 / (5 + 7 - 4), "c": 2 / (4 + 2 - 2), "d": 1 / (3 + 2 - 1)}
    acc = {"a": 3 / 4, "b": 4 / 5, "c": 2 / 4, "d": 1 / 3}
    for row in r["per_class"]:
        assert row["IoU"] == pytest.approx(100 * iou[row["class"]])
        assert row["Acc"] == pytest.approx(100 * acc[row["class"]])
        assert row["split"] == ("unseen" if row["class"] in UNSEEN else "seen")
    assert [row["gt_pixels"] for row in r["per_class"]] == [4, 5, 4, 3]
    assert [row["pred_pixels"] for row in r["per_class"]] == [5, 7, 2, 2]
    seen, unseen = 100 * (0.5 + 0.5) / 2, 100 * (0.5 + 0.25) / 2
    assert r["mIoU_seen"] == pytest.approx(50.0)
    assert r["mIoU_unseen"] == pytest.approx(37.5)
    assert r["mIoU"] == pytest.approx(100 * (0.5 + 0.5 + 0.5 + 0.25) / 4)
    assert r["hIoU"] == pytest.approx(2 * seen * unseen / (seen + unseen))
    assert r["aAcc"] == pytest.approx(100 * 10 / 16)
    # unseen gt pixels: c row 4 + d row 3 = 7; predicted as seen (a or b): c->a 1, d->b 2 = 3
    assert r["unseen_to_seen"] == pytest.approx(100 * 3 / 7)
    assert r["confusion"] == {"classes": CLASSES, "matrix": EXPECTED.tolist()}
    assert set(r) == {"mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "aAcc", "unseen_to_seen", "collapsed",
                      "per_class", "confusion", "collapse", "mIoU_unseen_stuff", "mIoU_unseen_objects",
                      "unseen_to_seen_balanced", "seen_to_unseen", "seen_to_unseen_balanced"}
    # no stuff classes named: the breakdown is undefined
    assert math.isnan(r["mIoU_unseen_stuff"]) and math.isnan(r["mIoU_unseen_objects"])
    # c is stuff, d an object: each half of the unseen mIoU by hand
    r2 = metrics_from_confusion(EXPECTED, CLASSES, UNSEEN, stuff=["a", "c"])
    assert r2["mIoU_unseen_stuff"] == pytest.approx(100 * 0.5)
    assert r2["mIoU_unseen_objects"] == pytest.approx(100 * 0.25)
    assert r2["mIoU_unseen"] == r["mIoU_unseen"]


def test_hiou_formula_edge_cases():
    assert harmonic_iou(40.0, 60.0) == pytest.approx(48.0)
    assert harmonic_iou(0.0, 0.0) == 0.0
    assert harmonic_iou(30.0, 0.0) == 0.0
    assert math.isnan(harmonic_iou(30.0, float("nan")))
    # from unrounded values: 2*33.333..*66.666../100 = 44.444..
    assert harmonic_iou(100 / 3, 200 / 3) == pytest.approx(400 / 9)


def test_absent_class_is_nan_and_excluded_from_means():
    m = np.zeros((5, 5), dtype=np.int64)
    m[:4, :4] = EXPECTED
    r = metrics_from_confusion(m, CLASSES + ["e"], UNSEEN)
    e = r["per_class"][4]
    assert math.isnan(e["IoU"]) and math.isnan(e["Acc"])
    assert r["mIoU_seen"] == pytest.approx(50.0)      # e (seen) left out, like mmseg's nanmean
    assert r["mIoU"] == pytest.approx(43.75)


def test_predicted_but_absent_class_has_zero_iou_and_nan_acc():
    m = np.array([[2, 1], [0, 0]])  # class 1 never in gt, predicted once
    r = metrics_from_confusion(m, ["x", "y"], ["y"])
    assert r["per_class"][1]["IoU"] == 0.0
    assert math.isnan(r["per_class"][1]["Acc"])
    assert r["mIoU_seen"] == pytest.approx(100 * 2 / 3)
    assert r["mIoU_unseen"] == 0.0
    assert r["hIoU"] == 0.0
    assert math.isnan(r["unseen_to_seen"])  # no unseen gt pixel


def test_no_unseen_class_present_gives_nan_unseen_and_hiou():
    m = np.array([[2, 0], [0, 0]])
    r = metrics_from_confusion(m, ["x", "y"], ["y"])
    assert math.isnan(r["mIoU_unseen"]) and math.isnan(r["hIoU"])
    assert json.loads(json.dumps(nan_to_none(r)))["hIoU"] is None


def test_input_errors_name_the_problem():
    with pytest.raises(ValueError, match="prediction label 7"):
        confusion_matrix(np.array([7]), np.array([0]), 4)
    with pytest.raises(ValueError, match="ground truth label 9"):
        confusion_matrix(np.array([0]), np.array([9]), 4)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 4)
    with pytest.raises(ValueError, match=r"\['z'\]"):
        metrics_from_confusion(EXPECTED, CLASSES, ["z"])
    with pytest.raises(ValueError, match="does not match"):
        metrics_from_confusion(EXPECTED, CLASSES[:3], [])
    # a prediction of 255 on an ignored pixel is fine
    np.testing.assert_array_equal(confusion_matrix(np.array([255, 1]), np.array([255, 1]), 2),
                                  [[0, 0], [0, 1]])


def test_format_table_lists_every_class_and_the_summary():
    text = format_table(metrics_from_confusion(EXPECTED, CLASSES, UNSEEN))
    assert all(c in text for c in CLASSES)
    assert "hIoU 42.86" in text


def test_importing_evaluation_does_not_import_mmseg():
    code = ("import sys, alignzeg.evaluation as e; e.metrics_from_confusion; "
            "assert 'mmseg' not in sys.modules and 'mmcv' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_balanced_and_reverse_bias_rates_by_hand():
    m = metrics_from_confusion(EXPECTED, CLASSES, UNSEEN)
    # unseen c: 1 of 4 pixels to a seen class, d: 2 of 3; pooled 3/7
    assert m["unseen_to_seen"] == pytest.approx(100 * 3 / 7)
    assert m["unseen_to_seen_balanced"] == pytest.approx(100 * (1 / 4 + 2 / 3) / 2)
    assert m["seen_to_unseen"] == 0.0 and m["seen_to_unseen_balanced"] == 0.0
    # seen a: 2 of 4 pixels to the unseen c, seen b: 1 of 8; pooled 3/12, balanced (1/2 + 1/8)/2
    other = np.array([[2, 0, 2], [0, 7, 1], [1, 0, 5]])
    r = metrics_from_confusion(other, ["a", "b", "c"], ["c"])
    assert r["seen_to_unseen"] == pytest.approx(25.0)
    assert r["seen_to_unseen_balanced"] == pytest.approx(100 * (0.5 + 0.125) / 2)
    assert r["unseen_to_seen"] == pytest.approx(100 / 6) == pytest.approx(r["unseen_to_seen_balanced"])
