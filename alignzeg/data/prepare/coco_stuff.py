"""COCO-Stuff 164k -> the common prepared layout.

Input (official downloads): ``DIR/images/{train2017,val2017}/*.jpg`` and
``DIR/annotations/{train2017,val2017}/*.png``, the ``stuffthingmaps_trainval2017`` label maps with raw
ids 0..181 (the 182 COCO-Stuff ids shifted down by one; 255 = unlabeled).

Eleven of the 182 raw ids are never used (COCO's retired thing ids): 11, 25, 28, 29, 44, 65, 67, 68,
70, 82, 90. The remaining 171 raw ids map in increasing order to 0..170, the same table as
``clsID_to_trID`` in mmseg's ``tools/dataset_converters/coco_stuff164k.py`` (tested against it);
unlike that script, any other value (an unused id) becomes 255 instead of being left unchanged.
Label files whose values fall outside 0..181 and 255 are rejected. Split: ``coco-stuff-156s15u``
(class order of mmseg's ``COCOStuffDataset``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from alignzeg.data.prepare.common import (IGNORE, Item, PrepareError, add_common_arguments, apply_lut,
                                          check_items_exist, convert_items, note_counts, read_index_png,
                                          require_dir, write_split_and_meta)

SPLIT_NAME = "coco-stuff-156s15u"
NUM_RAW = 182
UNUSED_RAW_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
USED_RAW_IDS = tuple(i for i in range(NUM_RAW) if i not in UNUSED_RAW_IDS)
assert len(USED_RAW_IDS) == 171
RAW_TO_TRAIN = {raw: k for k, raw in enumerate(USED_RAW_IDS)}
COCO_LUT = np.full(256, IGNORE, dtype=np.int64)
for _raw, _k in RAW_TO_TRAIN.items():
    COCO_LUT[_raw] = _k
ALLOWED = list(range(NUM_RAW)) + [IGNORE]
SUBSETS = {"train": "train2017", "val": "val2017"}


def add_arguments(parser) -> None:
    parser.add_argument("--src", required=True,
                        help="folder holding images/{train2017,val2017} and annotations/{train2017,val2017} "
                             "(stuffthingmaps PNGs)")
    add_common_arguments(parser)


def build_items(src: Path) -> list[Item]:
    src = require_dir(src, "--src (COCO-Stuff)")
    items = []
    for subset, folder in SUBSETS.items():
        img_dir = require_dir(src / "images" / folder, "--src (COCO-Stuff)")
        ann_dir = require_dir(src / "annotations" / folder, "--src (COCO-Stuff)")
        labels = sorted(p for p in ann_dir.glob("*.png") if "_labelTrainIds" not in p.name)
        if not labels:
            raise PrepareError(f"--src (COCO-Stuff): no label PNGs in {ann_dir}")
        for lab in labels:
            items.append(Item(subset, lab.stem, img_dir / f"{lab.stem}.jpg", lab))
    return items


def _to_train_ids(raw: np.ndarray, path: Path) -> np.ndarray:
    return apply_lut(raw, COCO_LUT, ALLOWED, path)


def run(args) -> int:
    from alignzeg.utils import atomic_output_dir

    items = build_items(Path(args.src))
    check_items_exist(items)
    with atomic_output_dir(args.out) as tmp:
        counts = convert_items(items, tmp, read_index_png, _to_train_ids, link=args.link,
                               desc="coco-stuff", progress=not args.no_progress,
                               workers=args.workers)
        official = {"train": 118287, "val": 5000}
        note = note_counts("coco-stuff", counts, official)
        write_split_and_meta(tmp, SPLIT_NAME, {
            "dataset": "coco-stuff164k",
            "num_images": {"train": counts.get("train", 0), "val": counts.get("val", 0)},
            "source": "COCO 2017 images + COCO-Stuff stuffthingmaps_trainval2017",
            "label_mapping": "171 used raw ids (0..181 without 11,25,28,29,44,65,67,68,70,82,90) in order "
                             "-> 0..170; everything else -> 255",
            "official_num_images": official, "note": note,
        })
    print(f"coco-stuff: wrote {counts.get('train', 0)} train and {counts.get('val', 0)} val images to {args.out}")
    return 0
