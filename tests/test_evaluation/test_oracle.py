"""Oracle ceilings: ground-truth segments classified by the CLIP, with and without calibration."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alignzeg.evaluation import oracle as O
from alignzeg.evaluation.confusion import metrics_from_confusion


def _labels():
    a = np.zeros((16, 16), np.uint8)
    a[4:10, 4:10] = 2          # class 2 object on class 0 stuff
    b = np.ones((16, 16), np.uint8)
    b[0:8, :] = 0
    b[10:14, 2:6] = 3          # class 3 object on stuff 0 / 1
    return np.stack([a, b])


def test_segment_confusion_equals_painting_the_predictions():
    labels = _labels()
    seg_img = np.array([0, 0, 1, 1, 1])
    seg_cls = np.array([0, 2, 0, 1, 3])
    pred = np.array([0, 3, 1, 1, 2])
    fast = O.ceiling_confusion(labels, seg_img, seg_cls, pred, 4)
    assert np.array_equal(fast, O.check_against_painting(labels, seg_img, seg_cls, pred, 4))
    # by hand: image 0: 220 px of class 0 right, 36 px of class 2 called 3;
    # image 1: 128 px of class 0 called 1, 112 of class 1 right, 16 of class 3 called 2
    assert fast[0, 0] == 256 - 36 and fast[2, 3] == 36 and fast[0, 1] == 128
    assert fast[1, 1] == 128 - 16 and fast[3, 2] == 16 and fast.sum() == 512


def test_calibration_finds_the_unseen_class_a_biased_clip_misses():
    """Hand-made scores: seen classes win by 0.04 on the unseen segments; gamma 0.05 fixes that."""
    labels = _labels()
    seg_img = np.array([0, 0, 1, 1, 1])
    seg_cls = np.array([0, 2, 0, 1, 3])
    classes, unseen = ["sky", "sea", "ball", "kite"], ["ball", "kite"]
    scores = np.full((5, 4), 0.1)
    scores[0, 0] = scores[2, 0] = scores[3, 1] = 0.9          # seen segments: clear, right
    scores[1, 2], scores[1, 0] = 0.50, 0.54                  # ball, but sky scores higher
    scores[4, 3], scores[4, 1] = 0.50, 0.54                  # kite, but sea scores higher
    res = O.ceilings_from_scores(labels, seg_img, seg_cls, scores, classes, unseen,
                                 gammas=(-0.1, 0.0, 0.05, 0.5))
    rec, prop = res["recognition"], res["proposal"]
    assert rec["mIoU_unseen"] == 0.0 and rec["hIoU"] == 0.0
    assert rec["mIoU_seen"] == pytest.approx(100 * (220 + 128) / (220 + 128 + 36) / 2
                                             + 100 * 112 / (112 + 16) / 2)
    assert res["gamma"] == 0.05            # ties (0.5 is as good) go to the smaller correction
    assert prop["mIoU_seen"] == 100.0 and prop["mIoU_unseen"] == 100.0 and prop["hIoU"] == 100.0
    # at gamma 0.5 every seen segment (0.9 - 0.5 = 0.4 > 0.1) still wins: same optimum, larger |gamma|
    assert [c["gamma"] for c in res["gamma_curve"]] == [0.0, 0.05, -0.1, 0.5]
    assert [c["hIoU"] for c in res["gamma_curve"]][1] == [c["hIoU"] for c in res["gamma_curve"]][3] == 100.0
    assert res["num_segments"] == 5
