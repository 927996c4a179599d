"""`alignzeg prepare folder`: a user's folder of images, label PNGs and a class-name file becomes the
prepared layout with a split.json, and the folder config template trains and evaluates on it with only
the data root given."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alignzeg.data.prepare.common import PrepareError

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["road", "sidewalk", "car", "person", "sky"]


def _scene(rng, h, w):
    lab = np.zeros((h, w), np.uint8)       # road
    lab[: h // 3] = 4                       # sky
    lab[h // 3: h // 2] = 1                 # sidewalk
    y, x = rng.integers(h // 2, h - 10), rng.integers(0, w - 12)
    lab[y:y + 8, x:x + 12] = 2              # car
    lab[h // 3: h // 3 + 10, w - 6: w - 2] = 3   # person
    lab[0, :3] = 250                        # unlabelled (the --ignore-value below)
    img = np.stack([lab * 40 + 20, 200 - lab * 30, (lab * 77) % 255], -1).astype(np.uint8)
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    return img, lab


def make_folder(root: Path, n: int = 30, subfolders: tuple[str, ...] = (), palette_every: int = 3) -> dict:
    """Street scenes of varying size: JPEG images, label PNGs (some palette, some greyscale)."""
    rng = np.random.default_rng(0)
    labels = {}
    groups = subfolders or ("",)
    for g in groups:
        (root / "img" / g).mkdir(parents=True, exist_ok=True)
        (root / "lab" / g).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"{g or 'frame'}_{i:03d}"
            img, lab = _scene(rng, int(rng.integers(48, 72)), int(rng.integers(60, 90)))
            Image.fromarray(img).save(root / "img" / g / f"{stem}.jpg", quality=95)
            if i % palette_every == 0:
                p = Image.fromarray(lab, mode="L").convert("P")
                p.putpalette([v for k in range(256) for v in (k, 255 - k, (3 * k) % 256)])
                p.save(root / "lab" / g / f"{stem}.png")
            else:
                Image.fromarray(lab, mode="L").save(root / "lab" / g / f"{stem}.png")
            labels[stem] = lab
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return labels


def _run(*argv) -> int:
    from alignzeg.cli import main

    return main(["prepare", "folder", *map(str, argv)])


def _sha_rule(stem, val, test):
    x = int(hashlib.sha1(stem.encode()).hexdigest()[:8], 16) / 16 ** 8
    return "val" if x < val else "test" if x < val + test else "train"


def test_flat_folder_becomes_the_prepared_layout(tmp_path):
    labels = make_folder(tmp_path, n=30)
    out = tmp_path / "out"
    assert _run("--images", tmp_path / "img", "--labels", tmp_path / "lab", "--classes", tmp_path / "classes.txt",
                "--unseen", "car", "--stuff", "road", "sidewalk", "sky", "--ignore-value", 250,
                "--val-fraction", 0.2, "--test-fraction", 0.2, "--out", out, "--no-progress") == 0
    split = json.loads((out / "split.json").read_text())
    assert split["classes"] == CLASSES and split["unseen"] == ["car"] and split["name"] == "out"
    assert split["stuff"] == ["road", "sidewalk", "sky"]
    want = {s: sorted(k for k in labels if _sha_rule(k, 0.2, 0.2) == s) for s in ("train", "val", "test")}
    assert all(want.values())
    for subset, stems in want.items():
        assert sorted(p.stem for p in (out / "images" / subset).glob("*.jpg")) == stems
        assert sorted(p.stem for p in (out / "annotations" / subset).glob("*.png")) == stems
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_images"] == {s: len(v) for s, v in want.items()}
    for subset, stems in want.items():
        got = np.asarray(Image.open(out / "annotations" / subset / f"{stems[0]}.png"))
        src = labels[stems[0]]
        assert got.dtype == np.uint8 and (got == np.where(src == 250, 255, src)).all()  # palette or not
        hist = np.bincount(np.concatenate([labels[k].ravel() for k in stems]), minlength=251)
        assert meta["class_pixels"][subset] == {c: int(hist[i]) for i, c in enumerate(CLASSES)}


def test_subfolders_are_kept_and_a_missing_test_is_held_out_of_train(tmp_path):
    make_folder(tmp_path, n=12, subfolders=("train", "val"))
    out = tmp_path / "mine"
    assert _run("--images", tmp_path / "img", "--labels", tmp_path / "lab", "--classes", tmp_path / "classes.txt",
                "--unseen", "car", "person", "--ignore-value", 250, "--test-fraction", 0.3, "--name", "street",
                "--out", out, "--no-progress") == 0
    assert sorted(p.stem for p in (out / "images" / "val").iterdir()) == [f"val_{i:03d}" for i in range(12)]
    test = sorted(p.stem for p in (out / "images" / "test").iterdir())
    assert test == sorted(f"train_{i:03d}" for i in range(12) if _sha_rule(f"train_{i:03d}", 0.0, 0.3) == "test")
    assert test and len(test) + len(list((out / "images" / "train").iterdir())) == 12
    meta = json.loads((out / "meta.json").read_text())
    assert meta["subsets"] == {"train": "subfolder", "val": "subfolder", "test": "held out of train by the stem rule"}
    assert json.loads((out / "split.json").read_text())["name"] == "street"


@pytest.mark.parametrize("case, message", [
    ("unknown-unseen", r"--unseen: not in --classes: 'cars' \(did you mean 'car'\?\)"),
    ("no-unseen", r"--unseen \(or --unseen-file\): name the unseen classes"),
    ("all-unseen", r"every class is unseen"),
    ("gap-in-classes", r"classes.txt line 3 is empty"),
    ("value-out-of-range", r"label file .*frame_001.png: values outside the valid range: 7"),
    ("label-without-image", r"label files without an image in .*: \['ghost.png'\]"),
    ("image-without-label", r"missing input files: label file .*frame_002.png"),
    ("rgb-label", r"label file .*frame_001.png: expected a palette or single-channel PNG, found mode 'RGB'"),
    ("ignore-is-a-class", r"--ignore-value 2 is the label value of class 'car'"),
    ("no-val", r"no val images .*add a 'val' subfolder or raise --val-fraction"),
])
def test_every_missing_piece_is_named(tmp_path, case, message):
    make_folder(tmp_path, n=8)
    out = tmp_path / "out"
    args = ["--images", tmp_path / "img", "--labels", tmp_path / "lab", "--classes", tmp_path / "classes.txt",
            "--unseen", "car", "--ignore-value", 250, "--val-fraction", 0.3, "--test-fraction", 0.3,
            "--out", out, "--no-progress"]
    if case == "unknown-unseen":
        args[args.index("car")] = "cars"
    elif case == "no-unseen":
        i = args.index("--unseen")
        del args[i:i + 2]
    elif case == "all-unseen":
        args[args.index("car")] = " ".join(CLASSES)
        i = args.index(" ".join(CLASSES))
        args[i:i + 1] = CLASSES
    elif case == "gap-in-classes":
        (tmp_path / "classes.txt").write_text("road\nsidewalk\n\ncar\nperson\nsky\n")
    elif case == "value-out-of-range":
        lab = np.asarray(Image.open(tmp_path / "lab" / "frame_001.png")).copy()
        lab[5, 5] = 7
        Image.fromarray(lab, mode="L").save(tmp_path / "lab" / "frame_001.png")
    elif case == "label-without-image":
        Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(tmp_path / "lab" / "ghost.png")
    elif case == "image-without-label":
        (tmp_path / "lab" / "frame_002.png").unlink()
    elif case == "rgb-label":
        lab = np.asarray(Image.open(tmp_path / "lab" / "frame_001.png"))
        Image.fromarray(np.stack([lab] * 3, -1)).save(tmp_path / "lab" / "frame_001.png")
    elif case == "ignore-is-a-class":
        args[args.index(250)] = 2
    elif case == "no-val":
        args += ["--val-fraction", 0.0]
    with pytest.raises(SystemExit, match=message):
        _run(*args)
    assert not out.exists()  # nothing half-written


def test_folder_template_trains_and_evaluates_with_only_the_data_root(tmp_path, monkeypatch):
    """The tiny folder config, given --data-root only (and a CLIP file), trains 2 iterations and tests."""
    pytest.importorskip("mmseg.models", reason="mmseg.models needs mmcv with ops")
    import torch

    from alignzeg.cli import main
    from alignzeg.clip.model import TINY_CLIP_CONFIG, build_clip, save_clip

    make_folder(tmp_path, n=24)
    data = tmp_path / "data" / "street"
    assert _run("--images", tmp_path / "img", "--labels", tmp_path / "lab", "--classes", tmp_path / "classes.txt",
                "--unseen", "car", "--ignore-value", 250, "--val-fraction", 0.25, "--test-fraction", 0.25,
                "--out", data, "--no-progress") == 0
    torch.manual_seed(0)
    clip = save_clip(build_clip(dict(TINY_CLIP_CONFIG)), TINY_CLIP_CONFIG, tmp_path / "clip.safetensors")
    monkeypatch.chdir(tmp_path)
    cfg = REPO / "experiments" / "configs" / "alignzeg" / "alignzeg_tiny-vit_1xb16-2k_folder-custom-64x64.py"
    opts = ["--cfg-options", f"model.backbone.clip.pretrained={clip}", "train_cfg.max_iters=2",
            "train_cfg.val_interval=2", "train_dataloader.batch_size=2", "default_hooks.checkpoint.interval=2",
            "param_scheduler.0.end=2"]
    work = tmp_path / "work"
    assert main(["train", str(cfg), "--data-root", str(data), "--work-dir", str(work), "--seed", "0", *opts]) == 0
    out_json = tmp_path / "test.json"
    assert main(["test", str(cfg), str(work / "iter_2.pth"), "--data-root", str(data), "--work-dir",
                 str(tmp_path / "test"), "--out-json", str(out_json), *opts]) == 0
    metrics = json.loads(out_json.read_text())
    assert metrics["confusion"]["classes"] == CLASSES
    assert [r["class"] for r in metrics["per_class"] if r["split"] == "unseen"] == ["car"]
    n_test = len(list((data / "annotations" / "test").glob("*.png")))
    gt_pixels = sum(int((np.asarray(Image.open(p)) != 255).sum()) for p in (data / "annotations" / "test").glob("*.png"))
    assert n_test and int(np.asarray(metrics["confusion"]["matrix"]).sum()) == gt_pixels  # the test subset, all of it


def test_unset_split_is_an_error_naming_what_is_missing(tmp_path):
    from experiments.train import apply_data_root
    from mmengine.config import Config

    cfg = Config(dict(model=dict(split=None), train_dataloader=dict(dataset=dict(data_root=str(tmp_path)))))
    with pytest.raises(SystemExit, match=r"model.split is not set and .*split.json does not exist: run "
                                         r"`alignzeg prepare folder"):
        apply_data_root(cfg, None)
    with pytest.raises(SystemExit, match=r"--data-root: folder not found: .*nowhere"):
        apply_data_root(cfg, str(tmp_path / "nowhere"))
    (tmp_path / "split.json").write_text("{}")
    apply_data_root(cfg, None)
    assert cfg.model.split == str(tmp_path / "split.json")
    from alignzeg.mmseg_modules.segmentor import ZeroShotEncoderDecoder

    with pytest.raises(ValueError, match=r"model.split is not set; give a shipped split name"):
        ZeroShotEncoderDecoder(backbone={}, decode_head={}, split=None)
