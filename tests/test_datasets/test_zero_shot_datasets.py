"""Zero-shot datasets: labels read through mmseg's LoadAnnotations, checked value by value per mode."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mmcv.ops", reason="mmseg datasets need the compiled mmcv")

from mmengine.registry import init_default_scope  # noqa: E402
from mmseg.registry import DATASETS  # noqa: E402

import alignzeg.datasets as zsd  # noqa: E402
from alignzeg.splits import load_split  # noqa: E402

CTX = load_split("context59-zs3-10u")
# Context-59 unseen ids: aeroplane 0, bird 6, boat 7, cat 14, cow 19, fence 24, keyboard 31, motorbike 33,
# sofa 48, tvmonitor 54.  Hand-computed seen positions: id minus the number of unseen ids below it.
FULL = np.array([[0, 1, 5, 8], [9, 20, 36, 55], [58, 255, 14, 54]], dtype=np.uint8)
SEEN = np.array([[255, 0, 4, 5], [6, 15, 28, 45], [48, 255, 255, 255]], dtype=np.uint8)
TRANSDUCTIVE = np.array([[255, 1, 5, 8], [9, 20, 36, 55], [58, 255, 255, 255]], dtype=np.uint8)
VAL = np.array([[19, 19, 2, 2], [33, 33, 3, 3], [4, 4, 255, 255]], dtype=np.uint8)
PIPELINE = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]


@pytest.fixture(autouse=True)
def _mmseg_scope():
    init_default_scope("mmseg")


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_prepared(root, split=CTX, train=FULL, val=VAL, img_ext=".jpg"):
    h, w = train.shape
    rng = np.random.default_rng(0)
    for subset, lab in (("train", train), ("val", val)):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        _png(root / "images" / subset / f"x{img_ext}", img)
        _png(root / "annotations" / subset / "x.png", lab)
    split.save(root / "split.json")
    return root


def load_labels(ds):
    return [ds[i]["gt_seg_map"] for i in range(len(ds))]


def test_hand_positions_match_split():
    seen_pos = {cid: k for k, cid in enumerate(CTX.seen_ids)}
    independent = np.vectorize(lambda v: seen_pos.get(int(v), 255))(FULL)
    np.testing.assert_array_equal(independent, SEEN)
    assert [CTX.classes[i] for i in CTX.unseen_ids] == sorted(CTX.unseen, key=CTX.classes.index)


@pytest.mark.parametrize("mode,expected", [("seen", SEEN), ("all", FULL), ("transductive", TRANSDUCTIVE)])
def test_modes_through_load_annotations(tmp_path, mode, expected):
    root = make_prepared(tmp_path / "ctx")
    ds = DATASETS.build(dict(type="Context59ZSDataset", data_root=str(root), mode=mode, pipeline=PIPELINE))
    assert len(ds) == 1
    out = ds[0]
    assert out["img"].shape == (3, 4, 3)
    assert out["gt_seg_map"].dtype == np.uint8
    np.testing.assert_array_equal(out["gt_seg_map"], expected)
    meta = ds.metainfo
    assert meta["mode"] == mode and meta["split_name"] == "context59-zs3-10u"
    assert meta["seen_classes"] == CTX.seen and meta["unseen_classes"] == CTX.unseen
    assert meta["all_classes"] == CTX.classes
    ctx_palette = zsd.Context59ZSDataset.METAINFO["palette"]
    if mode == "seen":
        assert meta["classes"] == CTX.seen and len(meta["classes"]) == 49
        assert meta["palette"] == [ctx_palette[i] for i in CTX.seen_ids]
        assert meta["palette"][0] == ctx_palette[1]
    else:
        assert meta["classes"] == CTX.classes and meta["palette"] == ctx_palette


def test_test_mode_reads_val_by_default(tmp_path):
    root = make_prepared(tmp_path / "ctx")
    ds = zsd.Context59ZSDataset(data_root=str(root), mode="all", test_mode=True, pipeline=PIPELINE)
    np.testing.assert_array_equal(ds[0]["gt_seg_map"], VAL)
    assert ds[0]["img_path"].endswith("images/val/x.jpg")


def test_voc_seen_and_transductive(tmp_path):
    voc = load_split("voc12-15s5u")
    lab = np.array([[0, 14, 15, 16], [17, 18, 19, 255], [10, 11, 12, 13]], dtype=np.uint8)
    root = make_prepared(tmp_path / "voc", split=voc, train=lab, val=lab, img_ext=".png")
    seen = zsd.VOCZSDataset(data_root=str(root), mode="seen", pipeline=PIPELINE)
    trans = zsd.VOCZSDataset(data_root=str(root), mode="transductive", pipeline=PIPELINE)
    exp = lab.copy()
    exp[(lab >= 15) & (lab <= 19)] = 255      # pottedplant sheep sofa train tvmonitor are 15..19
    np.testing.assert_array_equal(seen[0]["gt_seg_map"], exp)
    np.testing.assert_array_equal(trans[0]["gt_seg_map"], exp)
    assert seen.metainfo["classes"] == voc.seen and len(seen.metainfo["classes"]) == 15


def test_transductive_unlabelled_index_keeps_unseen_pixels_apart_from_void(tmp_path):
    voc = load_split("voc12-15s5u")
    lab = np.array([[0, 14, 15, 16], [17, 18, 19, 255], [10, 11, 12, 13]], dtype=np.uint8)
    root = make_prepared(tmp_path / "voc", split=voc, train=lab, val=lab, img_ext=".png")
    trans = zsd.VOCZSDataset(data_root=str(root), mode="transductive", unlabelled_index=254, pipeline=PIPELINE)
    exp = lab.copy()
    exp[(lab >= 15) & (lab <= 19)] = 254      # the five unseen classes: unlabelled, not void
    np.testing.assert_array_equal(trans[0]["gt_seg_map"], exp)
    assert trans[0]["gt_seg_map"][1, 3] == 255   # the void pixel stays void
    with pytest.raises(ValueError, match="only used in mode 'transductive'"):
        zsd.VOCZSDataset(data_root=str(root), mode="seen", unlabelled_index=254, pipeline=PIPELINE)
    with pytest.raises(ValueError, match="is a class id"):
        zsd.VOCZSDataset(data_root=str(root), mode="transductive", unlabelled_index=3, pipeline=PIPELINE)
    # a raw 254 in a label file is still refused in the other views
    bad = lab.copy()
    bad[0, 0] = 254
    root2 = make_prepared(tmp_path / "voc2", split=voc, train=bad, val=bad, img_ext=".png")
    with pytest.raises(zsd.BadSampleError, match="254"):
        zsd.VOCZSDataset(data_root=str(root2), mode="all", pipeline=PIPELINE)[0]


def test_class_lists_match_mmseg():
    from mmseg.datasets import COCOStuffDataset, PascalContextDataset59, PascalVOCDataset

    assert zsd.COCOStuffZSDataset.METAINFO["classes"] == tuple(COCOStuffDataset.METAINFO["classes"])
    assert zsd.VOCZSDataset.METAINFO["classes"] == tuple(PascalVOCDataset.METAINFO["classes"][1:])
    assert zsd.Context59ZSDataset.METAINFO["classes"] == tuple(PascalContextDataset59.METAINFO["classes"])
    for cls in (zsd.COCOStuffZSDataset, zsd.VOCZSDataset, zsd.Context59ZSDataset):
        assert len(cls.METAINFO["palette"]) == len(cls.METAINFO["classes"])


def test_folder_dataset(tmp_path):
    (tmp_path / "classes.txt").write_text("sky\ncat\n\ndog\ngrass\n")
    lab = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], dtype=np.uint8)
    _png(tmp_path / "imgs" / "a.png", np.zeros((2, 4, 3), np.uint8))
    _png(tmp_path / "imgs" / "sub" / "b.jpg", np.zeros((2, 4, 3), np.uint8))
    _png(tmp_path / "masks" / "a.png", lab)
    _png(tmp_path / "masks" / "sub" / "b.png", lab[::-1].copy())
    ds = DATASETS.build(dict(type="FolderZSDataset", data_root=str(tmp_path), classes_file="classes.txt",
                             unseen=["dog"], mode="seen", pipeline=PIPELINE,
                             data_prefix=dict(img_path="imgs", seg_map_path="masks")))
    assert ds.metainfo["classes"] == ("sky", "cat", "grass")
    assert ds.metainfo["split_name"] == "classes"
    got = load_labels(ds)
    exp = np.array([[0, 1, 255, 2], [2, 255, 1, 0]])
    np.testing.assert_array_equal(got[0], exp)
    np.testing.assert_array_equal(got[1], exp[::-1])
    with pytest.raises(ValueError, match=r"classes\.txt.*'bird'"):
        zsd.FolderZSDataset(data_root=str(tmp_path), classes_file="classes.txt", unseen=["bird"],
                            data_prefix=dict(img_path="imgs", seg_map_path="masks"))


def test_synthetic_reads_split_json(tmp_path):
    from alignzeg.splits import Split

    split = Split(name="synth-4c1u", classes=("red circle", "blue square", "grass", "sky"),
                  unseen=("blue square",))
    lab = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    root = make_prepared(tmp_path / "syn", split=split, train=lab, val=lab, img_ext=".png")
    ds = zsd.SyntheticZSDataset(data_root=str(root), mode="seen", pipeline=PIPELINE)
    np.testing.assert_array_equal(ds[0]["gt_seg_map"], [[0, 255], [1, 2]])
    assert ds.metainfo["unseen_classes"] == ("blue square",)
    (root / "split.json").unlink()
    with pytest.raises(FileNotFoundError, match="split.json"):
        zsd.SyntheticZSDataset(data_root=str(root))


def test_mode_string_is_not_read_as_a_file(tmp_path, monkeypatch):
    root = make_prepared(tmp_path / "ctx")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "seen").write_text("not meta\n")
    ds = zsd.Context59ZSDataset(data_root=str(root), mode="seen")
    assert ds.metainfo["mode"] == "seen"


def test_errors_name_the_problem(tmp_path):
    root = make_prepared(tmp_path / "ctx")
    with pytest.raises(ValueError, match=r"unknown mode 'unseen'"):
        zsd.Context59ZSDataset(data_root=str(root), mode="unseen")
    with pytest.raises(FileNotFoundError, match=r"bad split 'no-such-split'"):
        zsd.Context59ZSDataset(data_root=str(root), split="no-such-split")
    with pytest.raises(FileNotFoundError, match=r"data_root folder not found: .*nowhere"):
        zsd.Context59ZSDataset(data_root=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"split 'voc12-15s5u' has a class list that differs"):
        zsd.Context59ZSDataset(data_root=str(root), split="voc12-15s5u")
    with pytest.raises(ValueError, match=r"metainfo 'classes'"):
        zsd.Context59ZSDataset(data_root=str(root), metainfo=dict(classes=CTX.seen))
    bad = json.loads((root / "split.json").read_text())
    bad["unseen"].append("unicorn")
    (root / "split.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"split.json.*unicorn"):
        zsd.Context59ZSDataset(data_root=str(root))
    root = make_prepared(tmp_path / "ctx2")
    (root / "annotations" / "train" / "x.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"annotation for image .*x\.jpg not found: .*annotations/train/x\.png"):
        zsd.Context59ZSDataset(data_root=str(root))
    import shutil

    shutil.rmtree(root / "annotations" / "train")
    with pytest.raises(FileNotFoundError, match=r"annotation folder not found: .*annotations/train"):
        zsd.Context59ZSDataset(data_root=str(root))
    (root / "images" / "val" / "x.jpg").unlink()
    with pytest.raises(ValueError, match=r"no images with suffix .* in .*images/val"):
        zsd.Context59ZSDataset(data_root=str(root), test_mode=True)
