"""``alignzeg prepare coco-stuff``: stuffthingmaps raw ids -> 0..170, checked against mmseg's table."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from alignzeg.cli import main as cli_main
from alignzeg.data.prepare.coco_stuff import COCO_LUT, RAW_TO_TRAIN, UNUSED_RAW_IDS
from alignzeg.splits import load_split
from tests.test_data._prepare_trees import leftovers, read_png, write_gray_png, write_jpg

H, W = 3, 5
RAW_1 = np.array([[0, 10, 11, 12, 181], [255, 24, 25, 26, 27], [30, 43, 44, 45, 90]])
# hand-computed: ids below the first unused id (11) keep their value; each unused id below shifts by one
OUT_1 = np.array([[0, 10, 255, 11, 170], [255, 23, 255, 24, 25], [26, 39, 255, 40, 255]])
RAW_2 = np.array([[91, 91, 92, 180, 255], [1, 2, 3, 4, 5], [89, 88, 83, 81, 80]])
OUT_2 = np.array([[80, 80, 81, 169, 255], [1, 2, 3, 4, 5], [79, 78, 73, 72, 71]])


def _mmseg_converter_path() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("mmseg")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / ".mim" / "tools" / "dataset_converters" / "coco_stuff164k.py"
    return path if path.is_file() else None


def test_table_matches_mmseg_converter():
    path = _mmseg_converter_path()
    if path is None:
        pytest.skip("mmseg's tools/dataset_converters/coco_stuff164k.py is not installed")
    tree = ast.parse(path.read_text())
    table = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "clsID_to_trID")
    table.pop(255)
    assert table == RAW_TO_TRAIN
    assert len(table) == 171 and sorted(set(range(182)) - set(table)) == list(UNUSED_RAW_IDS)
    for raw in range(256):
        assert COCO_LUT[raw] == table.get(raw, 255)


def make_coco(tmp_path):
    src = tmp_path / "coco_stuff164k"
    for subset, stem, raw in (("train2017", "000000000009", RAW_1), ("val2017", "000000000139", RAW_2)):
        write_jpg(src / "images" / subset / f"{stem}.jpg", H, W)
        write_gray_png(src / "annotations" / subset / f"{stem}.png", raw)
    # a leftover of mmseg's own converter in the same folder is skipped
    write_gray_png(src / "annotations" / "train2017" / "000000000009_labelTrainIds.png", OUT_1)
    return src


def test_coco_stuff_labels_pixel_by_pixel(tmp_path):
    src = make_coco(tmp_path)
    out = tmp_path / "out"
    assert cli_main(["prepare", "coco-stuff", "--src", str(src), "--out", str(out), "--no-progress"]) == 0
    np.testing.assert_array_equal(read_png(out / "annotations" / "train" / "000000000009.png"), OUT_1)
    np.testing.assert_array_equal(read_png(out / "annotations" / "val" / "000000000139.png"), OUT_2)
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["000000000009.jpg"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_images"] == {"train": 1, "val": 1} and meta["num_classes"] == 171
    assert json.loads((out / "split.json").read_text()) == load_split("coco-stuff-156s15u").to_dict()


def test_hand_values_agree_with_lut():
    np.testing.assert_array_equal(COCO_LUT[RAW_1], OUT_1)
    np.testing.assert_array_equal(COCO_LUT[RAW_2], OUT_2)


@pytest.mark.parametrize("case", ["value", "size", "image", "folder"])
def test_errors_name_the_file_and_leave_nothing(tmp_path, case):
    src = make_coco(tmp_path)
    if case == "value":
        bad = RAW_2.copy()
        bad[1, 1] = 182
        write_gray_png(src / "annotations" / "val2017" / "000000000139.png", bad)
        match = r"000000000139\.png.*182"
    elif case == "size":
        write_gray_png(src / "annotations" / "val2017" / "000000000139.png", np.zeros((H, W + 2)))
        match = r"000000000139\.png.*differs"
    elif case == "image":
        (src / "images" / "val2017" / "000000000139.jpg").write_bytes(b"garbage")
        match = r"unreadable image .*000000000139\.jpg"
    else:
        import shutil

        shutil.rmtree(src / "images" / "val2017")
        match = r"images/val2017"
    with pytest.raises(SystemExit, match=match):
        cli_main(["prepare", "coco-stuff", "--src", str(src), "--out", str(tmp_path / "out"), "--no-progress"])
    assert leftovers(tmp_path, "out") == []


def test_workers_give_the_same_output(tmp_path):
    src = make_coco(tmp_path)
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        assert cli_main(["prepare", "coco-stuff", "--src", str(src), "--out", str(out), "--no-progress",
                         "--workers", str(workers)]) == 0
        outs.append(out)
    for rel in ("annotations/train/000000000009.png", "annotations/val/000000000139.png",
                "images/val/000000000139.jpg", "meta.json", "split.json"):
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
