"""``alignzeg prepare voc``: VOC2012 palette PNGs + SBD .mat -> common layout, checked pixel by pixel."""
from __future__ import annotations

import json

import numpy as np
import pytest

from alignzeg.cli import main as cli_main
from alignzeg.splits import load_split
from tests.test_data._prepare_trees import (leftovers, read_png, write_jpg, write_lines, write_palette_png,
                                            write_sbd_mat)

H, W = 3, 4
# VOC PNG indices (0 background, 1..20 classes, 255 boundary) and the expected outputs.
VOC_A = np.array([[0, 1, 1, 255], [15, 15, 0, 20], [2, 2, 255, 0]])
VOC_A_OUT = np.array([[255, 0, 0, 255], [14, 14, 255, 19], [1, 1, 255, 255]])
VOC_B = np.array([[3, 3, 3, 3], [0, 0, 0, 0], [255, 255, 16, 16]])
VOC_B_OUT = np.array([[2, 2, 2, 2], [255, 255, 255, 255], [255, 255, 15, 15]])
VOC_C = np.array([[20, 19, 18, 17], [5, 6, 7, 8], [0, 255, 10, 11]])
VOC_C_OUT = np.array([[19, 18, 17, 16], [4, 5, 6, 7], [255, 255, 9, 10]])
SBD_B = np.full((H, W), 7)          # differs from VOC_B: b must come from the VOC PNG
SBD_D = np.array([[0, 0, 12, 12], [9, 9, 0, 0], [20, 1, 1, 0]])
SBD_D_OUT = np.array([[255, 255, 11, 11], [8, 8, 255, 255], [19, 0, 0, 255]])
SBD_E = np.array([[4, 4, 4, 4], [4, 0, 0, 4], [13, 13, 13, 13]])
SBD_E_OUT = np.array([[3, 3, 3, 3], [3, 255, 255, 3], [12, 12, 12, 12]])
SBD_C = np.full((H, W), 1)          # c is VOC val: never in train


def make_voc(tmp_path, sbd=True):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for i, stem in enumerate("abcde"):
        write_jpg(voc / "JPEGImages" / f"{stem}.jpg", H, W, seed=i)
    for stem, arr in (("a", VOC_A), ("b", VOC_B), ("c", VOC_C)):
        write_palette_png(voc / "SegmentationClass" / f"{stem}.png", arr)
    write_lines(voc / "ImageSets" / "Segmentation" / "train.txt", ["a", "b"])
    write_lines(voc / "ImageSets" / "Segmentation" / "val.txt", ["c"])
    if sbd:
        root = tmp_path / "benchmark_RELEASE" / "dataset"
        for stem, arr in (("b", SBD_B), ("c", SBD_C), ("d", SBD_D), ("e", SBD_E)):
            write_sbd_mat(root / "cls" / f"{stem}.mat", arr)
        write_lines(root / "train.txt", ["d", "b"])
        write_lines(root / "val.txt", ["e", "c"])
    return tmp_path / "VOCdevkit", tmp_path / "benchmark_RELEASE"


def run_voc(src, out, sbd=None):
    argv = ["prepare", "voc", "--src", str(src), "--out", str(out), "--no-progress"]
    if sbd is not None:
        argv += ["--sbd", str(sbd)]
    return cli_main(argv)


def test_sbd_mat_has_official_nesting(tmp_path):
    """The test .mat files have the nesting mmseg's voc_aug.py reads: GTcls[0]['Segmentation'][0]."""
    from scipy.io import loadmat

    from alignzeg.data.prepare.voc import load_sbd_mat

    write_sbd_mat(tmp_path / "x.mat", SBD_D)
    data = loadmat(str(tmp_path / "x.mat"))
    np.testing.assert_array_equal(data["GTcls"][0]["Segmentation"][0], SBD_D)
    np.testing.assert_array_equal(load_sbd_mat(tmp_path / "x.mat"), SBD_D)


def test_voc_aug_labels_pixel_by_pixel(tmp_path):
    src, sbd = make_voc(tmp_path)
    out = tmp_path / "out"
    assert run_voc(src, out, sbd) == 0
    # train = (VOC train {a,b} | SBD train {d,b} | SBD val {e,c}) - VOC val {c}
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["a.jpg", "b.jpg", "d.jpg", "e.jpg"]
    assert sorted(p.name for p in (out / "annotations" / "val").iterdir()) == ["c.png"]
    expected = {("train", "a"): VOC_A_OUT, ("train", "b"): VOC_B_OUT, ("train", "d"): SBD_D_OUT,
                ("train", "e"): SBD_E_OUT, ("val", "c"): VOC_C_OUT}
    for (subset, stem), exp in expected.items():
        np.testing.assert_array_equal(read_png(out / "annotations" / subset / f"{stem}.png"), exp,
                                      err_msg=f"{subset}/{stem}")
    # images are byte copies of the originals
    assert (out / "images" / "val" / "c.jpg").read_bytes() == \
        (src / "VOC2012" / "JPEGImages" / "c.jpg").read_bytes()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_images"] == {"train": 4, "val": 1}
    assert meta["train_labels_from_sbd"] == 2
    assert meta["dataset"] == "voc12aug"
    assert json.loads((out / "split.json").read_text()) == load_split("voc12-15s5u").to_dict()
    assert leftovers(tmp_path, "out") == ["out"]


def test_voc_without_sbd_uses_voc_train(tmp_path):
    src, _ = make_voc(tmp_path, sbd=False)
    out = tmp_path / "out"
    assert run_voc(src / "VOC2012", out) == 0   # the VOC2012 folder itself is accepted too
    assert sorted(p.name for p in (out / "annotations" / "train").iterdir()) == ["a.png", "b.png"]
    np.testing.assert_array_equal(read_png(out / "annotations" / "train" / "b.png"), VOC_B_OUT)


def _fails(tmp_path, src, sbd, match):
    from alignzeg.data.prepare.common import PrepareError

    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=match) as excinfo:
        run_voc(src, out, sbd)
    assert isinstance(excinfo.value.__cause__, PrepareError)
    assert str(excinfo.value).startswith("alignzeg prepare voc: error: ")
    assert leftovers(tmp_path, "out") == []


def test_missing_folder_is_named(tmp_path):
    src, sbd = make_voc(tmp_path)
    import shutil

    shutil.rmtree(src / "VOC2012" / "SegmentationClass")
    _fails(tmp_path, src, sbd, r"SegmentationClass")


def test_missing_listed_file_is_named(tmp_path):
    src, sbd = make_voc(tmp_path)
    (sbd / "dataset" / "cls" / "e.mat").unlink()
    _fails(tmp_path, src, sbd, r"e\.mat")


def test_unreadable_image_is_named(tmp_path):
    src, sbd = make_voc(tmp_path)
    (src / "VOC2012" / "JPEGImages" / "d.jpg").write_bytes(b"\xff\xd8not a jpeg")
    _fails(tmp_path, src, sbd, r"unreadable image .*d\.jpg")


def test_size_mismatch_is_named(tmp_path):
    src, sbd = make_voc(tmp_path)
    write_palette_png(src / "VOC2012" / "SegmentationClass" / "c.png", np.zeros((H + 1, W)))
    _fails(tmp_path, src, sbd, r"c\.png.*differs")


def test_out_of_range_label_is_named_and_previous_output_kept(tmp_path):
    src, sbd = make_voc(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    bad = VOC_A.copy()
    bad[0, 0] = 21
    write_palette_png(src / "VOC2012" / "SegmentationClass" / "a.png", bad)
    with pytest.raises(SystemExit, match=r"a\.png.*21"):
        run_voc(src, out, sbd)
    assert leftovers(tmp_path, "out") == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    # SBD masks have no 255 boundary band: 255 in a .mat is out of range
    write_palette_png(src / "VOC2012" / "SegmentationClass" / "a.png", VOC_A)
    write_sbd_mat(sbd / "dataset" / "cls" / "d.mat", np.full((H, W), 255))
    with pytest.raises(SystemExit, match=r"d\.mat.*255"):
        run_voc(src, out, sbd)


def test_colour_label_png_is_rejected(tmp_path):
    """A SegmentationClass PNG saved as RGB colours (not palette indices) is named, not misread."""
    from PIL import Image

    src, sbd = make_voc(tmp_path)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(src / "VOC2012" / "SegmentationClass" / "b.png")
    _fails(tmp_path, src, sbd, r"b\.png.*mode 'RGB'")


def test_count_note_for_a_subset(tmp_path, capsys):
    src, sbd = make_voc(tmp_path)
    out = tmp_path / "out"
    assert run_voc(src, out, sbd) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["official_num_images"] == {"train": 10582, "val": 1449}
    assert "4 train / 1 val" in meta["note"] and "10582 / 1449" in capsys.readouterr().err


def test_mat_without_gtcls_is_named(tmp_path):
    from scipy.io import savemat

    src, sbd = make_voc(tmp_path)
    savemat(str(sbd / "dataset" / "cls" / "d.mat"), {"Segmentation": SBD_D})
    _fails(tmp_path, src, sbd, r"d\.mat: no 'GTcls' struct \(found \['Segmentation'\]\)")
