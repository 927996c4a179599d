"""Confusion matrix and zero-shot segmentation metrics, in plain numpy (torch inputs accepted).

The metric definitions follow the zero-shot segmentation protocol of ZegCLIP (Zhou et al., CVPR 2023,
github.com/ZiqinZhou66/ZegCLIP) and its followers, AlignZeg included (Ge et al., ECCV 2024,
arXiv 2404.05667): everything is measured in the **joint** label space (seen + unseen classes compete
in one argmax), then averaged over the seen and the unseen classes separately.

Per class ``c`` of the confusion matrix ``M`` (rows = ground truth, columns = prediction):

* ``IoU_c = M[c, c] / (sum_j M[c, j] + sum_i M[i, c] - M[c, c])``
* ``Acc_c = M[c, c] / sum_j M[c, j]``

A class with no ground-truth pixel **and** no predicted pixel has an empty union: its IoU is NaN and it
is left out of every mean (numpy ``nanmean``, exactly as mmseg's ``IoUMetric`` averages). A class with
no ground truth but some predicted pixels has IoU 0 (all its predictions are false positives) and
Acc NaN. All returned numbers are percentages (0..100) and unrounded.

* ``mIoU`` mean IoU over all classes; ``mIoU_seen`` / ``mIoU_unseen`` over the seen / unseen classes.
* ``hIoU = 2 * S * U / (S + U)`` from the unrounded seen and unseen mIoU; 0 when ``S + U == 0``,
  NaN when either of them is NaN (no seen, or no unseen, class was ever present or predicted).
* ``aAcc`` pixel accuracy over all non-ignored pixels.
* ``unseen_to_seen`` share of unseen-class ground-truth pixels predicted as any seen class: the
  seen-class bias that AlignZeg's predictive bias correction targets. NaN without unseen pixels.
* ``unseen_to_seen_balanced`` the same share per unseen class, averaged over the unseen classes with
  ground truth (every class weighs the same, however many pixels it has); ``seen_to_unseen`` /
  ``seen_to_unseen_balanced`` the opposite error: seen-class pixels predicted as an unseen class, pooled
  and class-balanced (an over-correction shows here).
* ``mIoU_unseen_stuff`` / ``mIoU_unseen_objects`` the unseen mIoU over the unseen stuff classes and
  over the other unseen classes, where the split names its stuff classes (NaN otherwise).
* ``collapsed`` 1.0 when the predictions have collapsed (:func:`collapse_report`), else 0.0: such a
  run is a bug to explain, not a row to average, and every table flags it.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

METRIC_KEYS = ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "aAcc", "unseen_to_seen", "mIoU_unseen_stuff",
               "mIoU_unseen_objects", "collapsed")
# A run has collapsed when one class takes this share of the labelled pixels although its ground truth
# covers less than half of it, or when the seen or the unseen mIoU is below COLLAPSE_MIN_MIOU.
COLLAPSE_TOP_SHARE = 0.5
COLLAPSE_MIN_MIOU = 1.0


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def confusion_matrix(pred, gt, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Count pixels per (ground truth, prediction) pair: a ``num_classes`` x ``num_classes`` int64 array.

    ``pred`` and ``gt`` are integer label maps of the same shape (numpy arrays or torch tensors on any
    device; with torch the counting runs on the tensors' device and only the C x C matrix is copied to
    the host). Pixels whose ground truth equals ``ignore_index`` are skipped. Any other label outside
    ``0..num_classes-1`` in either map is an error, not silently dropped.
    """
    if num_classes <= 0:
        raise ValueError(f"confusion_matrix: num_classes must be positive, got {num_classes}")
    if tuple(pred.shape) != tuple(gt.shape):
        raise ValueError(f"confusion_matrix: prediction shape {tuple(pred.shape)} differs from "
                         f"ground-truth shape {tuple(gt.shape)}")
    if _is_torch(pred) or _is_torch(gt):
        import torch

        pred_t = torch.as_tensor(pred)
        gt_t = torch.as_tensor(gt, device=pred_t.device)
        valid = gt_t != ignore_index
        p = pred_t[valid].long()
        g = gt_t[valid].long()
        _check_range(g, num_classes, "ground truth", ignore_index)
        _check_range(p, num_classes, "prediction", ignore_index)
        counts = torch.bincount(g * num_classes + p, minlength=num_classes * num_classes)
        return counts.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)
    pred_a = np.asarray(pred)
    gt_a = np.asarray(gt)
    valid = gt_a != ignore_index
    p = pred_a[valid].astype(np.int64)
    g = gt_a[valid].astype(np.int64)
    _check_range(g, num_classes, "ground truth", ignore_index)
    _check_range(p, num_classes, "prediction", ignore_index)
    counts = np.bincount(g * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _check_range(values, num_classes: int, what: str, ignore_index: int) -> None:
    if values.numel() if _is_torch(values) else values.size:
        if _is_torch(values):
            import torch

            lo, hi = (int(v) for v in torch.aminmax(values))  # one pass instead of two
        else:
            lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"confusion_matrix: {what} label {bad} is outside 0..{num_classes - 1} "
                f"(and is not the ignore index {ignore_index}); the label map and the class list "
                f"do not match")


def class_iou(matrix: np.ndarray) -> np.ndarray:
    """Per-class IoU in percent from a ``C×C`` confusion matrix or a stack ``...×C×C`` (rows = ground
    truth): ``tp / (gt + pred - tp)``; NaN for a class with neither ground truth nor prediction."""
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    union = m.sum(-1) + m.sum(-2) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan) * 100.0


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def harmonic_iou(seen: float, unseen: float) -> float:
    """``2 S U / (S + U)``; 0 when ``S + U == 0``; NaN when either input is NaN."""
    if math.isnan(seen) or math.isnan(unseen):
        return float("nan")
    if seen + unseen == 0:
        return 0.0
    return 2.0 * seen * unseen / (seen + unseen)


def metrics_from_confusion(matrix, classes: Sequence[str], unseen: Sequence[str],
                           stuff: Sequence[str] = ()) -> dict:
    """Zero-shot metrics from a full-label-space confusion matrix (see the module docstring).

    ``classes`` names the matrix rows/columns in label order; ``unseen`` lists the unseen class names
    (each must be in ``classes``); all other classes are seen; ``stuff`` optionally names the stuff
    classes (for the unseen-stuff / unseen-object breakdown). Returns
    ``{"mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "aAcc", "unseen_to_seen", "collapsed", "per_class",
    "confusion", "collapse"}`` with ``per_class`` a list of ``{"class", "split", "IoU", "Acc", "gt_pixels", "pred_pixels"}`` and
    ``confusion`` = ``{"classes": [...], "matrix": [[int, ...], ...]}``.
    """
    m = np.asarray(matrix.cpu() if _is_torch(matrix) else matrix, dtype=np.int64)
    classes = [str(c) for c in classes]
    n = len(classes)
    if m.shape != (n, n):
        raise ValueError(f"metrics_from_confusion: matrix shape {m.shape} does not match the "
                         f"{n} class names")
    if len(set(classes)) != n:
        dup = sorted({c for c in classes if classes.count(c) > 1})
        raise ValueError(f"metrics_from_confusion: duplicate class names {dup}")
    missing = [u for u in unseen if u not in classes]
    if missing:
        raise ValueError(f"metrics_from_confusion: unseen classes {missing} are not in 'classes'")
    unseen_set = set(unseen)
    is_unseen = np.array([c in unseen_set for c in classes], dtype=bool)

    tp = np.diag(m).astype(np.float64)
    gt_pixels = m.sum(axis=1)
    pred_pixels = m.sum(axis=0)
    iou = class_iou(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(gt_pixels > 0, tp / np.maximum(gt_pixels, 1), np.nan) * 100.0

    total = int(m.sum())
    seen_miou = _nanmean(iou[~is_unseen])
    unseen_miou = _nanmean(iou[is_unseen])
    is_stuff = np.array([c in set(stuff) for c in classes], dtype=bool)
    unseen_stuff = _nanmean(iou[is_unseen & is_stuff]) if len(stuff) else float("nan")
    unseen_objects = _nanmean(iou[is_unseen & ~is_stuff]) if len(stuff) else float("nan")
    unseen_gt = int(m[is_unseen].sum())
    unseen_as_seen = int(m[np.ix_(is_unseen, ~is_unseen)].sum())
    seen_gt = int(m[~is_unseen].sum())
    seen_as_unseen = int(m[np.ix_(~is_unseen, is_unseen)].sum())

    def balanced(rows: np.ndarray, cols: np.ndarray) -> float:
        """Mean over the ``rows`` classes with ground truth of their share predicted as a ``cols`` class."""
        gt = m[rows].sum(1).astype(np.float64)
        wrong = m[np.ix_(rows, cols)].sum(1).astype(np.float64)
        ok = gt > 0
        return 100.0 * float((wrong[ok] / gt[ok]).mean()) if ok.any() else float("nan")

    return {
        "mIoU": _nanmean(iou),
        "mIoU_seen": seen_miou,
        "mIoU_unseen": unseen_miou,
        "hIoU": harmonic_iou(seen_miou, unseen_miou),
        "aAcc": 100.0 * float(tp.sum()) / total if total else float("nan"),
        "unseen_to_seen": 100.0 * unseen_as_seen / unseen_gt if unseen_gt else float("nan"),
        "unseen_to_seen_balanced": balanced(is_unseen, ~is_unseen),
        "seen_to_unseen": 100.0 * seen_as_unseen / seen_gt if seen_gt else float("nan"),
        "seen_to_unseen_balanced": balanced(~is_unseen, is_unseen),
        "mIoU_unseen_stuff": unseen_stuff,
        "mIoU_unseen_objects": unseen_objects,
        "per_class": [
            {"class": c, "split": "unseen" if is_unseen[i] else "seen", "IoU": float(iou[i]),
             "Acc": float(acc[i]), "gt_pixels": int(gt_pixels[i]), "pred_pixels": int(pred_pixels[i])}
            for i, c in enumerate(classes)
        ],
        "confusion": {"classes": classes, "matrix": m.tolist()},
        **_with_collapse(m, classes, seen_miou, unseen_miou, is_unseen),
    }


def collapse_report(matrix, classes: Sequence[str], seen_miou: float, unseen_miou: float,
                    is_unseen: np.ndarray | None = None) -> dict:
    """Whether a run's predictions have collapsed, and why.

    Collapsed means one of: a single class receives at least :data:`COLLAPSE_TOP_SHARE` of the labelled
    pixels while its ground truth covers less than half of that share (one class painted over most of
    the image); the seen mIoU, or the unseen mIoU, is below :data:`COLLAPSE_MIN_MIOU` points although
    such classes are present. Returns ``{"collapsed", "reasons", "top_class", "top_share",
    "top_gt_share"}`` (shares as fractions).
    """
    m = np.asarray(matrix, dtype=np.int64)
    total = int(m.sum())
    reasons = []
    top_class, top_share, top_gt_share = None, float("nan"), float("nan")
    if total:
        pred = m.sum(axis=0)
        k = int(pred.argmax())
        top_class = str(classes[k])
        top_share = float(pred[k]) / total
        top_gt_share = float(m[k].sum()) / total
        if top_share >= COLLAPSE_TOP_SHARE and top_gt_share < top_share / 2:
            reasons.append(f"{top_class!r} predicted on {100 * top_share:.1f}% of the pixels "
                           f"(ground truth {100 * top_gt_share:.1f}%)")
    present = m.sum(axis=1) > 0
    if is_unseen is None:
        is_unseen = np.zeros(len(classes), dtype=bool)
    for name, value, mask in (("seen", seen_miou, ~is_unseen), ("unseen", unseen_miou, is_unseen)):
        if (present & mask).any() and not math.isnan(value) and value < COLLAPSE_MIN_MIOU:
            reasons.append(f"{name} mIoU {value:.2f} < {COLLAPSE_MIN_MIOU}")
    return {"collapsed": bool(reasons), "reasons": reasons, "top_class": top_class,
            "top_share": top_share, "top_gt_share": top_gt_share}


def _with_collapse(m, classes, seen_miou, unseen_miou, is_unseen) -> dict:
    report = collapse_report(m, classes, seen_miou, unseen_miou, is_unseen)
    return {"collapsed": 1.0 if report["collapsed"] else 0.0, "collapse": report}


def nan_to_none(obj):
    """Recursively replace float NaN by ``None`` so the result is strict JSON (``null``)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj


def format_table(metrics: dict) -> str:
    """A plain-text per-class table plus the summary line, for logs."""
    rows = metrics["per_class"]
    width = max([len("class")] + [len(r["class"]) for r in rows])

    def num(x: float) -> str:
        return "   nan" if math.isnan(x) else f"{x:6.2f}"

    lines = [f"{'class':<{width}}  split     IoU    Acc  gt_pixels  pred_pixels"]
    for r in rows:
        lines.append(f"{r['class']:<{width}}  {r['split']:<6}  {num(r['IoU'])} {num(r['Acc'])}  "
                     f"{r['gt_pixels']:>9}  {r['pred_pixels']:>11}")
    lines.append("  ".join(f"{k} {num(metrics[k]).strip()}" for k in METRIC_KEYS))
    return "\n".join(lines)
