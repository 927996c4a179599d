"""Samples the scores behind objective misalignment during a test run.

On pixels whose ground truth is an **unseen** class, a model biased towards seen classes gives its
highest seen-class score more often than its highest unseen-class score. This hook keeps a seeded
random sample (at most ``per_image`` pixels of each image, drawn by a generator seeded with ``seed`` and
the image's dataset position, then at most ``max_samples`` over the whole test set) of both maxima and
writes them to ``out_file`` (``.npz`` with ``top_seen`` and ``top_unseen``) for
``analysis/plots.py``. Scores are the model's per-class outputs (``seg_logits``) converted to
probabilities with a softmax over classes when ``apply_softmax`` (logit-valued heads) and used as they
are otherwise (heads whose outputs are already per-class scores, as MaskFormer-style inference).

For heads with a class indicator (AlignZeg's Predictive Bias Correction) the hook also records, per
proposal, the indicator's probability and whether the proposal lies on an unseen class: the head exposes
``last_aux = dict(indicator_prob=B×Q, mask_logits=B×Q×h×w)`` after each prediction; a proposal's class is
the majority ground-truth label under its mask (sigmoid > 0.5, at least ``min_proposal_pixels`` labelled
pixels), and proposals on no labelled pixel are skipped. These go into the same file as
``indicator_prob`` / ``indicator_is_unseen`` (the indicator ROC in ``analysis/plots.py``).

Several processes: each image is keyed by its dataset position (rank ``r``'s ``k``-th sample of
mmengine's unshuffled ``DefaultSampler`` is position ``r + k W``); the sampler's padded duplicates
(position ``>=`` the dataset size) are skipped, rank 0 gathers every rank's images and writes them in
dataset order, so the file is the one a single process writes.
"""
from __future__ import annotations

import io
import os.path as osp

import numpy as np
import torch
from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from alignzeg.utils import atomic_write_bytes


@HOOKS.register_module()
class UnseenScoreSamplerHook(Hook):
    """Collect max seen / max unseen scores on unseen ground-truth pixels (see module docstring)."""

    priority = "LOW"

    def __init__(self, out_file: str, max_samples: int = 20000, per_image: int = 512, seed: int = 0,
                 apply_softmax: bool = False, ignore_index: int = 255, min_proposal_pixels: int = 4) -> None:
        if max_samples <= 0 or per_image <= 0:
            raise ValueError(f"max_samples and per_image must be > 0, got {max_samples}, {per_image}")
        self.out_file = out_file
        self.max_samples = max_samples
        self.per_image = per_image
        self.apply_softmax = apply_softmax
        self.ignore_index = ignore_index
        self.seed = int(seed)
        self._seen_mask: torch.Tensor | None = None
        self.min_proposal_pixels = min_proposal_pixels
        # dataset position -> (top seen, top unseen, indicator prob, indicator is-unseen) of the image
        self._images: dict[int, tuple] = {}
        self._indicator = False  # the head exposed indicator outputs (the file then has the indicator keys)

    def before_test(self, runner) -> None:
        meta = runner.test_dataloader.dataset.metainfo
        classes = list(meta["classes"])
        unseen = set(meta.get("unseen_classes") or ())
        if not unseen:
            raise ValueError("UnseenScoreSamplerHook: the test dataset's metainfo names no 'unseen_classes'")
        self._seen_mask = torch.tensor([c not in unseen for c in classes])
        self._images = {}
        self._indicator = False

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        from mmengine.dist import get_dist_info

        seen_mask = self._seen_mask
        outputs = outputs or []
        rank, world = get_dist_info()
        loader = runner.test_dataloader
        size, batch = len(loader.dataset), int(loader.batch_size or 1)
        aux = self._indicator_outputs(runner, outputs)
        self._indicator |= aux is not None
        empty = np.zeros(0, np.float32)
        for j, sample in enumerate(outputs):
            pos = rank + (batch_idx * batch + j) * world
            if pos >= size:  # the sampler's padded duplicate: counted by the rank that owns it
                continue
            top = (empty, empty)
            if "seg_logits" in sample and "gt_sem_seg" in sample:
                top = self._top_scores(sample, seen_mask, np.random.default_rng([self.seed, pos]))
            ind = (empty, np.zeros(0, bool))
            if aux is not None:
                ind = proposal_indicator_labels(
                    aux["indicator_prob"][j:j + 1], aux["mask_logits"][j:j + 1],
                    [sample.gt_sem_seg.data.squeeze(0)], ~seen_mask, self.ignore_index, self.min_proposal_pixels)
            self._images[pos] = (*top, *ind)

    def _top_scores(self, sample, seen_mask: torch.Tensor, rng: np.random.Generator) -> tuple:
        """Max seen and max unseen score of up to ``per_image`` random unseen-ground-truth pixels."""
        scores = sample.seg_logits.data.float()  # C x H x W
        gt = sample.gt_sem_seg.data.squeeze(0).to(scores.device)
        if scores.shape[0] != seen_mask.numel():
            raise ValueError(f"seg_logits have {scores.shape[0]} classes, the dataset {seen_mask.numel()}")
        if self.apply_softmax:
            scores = scores.softmax(dim=0)
        valid = gt != self.ignore_index
        is_unseen_gt = valid & ~seen_mask.to(gt.device)[gt.clamp(max=seen_mask.numel() - 1)]
        idx = is_unseen_gt.flatten().nonzero().squeeze(1).cpu().numpy()
        if idx.size == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        if idx.size > self.per_image:
            idx = rng.choice(idx, size=self.per_image, replace=False)
        flat = scores.flatten(1)[:, torch.from_numpy(idx)]
        return (flat[seen_mask].max(dim=0).values.cpu().numpy(), flat[~seen_mask].max(dim=0).values.cpu().numpy())

    @staticmethod
    def _indicator_outputs(runner, outputs):
        from mmengine.model import is_model_wrapper

        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        aux = getattr(getattr(model, "decode_head", None), "last_aux", None)
        if not aux or "indicator_prob" not in aux or len(outputs) != aux["indicator_prob"].shape[0]:
            return None
        return aux

    def after_test(self, runner) -> None:
        from mmengine.dist import all_gather_object, get_world_size, is_main_process

        images, indicator = self._images, self._indicator
        if get_world_size() > 1:  # every rank's images, written once by rank 0
            parts = all_gather_object((images, indicator))
            if not is_main_process():
                return
            images = {pos: v for part, _ in parts for pos, v in part.items()}
            indicator = any(flag for _, flag in parts)
        order = [images[pos] for pos in sorted(images)]

        def cat(i: int, dtype) -> np.ndarray:  # field i of every image, in dataset order
            return np.concatenate([v[i] for v in order]).astype(dtype) if order else np.zeros(0, dtype)

        seen, unseen = cat(0, np.float32), cat(1, np.float32)
        if seen.size > self.max_samples:
            keep = np.sort(np.random.default_rng(self.seed).choice(seen.size, size=self.max_samples,
                                                                   replace=False))
            seen, unseen = seen[keep], unseen[keep]
        buf = io.BytesIO()
        extra = {}
        if indicator:
            extra = dict(indicator_prob=cat(2, np.float32), indicator_is_unseen=cat(3, bool))
        np.savez(buf, top_seen=seen.astype(np.float32), top_unseen=unseen.astype(np.float32), **extra)
        atomic_write_bytes(self.out_file, buf.getvalue())
        runner.logger.info(f"UnseenScoreSamplerHook: {seen.size} unseen-class pixels sampled -> {self.out_file}; "
                           f"top seen > top unseen on {100.0 * float((seen > unseen).mean() if seen.size else 0):.1f}%")


def proposal_indicator_labels(indicator_prob: torch.Tensor, mask_logits: torch.Tensor, gts: list,
                              unseen_mask: torch.Tensor, ignore_index: int = 255,
                              min_pixels: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Per proposal: (indicator probability, whether its majority ground-truth class is unseen).

    ``indicator_prob`` B×Q, ``mask_logits`` B×Q×h×w (resized to each ground truth's size), ``gts`` B label
    maps H×W in the full label space, ``unseen_mask`` C booleans. Proposals covering fewer than
    ``min_pixels`` labelled pixels are dropped.
    """
    import torch.nn.functional as F

    probs, labels = [], []
    num_classes = unseen_mask.numel()
    for b, gt in enumerate(gts):
        gt = gt.long().cpu()
        masks = F.interpolate(mask_logits[b:b + 1].float().cpu(), size=gt.shape[-2:], mode="bilinear",
                              align_corners=False)[0].sigmoid() > 0.5
        valid = gt != ignore_index
        onehot = F.one_hot(gt.clamp(max=num_classes - 1) * valid, num_classes).bool() & valid[..., None]
        counts = (masks.flatten(1).float() @ onehot.flatten(0, 1).float())  # Q x C labelled pixels per class
        keep = counts.sum(1) >= min_pixels
        major = counts.argmax(1)
        probs.append(indicator_prob[b].float().cpu()[keep].numpy())
        labels.append(unseen_mask.cpu()[major[keep]].numpy())
    return np.concatenate(probs), np.concatenate(labels).astype(bool)


@HOOKS.register_module()
class PredictionSaverHook(Hook):
    """Save the image, ground truth and prediction of chosen test images (the qualitative figure).

    ``names``: image file stems to keep (the pipeline picks them by a fixed rule, see
    :func:`qualitative_images`); each is written to ``out_dir`` as ``<stem>_image.png`` (RGB as loaded),
    ``<stem>_gt.png`` and ``<stem>_pred.png`` (uint8 label maps, 255 = ignore).
    """

    priority = "LOW"

    def __init__(self, out_dir: str, names: list[str]) -> None:
        self.out_dir = out_dir
        self.names = set(names)

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        from PIL import Image

        for sample in outputs or []:
            path = sample.metainfo.get("img_path", "")
            stem = osp.splitext(osp.basename(path))[0]
            if stem not in self.names:
                continue
            pred = sample.pred_sem_seg.data.squeeze(0).cpu().numpy().astype(np.uint8)
            gt = sample.gt_sem_seg.data.squeeze(0).cpu().numpy().astype(np.uint8)
            img = np.asarray(Image.open(path).convert("RGB"))
            for suffix, arr in (("image", img), ("gt", gt), ("pred", pred)):
                buf = io.BytesIO()  # atomic_write_bytes creates out_dir
                Image.fromarray(arr).save(buf, format="PNG")
                atomic_write_bytes(osp.join(self.out_dir, f"{stem}_{suffix}.png"), buf.getvalue())


def qualitative_images(ann_dir, unseen_ids, k: int = 4, ignore_index: int = 255) -> list[str]:
    """The ``k`` annotation stems where seen and unseen classes meet most: ranked by
    ``min(seen pixels, unseen pixels)`` (ignore pixels count as neither), ties by name. A fixed rule, the
    same images for every method and seed; an image of only unseen (or only seen) pixels ranks last, since
    a seen-class bias cannot show there and an outline of its unseen region would be the image border."""
    from pathlib import Path

    from PIL import Image

    scored = []
    unseen_ids = np.asarray(sorted(unseen_ids))
    for p in sorted(Path(ann_dir).glob("*.png")):
        lab = np.asarray(Image.open(p))
        unseen = int(np.isin(lab, unseen_ids).sum())
        seen = int((lab != ignore_index).sum()) - unseen
        scored.append((-min(seen, unseen), p.stem))
    return [stem for _, stem in sorted(scored)[:k]]
