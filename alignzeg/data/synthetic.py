"""The embedded synthetic zero-shot segmentation benchmark (``alignzeg prepare synthetic``).

No real CLIP weights or datasets can be fetched where the default pipeline runs, so the suite ships a
seeded generator of small, captioned scenes whose object classes are *compositions* of a colour and a
shape ("red circle"), placed on procedurally textured *stuff* backgrounds ("grass", "brick wall").
Because every unseen composition is made of a colour and a shape that also occur in seen classes, a
vision-language model can transfer to the unseen classes, which is what zero-shot segmentation needs
(DESIGN.md §5). The tiny CLIP is pre-trained on the captions of all classes
(:mod:`alignzeg.clip.pretrain`), segmenters then train on the seen classes only.

Label space (``split.json`` ``classes``, in label order):

* ids ``0 .. len(STUFF)-1``: the stuff classes, in the order of :data:`STUFF`;
* then the object classes, colour-major: ``f"{colour} {shape}"`` for each colour of :data:`COLOURS`,
  for each shape of :data:`SHAPES`.

With the defaults that is 10 stuff + 6 × 5 objects = 40 classes. No pixel is ignore (255).

Default unseen classes (:data:`DEFAULT_UNSEEN`, 11 of 40): four stuff classes (sand, snow, wood, road)
and seven objects, one per colour plus "red cross", chosen so that every colour and every shape of an
unseen object also occurs in at least three seen objects (see :func:`coverage_violations`) and no unseen
class dominates the unseen pixels (the largest share is recorded per split in ``meta.json``,
``unseen_pixel_share``; 22 % of the unseen test pixels with the defaults).

Layout written (see the project's interface notes)::

    DIR/images/{train,val,test}/<stem>.png        RGB, image_size × image_size (test with --num-test)
    DIR/annotations/{train,val,test}/<stem>.png   uint8 labels in the full label space
    DIR/split.json                                classes (label order), unseen names, stuff names
    DIR/meta.json                                 counts, seed, generator parameters, class statistics
    DIR/captions/{train,val,test}.jsonl           {"image", "caption", "labels"} per image

Stems are ``{split}_{index:06d}``. Each image is drawn from its own random stream
``numpy.random.default_rng([seed, split_id, index])``, so the output is byte-identical for a seed and
does not depend on how many images are generated before it. Split ids: train 0, val 1, test 2; the
streams 3 (``clip``) and 4 (``clip-heldout``) are never written to disk and feed only the tiny CLIP's
pre-training and its report, so the CLIP sees no benchmark image.

Scene model: one stuff class, or two split by a wavy horizon; 2-5 distinct object classes, random
size (radius 13-26 % of the image side), position and small rotation, drawn back to front; a new object
may hide at most 40 % of any earlier object (placements that would hide more are re-drawn, and an
object that cannot be placed is dropped). Colours get per-object jitter and shading, each image a
brightness/contrast jitter and Gaussian pixel noise. Captions name exactly the classes present in the
annotation, e.g. ``"a red circle and a blue square on grass."``.
"""
from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GENERATOR_VERSION = 2

STUFF: tuple[str, ...] = ("grass", "water", "sand", "brick wall", "sky", "snow", "wood", "gravel", "tiles", "road")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (235, 215, 40),
    "green": (40, 165, 60),
    "blue": (35, 75, 215),
    "purple": (135, 45, 175),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")

# One object per colour, shapes spread so each unseen colour/shape stays common among seen classes.
DEFAULT_UNSEEN: tuple[str, ...] = (
    "sand", "snow", "wood", "road",
    "red triangle", "orange ring", "yellow cross", "green square", "blue circle", "purple triangle",
    "red cross")
# Default number of objects per scene and their radius range (fraction of the image side).
MIN_OBJECTS, MAX_OBJECTS = 2, 5
RADIUS_RANGE = (0.13, 0.26)

# How a stuff class is written in captions (the class name is always a substring).
_STUFF_PHRASE = {"grass": "grass", "water": "water", "sand": "sand", "brick wall": "a brick wall",
                 "sky": "the sky", "snow": "snow", "wood": "wood", "gravel": "gravel",
                 "tiles": "tiles", "road": "a road"}
_TEMPLATES = ("{objects} on {stuff}.", "a photo of {objects} on {stuff}.",
              "a picture of {objects} in front of {stuff}.")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "clip": 3, "clip-heldout": 4}
MAX_HIDDEN_FRACTION = 0.4


def object_classes() -> list[str]:
    """Object class names in label order (colour-major)."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def class_names() -> list[str]:
    """The full label space in label order: stuff classes, then object classes."""
    return list(STUFF) + object_classes()


def coverage_violations(unseen) -> list[str]:
    """Unseen object classes whose colour or shape occurs in no seen object class.

    Zero-shot transfer to a composition needs both of its parts to be learnable from seen classes;
    an empty list means every unseen colour and every unseen shape appears in some seen class.
    """
    unseen = set(unseen)
    seen_objs = [o for o in object_classes() if o not in unseen]
    seen_colours = {o.split(" ", 1)[0] for o in seen_objs}
    seen_shapes = {o.split(" ", 1)[1] for o in seen_objs}
    bad = []
    for o in object_classes():
        if o in unseen:
            colour, shape = o.split(" ", 1)
            if colour not in seen_colours or shape not in seen_shapes:
                bad.append(o)
    return bad


# --------------------------------------------------------------------------------------------------
# Scene description and rendering
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectSpec:
    """One object: class parts, centre (pixels, x right / y down), radius (pixels), rotation (rad)."""

    colour: str
    shape: str
    cx: float
    cy: float
    radius: float
    angle: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class SceneSpec:
    """Stuff layout and objects (back to front). ``stuff`` has one name, or two split at a horizon.

    With two stuff classes, pixel row ``y`` belongs to ``stuff[0]`` where
    ``y < horizon + wave_amp * sin(2π x / wave_period + wave_phase)``, else to ``stuff[1]``.
    """

    stuff: tuple[str, ...]
    objects: tuple[ObjectSpec, ...] = ()
    horizon: float = 0.0
    wave_amp: float = 0.0
    wave_period: float = 32.0
    wave_phase: float = 0.0


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    return xs + 0.5, ys + 0.5  # pixel centres


def shape_mask(shape: str, cx: float, cy: float, radius: float, angle: float, size: int) -> np.ndarray:
    """Boolean ``size × size`` mask of a shape (pixel centres inside it)."""
    xs, ys = _grid(size)
    dx, dy = (xs - cx) / radius, (ys - cy) / radius
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy  # object frame, v points down
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "triangle":  # apex up at v = -1, base at v = 0.6, half-width 1 at the base
        return (v <= 0.6) & (np.abs(u) <= (v + 1.0) / 1.6)
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55 ** 2)
    raise ValueError(f"shape_mask: unknown shape {shape!r} (known: {', '.join(SHAPES)})")


def stuff_layout(spec: SceneSpec, size: int) -> np.ndarray:
    """Index (0 or 1) into ``spec.stuff`` for every pixel."""
    if len(spec.stuff) == 1:
        return np.zeros((size, size), dtype=np.int64)
    xs, ys = _grid(size)
    boundary = spec.horizon + spec.wave_amp * np.sin(2 * np.pi * xs / spec.wave_period + spec.wave_phase)
    return (ys >= boundary).astype(np.int64)


def label_map(spec: SceneSpec, size: int) -> np.ndarray:
    """The ``size × size`` uint8 annotation of a scene in the full label space."""
    names = class_names()
    index = {n: i for i, n in enumerate(names)}
    for s in spec.stuff:
        if s not in STUFF:
            raise ValueError(f"SceneSpec.stuff: unknown stuff class {s!r} (known: {', '.join(STUFF)})")
    stuff_ids = np.array([index[s] for s in spec.stuff], dtype=np.uint8)
    label = stuff_ids[stuff_layout(spec, size)]
    for obj in spec.objects:
        if obj.name not in index:
            raise ValueError(f"ObjectSpec: unknown object class {obj.name!r}")
        label[shape_mask(obj.shape, obj.cx, obj.cy, obj.radius, obj.angle, size)] = index[obj.name]
    return label


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled ``(cells+1)²`` Gaussian noise, roughly unit variance, ``size × size``."""
    coarse = rng.standard_normal((cells + 1, cells + 1))
    t = (np.arange(size) + 0.5) / size * cells
    i0 = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]          # size × (cells+1)
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _box_blur(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    pad = [(0, 0)] * a.ndim
    pad[axis] = (k // 2, k - 1 - k // 2)
    c = np.cumsum(np.pad(a, pad, mode="wrap"), axis=axis)
    c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
    n = a.shape[axis]
    return (np.take(c, np.arange(k, k + n), axis=axis) - np.take(c, np.arange(0, n), axis=axis)) / k


def stuff_texture(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``size × size × 3`` float texture (0..255 scale) for a stuff class."""
    xs, ys = _grid(size)
    jitter = rng.normal(0.0, 8.0, size=3)
    if name == "grass":  # green with vertical blades
        blades = _box_blur(rng.standard_normal((size, size)), 7, axis=0) * np.sqrt(7)
        shade = 22 * blades + 10 * _smooth_noise(rng, size, 3)
        base = np.array([70.0, 135.0, 45.0]) + jitter
        tex = base + shade[..., None] * np.array([0.6, 1.0, 0.5])
    elif name == "water":  # blue with horizontal waves
        period, period2 = rng.uniform(5.0, 8.0), rng.uniform(20.0, 40.0)
        phase, phase2 = rng.uniform(0, 2 * np.pi, size=2)
        waves = np.sin(2 * np.pi * (ys / period + 0.25 * np.sin(2 * np.pi * xs / period2 + phase2)) + phase)
        shade = 28 * waves + 8 * rng.standard_normal((size, size))
        base = np.array([45.0, 100.0, 165.0]) + jitter
        tex = base + shade[..., None] * np.array([0.7, 0.9, 1.0])
    elif name == "sand":  # beige, fine speckles and soft blotches
        shade = 16 * rng.standard_normal((size, size)) + 14 * _smooth_noise(rng, size, 4)
        base = np.array([205.0, 180.0, 130.0]) + jitter
        tex = base + shade[..., None]
    elif name == "brick wall":  # bricks in offset rows with light mortar
        bh = int(rng.integers(6, 9))
        bw = 2 * bh
        oy, ox = rng.integers(0, bh), rng.integers(0, bw)
        row = ((ys - 0.5 + oy) // bh).astype(np.int64)
        xo = xs - 0.5 + ox + (row % 2) * (bw // 2)
        col = (xo // bw).astype(np.int64)
        mortar = ((ys - 0.5 + oy) % bh < 1) | (xo % bw < 1)
        brick_shade = rng.normal(0.0, 14.0, size=(row.max() + 2, col.max() + 2))[row, col]
        base = np.array([150.0, 62.0, 45.0]) + jitter
        tex = base + (brick_shade + 6 * rng.standard_normal((size, size)))[..., None]
        tex[mortar] = np.array([195.0, 190.0, 180.0]) + jitter
    elif name == "sky":  # vertical gradient with soft clouds
        top, bottom = np.array([95.0, 150.0, 230.0]), np.array([175.0, 205.0, 245.0])
        t = (ys / size)[..., None]
        tex = top * (1 - t) + bottom * t + jitter
        cloud = np.clip(_smooth_noise(rng, size, 4) * 0.8 - 0.3, 0.0, 1.0)[..., None]
        tex = tex * (1 - cloud) + np.array([245.0, 245.0, 248.0]) * cloud
    elif name == "snow":  # near-white, bluish shadows, soft drifts and sparkles
        drift = _smooth_noise(rng, size, 3)
        shade = 10 * drift + 4 * rng.standard_normal((size, size))
        base = np.array([228.0, 234.0, 242.0]) + jitter * 0.5
        tex = base + shade[..., None] * np.array([1.0, 1.0, 0.6])
        sparkle = rng.random((size, size)) < 0.02
        tex[sparkle] = 252.0
    elif name == "wood":  # brown planks with horizontal grain and dark seams
        ph = int(rng.integers(9, 14))
        oy = rng.integers(0, ph)
        plank = ((ys - 0.5 + oy) // ph).astype(np.int64)
        plank_shade = rng.normal(0.0, 12.0, size=plank.max() + 2)[plank]
        freq, phase = rng.uniform(0.8, 1.4), rng.uniform(0, 2 * np.pi)
        grain = np.sin(freq * (ys + 2.5 * _smooth_noise(rng, size, 2)) * 2.0 + phase
                       + 0.15 * xs * rng.uniform(-0.2, 0.2))
        seam = (ys - 0.5 + oy) % ph < 1
        base = np.array([150.0, 100.0, 58.0]) + jitter
        tex = base + (plank_shade + 16 * grain + 4 * rng.standard_normal((size, size)))[..., None] \
            * np.array([1.0, 0.8, 0.55])
        tex[seam] = np.array([75.0, 48.0, 28.0]) + jitter
    elif name == "gravel":  # grey pebbles: blocky cells of random brightness with dark gaps
        cell = int(rng.integers(3, 5))
        oy, ox = rng.integers(0, cell, size=2)
        gy = ((ys - 0.5 + oy) // cell).astype(np.int64)
        gx = ((xs - 0.5 + ox) // cell).astype(np.int64)
        pebble = rng.normal(0.0, 24.0, size=(gy.max() + 2, gx.max() + 2))[gy, gx]
        gap = ((ys - 0.5 + oy) % cell < 0.9) & (rng.random((size, size)) < 0.6)
        base = np.array([128.0, 124.0, 118.0]) + jitter * 0.6
        tex = base + (pebble + 5 * rng.standard_normal((size, size)))[..., None]
        tex[gap] = tex[gap] * 0.55
    elif name == "tiles":  # cream square tiles on a grid with grey grout
        t = int(rng.integers(7, 11))
        oy, ox = rng.integers(0, t, size=2)
        ty = ((ys - 0.5 + oy) // t).astype(np.int64)
        tx = ((xs - 0.5 + ox) // t).astype(np.int64)
        tile_shade = rng.normal(0.0, 7.0, size=(ty.max() + 2, tx.max() + 2))[ty, tx]
        grout = ((ys - 0.5 + oy) % t < 1) | ((xs - 0.5 + ox) % t < 1)
        base = np.array([222.0, 212.0, 185.0]) + jitter
        tex = base + (tile_shade + 3 * rng.standard_normal((size, size)))[..., None]
        tex[grout] = np.array([120.0, 120.0, 125.0]) + jitter
    elif name == "road":  # dark asphalt with fine grain and a dashed white line
        shade = 9 * rng.standard_normal((size, size)) + 6 * _smooth_noise(rng, size, 3)
        base = np.array([62.0, 62.0, 68.0]) + jitter * 0.5
        tex = base + shade[..., None]
        ly, dash, off = rng.uniform(0.25, 0.75) * size, rng.uniform(8.0, 14.0), rng.uniform(0.0, 14.0)
        line = (np.abs(ys - ly) < 1.5) & (((xs + off) // dash) % 2 == 0)
        tex[line] = np.array([235.0, 235.0, 230.0])
    else:
        raise ValueError(f"stuff_texture: unknown stuff class {name!r} (known: {', '.join(STUFF)})")
    return tex


def render(spec: SceneSpec, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scene: ``(image uint8 size×size×3, label uint8 size×size)``.

    ``rng`` drives only the appearance (textures, colour jitter, noise); the label map depends on
    ``spec`` alone (:func:`label_map`).
    """
    layout = stuff_layout(spec, size)
    img = np.empty((size, size, 3), dtype=np.float64)
    for k, s in enumerate(spec.stuff):
        tex = stuff_texture(s, rng, size)
        sel = layout == k
        img[sel] = tex[sel]
    xs, ys = _grid(size)
    for obj in spec.objects:
        if obj.colour not in COLOURS:
            raise ValueError(f"ObjectSpec.colour: unknown colour {obj.colour!r} (known: {', '.join(COLOURS)})")
        m = shape_mask(obj.shape, obj.cx, obj.cy, obj.radius, obj.angle, size)
        colour = np.array(COLOURS[obj.colour], dtype=np.float64) + rng.normal(0.0, 10.0, size=3)
        gdir = rng.uniform(0, 2 * np.pi)
        grad = ((xs - obj.cx) * np.cos(gdir) + (ys - obj.cy) * np.sin(gdir)) / obj.radius
        shade = 1.0 + rng.uniform(0.05, 0.15) * grad
        img[m] = colour * shade[m][:, None]
    gain, bias = rng.uniform(0.85, 1.15), rng.uniform(-12.0, 12.0)
    img = img * gain + bias + rng.normal(0.0, 5.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label_map(spec, size)


def sample_scene(rng: np.random.Generator, size: int, min_objects: int = MIN_OBJECTS, max_objects: int = MAX_OBJECTS,
                 max_tries: int = 20) -> SceneSpec:
    """Draw a random scene layout (see the module docstring for the scene model)."""
    two = rng.random() < 0.5
    if two:
        stuff = tuple(STUFF[i] for i in rng.choice(len(STUFF), size=2, replace=False))
    else:
        stuff = (STUFF[int(rng.integers(len(STUFF)))],)
    horizon = rng.uniform(0.3, 0.7) * size
    wave_amp = rng.uniform(0.0, 0.06) * size
    wave_period = rng.uniform(0.4, 1.2) * size
    wave_phase = rng.uniform(0, 2 * np.pi)
    n = int(rng.integers(min_objects, max_objects + 1))
    objs = object_classes()
    chosen = rng.choice(len(objs), size=n, replace=False)
    placed: list[ObjectSpec] = []
    full: list[int] = []               # full areas of the placed objects
    visible: list[np.ndarray] = []     # their visible masks so far
    for ci in chosen:
        colour, shape = objs[int(ci)].split(" ", 1)
        for _ in range(max_tries):
            r = rng.uniform(*RADIUS_RANGE) * size
            cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
            angle = rng.uniform(-0.35, 0.35) if shape in ("square", "triangle", "cross") else 0.0
            m = shape_mask(shape, cx, cy, r, angle, size)
            area = int(m.sum())
            if area < 12:
                continue
            after = [vm & ~m for vm in visible]
            if all(a.sum() >= (1.0 - MAX_HIDDEN_FRACTION) * f for a, f in zip(after, full)):
                visible = after + [m]
                full.append(area)
                placed.append(ObjectSpec(colour, shape, float(cx), float(cy), float(r), float(angle)))
                break
    return SceneSpec(stuff=stuff, objects=tuple(placed), horizon=float(horizon), wave_amp=float(wave_amp),
                     wave_period=float(wave_period), wave_phase=float(wave_phase))


def caption(labels: list[str], rng: np.random.Generator) -> str:
    """A caption naming exactly the given classes (objects in random order, then the stuff)."""
    objs = [n for n in labels if n not in STUFF]
    stuff = [n for n in labels if n in STUFF]
    objs = [objs[i] for i in rng.permutation(len(objs))]
    stuff = [stuff[i] for i in rng.permutation(len(stuff))]
    phrases = [("an " if o[0] in "aeiou" else "a ") + o for o in objs]
    if len(phrases) > 1:
        obj_text = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    else:
        obj_text = phrases[0] if phrases else "nothing"
    stuff_text = " and ".join(_STUFF_PHRASE[s] for s in stuff)
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    return template.format(objects=obj_text, stuff=stuff_text)


def make_example(seed: int, split: str, index: int, size: int = 64, min_objects: int = MIN_OBJECTS,
                 max_objects: int = MAX_OBJECTS) -> dict:
    """One generated example: image, label, caption, labels (names in label order), scene spec."""
    rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], int(index)])
    spec = sample_scene(rng, size, min_objects, max_objects)
    image, label = render(spec, rng, size)
    names = class_names()
    present = [names[i] for i in np.unique(label)]
    return {"image": image, "label": label, "caption": caption(present, rng), "labels": present,
            "spec": spec}


def unseen_pixel_share(names, unseen, stats: dict) -> dict:
    """Per split: each unseen class's share of that split's unseen pixels, and the largest one.

    The default unseen set is chosen so that no single class dominates the unseen metric (the largest
    share stays well under 30 % of unseen test pixels; the measured value is in ``meta.json``).
    """
    out = {}
    ids = [names.index(u) for u in unseen]
    for sp, st in stats.items():
        px = np.asarray(st["pixels"], dtype=np.float64)[ids]
        total = px.sum()
        shares = {u: (float(p / total) if total else 0.0) for u, p in zip(unseen, px)}
        top = max(shares, key=shares.get) if shares else None
        out[sp] = {"unseen_fraction_of_pixels": float(total / max(1.0, sum(st["pixels"]))),
                   "max_class": top, "max_share": shares.get(top, 0.0) if top else 0.0, "shares": shares}
    return out


def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def default_split_name(num_classes: int, num_unseen: int) -> str:
    return f"synthetic-{num_classes - num_unseen}s{num_unseen}u"


def generate(out: str | Path, *, seed: int = 0, num_train: int = 3000, num_val: int = 300,
             num_test: int = 0, image_size: int = 64, unseen=DEFAULT_UNSEEN, min_objects: int = MIN_OBJECTS,
             max_objects: int = MAX_OBJECTS,
             progress: bool = False) -> dict:
    """Write the benchmark to ``out`` atomically; return the ``meta.json`` dict."""
    from alignzeg.data.prepare.common import PrepareError
    from alignzeg.splits import Split
    from alignzeg.utils import atomic_output_dir

    # PrepareError (a ValueError): `alignzeg prepare synthetic` prints it as a message, not a traceback.
    if image_size < 16:
        raise PrepareError(f"--image-size: must be at least 16 pixels, got {image_size}")
    if num_train < 1 or num_val < 0 or num_test < 0:
        raise PrepareError(f"--num-train/--num-val/--num-test: need num_train >= 1, num_val >= 0 and "
                           f"num_test >= 0, got {num_train}/{num_val}/{num_test}")
    if not 1 <= min_objects <= max_objects <= len(object_classes()):
        raise PrepareError(f"--min-objects/--max-objects: need 1 <= min <= max <= {len(object_classes())}, "
                           f"got {min_objects}/{max_objects}")
    names = class_names()
    unseen = tuple(unseen)
    unknown = [u for u in unseen if u not in names]
    if unknown:
        raise PrepareError(f"--unseen: unknown class names {unknown} (classes: {', '.join(names)})")
    repeated = sorted({u for u in unseen if unseen.count(u) > 1})
    if repeated:
        raise PrepareError(f"--unseen: class names given more than once: {repeated}")
    split = Split(name=default_split_name(len(names), len(unseen)), classes=tuple(names), unseen=unseen,
                  dataset="synthetic", stuff=tuple(STUFF),
                  source=f"alignzeg.data.synthetic v{GENERATOR_VERSION} (stuff first, then colour-major "
                         f"colour x shape objects)")
    violations = coverage_violations(unseen)
    if violations:
        print(f"warning: --unseen: the colour or shape of {violations} occurs in no seen class; "
              "zero-shot transfer to them is not expected")
    counts = {"train": num_train, "val": num_val}
    if num_test:
        counts["test"] = num_test
    tqdm = None
    if progress:
        from tqdm import tqdm
    start = time.perf_counter()
    stats = {}
    with atomic_output_dir(out) as tmp:
        for sp, n in counts.items():
            (tmp / "images" / sp).mkdir(parents=True)
            (tmp / "annotations" / sp).mkdir(parents=True)
            (tmp / "captions").mkdir(exist_ok=True)
            pixels = np.zeros(len(names), dtype=np.int64)
            images_with = np.zeros(len(names), dtype=np.int64)
            lines = []
            it = range(n)
            if tqdm is not None:
                it = tqdm(it, desc=f"synthetic {sp}", unit="img", leave=False)
            for i in it:
                ex = make_example(seed, sp, i, image_size, min_objects, max_objects)
                stem = f"{sp}_{i:06d}"
                (tmp / "images" / sp / f"{stem}.png").write_bytes(_png_bytes(ex["image"]))
                (tmp / "annotations" / sp / f"{stem}.png").write_bytes(_png_bytes(ex["label"]))
                lines.append(json.dumps({"image": stem, "caption": ex["caption"], "labels": ex["labels"]}))
                bc = np.bincount(ex["label"].ravel(), minlength=len(names))
                pixels += bc
                images_with += bc > 0
            (tmp / "captions" / f"{sp}.jsonl").write_text("".join(line + "\n" for line in lines))
            stats[sp] = {"pixels": pixels.tolist(), "images": images_with.tolist()}
        split.save(tmp / "split.json")
        meta = {
            "dataset": "synthetic",
            "num_images": counts,
            "source": split.source,
            "generator_version": GENERATOR_VERSION,
            "seed": int(seed),
            "image_size": int(image_size),
            "min_objects": int(min_objects),
            "max_objects": int(max_objects),
            "num_classes": len(names),
            "label_order": "stuff classes (ids 0..%d) then objects colour-major; no ignore pixels"
                           % (len(STUFF) - 1),
            "stuff": list(STUFF),
            "colours": list(COLOURS),
            "shapes": list(SHAPES),
            "unseen": list(unseen),
            "unseen_coverage_ok": not violations,
            "class_stats": {n: {sp: {"pixels": stats[sp]["pixels"][i], "images": stats[sp]["images"][i]}
                                for sp in counts} for i, n in enumerate(names)},
            "unseen_pixel_share": unseen_pixel_share(names, unseen, stats),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    meta["seconds"] = time.perf_counter() - start
    return meta


# --------------------------------------------------------------------------------------------------
# CLI (called by ``alignzeg prepare synthetic``)
# --------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed => identical files)")
    parser.add_argument("--num-train", type=int, default=3000, help="number of training images")
    parser.add_argument("--num-val", type=int, default=300,
                        help="number of validation images (hyper-parameters are chosen on these)")
    parser.add_argument("--num-test", type=int, default=0,
                        help="number of test images (reported numbers); 0 writes no test split")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--min-objects", type=int, default=MIN_OBJECTS, help="fewest objects per scene")
    parser.add_argument("--max-objects", type=int, default=MAX_OBJECTS, help="most objects per scene")
    parser.add_argument("--unseen", nargs="+", default=None, metavar="NAME",
                        help="unseen class names (quote names with spaces; commas also separate); "
                             f"default: {', '.join(DEFAULT_UNSEEN)}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_unseen(values) -> tuple[str, ...]:
    if values is None:
        return DEFAULT_UNSEEN
    out = []
    for v in values:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return tuple(out)


def run(args: argparse.Namespace) -> int:
    meta = generate(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                    num_test=getattr(args, "num_test", 0),
                    image_size=args.image_size, unseen=_parse_unseen(args.unseen),
                    min_objects=args.min_objects, max_objects=args.max_objects,
                    progress=not getattr(args, "no_progress", False))
    counts = " + ".join(f"{n} {sp}" for sp, n in meta["num_images"].items())
    print(f"wrote {args.out}: {counts} images, "
          f"{meta['num_classes']} classes ({len(meta['unseen'])} unseen) in {meta['seconds']:.1f} s")
    return 0
