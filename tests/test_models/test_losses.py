"""Mask losses and point sampling against hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

from alignzeg.models.losses import (MaskClassificationLoss, batch_dice_cost, batch_sigmoid_ce_cost,
                                    calculate_uncertainty, dice_loss, get_uncertain_point_coords_with_randomness,
                                    pixel_centre_coords, point_sample, sem_seg_to_mask_targets, sigmoid_ce_loss)
from alignzeg.models.matcher import HungarianMatcher


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_dice_and_bce_hand_computed():
    x = torch.tensor([[0.0, 2.0, -1.0, 3.0]])
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    p = [_sig(v) for v in (0.0, 2.0, -1.0, 3.0)]
    inter = p[0] + p[1]
    dice = 1 - (2 * inter + 1) / (sum(p) + 2 + 1)
    assert dice_loss(x, t, num_masks=1).item() == pytest.approx(dice, rel=1e-6)
    assert dice_loss(x.repeat(2, 1), t.repeat(2, 1), num_masks=4).item() == pytest.approx(dice / 2, rel=1e-6)
    bce = -(math.log(p[0]) + math.log(p[1]) + math.log(1 - p[2]) + math.log(1 - p[3])) / 4
    assert sigmoid_ce_loss(x, t, num_masks=1).item() == pytest.approx(bce, rel=1e-6)
    assert sigmoid_ce_loss(x.repeat(3, 1), t.repeat(3, 1), num_masks=3).item() == pytest.approx(bce, rel=1e-6)
    # pairwise costs equal the per-pair losses
    xs = torch.randn(3, 10)
    ts = (torch.rand(2, 10) > 0.5).float()
    for i in range(3):
        for j in range(2):
            assert batch_dice_cost(xs, ts)[i, j].item() == pytest.approx(dice_loss(xs[i:i + 1], ts[j:j + 1], 1).item(), rel=1e-5)
            assert batch_sigmoid_ce_cost(xs, ts)[i, j].item() == pytest.approx(
                sigmoid_ce_loss(xs[i:i + 1], ts[j:j + 1], 1).item(), rel=1e-5)


def test_point_sample_is_manual_bilinear_interpolation():
    img = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)  # H=3, W=4
    # (x, y) in [0,1]; pixel centre of column j at (j+0.5)/W
    coords = torch.tensor([[[0.5 / 4, 0.5 / 3], [2.5 / 4, 1.5 / 3], [0.5, 0.5], [0.3, 0.7]]])
    out = point_sample(img, coords)
    assert out.shape == (1, 1, 4)

    def manual(x, y):
        px, py = x * 4 - 0.5, y * 3 - 0.5  # continuous pixel index
        x0, y0 = math.floor(px), math.floor(py)
        ax, ay = px - x0, py - y0
        val = 0.0
        for yy, wy in ((y0, 1 - ay), (y0 + 1, ay)):
            for xx, wx in ((x0, 1 - ax), (x0 + 1, ax)):
                if 0 <= yy < 3 and 0 <= xx < 4:  # zero padding outside
                    val += wy * wx * img[0, 0, yy, xx].item()
        return val

    expected = [manual(x, y) for x, y in coords[0].tolist()]
    assert out[0, 0].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert out[0, 0, 0].item() == pytest.approx(0.0, abs=1e-5) and out[0, 0, 1].item() == pytest.approx(6.0)
    # grid form and pixel-centre coordinates reproduce the image exactly
    full = point_sample(img, pixel_centre_coords(3, 4))
    assert torch.allclose(full.reshape(1, 1, 3, 4), img, atol=1e-5)


def test_uncertain_point_coords():
    torch.manual_seed(0)
    xs = (torch.arange(8) + 0.5) / 8
    logits = ((xs - 0.5) * 20).expand(2, 1, 8, 8).contiguous()  # |logit| grows with |x - 0.5|
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 40, 3.0, 0.75)
    assert coords.shape == (2, 40, 2)
    assert coords.min() >= 0 and coords.max() <= 1
    important = coords[:, :30, 0]  # the 30 most uncertain are nearest the boundary
    assert (important - 0.5).abs().mean() < (coords[:, 30:, 0] - 0.5).abs().mean() + 0.1
    assert (important - 0.5).abs().max() < 0.25
    with pytest.raises(ValueError, match="oversample_ratio"):
        get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 4, 0.5, 0.75)


def test_sem_seg_to_mask_targets():
    seg = torch.tensor([[0, 0, 255], [2, 2, 0]])
    t = sem_seg_to_mask_targets(seg)
    assert t["labels"].tolist() == [0, 2]
    assert t["masks"].tolist() == [[[True, True, False], [False, False, True]],
                                   [[False, False, False], [True, True, False]]]
    with pytest.raises(ValueError, match="outside 0..1"):
        sem_seg_to_mask_targets(seg, num_classes=2)


def test_mask_classification_loss_values_and_deep_supervision_names():
    left = torch.zeros(4, 4, dtype=torch.bool)
    left[:, :2] = True
    right = ~left
    targets = [dict(labels=torch.tensor([1, 0]), masks=torch.stack([left, right]))]
    # 3 queries, C = 2 (+ no-object); query 0 -> right (class 0), query 2 -> left (class 1)
    pred_masks = torch.stack([right.float(), torch.zeros(4, 4), left.float()])[None] * 20 - 10
    pred_logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 3.0, 0.0]]])
    crit = MaskClassificationLoss(HungarianMatcher(2.0, 5.0, 5.0, num_points=None), loss_cls_weight=2.0,
                                  loss_mask_weight=5.0, loss_dice_weight=5.0, eos_coef=0.1, num_points=None)
    out = dict(pred_logits=pred_logits, pred_masks=pred_masks,
               aux_outputs=[dict(pred_logits=pred_logits, pred_masks=pred_masks),
                            dict(pred_logits=pred_logits.flip(1), pred_masks=pred_masks.flip(1))])
    losses = crit(out, targets)
    assert set(losses) == {"loss_cls", "loss_mask", "loss_dice", "d0.loss_cls", "d0.loss_mask", "d0.loss_dice",
                           "d1.loss_cls", "d1.loss_mask", "d1.loss_dice"}
    # hand-computed weighted cross-entropy: targets [0, 2(no-object), 1], weights [1, 0.1, 1]
    lsm = pred_logits[0].log_softmax(-1)
    nll = [-lsm[0, 0], -lsm[1, 2], -lsm[2, 1]]
    w = [1.0, 0.1, 1.0]
    ce = sum(wi * li for wi, li in zip(w, nll)) / sum(w)
    assert losses["loss_cls"].item() == pytest.approx(2.0 * ce.item(), rel=1e-5)
    assert losses["d1.loss_cls"].item() == pytest.approx(losses["loss_cls"].item(), rel=1e-5)  # same after matching
    # masks at ±10 logits: BCE = log(1+e^-10) per point, dice near 0
    assert losses["loss_mask"].item() == pytest.approx(5.0 * math.log1p(math.exp(-10)), rel=1e-2)  # float32 log1p
    p = _sig(10.0)
    per_mask = 1 - (2 * 8 * p + 1) / (8 * p + 8 * (1 - p) + 8 + 1)
    assert losses["loss_dice"].item() == pytest.approx(5.0 * per_mask, rel=1e-3)
    # gradients flow; sampled points give finite losses; class count read from pred_logits
    pred_masks.requires_grad_(True)
    crit_s = MaskClassificationLoss(HungarianMatcher(num_points=32), num_points=16)
    ls = crit_s(dict(pred_logits=torch.randn(1, 3, 6), pred_masks=pred_masks), targets)
    sum(ls.values()).backward()
    assert pred_masks.grad is not None and torch.isfinite(pred_masks.grad).all()


def test_mask_classification_loss_no_targets_and_errors():
    crit = MaskClassificationLoss(HungarianMatcher(num_points=None), num_points=None, eos_coef=0.1)
    logits = torch.randn(2, 3, 4, requires_grad=True)
    masks = torch.randn(2, 3, 4, 4, requires_grad=True)
    empty = dict(labels=torch.zeros(0, dtype=torch.long), masks=torch.zeros(0, 4, 4, dtype=torch.bool))
    losses = crit(dict(pred_logits=logits, pred_masks=masks), [empty, empty])
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    expected = 2.0 * F.cross_entropy(logits.transpose(1, 2), torch.full((2, 3), 3))  # all no-object
    assert losses["loss_cls"].item() == pytest.approx(expected.item(), rel=1e-5)
    sum(losses.values()).backward()
    with pytest.raises(KeyError, match="pred_masks"):
        crit(dict(pred_logits=logits), [empty, empty])
    with pytest.raises(ValueError, match="num_points"):
        MaskClassificationLoss(HungarianMatcher(), num_points=0)
