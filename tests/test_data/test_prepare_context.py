"""``alignzeg prepare context``: LabelMap (459 ids) + labels.txt -> Context-59 by name."""
from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from alignzeg.cli import main as cli_main
from alignzeg.data.prepare.common import PrepareError
from alignzeg.data.prepare.context import MMSEG_CONTEXT59_IDS, context59_mapping, read_labels_txt
from alignzeg.splits import load_split
from tests.test_data._prepare_trees import leftovers, read_png, write_context_mat, write_jpg, write_lines

NAMES59 = list(load_split("context59-zs3-10u").classes)
H, W = 3, 4
# 459-class ids of a few classes (those of the official labels.txt)
AEROPLANE, WOOD, TV, CAT, TABLE = 2, 458, 427, 65, 397
ACCORDION, UNKNOWN, TABLEWARE = 1, 431, 398


def labels_lines(rename=None, extra=()):
    """A labels.txt with the 59 names at their official ids plus a few other classes."""
    rename = rename or {}
    entries = {idx: rename.get(name, name) for idx, name in zip(MMSEG_CONTEXT59_IDS, NAMES59)}
    entries.update({ACCORDION: "accordion", UNKNOWN: "unknown", TABLEWARE: "tableware", 3: "air conditioner"})
    entries.update(dict(extra))
    return [f"{idx}: {name}" for idx, name in sorted(entries.items())]


LM_A = np.array([[AEROPLANE, AEROPLANE, WOOD, 0], [TV, CAT, TABLE, TABLEWARE], [ACCORDION, UNKNOWN, 3, 2]])
OUT_A = np.array([[0, 0, 58, 255], [54, 14, 49, 255], [255, 255, 255, 0]])
LM_B = np.array([[284, 284, 360, 360], [187, 187, 98, 98], [0, 0, 0, 440]])     # person sky grass cow wall
OUT_B = np.array([[36, 36, 46, 46], [28, 28, 19, 19], [255, 255, 255, 55]])


def make_context(tmp_path, lines=None):
    src = tmp_path / "pascal_context"
    write_lines(src / "labels.txt", lines or labels_lines())
    write_context_mat(src / "trainval" / "2008_000002.mat", LM_A)
    write_context_mat(src / "trainval" / "2008_000003.mat", LM_B)
    write_jpg(src / "JPEGImages" / "2008_000002.jpg", H, W, seed=1)
    write_jpg(src / "JPEGImages" / "2008_000003.jpg", H, W, seed=2)
    write_lines(src / "train.txt", ["2008_000002"])
    write_lines(src / "val.txt", ["2008_000003"])
    return src


def run_context(src, out, *extra):
    return cli_main(["prepare", "context", "--src", str(src), "--out", str(out), "--no-progress", *extra])


def test_hand_names():
    assert NAMES59[0] == "aeroplane" and NAMES59[58] == "wood" and NAMES59[54] == "tvmonitor"
    assert NAMES59[14] == "cat" and NAMES59[49] == "table" and NAMES59[36] == "person"
    assert NAMES59[46] == "sky" and NAMES59[28] == "grass" and NAMES59[19] == "cow" and NAMES59[55] == "wall"


def test_context_labels_pixel_by_pixel(tmp_path):
    src = make_context(tmp_path)
    out = tmp_path / "out"
    assert run_context(src, out) == 0
    np.testing.assert_array_equal(read_png(out / "annotations" / "train" / "2008_000002.png"), OUT_A)
    np.testing.assert_array_equal(read_png(out / "annotations" / "val" / "2008_000003.png"), OUT_B)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_images"] == {"train": 1, "val": 1}
    assert meta["context459_ids"]["tvmonitor"] == TV
    assert json.loads((out / "split.json").read_text()) == load_split("context59-zs3-10u").to_dict()


def test_mapping_equals_mmseg_detail_converter():
    """Name-based ids == the sorted ``_mapping`` of mmseg's Detail-API converter (index i -> i-1)."""
    spec = importlib.util.find_spec("mmseg")
    path = None if spec is None else \
        Path(spec.origin).parent / ".mim" / "tools" / "dataset_converters" / "pascal_context.py"
    if path is None or not path.is_file():
        pytest.skip("mmseg's pascal_context converter is not installed")
    tree = ast.parse(path.read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.Assign)
                and getattr(n.targets[0], "id", "") == "_mapping")
    ids = sorted(ast.literal_eval(node.value.args[0].args[0]))   # np.sort(np.array([...]))
    assert ids[0] == 0 and tuple(ids[1:]) == MMSEG_CONTEXT59_IDS
    labels = {int(line.split(":")[0]): line.split(": ", 1)[1] for line in labels_lines()}
    mapping = context59_mapping(labels, NAMES59)
    assert mapping == {idx: i - 1 for i, idx in enumerate(ids) if i > 0}


def test_aliases_used_only_when_name_absent(tmp_path):
    lines = labels_lines(rename={"tvmonitor": "tv monitor", "pottedplant": "Potted Plant",
                                 "bedclothes": "bed clothes"})
    mapping = context59_mapping(read_labels_txt_from(tmp_path, lines), NAMES59)
    assert mapping[TV] == NAMES59.index("tvmonitor")
    assert mapping[308] == NAMES59.index("pottedplant") and mapping[19] == NAMES59.index("bedclothes")
    # exact name wins over an alias spelling present as another class
    lines = labels_lines(extra={500: "dining table"})
    mapping = context59_mapping(read_labels_txt_from(tmp_path, lines), NAMES59)
    assert mapping[TABLE] == NAMES59.index("table") and 500 not in mapping


def read_labels_txt_from(tmp_path, lines):
    write_lines(tmp_path / "labels.txt", lines)
    return read_labels_txt(tmp_path / "labels.txt")


def test_name_errors_name_labels_txt(tmp_path):
    lines = [ln for ln in labels_lines() if not ln.endswith(": keyboard")]
    with pytest.raises(PrepareError, match=r"labels\.txt.*keyboard"):
        context59_mapping(read_labels_txt_from(tmp_path, lines), NAMES59, tmp_path / "labels.txt")
    lines = labels_lines(rename={"tvmonitor": "tv monitor"}, extra={501: "tv/monitor"})
    with pytest.raises(PrepareError, match=r"tvmonitor.*several ids \[427, 501\]"):
        context59_mapping(read_labels_txt_from(tmp_path, lines), NAMES59)
    write_lines(tmp_path / "labels.txt", ["1 accordion"])
    with pytest.raises(PrepareError, match=r"labels\.txt: line 1"):
        read_labels_txt(tmp_path / "labels.txt")


@pytest.mark.parametrize("case", ["value", "size", "image", "mat", "list"])
def test_errors_name_the_file_and_leave_nothing(tmp_path, case):
    src = make_context(tmp_path)
    if case == "value":
        bad = LM_B.copy()
        bad[0, 0] = 459    # not an id of labels.txt
        write_context_mat(src / "trainval" / "2008_000003.mat", bad)
        match = r"2008_000003\.mat.*459"
    elif case == "size":
        write_context_mat(src / "trainval" / "2008_000003.mat", np.zeros((H, W + 1)))
        match = r"2008_000003\.mat.*differs"
    elif case == "image":
        (src / "JPEGImages" / "2008_000002.jpg").write_bytes(b"")
        match = r"unreadable image .*2008_000002\.jpg"
    elif case == "mat":
        from scipy.io import savemat

        savemat(str(src / "trainval" / "2008_000002.mat"), {"Labels": LM_A})
        match = r"2008_000002\.mat.*LabelMap"
    else:
        (src / "val.txt").unlink()
        match = r"val\.txt"
    with pytest.raises(SystemExit, match=match):
        run_context(src, tmp_path / "out")
    assert leftovers(tmp_path, "out") == []


def test_explicit_lists_and_images(tmp_path):
    src = make_context(tmp_path)
    (src / "JPEGImages").rename(tmp_path / "VOC2010_JPEGImages")
    write_lines(tmp_path / "lists" / "train.txt", ["2008_000003"])
    write_lines(tmp_path / "lists" / "val.txt", ["2008_000002"])
    out = tmp_path / "out"
    assert run_context(src, out, "--images", str(tmp_path / "VOC2010_JPEGImages"),
                       "--train-list", str(tmp_path / "lists" / "train.txt"),
                       "--val-list", str(tmp_path / "lists" / "val.txt")) == 0
    np.testing.assert_array_equal(read_png(out / "annotations" / "train" / "2008_000003.png"), OUT_B)
    np.testing.assert_array_equal(read_png(out / "annotations" / "val" / "2008_000002.png"), OUT_A)


def test_error_in_a_worker_process_is_named(tmp_path):
    src = make_context(tmp_path)
    bad = LM_A.copy()
    bad[2, 3] = 460
    write_context_mat(src / "trainval" / "2008_000002.mat", bad)
    with pytest.raises(SystemExit, match=r"2008_000002\.mat.*460"):
        run_context(src, tmp_path / "out", "--workers", "2")
    assert leftovers(tmp_path, "out") == []
