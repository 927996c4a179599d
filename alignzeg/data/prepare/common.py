"""Helpers shared by the dataset converters of ``alignzeg prepare``.

Every converter follows the same plan:

1. validate the input tree (folders, lists, one image and one label file per listed stem) before
   anything is written, with errors that name the missing or bad path;
2. convert inside :func:`alignzeg.utils.atomic_output_dir`, so a failure at any file (unreadable
   image, label size differing from its image, label value outside the documented range) removes
   the partial output and leaves ``--out`` as it was;
3. write ``split.json`` (the matching shipped split) and ``meta.json`` next to
   ``images/{train,val}`` and ``annotations/{train,val}``.

The output label PNGs are single-channel ``uint8`` in the full label space ``0..C-1`` with 255 for
"ignore", the layout read by :mod:`alignzeg.datasets`.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

IGNORE = 255
LINK_MODES = ("copy", "hardlink", "symlink")


class PrepareError(ValueError):
    """A problem with the input of a converter; the message names the offending path."""


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise PrepareError(f"{what}: folder not found: {path}")
    return path


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"{what}: file not found: {path}")
    return path


def read_list(path: str | Path, what: str) -> list[str]:
    """Read an image-id list (one stem per line; blank lines and surrounding spaces ignored)."""
    path = require_file(path, what)
    stems = [line.strip().split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not stems:
        raise PrepareError(f"{what}: list is empty: {path}")
    dup = sorted({s for s in stems if stems.count(s) > 1}) if len(set(stems)) != len(stems) else []
    if dup:
        raise PrepareError(f"{what}: duplicate ids in {path}: {dup[:5]}")
    return stems


def image_size(path: str | Path) -> tuple[int, int]:
    """Fully decode an image and return its (height, width); errors name the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            w, h = im.size
    except Exception as err:  # PIL raises several types for broken files
        raise PrepareError(f"unreadable image {path}: {err}") from err
    return h, w


def read_index_png(path: str | Path) -> np.ndarray:
    """Read a label PNG as its stored indices (palette 'P' images give indices, not colours)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise PrepareError(f"label file {path}: expected a palette or single-channel PNG, "
                                   f"found mode {im.mode!r}")
            arr = np.array(im)
    except PrepareError:
        raise
    except Exception as err:
        raise PrepareError(f"unreadable label file {path}: {err}") from err
    if arr.ndim != 2:
        raise PrepareError(f"label file {path}: expected a 2-D label map, found shape {arr.shape}")
    return arr


def lookup_table(mapping: dict[int, int], size: int = 256, default: int = IGNORE) -> np.ndarray:
    """A dense LUT ``lut[raw] = new`` (``default`` for raw values not in ``mapping``)."""
    lut = np.full(size, default, dtype=np.int64)
    for raw, new in mapping.items():
        lut[int(raw)] = int(new)
    return lut


def apply_lut(labels: np.ndarray, lut: np.ndarray, allowed: Iterable[int], path: str | Path) -> np.ndarray:
    """Map raw ``labels`` through ``lut`` after checking every value is in ``allowed``."""
    allowed = np.asarray(sorted(set(int(v) for v in allowed)))
    values = np.unique(labels)
    bad = values[~np.isin(values, allowed)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:10])
        raise PrepareError(f"label file {path}: values outside the valid range: {shown}")
    return lut[labels.astype(np.int64)].astype(np.uint8)


def check_same_size(label: np.ndarray, img_hw: tuple[int, int], label_path, image_path) -> None:
    if tuple(label.shape) != tuple(img_hw):
        raise PrepareError(f"label file {label_path}: size {label.shape[1]}x{label.shape[0]} (WxH) differs "
                           f"from its image {image_path} ({img_hw[1]}x{img_hw[0]})")


def write_label_png(labels: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L").save(path, format="PNG")


def place_image(src: Path, dst: Path, link: str = "copy") -> None:
    """Put the original image file at ``dst``: a byte copy, a hard link or a symbolic link."""
    if link == "copy":
        shutil.copyfile(src, dst)
    elif link == "hardlink":
        os.link(src, dst)
    elif link == "symlink":
        os.symlink(Path(src).resolve(), dst)
    else:  # pragma: no cover - argparse restricts the choices
        raise PrepareError(f"--link: unknown mode {link!r} (choose from {', '.join(LINK_MODES)})")


@dataclass(frozen=True)
class Item:
    """One image/label pair to convert: ``load_label(path) -> raw 2-D array``."""

    subset: str          # "train" or "val"
    stem: str
    image: Path
    label: Path


def check_items_exist(items: Sequence[Item]) -> None:
    """Structural validation: every listed image and label file exists (reports the first few missing)."""
    missing = []
    for it in items:
        for p, kind in ((it.image, "image"), (it.label, "label file")):
            if not p.is_file():
                missing.append(f"{kind} {p} (id {it.stem}, {it.subset})")
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise PrepareError("missing input files: " + "; ".join(missing[:5]) + more)


@dataclass(frozen=True)
class LutMapper:
    """``raw labels -> output ids`` through ``lut`` after checking values against ``allowed`` (picklable)."""

    lut: np.ndarray
    allowed: tuple[int, ...]

    def __call__(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return apply_lut(raw, self.lut, self.allowed, path)


def _convert_one(job) -> str:
    it, out, load_label, to_train_ids, link = job
    hw = image_size(it.image)
    raw = load_label(it.label)
    check_same_size(raw, hw, it.label, it.image)
    labels = to_train_ids(raw, it.label)
    place_image(it.image, out / "images" / it.subset / f"{it.stem}{it.image.suffix.lower()}", link)
    write_label_png(labels, out / "annotations" / it.subset / f"{it.stem}.png")
    return it.subset


def convert_items(items: Sequence[Item], out: Path, load_label: Callable[[Path], np.ndarray],
                  to_train_ids: Callable[[np.ndarray, Path], np.ndarray], *, link: str = "copy",
                  desc: str = "converting", progress: bool = True, workers: int = 1) -> dict[str, int]:
    """Convert ``items`` into ``out/images/<subset>`` and ``out/annotations/<subset>``.

    ``load_label`` reads the raw label array of a file; ``to_train_ids(raw, path)`` validates and
    maps it to the output label space (raising :class:`PrepareError` naming ``path``). With
    ``workers > 1`` the items are converted by a process pool (both callables must be picklable).
    Returns the number of images per subset.
    """
    from tqdm import tqdm

    for subset in sorted({it.subset for it in items}):
        (out / "images" / subset).mkdir(parents=True, exist_ok=True)
        (out / "annotations" / subset).mkdir(parents=True, exist_ok=True)
    jobs = [(it, out, load_label, to_train_ids, link) for it in items]
    bar = dict(desc=desc, unit="img", total=len(jobs), disable=not progress, mininterval=1.0)
    counts: dict[str, int] = {}
    if workers <= 1:
        done = map(_convert_one, jobs)
        for subset in tqdm(done, **bar):
            counts[subset] = counts.get(subset, 0) + 1
        return counts
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for subset in tqdm(pool.imap_unordered(_convert_one, jobs, chunksize=8), **bar):
            counts[subset] = counts.get(subset, 0) + 1
    return counts


def note_counts(dataset: str, counts: dict[str, int], official: dict[str, int]) -> str | None:
    """Print (to stderr) and return a note when the image counts differ from the official ones."""
    import sys

    got = {k: counts.get(k, 0) for k in official}
    if got == official:
        return None
    note = (f"{dataset}: converted {got['train']} train / {got['val']} val images; the official full set has "
            f"{official['train']} / {official['val']} (fine for a subset, otherwise check the download)")
    print(f"note: {note}", file=sys.stderr)
    return note


def write_split_and_meta(out: Path, split_name: str, meta: dict) -> None:
    """Copy the shipped split ``split_name`` to ``out/split.json`` and write ``out/meta.json``."""
    from alignzeg.splits import load_split
    from alignzeg.utils import atomic_write_json

    split = load_split(split_name)
    split.save(out / "split.json")
    meta = dict(meta)
    meta.setdefault("split", split.name)
    meta.setdefault("num_classes", split.num_classes)
    meta.setdefault("ignore_index", IGNORE)
    atomic_write_json(out / "meta.json", meta)


def add_common_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output folder (replaced atomically when the run succeeds)")
    parser.add_argument("--link", choices=LINK_MODES, default="copy",
                        help="how images reach the output: byte copy (default), hard link or symbolic link")
    parser.add_argument("--workers", type=int, default=1, help="processes converting images in parallel (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
