"""Mask-classification losses shared by AlignZeg and the mask-proposal baselines.

Follows the set criterion of Mask2Former (Cheng et al., "Masked-attention Mask Transformer for Universal
Image Segmentation", CVPR 2022; github.com/facebookresearch/Mask2Former, MIT licence,
``mask2former/modeling/criterion.py``) and the point sampling of PointRend (Kirillov et al., CVPR 2020):
mask losses are computed on a few sampled points instead of full-resolution masks, chosen by importance
sampling around uncertain predictions. Written from the papers and that repository's description;
differences from it:

- The number of classes is not fixed at construction: it is read from ``pred_logits`` (``C + 1`` with the
  last column "no object"), because zero-shot segmenters switch vocabularies between training (seen
  names) and evaluation (all names).
- ``num_points=None`` evaluates the losses on every target pixel (deterministic; used by tests and by
  small images), otherwise ``num_points`` points are sampled as in Mask2Former.
- Deep supervision follows the MMSegmentation naming: the last decoder layer gives ``loss_cls``,
  ``loss_mask``, ``loss_dice``; intermediate layer ``i`` gives ``d{i}.loss_cls`` etc.
- Target masks may have different sizes per image (they are sampled per image).

Pure PyTorch; no mmseg import.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "point_sample", "calculate_uncertainty", "get_uncertain_point_coords_with_randomness",
    "pixel_centre_coords", "dice_loss", "sigmoid_ce_loss", "batch_dice_cost", "batch_sigmoid_ce_cost",
    "sem_seg_to_mask_targets", "MaskClassificationLoss",
]


# ----------------------------------------------------------------------------------------------- points
def point_sample(inputs: Tensor, point_coords: Tensor, align_corners: bool = False, **kwargs) -> Tensor:
    """Bilinearly sample ``inputs`` (N×C×H×W) at ``point_coords`` in [0, 1] × [0, 1] ((x, y) order).

    ``point_coords`` is N×P×2 (returns N×C×P) or N×Hg×Wg×2 (returns N×C×Hg×Wg). Coordinates are
    normalised to the image *extent* (``align_corners=False``): x = (j + 0.5) / W is the centre of
    pixel column j. A thin wrapper around :func:`torch.nn.functional.grid_sample`, as in PointRend.
    """
    if inputs.dim() != 4:
        raise ValueError(f"point_sample: inputs must be N×C×H×W, got shape {tuple(inputs.shape)}")
    add_dim = point_coords.dim() == 3
    if add_dim:
        point_coords = point_coords.unsqueeze(2)
    if point_coords.shape[-1] != 2:
        raise ValueError(f"point_sample: point_coords must end in 2 (x, y), got {tuple(point_coords.shape)}")
    out = F.grid_sample(inputs, 2.0 * point_coords.to(inputs.dtype) - 1.0, align_corners=align_corners,
                        **kwargs)
    return out.squeeze(3) if add_dim else out


def calculate_uncertainty(logits: Tensor) -> Tensor:
    """Uncertainty of mask logits (R×1×...): minus their absolute value (0 on the decision boundary)."""
    if logits.shape[1] != 1:
        raise ValueError(f"calculate_uncertainty: expected one channel, got shape {tuple(logits.shape)}")
    return -logits.abs()


def get_uncertain_point_coords_with_randomness(
        coarse_logits: Tensor, uncertainty_func: Callable[[Tensor], Tensor], num_points: int,
        oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75) -> Tensor:
    """Importance-sample ``num_points`` points per mask (PointRend training sampling).

    Oversample ``int(num_points * oversample_ratio)`` uniform random points, keep the
    ``int(importance_sample_ratio * num_points)`` most uncertain of them (by ``uncertainty_func`` on the
    point-sampled ``coarse_logits``, R×1×H×W), fill up with uniform random points.
    Returns R×num_points×2 coordinates in [0, 1].
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_boxes = coarse_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    point_coords = torch.rand(num_boxes, num_sampled, 2, device=coarse_logits.device)
    point_logits = point_sample(coarse_logits, point_coords, align_corners=False)
    point_uncertainties = uncertainty_func(point_logits)  # R×1×S
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(point_uncertainties[:, 0, :], k=num_uncertain, dim=1)[1]  # R×k
    coords = torch.gather(point_coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        coords = torch.cat([coords, torch.rand(num_boxes, num_random, 2, device=coarse_logits.device)], dim=1)
    return coords


def pixel_centre_coords(height: int, width: int, device=None) -> Tensor:
    """1×(H·W)×2 coordinates (x, y) of every pixel centre in row-major order, for :func:`point_sample`."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1).unsqueeze(0)


# ----------------------------------------------------------------------------------------------- losses
def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Dice loss of mask logits ``inputs`` (N×P) against binary ``targets`` (N×P), summed over masks and
    divided by ``num_masks``: per mask ``1 - (2·Σ p·t + 1) / (Σ p + Σ t + 1)`` with ``p = sigmoid(x)``."""
    p = inputs.sigmoid().flatten(1)
    t = targets.flatten(1).to(p.dtype)
    numerator = 2 * (p * t).sum(-1)
    denominator = p.sum(-1) + t.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def sigmoid_ce_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Binary cross-entropy with logits averaged over the points of each mask (N×P), summed over masks
    and divided by ``num_masks``."""
    loss = F.binary_cross_entropy_with_logits(inputs, targets.to(inputs.dtype), reduction="none")
    return loss.flatten(1).mean(1).sum() / num_masks


def batch_dice_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Pairwise dice loss: ``inputs`` logits N×P, ``targets`` M×P binary -> N×M."""
    p = inputs.sigmoid().flatten(1)
    t = targets.flatten(1).to(p.dtype)
    numerator = 2 * p @ t.T
    denominator = p.sum(-1)[:, None] + t.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_ce_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Pairwise mean binary cross-entropy: ``inputs`` logits N×P, ``targets`` M×P binary -> N×M."""
    num_points = inputs.shape[1]
    t = targets.to(inputs.dtype)
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (pos @ t.T + neg @ (1 - t).T) / num_points


# ----------------------------------------------------------------------------------------------- targets
def sem_seg_to_mask_targets(sem_seg: Tensor, ignore_index: int = 255, num_classes: int | None = None) -> dict:
    """Semantic label map (H×W or 1×H×W, class indices) -> ``dict(labels=K, masks=K×H×W bool)``.

    One binary mask per class present (sorted by class id); ``ignore_index`` pixels belong to no mask,
    as in Mask2Former's semantic-segmentation mapper. Labels ``>= num_classes`` (if given) raise.
    """
    if sem_seg.dim() == 3:
        if sem_seg.shape[0] != 1:
            raise ValueError(f"sem_seg must be H×W or 1×H×W, got {tuple(sem_seg.shape)}")
        sem_seg = sem_seg[0]
    sem_seg = sem_seg.long()
    labels = torch.unique(sem_seg)
    labels = labels[labels != ignore_index]
    if num_classes is not None and labels.numel() and (labels.max() >= num_classes or labels.min() < 0):
        raise ValueError(f"label map holds class ids {labels.tolist()} outside 0..{num_classes - 1} "
                         f"(ignore_index={ignore_index}); is the dataset mode right for this vocabulary?")
    masks = sem_seg[None] == labels[:, None, None]
    return dict(labels=labels, masks=masks)


# ----------------------------------------------------------------------------------------------- criterion
def _reduce_num_masks(num_masks: float, device) -> float:
    """Average the number of target masks over distributed workers (as Mask2Former does), at least 1."""
    value = torch.as_tensor([float(num_masks)], device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(value)
        value = value / torch.distributed.get_world_size()
    return max(float(value.item()), 1.0)


class MaskClassificationLoss(nn.Module):
    """Hungarian-matched mask-classification loss with deep supervision (Mask2Former ``SetCriterion``).

    Args:
        matcher: a :class:`alignzeg.models.matcher.HungarianMatcher` (or callable with its signature).
        loss_cls_weight, loss_mask_weight, loss_dice_weight: weights of the three terms (Mask2Former:
            2, 5, 5). A zero weight still computes and reports the (weighted, so zero) term.
        eos_coef: cross-entropy weight of the "no object" class (Mask2Former: 0.1).
        num_points: points per mask for the mask losses (Mask2Former: 112·112 = 12544); ``None`` = every
            pixel of the target masks.
        oversample_ratio, importance_sample_ratio: importance sampling parameters (3.0, 0.75).

    ``forward(outputs, targets)``: ``outputs = dict(pred_logits=B×Q×(C+1), pred_masks=B×Q×h×w,
    aux_outputs=[dict(pred_logits, pred_masks), ...] (optional, intermediate layers first))``,
    ``targets`` a list of B ``dict(labels=K_b long, masks=K_b×H×W)``. Returns a dict of weighted loss
    tensors ``loss_cls``, ``loss_mask``, ``loss_dice`` and ``d{i}.loss_*`` per auxiliary layer ``i``.
    """

    def __init__(self, matcher: Callable, loss_cls_weight: float = 2.0, loss_mask_weight: float = 5.0,
                 loss_dice_weight: float = 5.0, eos_coef: float = 0.1, num_points: int | None = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75) -> None:
        super().__init__()
        if num_points is not None and num_points <= 0:
            raise ValueError(f"MaskClassificationLoss: num_points must be positive or None, got {num_points}")
        if eos_coef < 0:
            raise ValueError(f"MaskClassificationLoss: eos_coef must be >= 0, got {eos_coef}")
        self.matcher = matcher
        self.loss_cls_weight = float(loss_cls_weight)
        self.loss_mask_weight = float(loss_mask_weight)
        self.loss_dice_weight = float(loss_dice_weight)
        self.eos_coef = float(eos_coef)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    # -- terms --------------------------------------------------------------------------------------
    def class_weight(self, num_classes: int, device=None) -> Tensor:
        """Cross-entropy class weights: 1 for each of the ``num_classes`` classes, ``eos_coef`` for no-object."""
        weight = torch.ones(num_classes + 1, device=device)
        weight[-1] = self.eos_coef
        return weight

    def loss_labels(self, pred_logits: Tensor, targets: Sequence[dict], indices) -> Tensor:
        """Weighted cross-entropy over all queries; unmatched queries target "no object" (index C)."""
        bsz, num_queries, c1 = pred_logits.shape
        target_classes = torch.full((bsz, num_queries), c1 - 1, dtype=torch.long, device=pred_logits.device)
        for b, (src, tgt) in enumerate(indices):
            if len(src):
                target_classes[b, src] = targets[b]["labels"].to(pred_logits.device)[tgt].long()
        if int(target_classes.max()) >= c1:
            raise ValueError("target label out of range of pred_logits (C+1 columns)")
        return F.cross_entropy(pred_logits.transpose(1, 2).float(), target_classes,
                               weight=self.class_weight(c1 - 1, pred_logits.device))

    def _sample_points(self, src_masks: Tensor, tgt_masks: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Point logits (N×P) of the matched predictions and point labels (N×P) of their targets."""
        src = src_masks[:, None]
        if self.num_points is None:
            sizes = {tuple(t.shape[-2:]) for t in tgt_masks if t.numel()}
            if len(sizes) != 1:
                raise ValueError(f"num_points=None needs equal target mask sizes, got {sorted(sizes)}")
            coords = pixel_centre_coords(*sizes.pop(), device=src.device).expand(src.shape[0], -1, -1)
        else:
            with torch.no_grad():
                coords = get_uncertain_point_coords_with_randomness(
                    src.detach().float(), calculate_uncertainty, self.num_points, self.oversample_ratio,
                    self.importance_sample_ratio)
        labels, start = [], 0
        for t in tgt_masks:  # per image: target sizes may differ
            n = t.shape[0]
            if n:
                labels.append(point_sample(t[:, None].to(src.dtype), coords[start:start + n],
                                           align_corners=False)[:, 0])
            start += n
        point_labels = torch.cat(labels, dim=0)
        point_logits = point_sample(src, coords.to(src.dtype), align_corners=False)[:, 0]
        return point_logits, point_labels

    def loss_masks(self, pred_masks: Tensor, targets: Sequence[dict], indices,
                   num_masks: float) -> tuple[Tensor, Tensor]:
        """(sigmoid BCE, dice) of the matched masks on sampled points, normalised by ``num_masks``."""
        src_list, tgt_list = [], []
        for b, (src, tgt) in enumerate(indices):
            src_list.append(pred_masks[b, src])
            tgt_list.append(targets[b]["masks"].to(pred_masks.device)[tgt])
        src_masks = torch.cat(src_list, dim=0)
        if src_masks.shape[0] == 0:  # no targets anywhere: keep the graph, contribute zero
            zero = pred_masks.sum() * 0.0
            return zero, zero
        point_logits, point_labels = self._sample_points(src_masks, tgt_list)
        return (sigmoid_ce_loss(point_logits, point_labels, num_masks),
                dice_loss(point_logits, point_labels, num_masks))

    # -- main ---------------------------------------------------------------------------------------
    def _layer_losses(self, out: dict, targets: Sequence[dict], num_masks: float) -> dict:
        indices = self.matcher(out, targets)
        loss_mask, loss_dice = self.loss_masks(out["pred_masks"], targets, indices, num_masks)
        return dict(loss_cls=self.loss_cls_weight * self.loss_labels(out["pred_logits"], targets, indices),
                    loss_mask=self.loss_mask_weight * loss_mask,
                    loss_dice=self.loss_dice_weight * loss_dice)

    def forward(self, outputs: dict, targets: Sequence[dict]) -> dict:
        for key in ("pred_logits", "pred_masks"):
            if key not in outputs:
                raise KeyError(f"MaskClassificationLoss: outputs lack {key!r} (have {sorted(outputs)})")
        if len(targets) != outputs["pred_logits"].shape[0]:
            raise ValueError(f"MaskClassificationLoss: {len(targets)} targets for a batch of "
                             f"{outputs['pred_logits'].shape[0]}")
        num_masks = _reduce_num_masks(sum(len(t["labels"]) for t in targets), outputs["pred_logits"].device)
        losses = self._layer_losses(outputs, targets, num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs") or []):
            for key, value in self._layer_losses(aux, targets, num_masks).items():
                losses[f"d{i}.{key}"] = value
        return losses
