"""mmseg metric for zero-shot segmentation: seen / unseen / harmonic mIoU from one confusion matrix.

Follows the contract of mmseg's ``IoUMetric`` (mmsegmentation 1.x,
``mmseg/evaluation/metrics/iou_metric.py``, Apache-2.0): ``process`` reduces each batch to counts,
``compute_metrics`` turns the collected counts into numbers. Differences: one C x C confusion matrix
(int64) is accumulated per process instead of four histograms per image, so memory stays constant
over the dataset; the numbers are the zero-shot set (see :mod:`alignzeg.evaluation.confusion`), and the
full table (per class, confusion matrix) can be written to ``<output_dir>/zeroshot_metrics.json``.

Multi-process evaluation: each rank keeps one entry in ``self.results``: its rank, its number of
samples ``n``, the summed matrix of all its samples but the last, and the last sample's matrix apart.
mmengine's ``DefaultSampler`` pads the index list to a multiple of the world size ``W`` by repeating its
first indices at the end, and rank ``r`` takes positions ``r, r + W, ...``; so a rank's only possible
padded duplicate is its last sample, at position ``r + (n - 1) W``, and it is a duplicate exactly when that
position is ``>=`` the dataset size. ``compute_metrics`` (rank 0) drops those and sums the rest, so every
image counts once, as in one process (tested with a 2-process gloo run). The same positions restore
the single-process order where it matters: the bootstrap's per-image matrices are put back in dataset
order (so its resamples are the one-process ones), and a γ grid read off the first images is read off
the margins of dataset positions ``0 .. k-1`` gathered from every rank's first batch (``k``:
``gamma_sweep.grid_images``, else the per-rank batch length), the one-process first batch when ``k`` is
the loader's batch size (and the dataset has at least ``k`` images or no padding).
"""
from __future__ import annotations

import os.path as osp
from typing import Any, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log

from mmseg.registry import METRICS

from alignzeg.engine.checkpoint import first_difference
from alignzeg.evaluation.confusion import (METRIC_KEYS, _is_torch, confusion_matrix, format_table,
                                           metrics_from_confusion, nan_to_none)

JSON_NAME = "zeroshot_metrics.json"


def _field(obj: Any, key: str):
    """``obj[key]`` for dicts (what mmengine's Evaluator passes), ``obj.key`` for data elements."""
    if isinstance(obj, dict):
        return obj[key]
    return getattr(obj, key)


def _has_field(obj: Any, key: str) -> bool:
    return key in obj if isinstance(obj, dict) else hasattr(obj, key)


@METRICS.register_module()
class ZeroShotIoUMetric(BaseMetric):
    """Joint-label-space mIoU over seen and unseen classes, their harmonic mean and the seen bias.

    Args:
        ignore_index: ground-truth label that is skipped. Defaults to 255.
        unseen_classes: names of the unseen classes. Takes precedence over ``split``.
        split: a split name or JSON path (:func:`alignzeg.splits.load_split`) giving the unseen classes;
            its class list must equal the dataset's.
            With neither argument, ``dataset_meta['unseen_classes']`` is used (every
            ``ZeroShotSegDataset`` provides it); if that is missing too, evaluation raises.
        output_dir: folder for ``zeroshot_metrics.json`` (written atomically, rank 0 only, overwritten
            at every evaluation). None: no file.
        gamma_sweep: the seen–unseen trade-off in the same pass (:mod:`alignzeg.evaluation.calibration`):
            ``dict(num=41)`` takes the γ grid from the quantiles of the first batch's per-pixel margins
            (best seen minus best unseen score, the model's own ``seg_logits`` units) plus -inf, 0 and
            +inf (``grid_images=k``: of the first ``k`` images instead, ``k`` at most the loader's batch
            size; the DVC pipeline sets the batch size, so one process and several read the same images);
            ``gammas=[...]`` fixes it instead; ``extra=[...]`` adds
            values; ``calibrated=γ`` (one of them, e.g. chosen on val) reports ``*_cal`` metrics at that γ.
            The JSON gains ``gamma_sweep`` (γ, S, U, hIoU per γ, ``ausuc``) and the flat scalars
            ``AUSUC`` and, with ``calibrated``, ``mIoU_seen_cal``, ``mIoU_unseen_cal``, ``hIoU_cal``,
            ``gamma_cal``. None (default): no sweep.
        bootstrap: number of per-image bootstrap resamples (0: none). Keeps one C×C matrix per image
            (int32) and writes ``bootstrap`` to the JSON: the 2.5 / 97.5 % percentiles of seen and unseen
            mIoU and hIoU over resamples of the evaluated images (seeded by ``bootstrap_seed``), the
            interval of a single run (several processes: the images are gathered in dataset order).
        collect_device, prefix: as for every mmengine metric.

    Returns to mmengine the flat scalars ``mIoU, mIoU_seen, mIoU_unseen, hIoU, aAcc, unseen_to_seen``
    (percentages, unrounded); the JSON holds the per-class table and the confusion matrix.
    """

    def __init__(self,
                 ignore_index: int = 255,
                 unseen_classes: Optional[Sequence[str]] = None,
                 split: Optional[str] = None,
                 output_dir: Optional[str] = None,
                 gamma_sweep: Optional[dict] = None,
                 bootstrap: int = 0,
                 bootstrap_seed: int = 0,
                 collect_device: str = "cpu",
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.gamma_sweep = dict(gamma_sweep) if gamma_sweep is not None else None
        if self.gamma_sweep is not None:
            unknown = set(self.gamma_sweep) - {"num", "gammas", "extra", "calibrated", "grid_images"}
            if unknown:
                raise ValueError(f"ZeroShotIoUMetric: gamma_sweep: unknown keys {sorted(unknown)} "
                                 "(use num, gammas, extra, calibrated, grid_images)")
        self._gammas = None
        if int(bootstrap) < 0:
            raise ValueError(f"ZeroShotIoUMetric: bootstrap must be >= 0, got {bootstrap}")
        self.bootstrap = int(bootstrap)
        self.bootstrap_seed = int(bootstrap_seed)
        self.ignore_index = int(ignore_index)
        if isinstance(unseen_classes, str):
            raise TypeError("ZeroShotIoUMetric: 'unseen_classes' must be a list of class names, "
                            f"got the string {unseen_classes!r}")
        self.unseen_classes = list(unseen_classes) if unseen_classes is not None else None
        self.split = split
        self.output_dir = output_dir
        self._split_obj = None
        if split is not None:
            from alignzeg.splits import load_split

            self._split_obj = load_split(split)

    # -- vocabulary -------------------------------------------------------------------------------
    def _vocabulary(self) -> tuple[list[str], list[str]]:
        """(classes in label order, unseen names) for the dataset being evaluated."""
        meta = self.dataset_meta or {}
        classes = list(meta["classes"]) if meta.get("classes") is not None else None
        if self._split_obj is not None:
            split_classes = list(self._split_obj.classes)
            if classes is None:
                classes = split_classes
            elif classes != split_classes:
                raise ValueError(
                    f"ZeroShotIoUMetric: split {self.split!r} does not describe the evaluated dataset: "
                    f"{first_difference(split_classes, classes, 'split', 'dataset')}")
        if classes is None:
            raise ValueError("ZeroShotIoUMetric: dataset_meta has no 'classes' and no 'split' was given")
        if self.unseen_classes is not None:
            unseen = self.unseen_classes
            source = "argument 'unseen_classes'"
        elif self._split_obj is not None:
            unseen = list(self._split_obj.unseen)
            source = f"split {self.split!r}"
        elif meta.get("unseen_classes") is not None:
            unseen = list(meta["unseen_classes"])
            source = "dataset_meta['unseen_classes']"
        else:
            raise ValueError(
                "ZeroShotIoUMetric: no unseen classes known; pass 'unseen_classes=' or 'split=', or "
                "evaluate a dataset whose metainfo has 'unseen_classes' (ZeroShotSegDataset)")
        missing = [u for u in unseen if u not in classes]
        if missing and source == "dataset_meta['unseen_classes']":
            # A dataset in 'seen' mode names the unseen classes but does not contain them.
            print_log(f"ZeroShotIoUMetric: unseen classes {missing} are not in the evaluated label "
                      f"space (dataset mode {meta.get('mode')!r}); they are left out",
                      logger="current", level=30)
            unseen = [u for u in unseen if u in classes]
        elif missing:
            raise ValueError(f"ZeroShotIoUMetric: unseen classes {missing} from the {source} are not "
                             f"in the dataset's classes")
        return classes, unseen

    # -- mmengine interface -------------------------------------------------------------------------
    def process(self, data_batch: Any, data_samples: Sequence[Any]) -> None:
        """Add the batch's pixel counts to this process's single confusion matrix."""
        meta = self.dataset_meta or {}
        if meta.get("classes") is not None:
            num_classes = len(meta["classes"])
        elif self._split_obj is not None:
            num_classes = self._split_obj.num_classes
        else:
            raise ValueError("ZeroShotIoUMetric: dataset_meta has no 'classes' and no 'split' was given")
        sweeps = self._sweep_batch(data_samples, num_classes) if self.gamma_sweep is not None else None
        pairs = []
        for sample in data_samples:
            pred = _field(_field(sample, "pred_sem_seg"), "data").squeeze()
            if not _has_field(sample, "gt_sem_seg"):
                where = sample.get("img_path", "?") if isinstance(sample, dict) else "?"
                raise KeyError(f"ZeroShotIoUMetric: data sample for {where} has no 'gt_sem_seg'")
            pairs.append((pred, _field(_field(sample, "gt_sem_seg"), "data").squeeze()))
        if not pairs:
            return
        if self.bootstrap or sweeps is not None:  # per image: the bootstrap resamples images
            for i, sample in enumerate(data_samples):
                counts = self._counts([pairs[i]], [sample], num_classes)
                self._add_sample(counts, None if sweeps is None else sweeps[i])
                if self.bootstrap:
                    self.results[0]["images"].append(counts.astype(np.int32))
            return
        # One bincount for all but the last sample of the batch, one for the last (kept apart for the
        # padded-duplicate rule): the same counts as image by image, with fewer calls.
        if len(pairs) > 1:
            self._add_sample(self._counts(pairs[:-1], data_samples[:-1], num_classes), None)
        self._add_sample(self._counts(pairs[-1:], data_samples[-1:], num_classes), None)

    def _counts(self, pairs, samples, num_classes: int) -> np.ndarray:
        """The summed confusion matrix of ``pairs``; a bad label map is named by its sample's image path."""
        if len(pairs) > 1:
            if all(_is_torch(p) and _is_torch(g) and p.shape == g.shape for p, g in pairs):
                pred = torch.cat([p.reshape(-1) for p, _ in pairs])
                gt = torch.cat([g.reshape(-1).to(pred.device) for _, g in pairs])
                try:
                    return np.asarray(confusion_matrix(pred, gt, num_classes, self.ignore_index), dtype=np.int64)
                except ValueError:
                    pass  # a bad map somewhere: image by image below, so that the error names it
            total = np.zeros((num_classes, num_classes), dtype=np.int64)
            for pair, sample in zip(pairs, samples):
                total += self._counts([pair], [sample], num_classes)
            return total
        try:
            return np.asarray(confusion_matrix(pairs[0][0], pairs[0][1], num_classes, self.ignore_index),
                              dtype=np.int64)
        except ValueError as err:
            path = samples[0].get("img_path") if isinstance(samples[0], dict) else getattr(
                samples[0], "img_path", None)
            raise ValueError(f"{path or 'data sample'}: {err}") from err

    def _add_sample(self, conf: np.ndarray, sweep: Optional[np.ndarray]) -> None:
        """Fold the previous last sample into the body; keep this one apart (see the module docstring)."""
        if not self.results:
            from mmengine.dist import get_rank

            self.results.append({"rank": get_rank(), "n": 0, "conf": np.zeros_like(conf), "last_conf": None,
                                 "sweep": None if sweep is None else np.zeros_like(sweep), "last_sweep": None,
                                 "images": []})
        acc = self.results[0]
        if acc["last_conf"] is not None:
            acc["conf"] = acc["conf"] + acc["last_conf"]
            if sweep is not None:
                acc["sweep"] = acc["sweep"] + acc["last_sweep"]
        acc["last_conf"], acc["last_sweep"], acc["n"] = conf, sweep, acc["n"] + 1

    def evaluate(self, size: int) -> dict:
        """As mmengine's, remembering the dataset size (padded duplicates are found from it)."""
        self._size = int(size)
        return super().evaluate(size)

    def _seen_mask(self, num_classes: int) -> torch.Tensor:
        classes, unseen = self._vocabulary()
        if len(classes) != num_classes:
            raise ValueError(f"ZeroShotIoUMetric: {len(classes)} class names for {num_classes} classes")
        return torch.tensor([c not in set(unseen) for c in classes], dtype=torch.bool)

    def _sweep_batch(self, data_samples: Sequence[Any], num_classes: int) -> list[np.ndarray]:
        """Per sample, its G×C×C confusion matrices at every γ of the sweep (grid fixed on the first batch)."""
        from alignzeg.evaluation.calibration import gamma_grid, margins_of, sweep_confusions

        seen = self._seen_mask(num_classes)
        scores = []
        for sample in data_samples:
            if not _has_field(sample, "seg_logits"):
                raise KeyError("ZeroShotIoUMetric: gamma_sweep needs 'seg_logits' in the data samples")
            scores.append(_field(_field(sample, "seg_logits"), "data").float())
        if self._gammas is None:
            cfg = self.gamma_sweep
            if cfg.get("gammas") is not None:
                base = np.asarray(list(cfg["gammas"]), dtype=np.float64)
                self._gammas = np.unique(np.concatenate([base, [-np.inf, 0.0, np.inf],
                                                         list(cfg.get("extra") or [])]))
            else:
                from mmengine.dist import all_gather_object, get_world_size

                per = [margins_of(sc, seen).flatten().cpu() for sc in scores]
                first = int(cfg.get("grid_images") or len(per))  # dataset positions 0 .. first-1
                world = get_world_size()
                if world > 1:  # position p is sample p // W of rank p % W
                    ranks = all_gather_object(per)
                    per = [ranks[p % world][p // world] for p in range(first)
                           if p // world < len(ranks[p % world])]
                else:
                    per = per[:first]
                self._gammas = gamma_grid(torch.cat(per), int(cfg.get("num", 41)), cfg.get("extra") or ())
            cal = cfg.get("calibrated")
            if cal is not None and not np.any(self._gammas == float(cal)):
                self._gammas = np.unique(np.concatenate([self._gammas, [float(cal)]]))
        out = []
        for sample, sc in zip(data_samples, scores):
            gt = _field(_field(sample, "gt_sem_seg"), "data").squeeze()
            mats = sweep_confusions(sc.squeeze(0) if sc.dim() == 4 else sc, gt, seen, self._gammas,
                                    self.ignore_index)
            out.append(np.asarray(mats, dtype=np.int64))
        return out

    def compute_metrics(self, results: list) -> dict[str, float]:
        """Sum the per-process matrices, log the table, write the JSON, return the flat scalars."""
        classes, unseen = self._vocabulary()
        matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
        sweep = None
        from mmengine.dist import get_world_size

        world, size = get_world_size(), getattr(self, "_size", None)
        images: dict[int, np.ndarray] = {}   # dataset position -> the image's matrix (bootstrap only)
        for part in results:
            if not isinstance(part, dict) or "last_conf" not in part:
                raise ValueError("ZeroShotIoUMetric: collected an entry that is not this metric's per-rank "
                                 f"accumulator ({type(part).__name__})")
            lasts = [(part["last_conf"], part["last_sweep"])]
            padded = (world > 1 and size is not None
                      and part["rank"] + (part["n"] - 1) * world >= size)  # a DefaultSampler duplicate
            pieces = [(part["conf"], part["sweep"])] + ([] if padded else lasts)
            kept = part.get("images") or []
            for k, img in enumerate(kept[:-1] if padded else kept):
                images[part["rank"] + k * world] = img
            for conf, sw in pieces:
                conf = np.asarray(conf, dtype=np.int64)
                if conf.shape != matrix.shape:
                    raise ValueError(f"ZeroShotIoUMetric: collected matrix of shape {conf.shape}, expected "
                                     f"{matrix.shape}")
                matrix += conf
                if sw is not None:
                    sweep = np.asarray(sw, dtype=np.int64) if sweep is None else sweep + sw
        if self._split_obj is not None:
            stuff = list(self._split_obj.stuff)
        else:
            stuff = list((self.dataset_meta or {}).get("stuff_classes") or ())
        metrics = metrics_from_confusion(matrix, classes, unseen, [c for c in stuff if c in classes])
        flat_extra: dict[str, float] = {}
        if sweep is not None:
            metrics["gamma_sweep"], flat_extra = self._sweep_summary(sweep, classes, unseen)
        if self.bootstrap:
            per_image = np.stack([images[p] for p in sorted(images)])
            metrics["bootstrap"] = bootstrap_interval(per_image, classes, unseen, self.bootstrap,
                                                      self.bootstrap_seed)
        logger: MMLogger = MMLogger.get_current_instance()
        print_log("zero-shot per-class results:\n" + format_table(metrics), logger=logger)
        if self.output_dir is not None:
            from alignzeg.utils import atomic_write_json

            path = osp.join(self.output_dir, JSON_NAME)
            atomic_write_json(path, nan_to_none(metrics))
            print_log(f"zero-shot metrics written to {path}", logger=logger)
        out = {k: float(metrics[k]) for k in METRIC_KEYS}
        out.update(flat_extra)
        return out

    def _sweep_summary(self, sweep: np.ndarray, classes: list[str], unseen: list[str]) -> tuple[dict, dict]:
        from alignzeg.evaluation.calibration import ausuc, curve_from_confusions

        seen = np.array([c not in set(unseen) for c in classes], dtype=bool)
        curve = curve_from_confusions(sweep, seen)
        gammas = [float(g) for g in self._gammas]
        area = ausuc(curve["S"], curve["U"])
        summary = {"gammas": [g if np.isfinite(g) else ("inf" if g > 0 else "-inf") for g in gammas],
                   "S": curve["S"].tolist(), "U": curve["U"].tolist(), "hIoU": curve["hIoU"].tolist(),
                   "ausuc": area}
        flat = {"AUSUC": area}
        cal = self.gamma_sweep.get("calibrated")
        if cal is not None:
            i = gammas.index(float(cal))
            summary["calibrated"] = {"gamma": float(cal), "S": float(curve["S"][i]), "U": float(curve["U"][i]),
                                     "hIoU": float(curve["hIoU"][i])}
            flat.update(mIoU_seen_cal=float(curve["S"][i]), mIoU_unseen_cal=float(curve["U"][i]),
                        hIoU_cal=float(curve["hIoU"][i]), gamma_cal=float(cal))
        return summary, flat


def bootstrap_interval(per_image: np.ndarray, classes: Sequence[str], unseen: Sequence[str], samples: int,
                       seed: int = 0, chunk: int = 200) -> dict:
    """Percentile interval (2.5 / 97.5 %) of seen / unseen mIoU and hIoU over ``samples`` resamples
    (with replacement) of the images whose confusion matrices are ``per_image`` (N×C×C)."""
    from alignzeg.evaluation.calibration import curve_from_confusions

    n, c, _ = per_image.shape
    seen = np.array([x not in set(unseen) for x in classes], dtype=bool)
    flat = per_image.reshape(n, c * c).astype(np.float64)
    rng = np.random.default_rng(seed)
    curves = {"S": [], "U": [], "hIoU": []}
    for start in range(0, samples, chunk):
        b = min(chunk, samples - start)
        draws = rng.integers(0, n, size=(b, n))
        weights = np.stack([np.bincount(row, minlength=n) for row in draws]).astype(np.float64)  # b×N
        mats = (weights @ flat).reshape(b, c, c)
        cur = curve_from_confusions(mats, seen)
        for k in curves:
            curves[k].append(cur[k])
    out = {"samples": int(samples), "seed": int(seed), "images": int(n), "level": 95}
    for k, name in (("S", "mIoU_seen"), ("U", "mIoU_unseen"), ("hIoU", "hIoU")):
        v = np.concatenate(curves[k])
        v = v[np.isfinite(v)]
        out[name] = [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v.size else [None, None]
    return out


__all__ = ["ZeroShotIoUMetric", "JSON_NAME", "bootstrap_interval"]
