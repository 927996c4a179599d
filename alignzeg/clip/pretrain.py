"""Contrastive pre-training of the tiny CLIP on the synthetic benchmark (``alignzeg pretrain-clip``).

Stands in for web-scale CLIP pre-training in the embedded benchmark (DESIGN.md §5): the tiny open_clip
CLIP (:data:`alignzeg.clip.model.TINY_CLIP_CONFIG`, 64-px ViT) learns from the captions of *all*
classes, seen and unseen, as real CLIP has seen unseen class names on the web; only the segmenters
trained later are restricted to the seen classes.

Objective: the symmetric InfoNCE loss of CLIP (Radford et al., ICML 2021, "Learning Transferable Visual
Models From Natural Language Supervision"; implementation pattern of open_clip's ``ClipLoss``,
https://github.com/mlfoundations/open_clip, MIT licence) with a learnable logit scale (initialised at
1/0.07, clamped to 100 as open_clip does), on two kinds of pairs per step:

* *scene pairs*: a whole image and its caption ("a red circle and a blue square on grass.");
* *region pairs*: a square crop around one class region of an image (an object's visible pixels, or
  the window purest in one stuff class) and the single-class prompt "a photo of a {name}.". The
  segmenters classify regions and pixels, so region-level alignment matters more than scene-level
  alignment; this is the crop-level text supervision used by region-CLIP methods. The prompts of
  all classes are encoded at every step and serve as negatives: with only the prompts present in a
  batch, crops rarely meet a same-colour, other-shape negative and the model learned colour only
  (held-out object accuracy near the one-per-colour guess in our measurements).

What differs from open_clip's loss: texts are de-duplicated within a step (many crops share a prompt);
image→text uses the index of each image's text, text→image spreads the target uniformly over all
images of that text, so equal prompts are never treated as each other's negatives; texts without an
image in the batch (the absent class prompts) are negatives for image→text only. The total loss is
``(1 - region_weight) · scene loss + region_weight · region loss``.

Data: ``DIR/split.json`` (class list) and ``DIR/meta.json`` (generator settings) as written by
:mod:`alignzeg.data.synthetic`. The scenes themselves are generated, ``--num-scenes`` from the generator
stream ``clip`` and ``--num-heldout`` from ``clip-heldout``: no train, val or test image of the benchmark
is seen. Each step also takes ``--shape-groups`` groups of 5 renders that differ only in shape
(:func:`shape_contrast_images`), hard negatives for the shape of an object.

Outputs (each written atomically):

* ``FILE`` -- the weights via :func:`alignzeg.clip.model.save_clip` (safetensors with the model
  config in the metadata, the format of a converted real checkpoint; ``build_clip(None, FILE)`` loads
  it);
* ``FILE.json`` -- report: settings, per-epoch losses, timings, and held-out zero-shot accuracy of the
  text prompts on region crops, separately for seen and unseen classes (vocabulary = all classes,
  chance = 1/num_classes), per class, for stuff and objects, colour-only and shape-only accuracy (the
  object's colour given, which of its shapes), unseen accuracy within the unseen vocabulary and
  scene→caption recall (with ``--eval-every``, also a line per epoch);
* ``FILE.partial`` -- training state after each finished epoch; a later run with the same settings
  resumes from it, and it is removed at the end.

A third, optional term (``--shape-loss``): each shape render is also classified among the prompts of its
own colour's classes only (one per shape), a cross-entropy at the same logit scale. With ``--text-lr-scale``
below 1 the text tower learns more slowly than the image tower. Both answer a failure measured with the
plain recipe: the prompts of a square and a circle of one colour drifted to cosine 0.998 (the report's
``same_colour_prompt_cosine``) and their images to 0.98-0.99, after which the contrastive loss no longer
asked the images to differ, and squares were read as circles (``shape_confusion``).

Defaults (``params.yaml``): 6 epochs over 3000 scenes, 32 scenes + 64 crops + 16 shape groups per step,
each render framed by its own box (``--shape-framing crop``), shape-only loss weight 2, AdamW lr 2e-3 with
10 % warm-up and cosine decay (text tower at 0.05 × lr), region weight 0.8, the image tower's position
embedding started at the 2-D sin-cos one (:func:`init_position_embedding`). Held-out region accuracy over
40 classes (chance 2.5 %): 83.4 % seen / 80.5 % unseen; stuff 92.0 %, colour right for 96.8 % of object
crops, shape-only accuracy 80.8 % (chance 20 %), lowest class 48.8 %; 745 s on 2 cores (the report's
``seconds``). The previous defaults (8 groups drawn centred, no shape-only loss, one learning rate) gave
73.6 / 84.2 % and shape-only 71.0 %, with the six squares at 0-12 %. Tried and not kept (README, "Tiny
CLIP"): crop framing alone, a supervised contrastive loss between images, a slower text tower alone,
the shape-only loss with 8 groups, and crops from whole scenes in which one object takes every shape.

Determinism: the model initialisation follows ``torch.manual_seed(seed)``; the data order and the
augmentation of epoch ``e`` come from ``numpy.random.default_rng([seed, e])``, so a resumed run sees
the same batches as an uninterrupted one. Results are identical for the same seed, machine and thread
count.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROMPT = "a photo of a {}."
STATE_VERSION = 1


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
@dataclass
class RegionSet:
    """Class regions of a set of images: source image, square box (x0, y0, x1, y1), class id."""

    image: np.ndarray   # (R,) int64, index into the image tensor
    box: np.ndarray     # (R, 4) float64, pixels
    label: np.ndarray   # (R,) int64, full label space

    def __len__(self) -> int:
        return len(self.image)


def _square_box(x0: float, y0: float, x1: float, y1: float, margin: float, min_side: float,
                size: int) -> tuple[float, float, float, float]:
    """Square box around (x0, y0, x1, y1) with a relative margin, shifted (not cut) to fit the image."""
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    side = float(min(max(side, min_side), size))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    bx = min(max(cx - side / 2.0, 0.0), size - side)
    by = min(max(cy - side / 2.0, 0.0), size - side)
    return bx, by, bx + side, by + side


def find_regions(label: np.ndarray, stuff_ids: set[int], *, min_object_pixels: int = 16,
                 stuff_window: float = 0.5, min_stuff_purity: float = 0.6) -> list[tuple[int, tuple]]:
    """Class regions of one annotation: ``[(class id, square box)]`` in increasing class id.

    An object region is the bounding box of the class's pixels with a 15 % margin (skipped below
    ``min_object_pixels``); a stuff region is the ``stuff_window``-sized square window with the largest
    share of that class (first one on ties), kept when that share is at least ``min_stuff_purity``.
    """
    size = label.shape[0]
    out = []
    win = max(4, int(round(stuff_window * size)))
    for c in np.unique(label):
        c = int(c)
        if c == 255:
            continue
        m = label == c
        if c in stuff_ids:
            ii = np.pad(np.cumsum(np.cumsum(m, 0), 1), ((1, 0), (1, 0)))
            sums = ii[win:, win:] - ii[:-win, win:] - ii[win:, :-win] + ii[:-win, :-win]
            y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
            if sums[y, x] >= min_stuff_purity * win * win:
                out.append((c, (float(x), float(y), float(x + win), float(y + win))))
        else:
            if m.sum() < min_object_pixels:
                continue
            ys, xs = np.nonzero(m)
            out.append((c, _square_box(xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0, 0.15, 12.0, size)))
    return out


@dataclass
class CaptionedImages:
    stems: list[str]
    images: "object"            # torch uint8 N×3×H×W
    captions: list[str]
    regions: RegionSet


def generated_split_data(meta: dict, stream: str, count: int, stuff_ids: set[int]) -> CaptionedImages:
    """``count`` captioned scenes of the generator stream ``stream`` ("clip" or "clip-heldout").

    The scenes come from :func:`alignzeg.data.synthetic.make_example` with the dataset's own seed,
    image size and object counts (``meta.json``), but from generator streams that no segmentation
    split uses, so the tiny CLIP never sees a train, val or test image of the benchmark.
    """
    import torch

    from alignzeg.data.synthetic import make_example

    imgs, caps, stems, r_img, r_box, r_lab = [], [], [], [], [], []
    for i in range(count):
        ex = make_example(int(meta["seed"]), stream, i, int(meta["image_size"]),
                          int(meta["min_objects"]), int(meta["max_objects"]))
        imgs.append(ex["image"])
        caps.append(ex["caption"])
        stems.append(f"{stream}_{i:06d}")
        for c, box in find_regions(ex["label"], stuff_ids):
            r_img.append(i)
            r_box.append(box)
            r_lab.append(c)
    if not imgs:  # e.g. --num-heldout 0: nothing held out
        return CaptionedImages([], torch.zeros((0, 3, 0, 0), dtype=torch.uint8), [],
                               RegionSet(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64)))
    images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    regions = RegionSet(np.asarray(r_img, dtype=np.int64), np.asarray(r_box, dtype=np.float64).reshape(-1, 4),
                        np.asarray(r_lab, dtype=np.int64))
    return CaptionedImages(stems, images, caps, regions)


GENERATOR_KEYS = ("seed", "image_size", "min_objects", "max_objects", "generator_version")


def read_dataset(data: str | Path, num_scenes: int, num_heldout: int):
    """Split, pre-training scenes and held-out scenes for the synthetic benchmark in ``DIR``.

    ``DIR/split.json`` gives the class list and ``DIR/meta.json`` the generator settings; the images
    are generated (see :func:`generated_split_data`), none is read from ``DIR``.
    """
    from alignzeg.data.synthetic import GENERATOR_VERSION
    from alignzeg.splits import load_split

    data = Path(data)
    split_file, meta_file = data / "split.json", data / "meta.json"
    for p in (split_file, meta_file):
        if not p.exists():
            raise FileNotFoundError(f"{p} is missing: --data must be a folder written by "
                                    "'alignzeg prepare synthetic'")
    split = load_split(split_file)
    meta = json.loads(meta_file.read_text())
    missing = [k for k in GENERATOR_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{meta_file}: no generator settings {missing}; the tiny CLIP pre-trains on scenes "
                         "of the synthetic generator ('alignzeg prepare synthetic' writes them)")
    if meta["generator_version"] != GENERATOR_VERSION:
        raise ValueError(f"{meta_file}: written by generator version {meta['generator_version']}, this code "
                         f"has version {GENERATOR_VERSION}; re-run 'alignzeg prepare synthetic'")
    if num_scenes < 1:
        raise ValueError(f"--num-scenes must be at least 1, got {num_scenes}")
    if num_heldout < 0:
        raise ValueError(f"--num-heldout must be at least 0, got {num_heldout}")
    stuff_ids = _stuff_ids(split)
    train = generated_split_data(meta, "clip", num_scenes, stuff_ids)
    held = generated_split_data(meta, "clip-heldout", num_heldout, stuff_ids)
    return split, train, held


def _stuff_ids(split) -> set[int]:
    """The split's stuff classes; the generator's :data:`~alignzeg.data.synthetic.STUFF` for a
    ``split.json`` that names none."""
    if split.stuff:
        return set(split.stuff_ids)
    from alignzeg.data.synthetic import STUFF

    return {i for i, c in enumerate(split.classes) if c in set(STUFF)}


# --------------------------------------------------------------------------------------------------
# loss and batches
# --------------------------------------------------------------------------------------------------
def contrastive_loss(image_emb, text_emb, text_index, logit_scale):
    """Symmetric InfoNCE with de-duplicated texts.

    Args:
        image_emb: N×D L2-normalised image embeddings.
        text_emb: T×D L2-normalised embeddings of distinct texts; texts no image points to act as
            extra negatives for image→text only.
        text_index: N long tensor, the text of each image.
        logit_scale: scalar tensor (already exponentiated).

    Image→text: cross-entropy towards each image's text over all T texts. Text→image, for each text
    used by at least one image: cross-entropy against the uniform distribution over its images. With
    all texts distinct and each used once this is CLIP's loss.
    """
    import torch
    import torch.nn.functional as F

    logits = logit_scale * image_emb @ text_emb.t()                          # N×T
    loss_i2t = F.cross_entropy(logits, text_index)
    pos = (text_index[None, :] == torch.arange(text_emb.shape[0], device=logits.device)[:, None]).float()
    used = pos.sum(1) > 0
    pos = pos[used]
    target = pos / pos.sum(1, keepdim=True)                                   # T'×N
    loss_t2i = -(target * F.log_softmax(logits.t()[used], dim=1)).sum(1).mean()
    return 0.5 * (loss_i2t + loss_t2i)


def crop_regions(images, boxes, out_size: int):
    """Crop-and-resize boxes (K×4, pixels) of ``images`` (K×3×H×W float) to ``out_size``² (bilinear)."""
    import torch
    from torchvision.ops import roi_align

    idx = torch.arange(images.shape[0], dtype=images.dtype)[:, None]
    rois = torch.cat([idx, boxes.to(images.dtype)], dim=1)
    return roi_align(images, rois, output_size=(out_size, out_size), spatial_scale=1.0,
                     sampling_ratio=2, aligned=True)


def jitter_boxes(box: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Random scale (0.9-1.25×) and shift (±10 % of the side) of square boxes, kept inside the image."""
    side = box[:, 2] - box[:, 0]
    cx = (box[:, 0] + box[:, 2]) / 2 + rng.uniform(-0.1, 0.1, len(box)) * side
    cy = (box[:, 1] + box[:, 3]) / 2 + rng.uniform(-0.1, 0.1, len(box)) * side
    side = np.minimum(side * rng.uniform(0.9, 1.25, len(box)), size)
    x0 = np.clip(cx - side / 2, 0, size - side)
    y0 = np.clip(cy - side / 2, 0, size - side)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


def frame_box(mask: np.ndarray, scale: float, shift) -> tuple[float, float, float, float]:
    """The crop box of an object mask as the region crops frame it, with a given jitter.

    The square box around the mask's pixels with a 15 % margin and a 12-px minimum side
    (:func:`find_regions`), its side multiplied by ``scale`` and its centre moved by ``shift`` (x, y) times
    the side, as :func:`jitter_boxes` does, then shifted (not cut) to lie inside the image.
    """
    size = mask.shape[0]
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = _square_box(xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0, 0.15, 12.0, size)
    side0 = x1 - x0
    side = min(side0 * float(scale), size)
    bx = min(max((x0 + x1) / 2 + float(shift[0]) * side0 - side / 2, 0.0), size - side)
    by = min(max((y0 + y1) / 2 + float(shift[1]) * side0 - side / 2, 0.0), size - side)
    return bx, by, bx + side, by + side


def shape_contrast_images(rng: np.random.Generator, n_groups: int, size: int, classes: list[str],
                          framing: str = "crop"):
    """``n_groups`` groups of renders that differ only in shape: ``(N×3×H×W uint8, N labels)``.

    Each group draws a colour, a stuff background, a position, a size and an appearance seed, and renders
    one object of that colour in every shape with exactly that appearance (textures, colour jitter and
    noise come from the same seed). Within a batch these are hard negatives for each other that only
    shape can separate; the region loss compares them with the prompts of all classes like any other crop.

    ``framing``:

    * ``"crop"`` (default): the object is drawn at scene scale (radius in
      :data:`~alignzeg.data.synthetic.RADIUS_RANGE`) and each shape is cut out as the region crops are,
      its own bounding box with a 15 % margin (:func:`find_regions`), then scaled and shifted by one
      jitter shared by the group (:func:`jitter_boxes`'s ranges) and resized to ``size``. Every shape
      then fills its frame as it does in a held-out crop, whatever its extent.
    * ``"centred"``: the object is drawn centred at radius 30-40 % of the side and not cropped. The shapes
      then differ in extent too (at one radius a square's side is 1.6 r, a circle's diameter 2 r), so the
      groups teach a size cue that region crops, which are framed by each object's own box, do not have.
    """
    import torch

    from alignzeg.data import synthetic as S

    if framing not in ("crop", "centred"):
        raise ValueError(f"shape_contrast_images: framing must be 'crop' or 'centred', got {framing!r}")
    index = {c: i for i, c in enumerate(classes)}
    imgs, labels, boxes = [], [], []
    for _ in range(n_groups):
        colour = list(S.COLOURS)[int(rng.integers(len(S.COLOURS)))]
        stuff = (S.STUFF[int(rng.integers(len(S.STUFF)))],)
        if framing == "crop":
            r = rng.uniform(*S.RADIUS_RANGE) * size
            cx, cy = rng.uniform(r, size - r, size=2)
            scale, shift = rng.uniform(0.9, 1.25), rng.uniform(-0.1, 0.1, size=2)
        else:
            r = rng.uniform(0.30, 0.40) * size
            cx, cy = (0.5 + rng.uniform(-0.06, 0.06, size=2)) * size
        angle = rng.uniform(-0.35, 0.35)
        seed = int(rng.integers(2 ** 31))
        for shape in S.SHAPES:
            name = f"{colour} {shape}"
            if name not in index:
                continue
            a = angle if shape in ("square", "triangle", "cross") else 0.0
            spec = S.SceneSpec(stuff=stuff, objects=(S.ObjectSpec(colour, shape, float(cx), float(cy), float(r),
                                                                  float(a)),))
            image, _ = S.render(spec, np.random.default_rng(seed), size)
            imgs.append(image)
            labels.append(index[name])
            if framing == "crop":
                boxes.append(frame_box(S.shape_mask(shape, float(cx), float(cy), float(r), float(a), size),
                                       scale, shift))
    if not imgs:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8), np.zeros(0, np.int64)
    out = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    if framing == "crop":
        crops = crop_regions(out.float(), torch.tensor(boxes, dtype=torch.float64), size)
        out = crops.round().clamp(0, 255).to(torch.uint8)
    return out, np.asarray(labels, dtype=np.int64)


class TextTable:
    """All distinct texts, tokenised once; batches refer to them by id."""

    def __init__(self, texts: list[str], tokenizer):
        self.texts = sorted(set(texts))
        self.index = {t: i for i, t in enumerate(self.texts)}
        self.tokens = tokenizer(self.texts)

    def batch(self, ids: np.ndarray):
        """``(tokens of the distinct ids, index of each element into them)``."""
        import torch

        uniq, inv = np.unique(ids, return_inverse=True)
        return self.tokens[torch.from_numpy(uniq)], torch.from_numpy(inv.astype(np.int64))


def _normalise(x):
    import torch

    from alignzeg.clip.model import CLIP_MEAN, CLIP_STD

    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def epoch_plan(seed: int, epoch: int, n_images: int, n_regions: int, batch_size: int,
               crops_per_image: int):
    """Deterministic batches of one epoch: list of (scene indices, region indices) and its rng."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    scenes = rng.permutation(n_images)
    n_crop = batch_size * crops_per_image
    steps = max(1, n_images // batch_size)
    need = steps * n_crop
    reps = -(-need // max(n_regions, 1)) if n_regions else 0
    regions = (np.concatenate([rng.permutation(n_regions) for _ in range(reps)])
               if reps else np.zeros(0, np.int64))
    plan = [(scenes[s * batch_size:(s + 1) * batch_size], regions[s * n_crop:(s + 1) * n_crop])
            for s in range(steps)]
    return plan, rng


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------
def evaluate(model, tokenizer, split, held: CaptionedImages, image_size: int, stuff_ids=(),
             batch: int = 256) -> dict:
    """Held-out zero-shot accuracy of text prompts on region crops (seen / unseen) and scene recall."""
    import torch

    model.eval()
    classes = list(split.classes)
    unseen_ids = set(split.unseen_ids)
    with torch.no_grad():
        text = model.encode_text(tokenizer([PROMPT.format(c) for c in classes]), normalize=True)
        reg = held.regions
        preds, preds_u, preds_shape = [], [], []
        uid = sorted(unseen_ids)
        groups = same_colour_groups(classes, stuff_ids)
        for s in range(0, len(reg), batch):
            sl = slice(s, s + batch)
            imgs = held.images[torch.from_numpy(reg.image[sl])].float()
            crops = crop_regions(imgs, torch.from_numpy(reg.box[sl]), image_size)
            emb = model.encode_image(_normalise(crops), normalize=True)
            logits = emb @ text.t()
            preds.append(logits.argmax(1).numpy())
            # shape only: the best class among those of the region's own colour
            lab = reg.label[sl]
            shape_pred = np.full(len(lab), -1, np.int64)
            for k, c in enumerate(lab):
                g = groups.get(int(c))
                if g is not None:
                    shape_pred[k] = g[int(logits[k, g].argmax())]
            preds_shape.append(shape_pred)
            if uid:
                preds_u.append(np.asarray(uid)[logits[:, uid].argmax(1).numpy()])
        pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
        pred_shape = np.concatenate(preds_shape) if preds_shape else np.zeros(0, np.int64)
        pred_u = np.concatenate(preds_u) if preds_u else np.zeros(0, np.int64)
        gt = reg.label
        is_u = np.isin(gt, list(unseen_ids))

        def acc(mask):
            return float((pred[mask] == gt[mask]).mean() * 100) if mask.any() else float("nan")

        def mean_class(mask):
            ids = np.unique(gt[mask])
            return float(np.mean([(pred[gt == c] == c).mean() for c in ids]) * 100) if len(ids) else float("nan")

        per_class = []
        for c in range(len(classes)):
            m = gt == c
            per_class.append({"class": classes[c], "split": "unseen" if c in unseen_ids else "seen",
                              "n": int(m.sum()), "acc": float((pred[m] == c).mean() * 100) if m.any() else None})
        # scene -> caption retrieval among the held-out captions
        cap_emb = []
        for s in range(0, len(held.captions), batch):
            cap_emb.append(model.encode_text(tokenizer(held.captions[s:s + batch]), normalize=True))
        img_emb = []
        for s in range(0, len(held.stems), batch):
            img_emb.append(model.encode_image(_normalise(held.images[s:s + batch].float()), normalize=True))
        r1 = float("nan")
        if held.stems:
            sim = torch.cat(img_emb) @ torch.cat(cap_emb).t()
            r1 = float((sim.argmax(1) == torch.arange(sim.shape[0])).float().mean() * 100)
    u_mask = is_u
    is_obj = np.isin(gt, list(groups))
    class_accs = [c["acc"] for c in per_class if c["acc"] is not None]
    colour_of = {c: classes[c].split(" ", 1)[0] for c in groups}
    shapes = sorted({_shape_of(classes[c]) for c in groups}, key=_shape_order)
    return _nan_to_none({
        "prompt": PROMPT,
        "vocabulary": "all classes",
        "num_classes": len(classes),
        "chance_acc": 100.0 / len(classes),
        "num_regions": {"seen": int((~u_mask).sum()), "unseen": int(u_mask.sum())},
        "acc_seen": acc(~u_mask),
        "acc_unseen": acc(u_mask),
        "acc_all": acc(np.ones_like(u_mask)),
        "mean_class_acc_seen": mean_class(~u_mask),
        "mean_class_acc_unseen": mean_class(u_mask),
        "min_class_acc": min(class_accs) if class_accs else float("nan"),
        "min_class": (per_class[int(np.argmin([c["acc"] if c["acc"] is not None else np.inf
                                               for c in per_class]))]["class"] if class_accs else None),
        "acc_stuff": acc(~is_obj),
        "acc_objects": acc(is_obj),
        "acc_shape_only": (float((pred_shape[is_obj] == gt[is_obj]).mean() * 100) if is_obj.any()
                           else float("nan")),
        "acc_colour_only": (float(np.mean([colour_of.get(int(p)) == colour_of[int(g)]
                                           for p, g in zip(pred[is_obj], gt[is_obj])]) * 100)
                            if is_obj.any() else float("nan")),
        "shapes": shapes,
        "shape_confusion": shape_confusion(gt[is_obj], pred_shape[is_obj], classes, shapes),
        "same_colour_prompt_cosine": same_colour_prompt_cosine(text.numpy(), classes, groups, shapes),
        "acc_unseen_within_unseen_vocab": (float((pred_u[u_mask] == gt[u_mask]).mean() * 100)
                                           if u_mask.any() and len(pred_u) else float("nan")),
        "chance_acc_within_unseen_vocab": 100.0 / len(uid) if uid else float("nan"),
        "scene_caption_recall_at_1": r1,
        "num_scenes": len(held.stems),
        "per_class": per_class,
        "confusion": np.bincount(gt * len(classes) + pred, minlength=len(classes) ** 2)
                       .reshape(len(classes), len(classes)).tolist(),
    })


def same_colour_groups(classes: list[str], stuff_ids) -> dict[int, list[int]]:
    """For each object class id, the ids of all object classes of its colour (its first word).

    The shape-only accuracy of the report classifies an object crop among these classes: the colour
    is given, only the shape decides.
    """
    by_colour: dict[str, list[int]] = {}
    for i, name in enumerate(classes):
        if i not in stuff_ids and " " in name:
            by_colour.setdefault(name.split(" ", 1)[0], []).append(i)
    return {i: ids for ids in by_colour.values() if len(ids) > 1 for i in ids}


def _shape_of(name: str) -> str:
    return name.split(" ", 1)[1]


def _shape_order(shape: str):
    """The generator's shape order first (circle, square, ...), then any other shape by name."""
    from alignzeg.data.synthetic import SHAPES

    return (SHAPES.index(shape), "") if shape in SHAPES else (len(SHAPES), shape)


def shape_confusion(gt, pred_shape, classes: list[str], shapes: list[str]) -> list[list[int]]:
    """Counts of the shape-only task: row = true shape, column = the shape chosen among the classes of
    the object's own colour (``pred_shape`` from :func:`evaluate`; entries < 0, no same-colour group, and
    ground truths whose class is not an object of ``shapes`` are skipped)."""
    k = {s: i for i, s in enumerate(shapes)}
    out = np.zeros((len(shapes), len(shapes)), dtype=np.int64)
    for g, p in zip(np.asarray(gt), np.asarray(pred_shape)):
        if p < 0 or " " not in classes[int(g)]:
            continue
        a, b = _shape_of(classes[int(g)]), _shape_of(classes[int(p)])
        if a in k and b in k:
            out[k[a], k[b]] += 1
    return out.tolist()


def same_colour_prompt_cosine(text_emb, classes: list[str], groups: dict[int, list[int]],
                              shapes: list[str]) -> list[list[float | None]]:
    """Mean cosine between the prompt embeddings of two shapes of the same colour (``shapes`` × ``shapes``,
    averaged over the colours that have both; None where none has).

    ``text_emb`` C×D L2-normalised prompt embeddings. Two prompts at a cosine near 1 cannot be told apart
    by any image, so this shows a shape the text tower has merged with another (the prompts of a square
    and a circle of one colour, for instance), which the shape-only accuracy alone does not.
    """
    k = {s: i for i, s in enumerate(shapes)}
    sums = np.zeros((len(shapes), len(shapes)))
    counts = np.zeros((len(shapes), len(shapes)), dtype=np.int64)
    emb = np.asarray(text_emb, dtype=np.float64)
    seen_groups = {tuple(g) for g in groups.values()}
    for g in seen_groups:
        for a in g:
            for b in g:
                sa, sb = _shape_of(classes[a]), _shape_of(classes[b])
                if sa in k and sb in k:
                    sums[k[sa], k[sb]] += float(emb[a] @ emb[b])
                    counts[k[sa], k[sb]] += 1
    return [[float(sums[i, j] / counts[i, j]) if counts[i, j] else None for j in range(len(shapes))]
            for i in range(len(shapes))]


def _nan_to_none(d: dict) -> dict:
    """Undefined numbers (no regions of a kind) become JSON null instead of NaN."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
def sincos_position_embedding(grid: int, width: int):
    """2-D sine-cosine position embeddings of a ``grid``×``grid`` patch grid: ``(grid², width)`` float32.

    A quarter of the channels each holds sin / cos of the column and of the row at frequencies
    ``1 / 10000^(k / (width/4))``, as in MoCo v3 (Chen, Xie and He, ICCV 2021, "An Empirical Study of
    Training Self-Supervised Vision Transformers") and MAE (He et al., CVPR 2022). Row-major patch
    order, the order of the ViT's patch tokens.
    """
    import torch

    if width % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {width}")
    q = width // 4
    y, x = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                          indexing="ij")
    omega = 1.0 / (10000.0 ** (torch.arange(q, dtype=torch.float64) / q))
    px, py = x.reshape(-1, 1) * omega, y.reshape(-1, 1) * omega
    return torch.cat([px.sin(), px.cos(), py.sin(), py.cos()], dim=1).float()


def init_position_embedding(model) -> None:
    """Start the image tower's (learned) position embedding at the 2-D sin-cos one, class token at zero.

    The ViT learns shape from a few hundred steps only when its patches know where they are: on
    5-way shape classification of clean renders (80 per step, AdamW 1e-3) the default random init
    reached 46 % after 100 steps and 74 % after 200, this init 71 % and 89 %. The embedding stays a
    trained parameter, so the checkpoint keeps open_clip's format.
    """
    import torch

    pe = model.visual.positional_embedding
    grid = int(round((pe.shape[0] - 1) ** 0.5))
    if grid * grid + 1 != pe.shape[0]:
        raise ValueError(f"visual.positional_embedding has {pe.shape[0]} rows, not 1 + a square grid")
    with torch.no_grad():
        pe[0].zero_()
        pe[1:] = sincos_position_embedding(grid, pe.shape[1]).to(pe.dtype)


def _param_groups(model, weight_decay: float, text_lr_scale: float = 1.0):
    """AdamW groups: decay or not (gains, biases, logit scale and embeddings are not decayed), and the
    text tower (every parameter outside ``visual.`` but the logit scale) at ``text_lr_scale`` times the
    learning rate (the ``lr_scale`` entry each step multiplies in)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "embedding" in name  # gains, biases, logit scale, embeddings
        text = not name.startswith("visual.") and name != "logit_scale"
        groups.setdefault((exclude, text), []).append(p)
    return [{"params": ps, "weight_decay": 0.0 if exclude else weight_decay,
             "lr_scale": text_lr_scale if text else 1.0}
            for (exclude, text), ps in sorted(groups.items())]


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _signature(args, data_meta: dict) -> dict:
    return {"state_version": STATE_VERSION, "data": str(Path(args.data).resolve()),
            "data_seed": data_meta.get("seed"), "num_images": data_meta.get("num_images"),
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "weight_decay": args.weight_decay, "warmup": args.warmup, "seed": args.seed,
            "num_scenes": args.num_scenes, "num_heldout": args.num_heldout,
            "generator": {k: data_meta.get(k) for k in GENERATOR_KEYS}, "crops_per_image": args.crops_per_image,
            "region_weight": args.region_weight, "shape_groups": args.shape_groups,
            "position_init": args.position_init, "shape_framing": args.shape_framing,
            "text_lr_scale": args.text_lr_scale, "shape_loss": args.shape_loss}


def train_clip(args):
    """Run pre-training as configured by the parsed ``args``; return ``(model, report dict)``."""
    import torch
    import torch.nn.functional as F

    from alignzeg.clip.model import TINY_CLIP_CONFIG, build_clip, clip_tokenizer, save_clip
    from alignzeg.utils import atomic_write_bytes, atomic_write_json

    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(int(args.threads))
    if not 0.0 <= args.region_weight <= 1.0:
        raise ValueError(f"--region-weight must be in [0, 1], got {args.region_weight}")
    for name in ("shape_loss", "text_lr_scale"):
        if not getattr(args, name) >= 0.0:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(args, name)}")
    for name in ("epochs", "batch_size", "crops_per_image"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    out = Path(args.out)
    partial = Path(str(out) + ".partial")
    report_file = Path(str(out) + ".json")
    data = Path(args.data)
    meta_file = data / "meta.json"
    data_meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}

    split, train_set, held = read_dataset(data, args.num_scenes, args.num_heldout)
    stuff_ids = _stuff_ids(split)
    cfg = json.loads(json.dumps(TINY_CLIP_CONFIG))
    image_size = int(cfg["vision_cfg"]["image_size"])
    if train_set.images.shape[-1] != image_size or train_set.images.shape[-2] != image_size:
        raise ValueError(f"{data}: images are {tuple(train_set.images.shape[-2:])} pixels, the tiny CLIP "
                         f"expects {image_size}x{image_size} (prepare with --image-size {image_size})")
    tokenizer = clip_tokenizer(cfg)
    prompts = [PROMPT.format(c) for c in split.classes]
    table = TextTable(train_set.captions + prompts, tokenizer)
    cap_ids = np.array([table.index[c] for c in train_set.captions], dtype=np.int64)
    prompt_tokens = table.tokens[torch.from_numpy(np.array([table.index[p] for p in prompts], dtype=np.int64))]

    torch.manual_seed(args.seed)
    model = build_clip(cfg)
    cfg = model.alignzeg_cfg
    if args.position_init == "sincos":
        init_position_embedding(model)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, args.weight_decay, args.text_lr_scale), lr=args.lr,
                            betas=(0.9, 0.98), eps=1e-6, foreach=True)
    steps_per_epoch = max(1, len(train_set.stems) // args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup = max(1, int(round(args.warmup * total_steps)))
    signature = _signature(args, data_meta)
    history: list[dict] = []
    start_epoch = 0
    if partial.exists() and not args.no_resume:
        state = torch.load(partial, map_location="cpu", weights_only=True)
        saved = json.loads(state["signature"])
        if saved != signature:
            diff = sorted(k for k in set(saved) | set(signature) if saved.get(k) != signature.get(k))
            raise ValueError(f"{partial}: saved training state was made with other settings ({', '.join(diff)}); "
                             "delete it or pass --no-resume")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        history = json.loads(state["history"])
        print(f"resuming from {partial} after epoch {start_epoch}")

    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, desc="pretrain-clip", unit="step")
    max_scale = math.log(100.0)
    same_colour = {c: np.asarray(g, dtype=np.int64)
                   for c, g in same_colour_groups(list(split.classes), stuff_ids).items()}
    for epoch in range(start_epoch, args.epochs):
        model.train()
        plan, rng = epoch_plan(args.seed, epoch, len(train_set.stems), len(train_set.regions),
                               args.batch_size, args.crops_per_image)
        sums = {"loss": 0.0, "loss_scene": 0.0, "loss_region": 0.0, "loss_shape": 0.0}
        t_epoch = time.perf_counter()
        for s, (scene_idx, region_idx) in enumerate(plan):
            step = epoch * steps_per_epoch + s
            for group in opt.param_groups:
                group["lr"] = args.lr * lr_factor(step, total_steps, warmup) * group["lr_scale"]
            scenes = train_set.images[torch.from_numpy(scene_idx)].float()
            flip = torch.from_numpy(rng.random(len(scene_idx)) < 0.5)
            scenes[flip] = scenes[flip].flip(-1)
            parts = [scenes]
            reg = train_set.regions
            if len(region_idx):
                boxes = jitter_boxes(reg.box[region_idx], rng, image_size)
                src = train_set.images[torch.from_numpy(reg.image[region_idx])].float()
                crops = crop_regions(src, torch.from_numpy(boxes), image_size)
                flip_c = torch.from_numpy(rng.random(len(region_idx)) < 0.5)
                crops[flip_c] = crops[flip_c].flip(-1)
                parts.append(crops)
            region_labels = reg.label[region_idx]
            shape_labels = np.zeros(0, np.int64)
            if args.shape_groups:
                shape_imgs, shape_labels = shape_contrast_images(rng, args.shape_groups, image_size,
                                                                 list(split.classes), args.shape_framing)
                parts.append(shape_imgs.float())
                region_labels = np.concatenate([region_labels, shape_labels])
            img_emb = model.encode_image(_normalise(torch.cat(parts)), normalize=True)
            scale = model.logit_scale.exp()
            tok, inv = table.batch(cap_ids[scene_idx])
            loss_scene = contrastive_loss(img_emb[: len(scene_idx)], model.encode_text(tok, normalize=True),
                                          inv, scale)
            loss_region = loss_shape = torch.zeros(())
            if len(region_labels):
                # every class prompt takes part, so each crop is contrasted with all other classes
                # (in particular the same colour with other shapes), not only those in the batch
                prompt_emb = model.encode_text(prompt_tokens, normalize=True)
                loss_region = contrastive_loss(img_emb[len(scene_idx):], prompt_emb,
                                               torch.from_numpy(region_labels), scale)
                if args.shape_loss > 0 and len(shape_labels):
                    # the renders' shape-only task: each against the prompts of its own colour's classes
                    options = torch.from_numpy(np.stack([same_colour[int(c)] for c in shape_labels]))
                    target = (options == torch.from_numpy(shape_labels)[:, None]).float().argmax(1)
                    shape_emb = img_emb[len(img_emb) - len(shape_labels):]
                    loss_shape = F.cross_entropy(scale * (shape_emb[:, None, :] * prompt_emb[options]).sum(-1),
                                                 target)
            loss = ((1.0 - args.region_weight) * loss_scene + args.region_weight * loss_region
                    + args.shape_loss * loss_shape)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretrain-clip: loss became {loss.item()} at epoch {epoch + 1}, "
                                         f"step {s + 1}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, max_scale)
            sums["loss"] += loss.item()
            sums["loss_scene"] += loss_scene.item()
            sums["loss_region"] += loss_region.item()
            sums["loss_shape"] += loss_shape.item()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        entry = {"epoch": epoch + 1, **{k: v / len(plan) for k, v in sums.items()},
                 "logit_scale": float(model.logit_scale.detach().exp()), "seconds": time.perf_counter() - t_epoch}
        if len(held.regions) and args.eval_every and (epoch + 1) % args.eval_every == 0 and epoch + 1 < args.epochs:
            m = evaluate(model, tokenizer, split, held, image_size, stuff_ids)
            entry["heldout"] = {k: m[k] for k in ("acc_seen", "acc_unseen", "acc_shape_only", "min_class_acc")}
            print(f"pretrain-clip epoch {epoch + 1}/{args.epochs}: held-out region accuracy seen "
                  f"{m['acc_seen']:.1f} %, unseen {m['acc_unseen']:.1f} %, shape-only {m['acc_shape_only']:.1f} %",
                  flush=True)
        history.append(entry)
        buf = io.BytesIO()
        torch.save({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "signature": json.dumps(signature), "history": json.dumps(history)}, buf)
        atomic_write_bytes(partial, buf.getvalue())
    if bar is not None:
        bar.close()

    t_eval = time.perf_counter()
    metrics = evaluate(model, tokenizer, split, held, image_size, stuff_ids)
    eval_seconds = time.perf_counter() - t_eval
    model.eval()
    save_clip(model, cfg, out)
    report = {
        "checkpoint": str(out),
        "model_cfg": cfg,
        "data": str(data),
        "split": split.name,
        "classes": list(split.classes),
        "unseen": list(split.unseen),
        "settings": {k: v for k, v in signature.items() if k not in ("state_version", "data")},
        "threads": torch.get_num_threads(),
        "num_train_images": len(train_set.stems),
        "num_train_regions": len(train_set.regions),
        "num_heldout_images": len(held.stems),
        "steps": total_steps,
        "history": history,
        "heldout": metrics,
        "eval_seconds": eval_seconds,
        "seconds": time.perf_counter() - t_start,
    }
    atomic_write_json(report_file, report)
    if partial.exists():
        os.unlink(partial)
    return model, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="folder written by 'alignzeg prepare synthetic'")
    parser.add_argument("--out", required=True,
                        help="output safetensors file; FILE.json gets the report, FILE.partial the resumable state")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training scenes")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="scenes per step (each step also takes batch-size × crops-per-image region crops)")
    parser.add_argument("--crops-per-image", type=int, default=2, help="region crops per scene in a step")
    parser.add_argument("--region-weight", type=float, default=0.8,
                        help="weight of the region-crop loss; the scene-caption loss gets 1 - this")
    parser.add_argument("--shape-groups", type=int, default=0,
                        help="per step, groups of renders that differ only in shape (5 images each) added to "
                             "the region crops as hard negatives")
    parser.add_argument("--shape-framing", choices=("crop", "centred"), default="crop",
                        help="how the shape groups are framed: each shape cut out by its own box like a region "
                             "crop, or drawn centred at one radius (shapes then differ in extent)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    parser.add_argument("--shape-loss", type=float, default=0.0,
                        help="weight of the shape-only loss on the shape renders: cross-entropy over the prompts "
                             "of the render's own colour, one per shape (0: none)")
    parser.add_argument("--text-lr-scale", type=float, default=1.0,
                        help="the text tower's learning rate as a multiple of --lr")
    parser.add_argument("--position-init", choices=("sincos", "random"), default="sincos",
                        help="image-tower position embedding at the start: 2-D sin-cos (MoCo v3) or open_clip's "
                             "random init")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (matrices only)")
    parser.add_argument("--warmup", type=float, default=0.1, help="warm-up as a fraction of all steps")
    parser.add_argument("--seed", type=int, default=0, help="random seed (model init, data order, augmentation)")
    parser.add_argument("--num-scenes", type=int, default=3000,
                        help="pre-training scenes, generated from a stream no benchmark split uses")
    parser.add_argument("--num-heldout", type=int, default=300,
                        help="held-out scenes (another unused stream) for the zero-shot report")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="also report held-out accuracy after every N-th epoch (0: only at the end)")
    parser.add_argument("--no-resume", action="store_true", help="ignore (and overwrite) FILE.partial")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    _, report = train_clip(args)
    h = report["heldout"]
    print(f"wrote {report['checkpoint']} ({report['steps']} steps, {report['seconds']:.0f} s)")
    def pct(v):
        return "n/a" if v is None else f"{v:.1f} %"

    print(f"held-out zero-shot region accuracy over {h['num_classes']} classes (chance {h['chance_acc']:.1f} %): "
          f"seen {pct(h['acc_seen'])}, unseen {pct(h['acc_unseen'])}; "
          f"scene->caption R@1 {pct(h['scene_caption_recall_at_1'])} of {h['num_scenes']}")
    worst = most_confused_shape(h)
    if worst is not None:
        true, chosen, share, cos = worst
        print(f"shape-only accuracy {pct(h['acc_shape_only'])}; most confused: {true} read as {chosen} in "
              f"{share:.0f} % of its crops (their same-colour prompts at cosine {cos:.3f})")
    return 0


def most_confused_shape(heldout: dict):
    """``(true shape, chosen shape, % of the true shape's crops, prompt cosine)`` of the largest
    off-diagonal share of the shape confusion, or None without object crops."""
    conf = np.asarray(heldout.get("shape_confusion") or [], dtype=float)
    if conf.size == 0 or conf.sum() == 0:
        return None
    rows = conf.sum(1, keepdims=True)
    share = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0)
    np.fill_diagonal(share, -1.0)
    i, j = np.unravel_index(int(np.argmax(share)), share.shape)
    shapes = heldout["shapes"]
    cos = heldout["same_colour_prompt_cosine"][i][j]
    return shapes[i], shapes[j], float(share[i, j] * 100), float("nan") if cos is None else float(cos)
