"""A real 2-process DDP job on CPU (gloo, through torchrun and mmengine): both ranks end with the same
weights, and distributed evaluation equals single-process evaluation on the same checkpoint although the
sampler pads an odd number of images with a duplicate."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mmengine.hooks import Hook
from mmseg.registry import HOOKS

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "experiments" / "configs" / "alignzeg" / "alignzeg_tiny-vit_1xb16-2k_folder-custom-64x64.py"


@HOOKS.register_module()
class RankWeightsHook(Hook):
    """After training, every rank writes the SHA-256 of its model's parameters and buffers."""

    def after_train(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        Path(runner.work_dir, f"weights_rank{runner.rank}.txt").write_text(h.hexdigest())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(REPO / "experiments" / script), *map(str, args),
           "--launcher", "pytorch"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_two_process_gloo_training_and_evaluation(tmp_path, monkeypatch):
    pytest.importorskip("mmseg.models", reason="mmseg.models needs mmcv with ops")
    import torch

    from alignzeg.clip.model import TINY_CLIP_CONFIG, build_clip, save_clip
    from tests.test_data.test_prepare_folder import _run, make_folder

    make_folder(tmp_path, n=24)
    data = tmp_path / "data" / "street"
    assert _run("--images", tmp_path / "img", "--labels", tmp_path / "lab", "--classes", tmp_path / "classes.txt",
                "--unseen", "car", "--ignore-value", 250, "--val-fraction", 0.25, "--test-fraction", 0.25,
                "--out", data, "--no-progress") == 0
    n_val = len(list((data / "annotations" / "val").glob("*.png")))
    assert n_val % 2 == 1  # two ranks: the sampler pads val with one duplicate image
    torch.manual_seed(0)
    clip = save_clip(build_clip(dict(TINY_CLIP_CONFIG)), TINY_CLIP_CONFIG, tmp_path / "clip.safetensors")
    cfg = tmp_path / "ddp.py"
    cfg.write_text(f"_base_ = [{str(TEMPLATE)!r}]\n"
                   "custom_imports = dict(imports=['alignzeg.mmseg_modules', 'tests.test_engine.test_distributed'],"
                   " allow_failed_imports=False)\n"
                   "custom_hooks = [dict(type='ZeroShotMetaHook'), dict(type='RankWeightsHook')]\n")
    opts = ["--cfg-options", f"model.backbone.clip.pretrained={clip}", "train_cfg.max_iters=2",
            "train_cfg.val_interval=2", "train_dataloader.batch_size=2", "default_hooks.checkpoint.interval=2",
            "param_scheduler.0.end=2"]
    work = tmp_path / "work"
    res = _torchrun("train.py", cfg, "--data-root", data, "--work-dir", work, "--seed", "0", *opts, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ranks = [(work / f"weights_rank{r}.txt").read_text() for r in (0, 1)]
    assert ranks[0] == ranks[1]  # DDP kept both replicas identical
    logs = "".join(p.read_text() for p in work.rglob("*.log"))
    assert "effective batch size: 2 process(es) x 2 image(s) = 4" in logs
    ckpt = work / "iter_2.pth"

    # the same checkpoint on val: 2 processes (padded sampler) and 1 process give the same metric JSON
    on_val = ["test_dataloader.dataset.data_prefix.img_path=images/val",
              "test_dataloader.dataset.data_prefix.seg_map_path=annotations/val"]
    res = _torchrun("test.py", cfg, ckpt, "--data-root", data, "--work-dir", tmp_path / "t2", "--out-json",
                    tmp_path / "t2.json", "--cfg-options", f"model.backbone.clip.pretrained={clip}", *on_val,
                    cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    monkeypatch.chdir(tmp_path)
    from alignzeg.cli import main

    assert main(["test", str(cfg), str(ckpt), "--data-root", str(data), "--work-dir", str(tmp_path / "t1"),
                 "--out-json", str(tmp_path / "t1.json"), "--cfg-options",
                 f"model.backbone.clip.pretrained={clip}", *on_val]) == 0
    one, two = (json.loads((tmp_path / f"t{k}.json").read_text()) for k in (1, 2))
    from PIL import Image

    labelled = sum(int((np.asarray(Image.open(p)) != 255).sum()) for p in (data / "annotations" / "val").glob("*.png"))
    assert int(np.asarray(one["confusion"]["matrix"]).sum()) == labelled  # every val pixel once
    assert two == one  # the padded duplicate is not counted twice
    # the validation inside the distributed training (same weights, val) wrote the same numbers, once
    assert json.loads((work / "zeroshot_metrics.json").read_text()) == one
