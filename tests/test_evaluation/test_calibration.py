"""The γ sweep (calibrated stacking): one pass gives what re-predicting at every γ gives."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignzeg.evaluation.calibration import (ausuc, best_gamma, curve_from_confusions, gamma_grid, margins_of,
                                             sweep_confusions)
from alignzeg.evaluation.confusion import metrics_from_confusion

CLASSES = ["a", "b", "c", "d", "e"]
UNSEEN = ["d", "e"]
SEEN = torch.tensor([True, True, True, False, False])


def _brute(scores, gt, gammas, ignore=255):
    """Predict again at every γ (±inf replaced by ±1e6: the best seen / best unseen class wins)."""
    out = []
    for g in gammas:
        g = 1e6 if g == math.inf else (-1e6 if g == -math.inf else g)
        pred = (scores.double() - g * SEEN.double()[:, None, None]).argmax(0)
        m = np.zeros((5, 5), np.int64)
        for t, p in zip(gt.flatten().tolist(), pred.flatten().tolist()):
            if t != ignore:
                m[t, p] += 1
        out.append(m)
    return np.stack(out)


@pytest.fixture
def case():
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(5, 6, 7, generator=gen)
    gt = torch.randint(0, 5, (6, 7), generator=gen)
    gt[0, :3] = 255
    return scores, gt


def test_sweep_equals_predicting_again_at_every_gamma(case):
    scores, gt = case
    gammas = gamma_grid(margins_of(scores, SEEN), num=9, extra=[0.25])
    assert gammas[0] == -math.inf and gammas[-1] == math.inf and 0.0 in gammas and 0.25 in gammas
    mats = sweep_confusions(scores, gt, SEEN, gammas)
    np.testing.assert_array_equal(mats, _brute(scores, gt, gammas))
    # γ = 0 is the plain argmax; every labelled pixel is counted once per γ
    plain = _brute(scores, gt, [0.0])[0]
    np.testing.assert_array_equal(mats[list(gammas).index(0.0)], plain)
    assert (mats.sum((1, 2)) == int((gt != 255).sum())).all()
    # the ends: only seen classes, only unseen classes predicted
    assert mats[0][:, 3:].sum() == 0 and mats[-1][:, :3].sum() == 0


def test_ties_go_to_the_lower_class_index_as_argmax():
    scores = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.5, 0.0], [0.0, 0.0]])[:, :, None]  # 5×2×1
    gt = torch.tensor([[0], [3]])
    gammas = [0.5, 0.0]  # pixel 0: seen 'a' 1.0 - 0.5 == unseen 'd' 0.5 -> 'a' (index 0 < 3)
    np.testing.assert_array_equal(sweep_confusions(scores, gt, SEEN, gammas), _brute(scores, gt, gammas))


def test_curve_matches_the_metric_of_each_matrix(case):
    scores, gt = case
    gammas = gamma_grid(margins_of(scores, SEEN), num=7)
    mats = sweep_confusions(scores, gt, SEEN, gammas)
    curve = curve_from_confusions(mats, SEEN.numpy())
    for i, m in enumerate(mats):
        ref = metrics_from_confusion(m, CLASSES, UNSEEN)
        for key in ("S", "U", "hIoU"):
            name = {"S": "mIoU_seen", "U": "mIoU_unseen", "hIoU": "hIoU"}[key]
            assert curve[key][i] == pytest.approx(ref[name], abs=1e-9) or (
                math.isnan(curve[key][i]) and math.isnan(ref[name]))


def test_ausuc_and_best_gamma_on_hand_made_curves():
    assert ausuc([0, 50, 100], [100, 50, 0]) == pytest.approx(0.5)
    assert ausuc([0, 100], [100, 0]) == pytest.approx(0.5)
    # the path (80, 0) -> (40, 30) -> (40, 60) -> (0, 60): a vertical step adds nothing
    assert ausuc([0, 40, 40, 80], [60, 60, 30, 0]) == pytest.approx(0.4 * 0.6 + 0.4 * 0.3 / 2)  # 0.30
    assert math.isnan(ausuc([10], [10]))
    assert best_gamma([-math.inf, -1, 0, 1, math.inf], [0, 5, 7, 7, 9]) == 0.0  # ±inf never; tie -> nearest 0
    assert best_gamma([-2, 2, 1], [3, 3, 1]) == -2.0  # equal hIoU and distance: the smaller γ
    assert best_gamma([math.inf], [5]) == 0.0
