"""PASCAL Context (459 classes, official ``trainval.tar.gz``) -> Context-59 in the common layout.

Input (official downloads):

* ``DIR/trainval/<id>.mat`` with the variable ``LabelMap`` (459-class ids) and ``DIR/labels.txt``
  (``"<id>: <name>"`` lines), from https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz;
* the PASCAL VOC 2010 images (``--images``, default ``DIR/JPEGImages``);
* the train / val id lists (``--train-list`` / ``--val-list``, default ``DIR/train.txt`` and
  ``DIR/val.txt``; the standard 4,998 / 5,105 split is VOC2010 ``ImageSets/Main/{train,val}.txt``).

mmseg's converter needs the Detail API (not on PyPI); this one derives Context-59 by class **name**
with scipy: the 59 names of the shipped split ``context59-zs3-10u`` (order of mmseg's
``PascalContextDataset59``) map to 0..58 through their id in ``labels.txt``; every other id,
including 0 and the background/"unknown" classes, becomes 255. Ids outside ``labels.txt`` (and 0)
are rejected / ignored respectively: a ``LabelMap`` value that is neither 0 nor an id of
``labels.txt`` is an error naming the file.

Name matching (documented alias table :data:`ALIASES`): a 59-class name matches a ``labels.txt``
name exactly (case and surrounding spaces ignored). The official ``labels.txt`` spells all 59 the
same way as the 59-class list (``tvmonitor``, ``pottedplant``, ``bedclothes``, ``motorbike``,
``aeroplane``, ``table``); other redistributions use spaced or VOC-style spellings, so when the exact
name is absent the aliases are tried. Zero or several matches are errors naming ``labels.txt``.
With the official file the 459-class ids found are exactly those of mmseg's Detail-API converter
(``tools/dataset_converters/pascal_context.py``, ``_mapping``), listed in :data:`MMSEG_CONTEXT59_IDS`.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from alignzeg.data.prepare.common import (IGNORE, Item, LutMapper, PrepareError, add_common_arguments,
                                          check_items_exist, convert_items, note_counts, read_list, require_dir,
                                          require_file, write_split_and_meta)

SPLIT_NAME = "context59-zs3-10u"

# Alternative spellings tried only when the canonical 59-class name is absent from labels.txt.
ALIASES: dict[str, tuple[str, ...]] = {
    "aeroplane": ("airplane", "aeroplane/airplane"),
    "bedclothes": ("bed clothes", "bed_clothes", "bedcloth"),
    "motorbike": ("motorcycle", "motor bike"),
    "pottedplant": ("potted plant", "potted_plant", "pottedplants"),
    "shelves": ("shelf",),
    "table": ("diningtable", "dining table"),
    "tvmonitor": ("tv monitor", "tv/monitor", "tv_monitor", "tvmonitors"),
}

# 459-class ids of the 59 classes in mmseg's converter (without 0, sorted = alphabetical order).
MMSEG_CONTEXT59_IDS = (2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104,
                       105, 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284,
                       295, 296, 308, 324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420,
                       424, 427, 440, 445, 454, 458)

_LINE = re.compile(r"^\s*(\d+)\s*:\s*(.+?)\s*$")


def add_arguments(parser) -> None:
    parser.add_argument("--src", required=True,
                        help="folder holding trainval/*.mat and labels.txt (contents of trainval.tar.gz)")
    parser.add_argument("--images", default=None, help="VOC2010 JPEGImages folder (default SRC/JPEGImages)")
    parser.add_argument("--train-list", default=None,
                        help="train ids, one per line (default SRC/train.txt; e.g. VOC2010/ImageSets/Main/train.txt)")
    parser.add_argument("--val-list", default=None,
                        help="val ids, one per line (default SRC/val.txt; e.g. VOC2010/ImageSets/Main/val.txt)")
    add_common_arguments(parser)


def _norm(name: str) -> str:
    return " ".join(name.strip().lower().split())


def read_labels_txt(path: Path) -> dict[int, str]:
    """Parse ``labels.txt`` (``"<id>: <name>"`` per line) into {id: name}."""
    path = require_file(path, "PASCAL Context labels.txt")
    labels: dict[int, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise PrepareError(f"{path}: line {n} is not '<id>: <name>': {line!r}")
        idx = int(m.group(1))
        if idx in labels:
            raise PrepareError(f"{path}: line {n} repeats id {idx}")
        labels[idx] = m.group(2)
    if not labels:
        raise PrepareError(f"{path}: no labels")
    return labels


def context59_mapping(labels: dict[int, str], names: list[str],
                      labels_path: Path | str = "labels.txt") -> dict[int, int]:
    """{459-class id: position in ``names``} found by name (exact, then :data:`ALIASES`)."""
    by_name: dict[str, list[int]] = {}
    for idx, name in labels.items():
        by_name.setdefault(_norm(name), []).append(idx)
    mapping: dict[int, int] = {}
    for k, name in enumerate(names):
        ids = by_name.get(_norm(name), [])
        tried = [name]
        if not ids:
            for alias in ALIASES.get(name, ()):
                tried.append(alias)
                ids = ids + by_name.get(_norm(alias), [])
        if not ids:
            raise PrepareError(f"{labels_path}: no class named {' / '.join(map(repr, tried))} "
                               f"(needed for the Context-59 class {name!r})")
        if len(ids) > 1:
            raise PrepareError(f"{labels_path}: Context-59 class {name!r} matches several ids {sorted(ids)}")
        if ids[0] in mapping:
            raise PrepareError(f"{labels_path}: id {ids[0]} matched by both {names[mapping[ids[0]]]!r} and {name!r}")
        mapping[ids[0]] = k
    return mapping


def load_label_map(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    try:
        data = loadmat(str(path))
    except Exception as err:
        raise PrepareError(f"unreadable label file {path}: {err}") from err
    if "LabelMap" not in data:
        raise PrepareError(f"label file {path}: no variable 'LabelMap' "
                           f"(found {sorted(k for k in data if not k.startswith('__'))})")
    arr = np.asarray(data["LabelMap"])
    if arr.ndim != 2:
        raise PrepareError(f"label file {path}: LabelMap has shape {arr.shape}, expected 2-D")
    return arr


def run(args) -> int:
    from alignzeg.splits import load_split
    from alignzeg.utils import atomic_output_dir

    src = require_dir(args.src, "--src (PASCAL Context)")
    mats = require_dir(src / "trainval", "--src (PASCAL Context)")
    labels_path = src / "labels.txt"
    labels = read_labels_txt(labels_path)
    images = require_dir(args.images or src / "JPEGImages", "--images (VOC2010 JPEGImages)")
    train = read_list(args.train_list or src / "train.txt", "--train-list")
    val = read_list(args.val_list or src / "val.txt", "--val-list")
    both = sorted(set(train) & set(val))
    if both:
        raise PrepareError(f"--train-list and --val-list share ids, e.g. {both[:5]}")
    names = list(load_split(SPLIT_NAME).classes)
    mapping = context59_mapping(labels, names, labels_path)
    lut = np.full(max(labels) + 1, IGNORE, dtype=np.int64)
    for idx, k in mapping.items():
        lut[idx] = k
    to_train_ids = LutMapper(lut, tuple([0] + sorted(labels)))

    items = [Item(subset, stem, images / f"{stem}.jpg", mats / f"{stem}.mat")
             for subset, stems in (("train", train), ("val", val)) for stem in stems]
    check_items_exist(items)
    with atomic_output_dir(args.out) as tmp:
        counts = convert_items(items, tmp, load_label_map, to_train_ids, link=args.link,
                               desc="context", progress=not args.no_progress,
                               workers=args.workers)
        official = {"train": 4998, "val": 5105}
        note = note_counts("context", counts, official)
        write_split_and_meta(tmp, SPLIT_NAME, {
            "dataset": "context59",
            "num_images": {"train": counts.get("train", 0), "val": counts.get("val", 0)},
            "source": "PASCAL Context trainval.tar.gz (LabelMap, labels.txt) + VOC2010 JPEGImages",
            "label_mapping": "59 classes by name from labels.txt -> 0..58, everything else -> 255",
            "context459_ids": {names[k]: idx for idx, k in sorted(mapping.items(), key=lambda t: t[1])},
            "official_num_images": official, "note": note,
        })
    print(f"context: wrote {counts.get('train', 0)} train and {counts.get('val', 0)} val images to {args.out}")
    return 0
