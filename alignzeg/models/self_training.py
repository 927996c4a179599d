"""Transductive self-training: pseudo-labels for the unseen classes on the unlabelled pixels.

The transductive setting of zero-shot segmentation (ZS3Net, Bucher et al. 2019; ZegCLIP, Zhou et al.,
CVPR 2023) knows the unseen class *names* during training and sees the training images whole, but no
unseen pixel carries its class. The published recipes then self-train: they start from the inductive
checkpoint and, in every training step, label the unlabelled pixels with the model's own unseen-class
prediction.

This module follows ZegCLIP (github.com/ZiqinZhou66/ZegCLIP, MIT: ``ATMSingleHeadSeg.forward_train``
with ``self_training=True`` and the segmentor's ``_visiable_mask_st`` / ``_st_mask``):

* a pixel keeps its seen label; a void pixel stays void (ZegCLIP's visibility map keeps 255);
* an *unlabelled* pixel (ground truth of an unseen class, hidden by the dataset's transductive view)
  gets the unseen class with the highest current score: ``argmax_{c in U} s_c(x)``, the scores of the
  same training forward, detached (no gradient flows through the pseudo-label);
* ZegCLIP keeps every such label. zsseg (Xu et al., ECCV 2022) and MaskCLIP+ (Zhou et al., ECCV 2022)
  keep only confident ones; ``threshold`` expresses that rule (a pixel whose best unseen score is below
  it stays ignored) and is off by default, as in ZegCLIP.

When the dataset marks unlabelled pixels with the ignore value itself (``unlabelled_index ==
ignore_index``; the synthetic benchmark, where every ignore pixel is an unseen pixel), void and unseen
pixels cannot be told apart and every ignore pixel is a candidate.

Plain PyTorch; the mmseg segmentor (:class:`alignzeg.mmseg_modules.segmentor.ZeroShotEncoderDecoder`,
``self_training=dict(...)``) calls :func:`pseudo_labels` between the backbone and the head's loss.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

DEFAULTS = dict(unlabelled_index=255, threshold=None)


def check_config(cfg: Optional[Mapping], where: str = "self_training") -> Optional[dict]:
    """The self-training options with defaults filled in (None stays None); unknown keys are errors."""
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{where}: expected a dict of {sorted(DEFAULTS)} or None, got {cfg!r}")
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(DEFAULTS)})")
    out = {**DEFAULTS, **dict(cfg)}
    idx = out["unlabelled_index"]
    if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx <= 255:
        raise ValueError(f"{where}.unlabelled_index must be an integer in 0..255, got {idx!r}")
    thr = out["threshold"]
    if thr is not None and (isinstance(thr, bool) or not isinstance(thr, (int, float))):
        raise ValueError(f"{where}.threshold must be a number or None, got {thr!r}")
    return out


def pseudo_labels(scores: Tensor, labels: Tensor, unseen_ids: Sequence[int] | Tensor,
                  unlabelled_index: int = 255, ignore_index: int = 255,
                  threshold: Optional[float] = None) -> Tensor:
    """Labels with every unlabelled pixel replaced by its best unseen class.

    Args:
        scores: B×C×H×W class scores of the full vocabulary (any monotone score: ZegCLIP's sigmoid maps,
            a softmax, logits; ``threshold`` is read on this scale).
        labels: B×H×W (or B×1×H×W) integer labels in the full label space; ``unlabelled_index`` marks the
            pixels to pseudo-label, ``ignore_index`` void pixels (the two may be equal).
        unseen_ids: indices of the unseen classes in the C channels (non-empty).
        threshold: keep a pseudo-label only where the best unseen score is ``>= threshold``; None keeps all.

    Returns a new tensor of ``labels``' shape and dtype: seen labels unchanged, unlabelled pixels set to
    their pseudo-label or (below ``threshold``) to ``ignore_index``.
    """
    if scores.dim() != 4:
        raise ValueError(f"pseudo_labels: scores must be B×C×H×W, got shape {tuple(scores.shape)}")
    squeeze = labels.dim() == 4
    lab = labels[:, 0] if squeeze else labels
    if lab.dim() != 3 or lab.shape[0] != scores.shape[0] or lab.shape[-2:] != scores.shape[-2:]:
        raise ValueError(f"pseudo_labels: labels {tuple(labels.shape)} do not match scores "
                         f"{tuple(scores.shape)} (B×H×W or B×1×H×W at the scores' size)")
    ids = torch.as_tensor(unseen_ids, dtype=torch.long, device=scores.device).flatten()
    if ids.numel() == 0:
        raise ValueError("pseudo_labels: no unseen classes to pseudo-label with")
    if int(ids.min()) < 0 or int(ids.max()) >= scores.shape[1]:
        raise ValueError(f"pseudo_labels: unseen ids {ids.tolist()} outside the {scores.shape[1]} score channels")
    with torch.no_grad():
        unseen_scores = scores.detach().index_select(1, ids)          # B×U×H×W
        best, arg = unseen_scores.max(dim=1)                          # first maximum on ties
        pseudo = ids[arg].to(lab.dtype)
        target = lab == unlabelled_index
        keep = target if threshold is None else target & (best >= float(threshold))
        out = lab.clone()
        out[target] = ignore_index
        out[keep] = pseudo[keep]
    return out[:, None] if squeeze else out


def pseudo_label_share(before: Tensor, after: Tensor, unlabelled_index: int, ignore_index: int) -> float:
    """Share of the unlabelled pixels that received a pseudo-label (1.0 when there are none)."""
    target = before == unlabelled_index
    n = int(target.sum())
    if n == 0:
        return 1.0
    return float(((after != ignore_index) & target).sum()) / n
