"""write_train_curve: mmengine's logged scalars of a (resumed) run as one CSV for DVC plots."""
from __future__ import annotations

import csv
import json

from experiments.pipeline import write_train_curve


def _log(folder, entries):
    (folder / "vis_data").mkdir(parents=True)
    (folder / "vis_data" / "scalars.json").write_text("".join(json.dumps(e) + "\n" for e in entries))


def test_curve_merges_resumed_folders_and_keeps_every_loss_term(tmp_path):
    work = tmp_path / "run"
    _log(work / "20260101_000000", [
        {"lr": 0.1, "loss": 3.0, "decode.loss_cls": 2.0, "decode.loss_mask": 1.0, "time": 0.2, "iter": 2, "step": 2},
        {"lr": 0.09, "loss": 2.5, "decode.loss_cls": 1.6, "decode.loss_mask": 0.9, "iter": 4, "step": 4}])
    # resumed after iteration 2: the later folder re-logs step 4 and goes on; a metric line has no loss
    _log(work / "20260101_010000", [
        {"lr": 0.08, "loss": 2.4, "decode.loss_cls": 1.5, "decode.loss_mask": 0.9, "decode.loss_bc": 0.3,
         "iter": 4, "step": 4},
        {"lr": 0.07, "loss": 2.0, "decode.loss_cls": 1.2, "decode.loss_mask": 0.8, "decode.loss_bc": 0.2,
         "iter": 6, "step": 6},
        {"mIoU": 10.0, "step": 6}])
    out = write_train_curve(work, tmp_path / "res" / "train_curve.csv")
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["step", "lr", "loss", "decode.loss_bc", "decode.loss_cls", "decode.loss_mask"]
    assert [r["step"] for r in rows] == ["2", "4", "6"]
    assert rows[0]["decode.loss_bc"] == ""  # not logged before the resume
    assert rows[1]["loss"] == "2.4" and rows[1]["lr"] == "0.08"  # the later folder wins for step 4
    assert rows[2]["decode.loss_cls"] == "1.2"


def test_qualitative_rule_and_saver(tmp_path):
    """The k annotations with the largest min(seen, unseen) pixel count (ties by name); the hook writes
    exactly those."""
    import numpy as np
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    from PIL import Image

    from alignzeg.engine.score_hook import PredictionSaverHook, qualitative_images

    ann, img_dir = tmp_path / "ann", tmp_path / "img"
    ann.mkdir()
    img_dir.mkdir()
    # (unseen = label 2, ignore = 255) pixels of 16; the rest is seen (label 0)
    counts = {"a": (3, 0), "b": (10, 0), "c": (16, 0), "d": (8, 0), "e": (6, 4), "f": (6, 0)}
    for stem, (n, ign) in counts.items():
        lab = np.zeros((4, 4), np.uint8)
        lab.flat[:n] = 2
        lab.flat[16 - ign:] = 255
        Image.fromarray(lab).save(ann / f"{stem}.png")
        Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(img_dir / f"{stem}.png")
    # min(seen, unseen): a 3, b 6, c 0 (only unseen), d 8, e min(6, 6) = 6, f 6 -> d, then b, e, f by name
    assert qualitative_images(ann, [2], k=4) == ["d", "b", "e", "f"]
    assert qualitative_images(ann, [2], k=6)[-1] == "c"
    hook = PredictionSaverHook(str(tmp_path / "out"), ["b"])
    samples = []
    for stem in counts:
        s = SegDataSample(metainfo={"img_path": str(img_dir / f"{stem}.png")})
        s.pred_sem_seg = PixelData(data=torch.ones(1, 4, 4, dtype=torch.long))
        s.gt_sem_seg = PixelData(data=torch.from_numpy(np.asarray(Image.open(ann / f"{stem}.png"))).long()[None])
        samples.append(s)
    hook.after_test_iter(None, 0, outputs=samples)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b_gt.png", "b_image.png", "b_pred.png"]
    assert (np.asarray(Image.open(tmp_path / "out" / "b_pred.png")) == 1).all()
    assert int((np.asarray(Image.open(tmp_path / "out" / "b_gt.png")) == 2).sum()) == 10
