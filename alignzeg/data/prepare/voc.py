"""PASCAL VOC 2012 (+ SBD augmentation) -> the common prepared layout.

Input (official downloads):

* ``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt}``;
  ``SegmentationClass`` PNGs are palette images whose *indices* are the labels
  (0 background, 1..20 classes, 255 object boundaries).
* optional SBD (Hariharan et al., ICCV 2011, ``benchmark_RELEASE/dataset``):
  ``{cls/<id>.mat, train.txt, val.txt}``, each ``.mat`` holding the struct ``GTcls`` whose field
  ``Segmentation`` is the label map (0 background, 1..20 classes).

Subsets, as in mmseg's ``tools/dataset_converters/voc_aug.py`` and the zero-shot literature
(ZegCLIP, SPNet): ``train`` = (VOC train ∪ SBD train ∪ SBD val) minus VOC val, the 10,582-image
"aug" set when SBD is given (VOC train alone, 1,464 images, without it); ``val`` = VOC val (1,449).
For an id with a VOC ``SegmentationClass`` PNG that PNG is used (it carries the finer 255 boundary
band); other ids take their SBD ``.mat``.

Output labels: background 0 -> 255 (ignored, as in the zero-shot protocol), classes 1..20 -> 0..19,
255 stays 255. Split: ``voc12-15s5u``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from alignzeg.data.prepare.common import (IGNORE, Item, PrepareError, add_common_arguments, apply_lut,
                                          check_items_exist, convert_items, note_counts, read_index_png,
                                          read_list, require_dir, write_split_and_meta)

SPLIT_NAME = "voc12-15s5u"
NUM_CLASSES = 20
# raw VOC index -> output id: 0 (background) ignored, 1..20 -> 0..19, 255 kept as ignore.
VOC_LUT = np.full(256, IGNORE, dtype=np.int64)
VOC_LUT[1:NUM_CLASSES + 1] = np.arange(NUM_CLASSES)
VOC_ALLOWED = list(range(NUM_CLASSES + 1)) + [IGNORE]
SBD_ALLOWED = list(range(NUM_CLASSES + 1))


def add_arguments(parser) -> None:
    parser.add_argument("--src", required=True,
                        help="VOCdevkit folder (holding VOC2012/) or the VOC2012 folder itself")
    parser.add_argument("--sbd", default=None,
                        help="SBD folder (benchmark_RELEASE or its dataset/ subfolder, holding cls/, "
                             "train.txt, val.txt); gives the 10,582-image training set")
    add_common_arguments(parser)


def _voc_root(src: Path) -> Path:
    src = require_dir(src, "--src (VOCdevkit)")
    root = src / "VOC2012" if (src / "VOC2012").is_dir() else src
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        require_dir(root / sub, "--src (VOCdevkit/VOC2012)")
    return root


def _sbd_root(sbd: Path) -> Path:
    sbd = require_dir(sbd, "--sbd")
    root = sbd / "dataset" if (sbd / "dataset" / "cls").is_dir() else sbd
    require_dir(root / "cls", "--sbd")
    return root


def load_sbd_mat(path: Path) -> np.ndarray:
    """``GTcls.Segmentation`` of an SBD ``cls/*.mat`` file."""
    from scipy.io import loadmat

    try:
        data = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as err:
        raise PrepareError(f"unreadable label file {path}: {err}") from err
    if "GTcls" not in data:
        found = sorted(k for k in data if not k.startswith("__"))
        raise PrepareError(f"label file {path}: no 'GTcls' struct (found {found})")
    gt = data["GTcls"]
    seg = getattr(gt, "Segmentation", None)
    if seg is None:
        raise PrepareError(f"label file {path}: struct 'GTcls' has no field 'Segmentation'")
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise PrepareError(f"label file {path}: GTcls.Segmentation has shape {seg.shape}, expected 2-D")
    return seg


def build_items(voc: Path, sbd: Path | None) -> list[Item]:
    lists = voc / "ImageSets" / "Segmentation"
    voc_train = read_list(lists / "train.txt", "VOC train list")
    voc_val = read_list(lists / "val.txt", "VOC val list")
    val_set = set(voc_val)
    voc_labelled = set(voc_train) | val_set
    train = set(voc_train)
    if sbd is not None:
        train |= set(read_list(sbd / "train.txt", "SBD train list"))
        train |= set(read_list(sbd / "val.txt", "SBD val list"))
    train -= val_set
    items = []
    for stem in sorted(train):
        label = (voc / "SegmentationClass" / f"{stem}.png" if stem in voc_labelled or sbd is None
                 else sbd / "cls" / f"{stem}.mat")
        items.append(Item("train", stem, voc / "JPEGImages" / f"{stem}.jpg", label))
    for stem in sorted(voc_val):
        items.append(Item("val", stem, voc / "JPEGImages" / f"{stem}.jpg",
                          voc / "SegmentationClass" / f"{stem}.png"))
    return items


def _load_label(path: Path) -> np.ndarray:
    return load_sbd_mat(path) if path.suffix == ".mat" else read_index_png(path)


def _to_train_ids(raw: np.ndarray, path: Path) -> np.ndarray:
    allowed = SBD_ALLOWED if path.suffix == ".mat" else VOC_ALLOWED
    return apply_lut(raw, VOC_LUT, allowed, path)


def run(args) -> int:
    from alignzeg.utils import atomic_output_dir

    voc = _voc_root(Path(args.src))
    sbd = _sbd_root(Path(args.sbd)) if args.sbd else None
    items = build_items(voc, sbd)
    check_items_exist(items)
    with atomic_output_dir(args.out) as tmp:
        counts = convert_items(items, tmp, _load_label, _to_train_ids, link=args.link,
                               desc="voc", progress=not args.no_progress,
                               workers=args.workers)
        n_sbd = sum(1 for it in items if it.label.suffix == ".mat")
        official = {"train": 10582, "val": 1449} if sbd is not None else {"train": 1464, "val": 1449}
        note = note_counts("voc", counts, official)
        write_split_and_meta(tmp, SPLIT_NAME, {
            "dataset": "voc12aug" if sbd is not None else "voc12",
            "num_images": {"train": counts.get("train", 0), "val": counts.get("val", 0)},
            "source": "PASCAL VOC 2012 SegmentationClass" + (" + SBD cls/*.mat (GTcls.Segmentation)" if sbd else ""),
            "train_labels_from_sbd": n_sbd,
            "label_mapping": "VOC index 0 (background) -> 255, 1..20 -> 0..19, 255 -> 255",
            "official_num_images": official, "note": note,
        })
    print(f"voc: wrote {counts.get('train', 0)} train and {counts.get('val', 0)} val images to {args.out}")
    return 0
