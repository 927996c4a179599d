"""Zero-shot segmentation datasets for mmseg (registered in ``mmseg.registry.DATASETS``).

Every dataset reads the common prepared layout written by ``alignzeg prepare``::

    DIR/images/{train,val}/<id>.jpg|.png
    DIR/annotations/{train,val}/<id>.png   uint8, full label space 0..C-1, 255 = ignore
    DIR/split.json                         classes in label order + unseen names

and exposes one of three label views, chosen by ``mode``:

* ``"seen"`` (inductive training): ``metainfo['classes']`` are the seen names; the label map sends
  each full id to its position in the seen list and every unseen id to 255 (images are kept).
* ``"all"`` (evaluation): all names, labels unchanged.
* ``"transductive"``: all names (the unseen names are known), unseen pixels become ``unlabelled_index``
  (default 255, the ignore value), ids unchanged. Self-training (:mod:`alignzeg.models.self_training`)
  pseudo-labels those pixels; a value other than 255 (the paper-scale configs use 254) keeps them apart
  from void pixels, as ZegCLIP's visibility map does.

The pattern follows mmseg's ``BaseSegDataset`` (``datasets/basesegdataset.py``): a class-level
``METAINFO`` with the full class list and palette, the classes of a run overridden through
``metainfo``, and a ``label_map`` applied by mmseg's ``LoadAnnotations`` that sends dropped classes to
255. Differences: the label map comes from the split (by class **name**) and the mode instead of from
comparing two class lists, so it also expresses the transductive view that keeps ids, and a split
whose class list differs from the dataset's ``METAINFO`` is an error rather than a silent remap.

``metainfo`` always carries ``classes``, ``palette``, ``seen_classes``, ``unseen_classes``, ``stuff_classes``,
``split_name`` and ``mode``, plus ``all_classes`` (the full label space in label order).

Bad files are named when they are loaded, not discovered as a crash deep in a loss: the loading
transforms of the pipeline are wrapped so that an undecodable image or label file raises
:class:`BadSampleError` naming it, and each sample is checked right after loading (label map 2-D and
of its image's size, values ``0..C-1`` or 255); ``check_samples=False`` turns this off.
"""
from __future__ import annotations

import os
import os.path as osp
from pathlib import Path
from typing import Sequence

from mmseg.datasets import BaseSegDataset, COCOStuffDataset, PascalContextDataset59, PascalVOCDataset
from mmseg.registry import DATASETS

from alignzeg.splits import Split, load_split

MODES = ("seen", "all", "transductive")
IMG_SUFFIXES = (".jpg", ".jpeg", ".png")


class BadSampleError(ValueError):
    """An image or label file that cannot be used as it is; the message names the file."""


class _NamedLoad:
    """A loading transform whose failures name the file it was loading (``results[key]``)."""

    def __init__(self, transform, key: str, what: str, owner: str) -> None:
        self.transform, self.key, self.what, self.owner = transform, key, what, owner

    def __call__(self, results: dict):
        try:
            return self.transform(results)
        except BadSampleError:
            raise
        except Exception as err:  # cv2/PIL decoding failures come as several types
            text = str(err)
            undecodable = ((isinstance(err, AssertionError) and "failed to load image" in text)   # cv2 gave None
                           or (isinstance(err, AttributeError) and "NoneType" in text)
                           or "cannot identify image file" in text)                            # PIL
            detail = "not a decodable image (corrupt, truncated or not an image)" if undecodable \
                else f"{type(err).__name__}: {text}"
            raise BadSampleError(f"{self.owner}: cannot load {self.what} {results.get(self.key)}: {detail}") from err

    def __repr__(self) -> str:
        return repr(self.transform)


class _CheckSample:
    """After loading: the label map is 2-D, has its image's size, and holds only ``0..n-1`` or ``ignore``.

    ``n`` is the number of classes of the dataset's view. In ``"seen"`` mode every raw id of the
    split is mapped to a seen position or ``ignore``, so a value ``>= n`` left after the label map is
    a raw value outside the split's label space; in the other modes the view has all classes.
    Costs one ``bincount`` of the ``uint8`` label map per sample.
    """

    def __init__(self, num_classes: int, num_full: int, ignore_index: int, owner: str,
                 unlabelled_index: int | None = None) -> None:
        self.num_classes, self.num_full, self.ignore_index, self.owner = num_classes, num_full, ignore_index, owner
        self.allowed = {ignore_index} | ({unlabelled_index} if unlabelled_index is not None else set())

    def _fail(self, msg: str):
        raise BadSampleError(f"{self.owner}: {msg}")

    def __call__(self, results: dict) -> dict:
        import numpy as np

        seg = results.get("gt_seg_map")
        if seg is None:
            return results
        label, image = results.get("seg_map_path"), results.get("img_path")
        hw = results.get("ori_shape")
        if seg.ndim == 3:
            self._fail(f"label file {label} has {seg.shape[2]} channels; expected a single-channel PNG of "
                       f"class ids (not a colour image)")
        if hw is not None:
            hw = tuple(int(v) for v in hw[:2])
            if seg.ndim < 2 and seg.size == hw[0] * hw[1]:   # LoadAnnotations squeezes 1-pixel-wide maps
                seg = results["gt_seg_map"] = seg.reshape(hw)
            if tuple(seg.shape) != hw:
                self._fail(f"label file {label} is {seg.shape[-1]}x{seg.shape[0]} (WxH) but its image {image} is "
                           f"{hw[1]}x{hw[0]}")
        counts = np.bincount(np.asarray(seg, dtype=np.uint8).ravel(), minlength=256)
        values = np.flatnonzero(counts)
        bad = [int(v) for v in values if v >= self.num_classes and int(v) not in self.allowed]
        if bad:
            self._fail(f"label file {label} holds values {bad[:10]} outside the label range 0..{self.num_full - 1} "
                       f"({self.num_full} classes) and {self.ignore_index} (ignore)")
        return results


def _guard_pipeline(dataset: "ZeroShotSegDataset") -> None:
    """Make loading failures name their file and check every loaded sample (:class:`_CheckSample`).

    Wraps mmcv's ``LoadImageFromFile`` and ``LoadAnnotations`` (mmseg's is a subclass) in
    ``dataset.pipeline`` and inserts the check after the last of them, before any resize or crop.
    """
    from mmcv.transforms import LoadAnnotations, LoadImageFromFile

    transforms = getattr(dataset.pipeline, "transforms", None)
    if not transforms or any(isinstance(t, (_NamedLoad, _CheckSample)) for t in transforms):
        return
    owner = type(dataset).__name__
    loads = []
    for i, t in enumerate(transforms):
        if isinstance(t, LoadAnnotations):
            transforms[i] = _NamedLoad(t, "seg_map_path", "label file", owner)
            loads.append(i)
        elif isinstance(t, LoadImageFromFile):
            transforms[i] = _NamedLoad(t, "img_path", "image", owner)
            loads.append(i)
    if any(transforms[i].key == "seg_map_path" for i in loads):
        transforms.insert(max(loads) + 1, _CheckSample(len(dataset.metainfo["classes"]), len(dataset.split.classes),
                                                       dataset.ignore_index, owner,
                                                       dataset.unlabelled_index if dataset.mode == "transductive"
                                                       else None))


def _generated_palette(n: int) -> list[list[int]]:
    """A fixed palette for ``n`` classes (independent of the global numpy random state)."""
    import numpy as np

    rng = np.random.default_rng(42)
    return rng.integers(0, 255, size=(n, 3)).tolist()


def _class_list_difference(a: Sequence[str], b: Sequence[str], name_a: str, name_b: str) -> str:
    """Name the classes only one of two lists has, or else the first position where their order differs."""
    only_a = [c for c in a if c not in set(b)]
    only_b = [c for c in b if c not in set(a)]
    parts = []
    if only_a:
        parts.append(f"not in the {name_b}: {only_a[:5]}" + (f" (+{len(only_a) - 5} more)" if len(only_a) > 5 else ""))
    if only_b:
        parts.append(f"missing from the {name_a}: {only_b[:5]}" + (f" (+{len(only_b) - 5} more)" if len(only_b) > 5 else ""))
    if not parts:
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if i is None:
            parts.append(f"{len(a)} names in the {name_a}, {len(b)} in the {name_b}")
        else:
            parts.append(f"same names in another order, first at index {i}: {a[i]!r} ({name_a}) vs "
                         f"{b[i]!r} ({name_b})")
    return "; ".join(parts)


def _full_metainfo(split_name: str, palette: Sequence) -> dict:
    split = load_split(split_name)
    return dict(classes=tuple(split.classes), palette=[list(c) for c in palette])


@DATASETS.register_module()
class ZeroShotSegDataset(BaseSegDataset):
    """A prepared dataset seen through a zero-shot split.

    Args:
        split: a shipped split name, a path to a split JSON (absolute, or relative to ``data_root``),
            a :class:`~alignzeg.splits.Split` or a split dict. Default: ``data_root/split.json`` when
            present, else the class's ``DEFAULT_SPLIT``.
        mode: ``"seen"``, ``"all"`` or ``"transductive"`` (see the module docstring).
        unlabelled_index: mode ``"transductive"``: the value of unseen pixels (default 255 = ignore).
        data_prefix: folders of images and labels; default ``images/train`` + ``annotations/train``,
            or ``images/val`` + ``annotations/val`` when ``test_mode`` is true.
        img_suffix: one suffix or a tuple of accepted image suffixes (default ``.jpg .jpeg .png``).
        metainfo: extra meta keys; ``classes`` may be given only if equal to the split's full class
            list, ``palette`` must then have one colour per class of the full list.
        check_samples: make image / label decoding failures name the file and check each loaded
            sample (label map 2-D, same size as its image, values ``0..C-1`` or ``ignore_index``),
            raising :class:`BadSampleError`; costs one ``bincount`` per sample.
        **kwargs: the remaining ``BaseSegDataset`` arguments.
    """

    METAINFO: dict = dict()
    DEFAULT_SPLIT: str | None = None

    def __init__(self, split: str | os.PathLike | Split | dict | None = None, mode: str = "all", *,
                 unlabelled_index: int = 255,
                 data_root: str | None = None, data_prefix: dict | None = None,
                 img_suffix: str | Sequence[str] = IMG_SUFFIXES, seg_map_suffix: str = ".png",
                 metainfo: dict | None = None, test_mode: bool = False, check_samples: bool = True,
                 **kwargs) -> None:
        name = type(self).__name__
        if mode not in MODES:
            raise ValueError(f"{name}: unknown mode {mode!r} (choose from {', '.join(MODES)})")
        if data_root is not None and not osp.isdir(data_root):
            raise FileNotFoundError(f"{name}: data_root folder not found: {data_root}")
        self.mode = mode
        if isinstance(unlabelled_index, bool) or not isinstance(unlabelled_index, int) \
                or not 0 <= unlabelled_index <= 255:
            raise ValueError(f"{name}: unlabelled_index must be an integer in 0..255, got {unlabelled_index!r}")
        if unlabelled_index != 255 and mode != "transductive":
            raise ValueError(f"{name}: unlabelled_index={unlabelled_index} is only used in mode 'transductive' "
                             f"(mode is {mode!r})")
        self.unlabelled_index = int(unlabelled_index)
        self.split = self._resolve_split(split, data_root)
        if self.unlabelled_index < len(self.split.classes):
            raise ValueError(f"{name}: unlabelled_index={self.unlabelled_index} is a class id of split "
                             f"{self.split.name!r} ({len(self.split.classes)} classes)")
        if data_prefix is None:
            subset = "val" if test_mode else "train"
            data_prefix = dict(img_path=f"images/{subset}", seg_map_path=f"annotations/{subset}")
        super().__init__(data_root=data_root, data_prefix=data_prefix, img_suffix=img_suffix,
                         seg_map_suffix=seg_map_suffix, metainfo=self._zero_shot_metainfo(metainfo),
                         test_mode=test_mode, **kwargs)
        # String values are set here: mmengine's _load_metainfo would try to read a file of that name.
        self._metainfo.update(split_name=self.split.name, mode=self.mode)
        if check_samples:
            _guard_pipeline(self)

    # -- split and meta information -------------------------------------------------------------
    def _resolve_split(self, split, data_root) -> Split:
        name = type(self).__name__
        if isinstance(split, Split):
            resolved = split
        elif isinstance(split, dict):
            try:
                resolved = Split.from_dict(split, origin=f"{name} split dict")
            except ValueError as err:
                raise ValueError(f"{name}: bad split: {err}") from err
        else:
            if split is None:
                if data_root is not None and osp.isfile(osp.join(data_root, "split.json")):
                    split = osp.join(data_root, "split.json")
                elif self.DEFAULT_SPLIT is not None:
                    split = self.DEFAULT_SPLIT
                else:
                    raise FileNotFoundError(f"{name}: no split given and no split.json in data_root "
                                            f"{data_root!r}")
            elif data_root is not None and not osp.isabs(str(split)) \
                    and osp.isfile(osp.join(data_root, str(split))):
                split = osp.join(data_root, str(split))
            try:
                resolved = load_split(split)
            except (FileNotFoundError, ValueError) as err:
                raise type(err)(f"{name}: bad split {str(split)!r}: {err}") from err
        expected = self.METAINFO.get("classes")
        if expected is not None and tuple(expected) != tuple(resolved.classes):
            raise ValueError(f"{name}: split {resolved.name!r} has a class list that differs from the dataset's "
                             f"({len(resolved.classes)} vs {len(expected)} classes; "
                             f"{_class_list_difference(resolved.classes, expected, 'split', 'dataset')})")
        return resolved

    def _zero_shot_metainfo(self, metainfo: dict | None) -> dict:
        name = type(self).__name__
        split = self.split
        full = list(split.classes)
        meta = dict(metainfo or {})
        given = meta.pop("classes", None)
        if given is not None and list(given) != full:
            raise ValueError(f"{name}: metainfo 'classes' must equal the full class list of split "
                             f"{split.name!r} in label order; choose the view with mode= instead")
        palette = meta.pop("palette", None)
        if palette is None:
            palette = self.METAINFO.get("palette")
            if palette is None or len(palette) != len(full):
                palette = _generated_palette(len(full))
        elif len(palette) != len(full):
            raise ValueError(f"{name}: metainfo 'palette' has {len(palette)} colours for {len(full)} classes")
        if self.mode == "seen":
            classes, colours = list(split.seen), [list(palette[i]) for i in split.seen_ids]
        else:
            classes, colours = full, [list(c) for c in palette]
        meta.update(classes=tuple(classes), palette=colours, seen_classes=tuple(split.seen),
                    unseen_classes=tuple(split.unseen), all_classes=tuple(full),
                    stuff_classes=tuple(split.stuff))
        return meta

    def get_label_map(self, new_classes: Sequence | None = None) -> dict | None:
        """{full id: id of this view} from the split and mode (``new_classes`` is not used)."""
        split, ignore = self.split, self.ignore_index
        if self.mode == "all":
            return None
        if self.mode == "seen":
            pos = {c: i for i, c in enumerate(split.seen)}
            return {i: pos.get(c, ignore) for i, c in enumerate(split.classes)}
        return {i: self.unlabelled_index for i in split.unseen_ids}   # transductive: other ids unchanged

    # -- file list -------------------------------------------------------------------------------
    def load_data_list(self) -> list[dict]:
        name = type(self).__name__
        img_dir = self.data_prefix.get("img_path") or ""
        ann_dir = self.data_prefix.get("seg_map_path") or None
        if not osp.isdir(img_dir):
            raise FileNotFoundError(f"{name}: image folder not found: {img_dir}")
        if ann_dir is not None and not osp.isdir(ann_dir):
            raise FileNotFoundError(f"{name}: annotation folder not found: {ann_dir}")
        suffixes = (self.img_suffix,) if isinstance(self.img_suffix, str) else tuple(self.img_suffix)
        pairs: list[tuple[str, str]] = []   # (stem relative to img_dir, image path)
        if self.ann_file:
            if not osp.isfile(self.ann_file):
                raise FileNotFoundError(f"{name}: ann_file not found: {self.ann_file}")
            for line in Path(self.ann_file).read_text().splitlines():
                stem = line.strip()
                if not stem:
                    continue
                found = [osp.join(img_dir, stem + s) for s in suffixes if osp.isfile(osp.join(img_dir, stem + s))]
                if not found:
                    raise FileNotFoundError(f"{name}: image {stem!r} listed in {self.ann_file} not found in "
                                            f"{img_dir} (suffixes {', '.join(suffixes)})")
                pairs.append((stem, found[0]))
        else:
            for root, dirs, files in os.walk(img_dir):
                dirs.sort()
                for fname in sorted(files):
                    suffix = next((s for s in suffixes if fname.lower().endswith(s.lower())), None)
                    if suffix is None:
                        continue
                    path = osp.join(root, fname)
                    pairs.append((osp.relpath(path, img_dir)[: -len(suffix)], path))
            pairs.sort(key=lambda p: p[1])
        if not pairs:
            raise ValueError(f"{name}: no images with suffix {', '.join(suffixes)} in {img_dir}")
        data_list = []
        for stem, img_path in pairs:
            info = dict(img_path=img_path, label_map=self.label_map, reduce_zero_label=self.reduce_zero_label,
                        seg_fields=[])
            if ann_dir is not None:
                seg = osp.join(ann_dir, stem + self.seg_map_suffix)
                if not osp.isfile(seg):
                    raise FileNotFoundError(f"{name}: annotation for image {img_path} not found: {seg}")
                info["seg_map_path"] = seg
            data_list.append(info)
        return data_list


@DATASETS.register_module()
class COCOStuffZSDataset(ZeroShotSegDataset):
    """COCO-Stuff 164k (171 classes, mmseg ``COCOStuffDataset`` order and palette), prepared by
    ``alignzeg prepare coco-stuff``. Default split ``coco-stuff-156s15u``."""

    DEFAULT_SPLIT = "coco-stuff-156s15u"
    METAINFO = _full_metainfo(DEFAULT_SPLIT, COCOStuffDataset.METAINFO["palette"])


@DATASETS.register_module()
class VOCZSDataset(ZeroShotSegDataset):
    """PASCAL VOC 2012 (20 classes, background ignored; mmseg ``PascalVOCDataset`` palette without
    background), prepared by ``alignzeg prepare voc``. Default split ``voc12-15s5u``."""

    DEFAULT_SPLIT = "voc12-15s5u"
    METAINFO = _full_metainfo(DEFAULT_SPLIT, PascalVOCDataset.METAINFO["palette"][1:])


@DATASETS.register_module()
class Context59ZSDataset(ZeroShotSegDataset):
    """PASCAL Context-59 (background ignored; mmseg ``PascalContextDataset59`` order and palette),
    prepared by ``alignzeg prepare context``. Default split ``context59-zs3-10u``; any split over the
    same 59 names (for example another 10-unseen split) is accepted through ``split``."""

    DEFAULT_SPLIT = "context59-zs3-10u"
    METAINFO = _full_metainfo(DEFAULT_SPLIT, PascalContextDataset59.METAINFO["palette"])


@DATASETS.register_module()
class SyntheticZSDataset(ZeroShotSegDataset):
    """The embedded synthetic benchmark (``alignzeg prepare synthetic``): classes and unseen names come
    from ``data_root/split.json`` written by the generator."""


@DATASETS.register_module()
class FolderZSDataset(ZeroShotSegDataset):
    """Any folder of images and single-channel label PNGs with a class-name file.

    Args:
        classes_file: text file with one class name per line (blank lines skipped); the label value
            of a class is its line index among the names. Relative paths are taken from ``data_root``.
        unseen: unseen class names (used when ``split`` is not given).
        split: optional split; its classes must equal the names of ``classes_file``.
        **kwargs: as :class:`ZeroShotSegDataset` (set ``data_prefix`` to the image and mask folders).
    """

    def __init__(self, classes_file: str, unseen: Sequence[str] = (), split=None, mode: str = "all", *,
                 data_root: str | None = None, **kwargs) -> None:
        path = Path(classes_file)
        if not path.is_absolute() and data_root is not None:
            path = Path(data_root) / path
        if not path.is_file():
            raise FileNotFoundError(f"FolderZSDataset: classes_file not found: {path}")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names:
            raise ValueError(f"FolderZSDataset: classes_file {path} holds no class names")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"FolderZSDataset: classes_file {path}: duplicate class names {repeated}")
        if split is None:
            try:
                split = Split(name=path.stem, classes=tuple(names), unseen=tuple(unseen), dataset="folder",
                              source=str(path))
            except ValueError as err:
                raise ValueError(f"FolderZSDataset: classes_file {path}: {err}") from err
        else:
            split = self._resolve_split(split, data_root)
            if list(split.classes) != names:
                raise ValueError(f"FolderZSDataset: split {split.name!r} classes differ from classes_file {path} "
                                 f"({_class_list_difference(split.classes, names, 'split', 'classes_file')})")
        super().__init__(split=split, mode=mode, data_root=data_root, **kwargs)
