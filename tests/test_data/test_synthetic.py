"""The embedded synthetic benchmark generator (``alignzeg prepare synthetic``)."""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from alignzeg.data import synthetic as S
from alignzeg.splits import load_split


def _tree_digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "synthetic"
    S.generate(out, seed=7, num_train=12, num_val=4)
    return out


def test_same_seed_gives_identical_files(small, tmp_path):
    again = tmp_path / "again"
    S.generate(again, seed=7, num_train=12, num_val=4)
    first, second = _tree_digest(small), _tree_digest(again)
    assert len(first) == 12 * 2 + 4 * 2 + 2 + 2  # images+annotations, captions x2, split, meta (no test)
    assert first == second
    other = tmp_path / "other"
    S.generate(other, seed=8, num_train=12, num_val=4)
    assert _tree_digest(other)["images/train/train_000000.png"] != first["images/train/train_000000.png"]


def test_image_does_not_depend_on_dataset_size(small, tmp_path):
    bigger = tmp_path / "bigger"
    S.generate(bigger, seed=7, num_train=13, num_val=1)
    for rel in ("images/train/train_000011.png", "annotations/val/val_000000.png"):
        assert (bigger / rel).read_bytes() == (small / rel).read_bytes()


def test_layout_and_label_values(small):
    names = S.class_names()
    assert len(names) == len(S.STUFF) + len(S.COLOURS) * len(S.SHAPES) == 40
    assert names[:10] == ["grass", "water", "sand", "brick wall", "sky", "snow", "wood", "gravel", "tiles",
                          "road"]
    assert names[10:15] == ["red circle", "red square", "red triangle", "red cross", "red ring"]
    split = load_split(small / "split.json")
    assert list(split.classes) == names
    meta = json.loads((small / "meta.json").read_text())
    assert meta["dataset"] == "synthetic" and meta["num_images"] == {"train": 12, "val": 4}
    assert meta["unseen_coverage_ok"] is True
    for sp, n in (("train", 12), ("val", 4)):
        lines = (small / "captions" / f"{sp}.jsonl").read_text().splitlines()
        assert len(lines) == n
        pixels = np.zeros(len(names), np.int64)
        for line in lines:
            row = json.loads(line)
            img = Image.open(small / "images" / sp / f"{row['image']}.png")
            ann = Image.open(small / "annotations" / sp / f"{row['image']}.png")
            assert img.mode == "RGB" and img.size == (64, 64)
            assert ann.mode == "L" and ann.size == (64, 64)
            lab = np.asarray(ann)
            assert lab.max() < len(names)  # no ignore pixels, every id in range
            # the caption's label list is exactly the set of ids in the annotation, in label order
            assert row["labels"] == [names[i] for i in np.unique(lab)]
            pixels += np.bincount(lab.ravel(), minlength=len(names))
        assert [meta["class_stats"][c][sp]["pixels"] for c in names] == pixels.tolist()


def test_known_scene_labels_match_geometry():
    """A hand-placed scene: ids at known pixels and areas against the shapes' closed-form areas."""
    names = S.class_names()
    size = 64
    spec = S.SceneSpec(stuff=("sky", "grass"), horizon=30.0, objects=(
        S.ObjectSpec("red", "circle", 16.0, 16.0, 10.0),
        S.ObjectSpec("blue", "square", 46.0, 46.0, 10.0),
        S.ObjectSpec("green", "triangle", 46.0, 14.0, 10.0),
        S.ObjectSpec("purple", "cross", 20.0, 48.0, 10.0),
        S.ObjectSpec("yellow", "ring", 16.0, 16.0, 5.0),   # on top of the red circle, inside it
    ))
    lab = S.label_map(spec, size)
    ids = {n: names.index(n) for n in names}
    assert lab[2, 32] == ids["sky"] and lab[29, 32] == ids["sky"]
    assert lab[30, 32] == ids["grass"] and lab[63, 32] == ids["grass"]
    assert lab[16, 16] == ids["red circle"]
    assert lab[46, 46] == ids["blue square"]
    assert lab[48, 20] == ids["purple cross"]
    assert lab[16, 16] == ids["red circle"]        # the ring's hole shows the circle behind it
    assert lab[16, 20] == ids["yellow ring"]       # on the ring (radius 5, hole radius 2.75)
    count = {n: int((lab == ids[n]).sum()) for n in ids}
    r = 10.0
    # square half-side 0.8 r, triangle area 1/2 * 2r * 1.6r, cross two 1.9r x 0.6r bars minus overlap
    assert count["blue square"] == pytest.approx((1.6 * r) ** 2, rel=0.06)
    assert count["green triangle"] == pytest.approx(1.6 * r * r, rel=0.08)
    assert count["purple cross"] == pytest.approx(2 * 1.9 * 0.6 * r * r - 0.36 * r * r, rel=0.08)
    ring = math.pi * 25 * (1 - 0.55 ** 2)
    assert count["yellow ring"] == pytest.approx(ring, rel=0.12)
    assert count["red circle"] == pytest.approx(math.pi * r * r - ring, rel=0.06)
    # the rendered image matches the label map's objects in colour
    img, lab2 = S.render(spec, np.random.default_rng(0), size)
    assert np.array_equal(lab, lab2)
    red = img[lab == ids["red circle"]].astype(float).mean(0)
    assert red[0] > 120 and red[1] < 100 and red[2] < 100
    blue = img[lab == ids["blue square"]].astype(float).mean(0)
    assert blue[2] > 120 and blue[0] < 100


def test_sampled_scenes_respect_occlusion_limit():
    for i in range(40):
        rng = np.random.default_rng([1, 0, i])
        spec = S.sample_scene(rng, 64)
        assert 1 <= len(spec.objects) <= S.MAX_OBJECTS
        assert len({o.name for o in spec.objects}) == len(spec.objects)
        lab = S.label_map(spec, 64)
        for obj in spec.objects:
            full = S.shape_mask(obj.shape, obj.cx, obj.cy, obj.radius, obj.angle, 64).sum()
            visible = (lab == S.class_names().index(obj.name)).sum()
            assert visible >= (1 - S.MAX_HIDDEN_FRACTION) * full - 1e-9


def test_default_split_and_coverage():
    names = S.class_names()
    unseen = S.DEFAULT_UNSEEN
    assert len(unseen) / len(names) == pytest.approx(0.275)
    assert sum(u in S.STUFF for u in unseen) >= 2 and sum(u not in S.STUFF for u in unseen) >= 5
    # independent check of the coverage property: every unseen colour / shape occurs in a seen object
    seen_objs = [n for n in names[len(S.STUFF):] if n not in unseen]
    for u in unseen:
        if u in S.STUFF:
            continue
        colour, shape = u.split(" ")
        assert any(s.startswith(colour + " ") for s in seen_objs), u
        assert any(s.endswith(" " + shape) for s in seen_objs), u
    assert S.coverage_violations(unseen) == []
    all_red = [f"red {s}" for s in S.SHAPES]
    assert S.coverage_violations(all_red) == all_red
    assert S.coverage_violations(["red ring", "blue ring"]) == []


def test_captions_name_exactly_the_classes_present():
    names = S.class_names()
    for i in range(60):
        ex = S.make_example(3, "train", i)
        present = [names[k] for k in np.unique(ex["label"])]
        assert ex["labels"] == present
        cap = ex["caption"]
        for n in names:
            assert (re.search(rf"\b{n}\b", cap) is not None) == (n in present), (n, cap)
        # one article-led phrase per object
        n_obj = sum(n not in S.STUFF for n in present)
        assert len(re.findall(r"\ban? (?:%s) " % "|".join(S.COLOURS), cap)) == n_obj, cap


def test_cli_custom_unseen_and_errors(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    S.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "d"), "--num-train", "2", "--num-val", "1",
                              "--unseen", "sand, red circle", "blue ring", "--no-progress"])
    assert S.run(args) == 0
    split = load_split(tmp_path / "d" / "split.json")
    assert split.unseen == ("sand", "red circle", "blue ring")
    assert split.name == "synthetic-37s3u"
    with pytest.raises(ValueError, match="--unseen"):
        S.generate(tmp_path / "e", num_train=1, num_val=0, unseen=["pink circle"])
    assert not (tmp_path / "e").exists()
    S.generate(tmp_path / "f", num_train=1, num_val=0, unseen=[f"red {s}" for s in S.SHAPES])
    assert "warning" in capsys.readouterr().out
    assert json.loads((tmp_path / "f" / "meta.json").read_text())["unseen_coverage_ok"] is False


def test_through_the_alignzeg_cli(tmp_path):
    from alignzeg.cli import main

    out = tmp_path / "cli"
    assert main(["prepare", "synthetic", "--out", str(out), "--num-train", "3", "--num-val", "2",
                 "--seed", "5", "--no-progress"]) == 0
    direct = tmp_path / "direct"
    S.generate(direct, seed=5, num_train=3, num_val=2)
    assert _tree_digest(out) == _tree_digest(direct)


def test_three_disjoint_splits_and_no_dominant_unseen_class(tmp_path):
    """--num-test writes a third split from its own stream; the unseen share is recorded per split."""
    out = tmp_path / "d"
    S.generate(out, seed=7, num_train=12, num_val=4, num_test=40)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_images"] == {"train": 12, "val": 4, "test": 40}
    digests = {sp: {hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "images" / sp).iterdir()}
               for sp in ("train", "val", "test")}
    assert len(digests["test"]) == 40
    assert not (digests["test"] & digests["train"]) and not (digests["test"] & digests["val"])
    # the recorded shares are the annotation pixel counts
    names, unseen = S.class_names(), list(S.DEFAULT_UNSEEN)
    px = np.zeros(len(names), np.int64)
    for p in (out / "annotations" / "test").iterdir():
        px += np.bincount(np.asarray(Image.open(p)).ravel(), minlength=len(names))
    u = px[[names.index(c) for c in unseen]]
    share = meta["unseen_pixel_share"]["test"]
    assert share["max_share"] == pytest.approx(u.max() / u.sum())
    assert share["max_class"] == unseen[int(u.argmax())]
    assert share["unseen_fraction_of_pixels"] == pytest.approx(u.sum() / px.sum())
    assert json.loads((out / "split.json").read_text())["stuff"] == list(S.STUFF)
    # clip streams are disjoint from the benchmark's splits
    a = S.make_example(7, "clip", 0)["image"]
    assert not np.array_equal(a, np.asarray(Image.open(out / "images/train/train_000000.png")))
