"""`alignzeg train` / `alignzeg test` end to end on a tiny synthetic-layout dataset (CPU, 64 px)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mmseg.models", reason="mmseg.models needs mmcv with ops")

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "experiments" / "configs" / "_base_"
CLASSES = ["red circle", "blue square", "green triangle", "sky", "grass"]
UNSEEN = ["green triangle"]


def make_dataset(root: Path, n_train: int = 4, n_val: int = 2, size: int = 64) -> Path:
    """Synthetic layout: images/{train,val,test}/*.png, annotations/{train,val,test}/*.png, split.json,
    meta.json (test holds the same images as val)."""
    import cv2

    rng = np.random.default_rng(0)
    for subset, n in (("train", n_train), ("val", n_val)):
        (root / "images" / subset).mkdir(parents=True)
        (root / "annotations" / subset).mkdir(parents=True)
        for i in range(n):
            label = np.full((size, size), 3 + (i % 2), dtype=np.uint8)  # sky / grass background
            label[8:32, 8:32] = i % 3  # an object of class 0, 1 or 2 (2 is unseen)
            label[40:56, 40:56] = (i + 1) % 3
            label[0, :4] = 255
            image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            image[label == 0] = (40, 40, 220)
            cv2.imwrite(str(root / "images" / subset / f"{i:04d}.png"), image)
            cv2.imwrite(str(root / "annotations" / subset / f"{i:04d}.png"), label)
    for kind in ("images", "annotations"):
        shutil.copytree(root / kind / "val", root / kind / "test")
    (root / "split.json").write_text(json.dumps(dict(name="toy-4s1u", dataset="synthetic", source="test",
                                                     classes=CLASSES, unseen=UNSEEN)))
    (root / "meta.json").write_text(json.dumps(dict(dataset="synthetic",
                                                    num_images=dict(train=n_train, val=n_val))))
    return root


def write_config(path: Path, data_root: Path, max_iters: int, ckpt_interval: int) -> Path:
    from alignzeg.clip.model import TINY_CLIP_CONFIG

    text = f"""
_base_ = [{str(BASE / 'models/zeroshot_clip.py')!r}, {str(BASE / 'datasets/synthetic.py')!r},
          {str(BASE / 'schedules/schedule_2k.py')!r}, {str(BASE / 'default_runtime.py')!r}]
custom_imports = dict(imports=['alignzeg.mmseg_modules', 'tests.test_models.test_segmentor'],
                      allow_failed_imports=False)
data_root = {str(data_root)!r}
model = dict(
    data_preprocessor=dict(size=(64, 64), size_divisor=None),
    backbone=dict(clip=dict(_delete_=True, model={TINY_CLIP_CONFIG!r}, pretrained=None)),
    decode_head=dict(_delete_=True, type='TrivialTestHead'),
    split=data_root + '/split.json',
    text=dict(templates='single'))
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters={max_iters}, val_interval={max_iters})
param_scheduler = [dict(type='PolyLR', power=0.9, begin=0, end=10, by_epoch=False)]  # same in every run (resume)
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval={ckpt_interval}, max_keep_ckpts=-1),
                     visualization=dict(type='SegVisualizationHook', draw=False))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='gloo'))
"""
    path.write_text(text)
    return path


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))
    data = make_dataset(tmp_path / "data")
    return tmp_path, data


def test_train_test_resume_end_to_end(workspace):
    import torch

    from alignzeg.cli import main
    from alignzeg.engine.checkpoint import load_checkpoint_file

    tmp, data = workspace
    work = tmp / "work"
    cfg2 = write_config(tmp / "toy_2it.py", data, max_iters=2, ckpt_interval=2)
    assert main(["train", str(cfg2), "--work-dir", str(work), "--seed", "3"]) == 0
    ckpt2 = work / "iter_2.pth"
    assert ckpt2.is_file() and (work / "last_checkpoint").is_file()
    ckpt = load_checkpoint_file(ckpt2)
    assert ckpt["meta"]["iter"] == 2 and ckpt["meta"]["seed"] == 3
    state = ckpt["state_dict"]
    assert not any("text_embeds" in k or k.startswith("backbone.features.") for k in state)
    assert any(k.startswith("decode_head.proj") for k in state)
    assert (work / "zeroshot_metrics.json").is_file()  # validation at iteration 2 wrote the metric JSON

    out_json = tmp / "metrics" / "toy.json"
    test_dir = tmp / "test"
    assert main(["test", str(cfg2), str(ckpt2), "--work-dir", str(test_dir), "--out-json", str(out_json)]) == 0
    metrics = json.loads(out_json.read_text())
    for key in ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "aAcc", "unseen_to_seen", "per_class", "confusion"):
        assert key in metrics
    assert metrics["confusion"]["classes"] == CLASSES
    assert {row["class"] for row in metrics["per_class"] if row["split"] == "unseen"} == set(UNSEEN)
    assert json.loads((test_dir / "zeroshot_metrics.json").read_text()) == metrics

    # Resuming with another config (a 3-iteration schedule) would continue another run: refused.
    cfg3 = write_config(tmp / "toy_3it.py", data, max_iters=3, ckpt_interval=1)
    with pytest.raises(ValueError, match=r"refusing to resume in .*work: .*config.* changed"):
        main(["train", str(cfg3), "--work-dir", str(work), "--seed", "3", "--resume"])
    assert sorted(p.name for p in work.glob("iter_*.pth")) == ["iter_2.pth"]  # nothing overwritten

    # Resume after an interruption: the 3-iteration run, cut after its checkpoint at iteration 2
    # (iter_3.pth gone, last_checkpoint pointing at iter_2.pth), ends with the same weights.
    full, cut = tmp / "full", tmp / "cut"
    assert main(["train", str(cfg3), "--work-dir", str(full), "--seed", "3"]) == 0
    assert main(["train", str(cfg3), "--work-dir", str(cut), "--seed", "3"]) == 0
    (cut / "iter_3.pth").unlink()
    (cut / "last_checkpoint").write_text(str(cut / "iter_2.pth"))
    assert main(["train", str(cfg3), "--work-dir", str(cut), "--seed", "3", "--resume"]) == 0
    logs = "".join(p.read_text() for p in cut.rglob("*.log"))
    assert "resumed" in logs.lower() and "iter: 2" in logs
    a = load_checkpoint_file(full / "iter_3.pth")["state_dict"]
    b = load_checkpoint_file(cut / "iter_3.pth")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["decode_head.proj.weight"], state["decode_head.proj.weight"])


def test_test_requires_checkpoint_or_flag_and_maskclip_runs_without(workspace):
    from alignzeg.cli import main

    tmp, data = workspace
    cfg = write_config(tmp / "toy.py", data, max_iters=2, ckpt_interval=2)
    with pytest.raises(SystemExit, match="no-checkpoint"):
        main(["test", str(cfg)])
    text = cfg.read_text().replace("type='TrivialTestHead'", "type='MaskCLIPHead'")
    maskclip = tmp / "maskclip_toy.py"
    maskclip.write_text(text)
    assert main(["test", str(maskclip), "--no-checkpoint", "--work-dir", str(tmp / "mc")]) == 0
    metrics = json.loads((tmp / "mc" / "zeroshot_metrics.json").read_text())
    assert 0.0 <= metrics["hIoU"] <= 100.0
    with pytest.raises(RuntimeError, match="training-free"):
        main(["train", str(maskclip), "--work-dir", str(tmp / "mc_train")])


def test_scripts_run_directly():
    for script in ("train.py", "test.py"):
        res = subprocess.run([sys.executable, str(REPO / "experiments" / script), "--help"], capture_output=True,
                             text=True, cwd="/", timeout=120)
        assert res.returncode == 0, res.stderr
        assert "--work-dir" in res.stdout and "--cfg-options" in res.stdout
