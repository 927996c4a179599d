"""Oracle ceilings of a study: what ground-truth masks give with the study's CLIP (``experiments.pipeline oracle``).

A segmenter's zero-shot error has two sources: its masks and its classification of them. The two
ceilings separate them, on the same test images and with the same metric (:mod:`.confusion`) as
every method:

* **recognition ceiling** -- every ground-truth segment (the pixels of one class in one image) is
  classified by the CLIP alone: a square crop around it (the region crops of
  :func:`alignzeg.clip.pretrain.find_regions`: an object's box with a 15 % margin, or the window
  purest in a stuff class, of half the image side or, where none is pure enough, a quarter or an
  eighth smaller; the class's bounding box when neither applies) is encoded and compared
  with the text embeddings of *all* classes, and the best class is painted on the segment's pixels.
  The masks are perfect, so what is left is classification error, seen-class bias included.
* **proposal ceiling** -- the same, with the best calibration of seen against unseen scores: the
  calibrated stacking of Chao et al. (ECCV 2016, "An Empirical Study and Analysis of Generalized
  Zero-Shot Learning for Object Recognition in the Wild") subtracts ``gamma`` from every seen-class
  cosine score; ``gamma`` is the grid value with the highest hIoU *on the evaluated images* (an
  oracle choice, which is what makes it a ceiling: no method can choose better with these masks).

A method far below the recognition ceiling loses on its masks; a recognition ceiling far below the
proposal ceiling means the CLIP itself is biased towards seen classes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .confusion import confusion_matrix, metrics_from_confusion

# Stuff windows tried in turn (fraction of the image side): pre-training's half-size window first.
STUFF_WINDOWS = (0.5, 0.375, 0.25)
# Calibration grid of the proposal ceiling (cosine-score units; the tiny CLIP's cosines lie in [-1, 1]).
GAMMA_GRID = tuple(np.round(np.arange(-0.30, 0.3001, 0.01), 4))


def segment_boxes(label: np.ndarray, stuff_ids: set[int], ignore_index: int = 255) -> list[tuple[int, tuple]]:
    """``[(class id, square box)]`` for every class present in ``label`` (one segment per class)."""
    from alignzeg.clip.pretrain import find_regions

    found = dict(find_regions(label, stuff_ids))
    # a stuff class with no pure half-size window: the purest smaller window (objects cover much of a
    # scene; a crop of the whole image would show the objects, not the stuff)
    for window in STUFF_WINDOWS[1:]:
        missing = {c for c in np.unique(label).tolist() if c in stuff_ids and c not in found}
        if not missing:
            break
        for c, box in find_regions(label, missing, stuff_window=window):
            if c in missing:
                found[c] = box
    missing = [c for c in np.unique(label).tolist() if c != ignore_index and c not in found]
    if missing:  # the bounding box with a margin, as find_regions boxes an object (however small)
        boxes = dict(find_regions(np.where(np.isin(label, missing), label, 255), set(),
                                  min_object_pixels=1))
        found.update({c: boxes[c] for c in missing})
    return sorted(found.items())


def segment_scores(model, images: np.ndarray, labels: np.ndarray, text: "object", stuff_ids: set[int],
                   batch: int = 256):
    """Cosine scores of every ground-truth segment: ``(image index, class id, S×C scores)``.

    ``images`` N×H×W×3 uint8, ``labels`` N×H×W, ``text`` C×D unit text embeddings (label order).
    """
    import torch

    from alignzeg.clip.pretrain import _normalise, crop_regions

    seg_img, seg_cls, boxes = [], [], []
    for i, lab in enumerate(labels):
        for c, box in segment_boxes(lab, stuff_ids):
            seg_img.append(i)
            seg_cls.append(c)
            boxes.append(box)
    seg_img = np.asarray(seg_img, dtype=np.int64)
    seg_cls = np.asarray(seg_cls, dtype=np.int64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    size = int(model.visual.image_size[0])
    scores = []
    model.eval()
    with torch.no_grad():
        for s in range(0, len(seg_img), batch):
            src = torch.from_numpy(images[seg_img[s:s + batch]]).permute(0, 3, 1, 2).float()
            crops = crop_regions(src, torch.from_numpy(boxes[s:s + batch]), size)
            emb = model.encode_image(_normalise(crops), normalize=True)
            scores.append((emb @ text.t()).numpy())
    c = text.shape[0]
    return seg_img, seg_cls, (np.concatenate(scores) if scores else np.zeros((0, c), np.float32))


def ceiling_confusion(labels: np.ndarray, seg_img: np.ndarray, seg_cls: np.ndarray, pred_cls: np.ndarray,
                      num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Confusion matrix when every segment's pixels get its predicted class.

    Equal to painting the predictions into label maps and counting (a segment is all pixels of one
    class in one image), computed from segment pixel counts instead.
    """
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    for i, c, p in zip(seg_img, seg_cls, pred_cls):
        m[c, p] += int((labels[i] == c).sum())
    return m


def oracle_ceilings(model, images: np.ndarray, labels: np.ndarray, text, classes: Sequence[str],
                    unseen: Sequence[str], stuff: Sequence[str] = (), gammas: Sequence[float] = GAMMA_GRID) -> dict:
    """Both ceilings (module docstring): ``{"recognition": metrics, "proposal": metrics, "gamma": float,
    "gamma_curve": [{"gamma", "mIoU_seen", "mIoU_unseen", "hIoU"}] (by increasing |gamma|)}`` with metrics as
    :func:`metrics_from_confusion` returns them."""
    classes = list(classes)
    stuff_ids = {i for i, c in enumerate(classes) if c in set(stuff)}
    seg_img, seg_cls, scores = segment_scores(model, images, labels, text, stuff_ids)
    return ceilings_from_scores(labels, seg_img, seg_cls, scores, classes, unseen, stuff, gammas)


def ceilings_from_scores(labels: np.ndarray, seg_img: np.ndarray, seg_cls: np.ndarray, scores: np.ndarray,
                         classes: Sequence[str], unseen: Sequence[str], stuff: Sequence[str] = (),
                         gammas: Sequence[float] = GAMMA_GRID) -> dict:
    """:func:`oracle_ceilings` from the segments' scores (S×C) instead of a model."""
    classes = list(classes)
    is_seen = np.array([c not in set(unseen) for c in classes])
    n = len(classes)

    def metrics_at(gamma: float) -> dict:
        pred = (scores - gamma * is_seen[None, :]).argmax(1) if len(scores) else np.zeros(0, np.int64)
        return metrics_from_confusion(ceiling_confusion(labels, seg_img, seg_cls, pred, n), classes, unseen,
                                      stuff)

    recognition = metrics_at(0.0)
    curve, best, best_gamma = [], None, 0.0
    for g in sorted(gammas, key=lambda x: (abs(x), x)):  # ties go to the smallest correction
        m = metrics_at(float(g))
        curve.append({"gamma": float(g), **{k: m[k] for k in ("mIoU_seen", "mIoU_unseen", "hIoU")}})
        if best is None or m["hIoU"] > best["hIoU"] + 1e-12:
            best, best_gamma = m, float(g)
    return {"recognition": recognition, "proposal": best if best is not None else recognition,
            "gamma": best_gamma, "gamma_curve": curve, "num_segments": int(len(seg_img))}


def check_against_painting(labels: np.ndarray, seg_img, seg_cls, pred_cls, num_classes: int) -> np.ndarray:
    """The painted-label-map confusion (slow reference for :func:`ceiling_confusion`, used in tests)."""
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    for i, lab in enumerate(labels):
        painted = np.full_like(lab, 255)
        for k in np.nonzero(seg_img == i)[0]:
            painted[lab == seg_cls[k]] = pred_cls[k]
        total += confusion_matrix(painted, lab, num_classes)
    return total
