"""Builders of tiny input trees in the official download layouts (for the converter tests)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

# PASCAL VOC colour map (bit-interleaved), as stored in the palette of SegmentationClass PNGs.
def voc_palette() -> list[int]:
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_jpg(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, format="JPEG")


def write_palette_png(path: Path, indices: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(indices, dtype=np.uint8), mode="P")
    im.putpalette(voc_palette())
    im.save(path, format="PNG")


def write_gray_png(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint8), mode="L").save(path, format="PNG")


def write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{x}\n" for x in lines))


def write_sbd_mat(path: Path, seg: np.ndarray) -> None:
    """An SBD ``cls/*.mat``: 1x1 struct ``GTcls`` with Boundaries, Segmentation, CategoriesPresent."""
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    seg = np.asarray(seg, dtype=np.uint8)
    cats = np.unique(seg[seg > 0]).astype(np.uint8).reshape(-1, 1)
    boundaries = np.empty((20, 1), dtype=object)
    for i in range(20):
        boundaries[i, 0] = np.zeros(seg.shape, dtype=bool)
    savemat(str(path), {"GTcls": {"Boundaries": boundaries, "Segmentation": seg, "CategoriesPresent": cats}})


def write_context_mat(path: Path, label_map: np.ndarray) -> None:
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"LabelMap": np.asarray(label_map, dtype=np.uint16)})


def leftovers(parent: Path, name: str) -> list[str]:
    """Names in ``parent`` that a run writing ``parent/name`` may have left (the output or temp folders)."""
    return sorted(n for n in os.listdir(parent) if n == name or n.startswith(f".{name}."))


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L", (path, im.mode)
        return np.array(im)
