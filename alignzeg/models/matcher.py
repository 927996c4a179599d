"""Hungarian matching of mask proposals to ground-truth masks.

Follows the matcher of Mask2Former (Cheng et al., CVPR 2022; github.com/facebookresearch/Mask2Former,
MIT licence, ``mask2former/modeling/matcher.py``), itself after DETR (Carion et al., ECCV 2020): the cost
of assigning query ``q`` to target ``k`` is

    cost_class · (−p_q(label_k)) + cost_mask · BCE(m_q, t_k) + cost_dice · Dice(m_q, t_k),

with the mask terms evaluated on the same uniformly random points for predictions and targets, then
solved with :func:`scipy.optimize.linear_sum_assignment`. Written from the paper and that repository's
description. Differences: class probabilities may be given directly (``pred_probs``) for heads whose
scores are not a softmax over C+1 logits; ``num_points=None`` uses every target pixel (deterministic).

Pure PyTorch + SciPy; no mmseg import.
"""
from __future__ import annotations

from typing import Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from alignzeg.models.losses import batch_dice_cost, batch_sigmoid_ce_cost, pixel_centre_coords, point_sample

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    """One-to-one assignment between Q predictions and K targets per image (K ≤ Q usually).

    Args:
        cost_class: weight of the classification cost (Mask2Former: 2.0).
        cost_mask: weight of the sigmoid binary cross-entropy mask cost (5.0).
        cost_dice: weight of the dice mask cost (5.0).
        num_points: random points shared by predictions and targets for the mask costs (12544);
            ``None`` = every pixel centre of the target masks.

    ``forward(outputs, targets)``: ``outputs`` is a dict with ``pred_masks`` (B×Q×h×w mask logits) and
    either ``pred_logits`` (B×Q×(C+1) logits, softmax over the last dim, last column "no object") or
    ``pred_probs`` (B×Q×C' class probabilities used as they are, C' ≥ the largest target label + 1).
    ``targets`` is a list of B ``dict(labels=K_b long, masks=K_b×H×W)``.
    Returns a list of B tuples ``(pred_idx, tgt_idx)`` of int64 tensors (length min(Q, K_b)), with
    ``pred_idx`` sorted ascending, as in DETR.
    """

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int | None = 12544) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_mask and cost_dice cannot all be 0")
        if num_points is not None and num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be positive or None, got {num_points}")
        self.cost_class = float(cost_class)
        self.cost_mask = float(cost_mask)
        self.cost_dice = float(cost_dice)
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrix(self, probs: Tensor, masks: Tensor, tgt_labels: Tensor, tgt_masks: Tensor) -> Tensor:
        """Q×K cost of one image: ``probs`` Q×C', ``masks`` Q×h×w logits, targets K and K×H×W."""
        num_queries = masks.shape[0]
        if tgt_labels.numel() == 0:
            return masks.new_zeros((num_queries, 0))
        if self.num_points is None:
            coords = pixel_centre_coords(*tgt_masks.shape[-2:], device=masks.device)
        else:
            coords = torch.rand(1, self.num_points, 2, device=masks.device)
        out_pts = point_sample(masks[:, None].float(), coords.expand(num_queries, -1, -1),
                               align_corners=False)[:, 0]
        tgt_pts = point_sample(tgt_masks[:, None].float(), coords.expand(tgt_masks.shape[0], -1, -1),
                               align_corners=False)[:, 0]
        cost = -probs.float()[:, tgt_labels.long()] * self.cost_class
        if self.cost_mask:
            cost = cost + self.cost_mask * batch_sigmoid_ce_cost(out_pts, tgt_pts)
        if self.cost_dice:
            cost = cost + self.cost_dice * batch_dice_cost(out_pts, tgt_pts)
        return cost

    @torch.no_grad()
    def forward(self, outputs: dict, targets: Sequence[dict]) -> list[tuple[Tensor, Tensor]]:
        if "pred_masks" not in outputs:
            raise KeyError(f"HungarianMatcher: outputs lack 'pred_masks' (have {sorted(outputs)})")
        if "pred_probs" in outputs:
            probs = outputs["pred_probs"]
        elif "pred_logits" in outputs:
            probs = outputs["pred_logits"].float().softmax(-1)
        else:
            raise KeyError(f"HungarianMatcher: outputs need 'pred_logits' or 'pred_probs' (have {sorted(outputs)})")
        masks = outputs["pred_masks"]
        if probs.shape[:2] != masks.shape[:2]:
            raise ValueError(f"HungarianMatcher: class scores {tuple(probs.shape)} and pred_masks "
                             f"{tuple(masks.shape)} disagree on batch/query size")
        if len(targets) != masks.shape[0]:
            raise ValueError(f"HungarianMatcher: {len(targets)} targets for a batch of {masks.shape[0]}")
        indices = []
        for b, tgt in enumerate(targets):
            labels = tgt["labels"].to(masks.device)
            if labels.numel() and int(labels.max()) >= probs.shape[-1]:
                raise ValueError(f"HungarianMatcher: target label {int(labels.max())} out of range for "
                                 f"{probs.shape[-1]} class scores")
            cost = self.cost_matrix(probs[b], masks[b], labels, tgt["masks"].to(masks.device))
            cost = torch.nan_to_num(cost.cpu(), nan=1e8, posinf=1e8, neginf=-1e8)
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
