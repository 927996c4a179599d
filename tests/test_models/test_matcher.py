"""HungarianMatcher against an independent cost matrix and scipy's linear_sum_assignment."""
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from alignzeg.models.matcher import HungarianMatcher


def _masks_4x4():
    """Three disjoint binary 4×4 regions: left half, top-right quarter, bottom-right quarter."""
    left = torch.zeros(4, 4)
    left[:, :2] = 1
    top_right = torch.zeros(4, 4)
    top_right[:2, 2:] = 1
    bottom_right = torch.zeros(4, 4)
    bottom_right[2:, 2:] = 1
    return left, top_right, bottom_right


def _independent_cost(probs, mask_logits, labels, tgt_masks, wc, wm, wd):
    """Per-pixel cost with plain loops (no shared code with the matcher)."""
    q, k = mask_logits.shape[0], tgt_masks.shape[0]
    cost = np.zeros((q, k))
    for i in range(q):
        p = torch.sigmoid(mask_logits[i]).flatten().double()
        for j in range(k):
            t = tgt_masks[j].flatten().double()
            bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
            dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
            cost[i, j] = -wc * probs[i, labels[j]].item() + wm * bce.item() + wd * dice.item()
    return cost


def test_obvious_assignment_3_queries_2_targets():
    left, top_right, bottom_right = _masks_4x4()
    # query 0 predicts the top-right square, query 1 nothing useful, query 2 the left half
    mask_logits = torch.stack([top_right, bottom_right * 0 - 0.5, left]) * 8 - 4
    logits = torch.tensor([[0.0, 5.0, 0.0, 0.0],   # class 1 (C=3, +no-object)
                           [0.0, 0.0, 0.0, 5.0],   # no object
                           [5.0, 0.0, 0.0, 0.0]])  # class 0
    targets = [dict(labels=torch.tensor([0, 1]), masks=torch.stack([left, top_right]).bool())]
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=None)
    (rows, cols), = matcher(dict(pred_logits=logits[None], pred_masks=mask_logits[None]), targets)
    assert rows.tolist() == [0, 2] and cols.tolist() == [1, 0]
    assert rows.dtype == torch.int64 and cols.dtype == torch.int64

    cost = _independent_cost(logits.softmax(-1), mask_logits, [0, 1], targets[0]["masks"].float(), 2, 5, 5)
    ours = matcher.cost_matrix(logits.softmax(-1), mask_logits, torch.tensor([0, 1]), targets[0]["masks"])
    np.testing.assert_allclose(ours.numpy(), cost, rtol=1e-5, atol=1e-5)
    r, c = linear_sum_assignment(cost)
    assert r.tolist() == rows.tolist() and c.tolist() == cols.tolist()


def test_random_costs_match_scipy_and_sampled_points_agree():
    torch.manual_seed(0)
    b, q, c, k = 2, 6, 5, 3
    logits = torch.randn(b, q, c + 1)
    masks = torch.randn(b, q, 8, 8)
    targets = [dict(labels=torch.randint(0, c, (k,)), masks=torch.rand(k, 8, 8) > 0.5) for _ in range(b)]
    matcher = HungarianMatcher(1.0, 1.0, 1.0, num_points=None)
    out = matcher(dict(pred_logits=logits, pred_masks=masks), targets)
    for i in range(b):
        cost = _independent_cost(logits[i].softmax(-1), masks[i], targets[i]["labels"].tolist(),
                                 targets[i]["masks"].float(), 1.0, 1.0, 1.0)
        r, cc = linear_sum_assignment(cost)
        assert out[i][0].tolist() == r.tolist() and out[i][1].tolist() == cc.tolist()


def test_probabilities_lower_resolution_masks_and_empty_targets():
    left, top_right, _ = _masks_4x4()
    # predictions at 2×2, targets at 4×4: point sampling bridges the resolutions
    pred = torch.tensor([[[-5.0, 5.0], [-5.0, -5.0]], [[5.0, -5.0], [5.0, -5.0]]])
    probs = torch.tensor([[0.1, 0.9], [0.9, 0.1]])
    targets = [dict(labels=torch.tensor([1, 0]), masks=torch.stack([top_right, left]).bool()),
               dict(labels=torch.zeros(0, dtype=torch.long), masks=torch.zeros(0, 4, 4, dtype=torch.bool))]
    out = HungarianMatcher(num_points=64)(dict(pred_probs=torch.stack([probs, probs]),
                                               pred_masks=torch.stack([pred, pred])), targets)
    assert out[0][0].tolist() == [0, 1] and out[0][1].tolist() == [0, 1]
    assert out[1][0].numel() == 0 and out[1][1].numel() == 0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="all be 0"):
        HungarianMatcher(0, 0, 0)
    m = HungarianMatcher(num_points=None)
    with pytest.raises(KeyError, match="pred_logits"):
        m(dict(pred_masks=torch.zeros(1, 2, 4, 4)), [dict(labels=torch.tensor([0]), masks=torch.ones(1, 4, 4))])
    with pytest.raises(ValueError, match="out of range"):
        m(dict(pred_logits=torch.zeros(1, 2, 3), pred_masks=torch.zeros(1, 2, 4, 4)),
          [dict(labels=torch.tensor([5]), masks=torch.ones(1, 4, 4))])
