"""Converter output read back through the datasets and mmseg's pipeline (prepare -> dataset)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytest.importorskip("mmcv.ops", reason="mmseg datasets need the compiled mmcv")

from mmengine.registry import init_default_scope  # noqa: E402

import alignzeg.datasets as zsd  # noqa: E402
from alignzeg.cli import main as cli_main  # noqa: E402
from alignzeg.splits import load_split  # noqa: E402
from tests.test_data import test_prepare_context as ctx_case  # noqa: E402
from tests.test_data import test_prepare_voc as voc_case  # noqa: E402
from tests.test_data._prepare_trees import read_png  # noqa: E402

PIPELINE = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]


@pytest.fixture(autouse=True)
def _mmseg_scope():
    init_default_scope("mmseg")


def seen_view(full: np.ndarray, split) -> np.ndarray:
    """Independent seen-mode mapping: full id -> index in split.seen by name, else 255."""
    out = np.full(full.shape, 255, dtype=np.uint8)
    for cid, name in enumerate(split.classes):
        if name in split.seen:
            out[full == cid] = split.seen.index(name)
    return out


def test_voc_prepare_then_seen_dataset(tmp_path):
    src, sbd = voc_case.make_voc(tmp_path)
    out = tmp_path / "voc_prepared"
    assert voc_case.run_voc(src, out, sbd) == 0
    ds = zsd.VOCZSDataset(data_root=str(out), mode="seen", pipeline=PIPELINE)
    assert [s["img_path"].rsplit("/", 1)[1] for s in (ds.get_data_info(i) for i in range(len(ds)))] == \
        ["a.jpg", "b.jpg", "d.jpg", "e.jpg"]
    split = load_split("voc12-15s5u")
    for i, full in enumerate([voc_case.VOC_A_OUT, voc_case.VOC_B_OUT, voc_case.SBD_D_OUT, voc_case.SBD_E_OUT]):
        np.testing.assert_array_equal(ds[i]["gt_seg_map"], seen_view(full, split))
    # VOC_B's 16 (sheep, unseen) becomes ignore in the seen view: a hand check of the mapping above
    assert ds[1]["gt_seg_map"][2, 3] == 255 and ds[1]["gt_seg_map"][0, 0] == 2
    val = zsd.VOCZSDataset(data_root=str(out), mode="all", test_mode=True, pipeline=PIPELINE)
    np.testing.assert_array_equal(val[0]["gt_seg_map"], voc_case.VOC_C_OUT)


def test_context_prepare_then_second_split(tmp_path):
    src = ctx_case.make_context(tmp_path)
    out = tmp_path / "ctx_prepared"
    assert ctx_case.run_context(src, out) == 0
    split = load_split("context59-cascadeclip-10u")
    ds = zsd.Context59ZSDataset(data_root=str(out), split="context59-cascadeclip-10u", mode="transductive",
                                pipeline=PIPELINE)
    exp = ctx_case.OUT_A.copy()
    exp[np.isin(exp, split.unseen_ids)] = 255    # aeroplane (0) is unseen in this split, wood/tv/cat are not
    np.testing.assert_array_equal(ds[0]["gt_seg_map"], exp)
    assert exp[0, 0] == 255 and exp[1, 0] == 54
    assert ds.metainfo["split_name"] == "context59-cascadeclip-10u"
    seen = zsd.Context59ZSDataset(data_root=str(out), split="context59-cascadeclip-10u", mode="seen",
                                  pipeline=PIPELINE)
    np.testing.assert_array_equal(seen[0]["gt_seg_map"], seen_view(ctx_case.OUT_A, split))


@pytest.mark.skipif(importlib.util.find_spec("alignzeg.data.synthetic") is None,
                    reason="synthetic generator not available")
def test_synthetic_prepare_then_dataset(tmp_path):
    out = tmp_path / "syn"
    assert cli_main(["prepare", "synthetic", "--out", str(out), "--num-train", "2", "--num-val", "1",
                     "--image-size", "32", "--no-progress"]) == 0
    split = load_split(out / "split.json")
    ds = zsd.SyntheticZSDataset(data_root=str(out), mode="seen", pipeline=PIPELINE)
    assert len(ds) == 2 and ds.metainfo["classes"] == split.seen
    for i in range(len(ds)):
        full = read_png(out / "annotations" / "train" / (ds.get_data_info(i)["seg_map_path"].rsplit("/", 1)[1]))
        np.testing.assert_array_equal(ds[i]["gt_seg_map"], seen_view(full, split))
        assert ds[i]["img"].shape == (32, 32, 3)
