"""The seen–unseen trade-off of one run: a constant offset γ on the seen-class scores, swept in one pass.

Calibrated stacking (Chao et al., "An Empirical Study and Analysis of Generalized Zero-Shot Learning for
Object Recognition in the Wild", ECCV 2016) subtracts a constant γ from every seen-class score before the
argmax. Sweeping γ traces the seen–unseen curve (S(γ), U(γ)) of a segmenter: γ = -inf predicts seen
classes only, γ = +inf unseen classes only, γ = 0 is the method's own operating point. The area under the
curve (AUSUC, with S and U as fractions) measures the trade-off independently of one threshold, and the
γ with the best hIoU on val, applied on test, is the simplest correction of a seen-class bias.

The prediction of a pixel at γ depends only on its best seen score ``s``, its best unseen score ``u`` and
their classes: it is the seen argmax where ``s - γ > u`` (ties: the lower class index, as ``argmax``)
and the unseen argmax otherwise. :func:`sweep_confusions` therefore needs one pass over the scores and
one ``bincount`` for all γ: a confusion matrix per γ, no re-inference. Pure numpy/torch; no mmseg.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["gamma_grid", "margins_of", "sweep_confusions", "curve_from_confusions", "ausuc", "best_gamma"]


def gamma_grid(margins: np.ndarray | torch.Tensor, num: int = 41, extra: Sequence[float] = ()) -> np.ndarray:
    """Sorted unique γ values: -inf, ``num`` quantiles of ``margins`` (best seen minus best unseen score
    per pixel, in the method's own units), 0, ``extra`` and +inf."""
    if num < 2:
        raise ValueError(f"gamma_grid: num must be >= 2, got {num}")
    m = np.asarray(margins.detach().cpu() if isinstance(margins, torch.Tensor) else margins, dtype=np.float64)
    m = m[np.isfinite(m)]
    inner = np.quantile(m, np.linspace(0.0, 1.0, num)) if m.size else np.zeros(0)
    values = np.concatenate([[-np.inf, 0.0, np.inf], inner, np.asarray(list(extra), dtype=np.float64)])
    return np.unique(values)


def margins_of(scores: torch.Tensor, seen_mask: torch.Tensor) -> torch.Tensor:
    """Best seen minus best unseen score of every pixel of a C×... score tensor."""
    seen_mask = seen_mask.to(device=scores.device, dtype=torch.bool)
    return scores[seen_mask].max(dim=0).values - scores[~seen_mask].max(dim=0).values


def sweep_confusions(scores: torch.Tensor, gt: torch.Tensor, seen_mask: torch.Tensor, gammas: Sequence[float],
                     ignore_index: int = 255) -> np.ndarray:
    """G×C×C confusion matrices (rows ground truth, columns prediction) of ``argmax(scores - γ·seen)``.

    ``scores`` C×H×W (one image), ``gt`` H×W labels in ``0..C-1`` or ``ignore_index``, ``seen_mask`` C
    booleans (at least one seen and one unseen class), ``gammas`` G values (±inf allowed).
    """
    if scores.dim() != 3:
        raise ValueError(f"sweep_confusions: scores must be C×H×W, got {tuple(scores.shape)}")
    c = scores.shape[0]
    seen_mask = torch.as_tensor(seen_mask, dtype=torch.bool, device=scores.device)
    if seen_mask.numel() != c:
        raise ValueError(f"sweep_confusions: seen_mask has {seen_mask.numel()} entries for {c} classes")
    if not bool(seen_mask.any()) or bool(seen_mask.all()):
        raise ValueError("sweep_confusions: needs at least one seen and one unseen class")
    gt = gt.reshape(-1).to(scores.device).long()
    flat = scores.reshape(c, -1).double()  # γ - comparisons in float64, as a float64 re-prediction would
    valid = gt != ignore_index
    gt, flat = gt[valid], flat[:, valid]
    if gt.numel() and (int(gt.min()) < 0 or int(gt.max()) >= c):
        raise ValueError(f"sweep_confusions: labels outside 0..{c - 1} (ignore_index={ignore_index})")
    seen_idx = torch.nonzero(seen_mask).squeeze(1)
    unseen_idx = torch.nonzero(~seen_mask).squeeze(1)
    s_val, s_arg = flat[seen_idx].max(dim=0)
    u_val, u_arg = flat[unseen_idx].max(dim=0)
    s_cls, u_cls = seen_idx[s_arg], unseen_idx[u_arg]
    g = torch.as_tensor(np.asarray(gammas, dtype=np.float64), dtype=flat.dtype, device=flat.device)
    shifted = s_val.unsqueeze(0) - g.unsqueeze(1)  # G×P, what argmax compares with u_val
    take_seen = (shifted > u_val) | ((shifted == u_val) & (s_cls < u_cls))
    pred = torch.where(take_seen, s_cls, u_cls)  # G×P
    offset = torch.arange(len(g), device=flat.device).unsqueeze(1) * (c * c)
    idx = (offset + gt.unsqueeze(0) * c + pred).reshape(-1)
    counts = torch.bincount(idx, minlength=len(g) * c * c)
    return counts.reshape(len(g), c, c).cpu().numpy().astype(np.int64)


def _miou(iou: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a γ at which no class of the group is defined
        return np.nanmean(iou[:, mask], axis=1)


def curve_from_confusions(mats: np.ndarray, seen_mask: Sequence[bool]) -> dict:
    """S(γ), U(γ) and hIoU(γ) in percent from G×C×C matrices (classes with no ground truth and no
    prediction at a γ are left out of that γ's means, as in :func:`metrics_from_confusion`)."""
    from alignzeg.evaluation.confusion import class_iou

    seen = np.asarray(seen_mask, dtype=bool)
    iou = class_iou(mats)
    s, u = _miou(iou, seen), _miou(iou, ~seen)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(s + u > 0, 2 * s * u / np.where(s + u > 0, s + u, 1), 0.0)
    h = np.where(np.isnan(s) | np.isnan(u), np.nan, h)
    return {"S": s, "U": u, "hIoU": h}


def ausuc(seen: Sequence[float], unseen: Sequence[float]) -> float:
    """Area under the seen–unseen curve with S and U as fractions (at most 1): trapezoids over the points
    sorted by S (at equal S the higher U first). A sweep that includes γ = ±inf has its ends on the axes
    (U = 0 where only seen classes are predicted, S = 0 where only unseen ones are)."""
    s = np.asarray(seen, dtype=np.float64) / 100.0
    u = np.asarray(unseen, dtype=np.float64) / 100.0
    ok = np.isfinite(s) & np.isfinite(u)
    s, u = s[ok], u[ok]
    if s.size < 2:
        return float("nan")
    order = np.lexsort((-u, s))
    s, u = s[order], u[order]
    return float(np.sum((s[1:] - s[:-1]) * (u[1:] + u[:-1]) / 2.0))


def best_gamma(gammas: Sequence[float], hiou: Sequence[float]) -> float:
    """The finite γ with the highest hIoU (ties: the one closest to 0, then the smaller); 0 if none."""
    best = None
    for g, h in zip(np.asarray(gammas, dtype=np.float64), np.asarray(hiou, dtype=np.float64)):
        if not (math.isfinite(g) and math.isfinite(h)):
            continue
        key = (h, -abs(g), -g)
        if best is None or key > best[0]:
            best = (key, float(g))
    return 0.0 if best is None else best[1]
