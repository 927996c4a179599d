"""Any folder of images and label PNGs + a class-name file -> the common prepared layout and a split.

``alignzeg prepare folder --images DIR --labels DIR --classes FILE --unseen NAME ... --out OUT``

Input:

* ``--images DIR``: image files (``.jpg .jpeg .png``), either directly in ``DIR`` or in subfolders
  ``train``, ``val`` and (optionally) ``test``;
* ``--labels DIR``: one single-channel (or palette) label PNG per image, same stem plus
  ``--label-suffix``, in the same layout; pixel value ``k`` is the ``k``-th class of ``--classes`` and
  ``--ignore-value`` (default 255) marks unlabelled pixels;
* ``--classes FILE``: one class name per line, in label order (line ``k`` = value ``k``);
* ``--unseen``: the unseen class names (or ``--unseen-file``, one per line); ``--stuff`` optionally names
  the stuff classes (for the unseen-stuff / unseen-object breakdown of the metric).

A subset that has no subfolder is held out of ``train`` by a fixed rule: an image goes to ``val`` when the
first 8 hex digits of the SHA-1 of its stem, as a fraction of 16^8, are below ``--val-fraction``, to ``test``
when they are below ``--val-fraction + --test-fraction``. The rule depends only on the stem, so adding
images never moves the others. Hyper-parameters are then chosen on ``val`` and numbers reported on ``test``.

Output (atomically, as every converter): ``OUT/images/{train,val,test}``, ``OUT/annotations/{...}`` (uint8,
255 = ignore), ``OUT/split.json`` (name ``--name``, the classes, unseen and stuff names) and
``OUT/meta.json`` (image and per-class pixel counts per subset, the options used). The config template
``experiments/configs/alignzeg/alignzeg_*_folder-custom-*.py`` then needs only the data root
(``alignzeg train CONFIG --data-root OUT``).

Every missing or bad piece is a :class:`~alignzeg.data.prepare.common.PrepareError` naming it: the option,
the file (and line) or the label values.
"""
from __future__ import annotations

import difflib
import hashlib
from pathlib import Path

import numpy as np

from alignzeg.data.prepare.common import (IGNORE, Item, LutMapper, PrepareError, add_common_arguments,
                                          check_items_exist, convert_items, lookup_table, read_index_png,
                                          require_dir, require_file)

SUBSETS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def add_arguments(parser) -> None:
    parser.add_argument("--images", required=True, help="image folder (flat, or with train/val[/test] subfolders)")
    parser.add_argument("--labels", required=True, help="label PNG folder, same layout and stems as --images")
    parser.add_argument("--classes", required=True, help="class-name file: one name per line, line k = label value k")
    parser.add_argument("--unseen", nargs="+", default=None, metavar="NAME", help="unseen class names")
    parser.add_argument("--unseen-file", default=None, help="file with one unseen class name per line")
    parser.add_argument("--stuff", nargs="+", default=(), metavar="NAME", help="stuff class names (optional)")
    parser.add_argument("--name", default=None, help="dataset and split name (default: the --out folder name)")
    parser.add_argument("--label-suffix", default="", help="label stem = image stem + this suffix (default none)")
    parser.add_argument("--ignore-value", type=int, default=IGNORE,
                        help=f"label value of unlabelled pixels (default {IGNORE}); written as {IGNORE}")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of train held out as val when there is no val subfolder (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.1,
                        help="share of train held out as test when there is no test subfolder (default 0.1)")
    add_common_arguments(parser)


# ----------------------------------------------------------------------------------------------- inputs
def read_names(path: str | Path, what: str) -> list[str]:
    """Class names, one per line; an empty line inside the list, a duplicate or no name is an error."""
    path = require_file(path, what)
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = []
    for i, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            raise PrepareError(f"{what}: {path} line {i} is empty (line k names label value k-1, so a gap "
                               "would shift every later class)")
        names.append(name)
    if not names:
        raise PrepareError(f"{what}: {path} holds no class names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PrepareError(f"{what}: {path}: class names given more than once: {dup}")
    return names


def check_names(given, classes: list[str], what: str) -> list[str]:
    given = [str(g).strip() for g in given]
    unknown = [g for g in given if g not in classes]
    if unknown:
        hints = []
        for u in unknown:
            close = difflib.get_close_matches(u, classes, n=1)
            hints.append(f"{u!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise PrepareError(f"{what}: not in --classes: {', '.join(hints)}")
    dup = sorted({g for g in given if given.count(g) > 1})
    if dup:
        raise PrepareError(f"{what}: class names given more than once: {dup}")
    return given


def held_out_subset(stem: str, val_fraction: float, test_fraction: float) -> str:
    """``val``, ``test`` or ``train`` for an image without a subset folder (the module docstring's rule)."""
    x = int(hashlib.sha1(stem.encode("utf-8")).hexdigest()[:8], 16) / float(16 ** 8)
    if x < val_fraction:
        return "val"
    if x < val_fraction + test_fraction:
        return "test"
    return "train"


def _images_in(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in found:
                raise PrepareError(f"--images: two images with the stem {p.stem!r}: {found[p.stem]} and {p}")
            found[p.stem] = p
    return found


def build_items(images: Path, labels: Path, label_suffix: str, val_fraction: float,
                test_fraction: float) -> tuple[list[Item], dict[str, str]]:
    """The image/label pairs with their subsets, and how each subset was obtained."""
    images = require_dir(images, "--images")
    labels = require_dir(labels, "--labels")
    for opt, v in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0.0 <= v < 1.0:
            raise PrepareError(f"{opt}: must be in [0, 1), got {v}")
    if val_fraction + test_fraction >= 1.0:
        raise PrepareError(f"--val-fraction + --test-fraction must be below 1, got {val_fraction + test_fraction}")
    subdirs = [s for s in SUBSETS if (images / s).is_dir()]
    if subdirs and "train" not in subdirs:
        raise PrepareError(f"--images: {images} has subfolders {subdirs} but no 'train' subfolder")
    layout = {s: "subfolder" for s in subdirs}
    groups = {s: images / s for s in subdirs} if subdirs else {"train": images}
    items: list[Item] = []
    for folder_subset, folder in groups.items():
        found = _images_in(folder)
        if not found:
            raise PrepareError(f"--images: no {'/'.join(IMAGE_SUFFIXES)} images in {folder}")
        label_dir = labels / folder_subset if subdirs else labels
        require_dir(label_dir, "--labels")
        for stem, img in found.items():
            subset = folder_subset
            if folder_subset == "train":
                subset = held_out_subset(stem, val_fraction if "val" not in layout else 0.0,
                                         test_fraction if "test" not in layout else 0.0)
            items.append(Item(subset, stem, img, label_dir / f"{stem}{label_suffix}.png"))
        orphans = sorted(p.name for p in label_dir.glob(f"*{label_suffix}.png")
                         if p.name[:len(p.name) - len(label_suffix) - 4] not in found)
        if orphans:
            more = f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""
            raise PrepareError(f"--labels: label files without an image in {folder}: {orphans[:5]}{more}")
    for s in SUBSETS:
        layout.setdefault(s, "held out of train by the stem rule")
        if not any(it.subset == s for it in items):
            frac = "--val-fraction" if s == "val" else "--test-fraction"
            fix = f"add a '{s}' subfolder or raise {frac}" if s != "train" else "add training images"
            raise PrepareError(f"no {s} images ({len(items)} images in all): {fix}")
    return items, layout


def class_pixels(out: Path, subset: str, num_classes: int) -> list[int]:
    from PIL import Image

    total = np.zeros(num_classes + 1, dtype=np.int64)
    for p in sorted((out / "annotations" / subset).glob("*.png")):
        lab = np.asarray(Image.open(p)).astype(np.int64)
        total += np.bincount(np.where(lab == IGNORE, num_classes, lab).ravel(), minlength=num_classes + 1)
    return [int(v) for v in total[:num_classes]]


def run(args) -> int:
    import sys

    from alignzeg.splits import Split
    from alignzeg.utils import atomic_output_dir, atomic_write_json

    classes = read_names(args.classes, "--classes")
    if args.unseen is None and args.unseen_file is None:
        raise PrepareError("--unseen (or --unseen-file): name the unseen classes")
    given = list(args.unseen or []) + (read_names(args.unseen_file, "--unseen-file") if args.unseen_file else [])
    unseen = check_names(given, classes, "--unseen")
    if len(unseen) == len(classes):
        raise PrepareError("--unseen: every class is unseen; at least one class must be seen")
    stuff = check_names(args.stuff or (), classes, "--stuff")
    if not 0 <= args.ignore_value <= 255:
        raise PrepareError(f"--ignore-value: must be in 0..255, got {args.ignore_value}")
    if args.ignore_value < len(classes):
        raise PrepareError(f"--ignore-value {args.ignore_value} is the label value of class "
                           f"{classes[args.ignore_value]!r}; choose a value >= {len(classes)}")
    if len(classes) > IGNORE:
        raise PrepareError(f"--classes: {len(classes)} classes do not fit uint8 labels with {IGNORE} = ignore")
    name = args.name or Path(args.out).resolve().name
    items, layout = build_items(Path(args.images), Path(args.labels), args.label_suffix,
                                args.val_fraction, args.test_fraction)
    check_items_exist(items)
    mapping = {k: k for k in range(len(classes))}
    mapping[args.ignore_value] = IGNORE
    mapper = LutMapper(lookup_table(mapping), tuple(sorted(mapping)))
    split = Split(name=name, classes=tuple(classes), unseen=tuple(unseen), dataset=name, stuff=tuple(stuff),
                  source=f"alignzeg prepare folder: --classes {args.classes}, --unseen {' '.join(unseen)}")
    with atomic_output_dir(args.out) as tmp:
        counts = convert_items(items, tmp, read_index_png, mapper, link=args.link, desc=f"folder {name}",
                               progress=not args.no_progress, workers=args.workers)
        split.save(tmp / "split.json")
        pixels = {s: class_pixels(tmp, s, len(classes)) for s in SUBSETS}
        absent = {s: [c for c, n in zip(classes, pixels[s]) if n == 0 and c in unseen] for s in ("val", "test")}
        notes = [f"unseen classes without a pixel in {s}: {names}" for s, names in absent.items() if names]
        for note in notes:
            print(f"note: {name}: {note} (their IoU is undefined there)", file=sys.stderr)
        atomic_write_json(tmp / "meta.json", {
            "dataset": name, "split": name, "num_classes": len(classes), "ignore_index": IGNORE,
            "num_images": {s: counts.get(s, 0) for s in SUBSETS}, "subsets": layout,
            "class_pixels": {s: dict(zip(classes, pixels[s])) for s in SUBSETS},
            "source": {"images": str(args.images), "labels": str(args.labels), "classes": str(args.classes),
                       "label_suffix": args.label_suffix, "ignore_value": args.ignore_value,
                       "val_fraction": args.val_fraction, "test_fraction": args.test_fraction},
            "notes": notes,
        })
    print(f"folder {name}: wrote " + ", ".join(f"{counts.get(s, 0)} {s}" for s in SUBSETS)
          + f" images and split.json ({len(classes) - len(unseen)} seen / {len(unseen)} unseen) to {args.out}")
    return 0
