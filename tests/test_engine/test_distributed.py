"""A real 2-process DDP job on CPU (gloo, through torchrun and mmengine): both ranks end with the same
weights, and distributed evaluation equals single-process evaluation on the same checkpoint although the
sampler pads an odd number of images with a duplicate (the γ sweep and the bootstrap included)."""
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
              "test_dataloader.dataset.data_prefix.seg_map_path=annotations/val",
              # a γ grid read off the first batch, and the per-image bootstrap: both as in one process
              "test_evaluator.gamma_sweep.num=7", "test_evaluator.bootstrap=50", "test_evaluator.bootstrap_seed=3"]
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
    assert len(one["gamma_sweep"]["gammas"]) >= 7 and len(one["bootstrap"]) > 0
    assert two == one  # the padded duplicate is not counted twice; same γ grid, same bootstrap resamples
    # the validation inside the distributed training (same weights, val) wrote the same numbers, once
    plain = {k: v for k, v in one.items() if k not in ("gamma_sweep", "bootstrap")}
    assert json.loads((work / "zeroshot_metrics.json").read_text()) == plain


def test_launch_command_per_launcher(monkeypatch):
    from experiments import pipeline as P

    monkeypatch.delenv(P.LAUNCHED_ENV, raising=False)
    argv = ["train", "--method", "alignzeg", "--seed", "1", "--evaluate"]
    base = {"launcher": "none", "gpus": 1}
    assert P.launch_command({"base": base}, argv) is None
    torchrun = P.launch_command({"base": dict(base, launcher="pytorch", gpus=4)}, argv)
    assert torchrun == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
                        "-m", "experiments.pipeline", *argv]
    srun = P.launch_command({"base": dict(base, launcher="slurm", gpus=8)}, argv)
    assert srun == ["srun", "--ntasks=8", "--kill-on-bad-exit=1", sys.executable, "-m", "experiments.pipeline", *argv]
    monkeypatch.setenv(P.LAUNCHED_ENV, "1")  # a launched process runs the stage itself
    assert P.launch_command({"base": dict(base, launcher="pytorch", gpus=4)}, argv) is None


def test_params_refuse_several_processes_without_a_launcher():
    import copy

    import yaml

    from experiments.params import problems

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["base"]["launcher"] == "none" and params["base"]["gpus"] == 1
    bad = copy.deepcopy(params)
    bad["base"]["gpus"] = 2
    assert any("base.gpus: 2 processes need base.launcher" in p for p in problems(bad, REPO))
    bad["base"]["launcher"] = "mpi"
    assert any("base.launcher" in p for p in problems(bad, REPO))


def test_sync_bn_on_gpus_only(monkeypatch):
    """With CUDA a launched run asks mmengine for SyncBatchNorm (cfg.sync_bn, converted before DDP
    wrapping); on CPU it keeps BatchNorm (torch's SyncBatchNorm needs GPUs) and wraps without device ids."""
    import torch
    from mmengine.config import Config

    import experiments.train as T

    monkeypatch.setattr(T, "init_processes", lambda launcher: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = Config(dict(launcher="pytorch"))
    T.setup_distributed(cfg)
    assert cfg.sync_bn == "torch" and cfg.get("model_wrapper_cfg") is None
    kept = Config(dict(launcher="pytorch", sync_bn="mmcv"))
    T.setup_distributed(kept)
    assert kept.sync_bn == "mmcv"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = Config(dict(launcher="pytorch"))
    T.setup_distributed(cpu)
    assert cpu.get("sync_bn") is None and cpu.model_wrapper_cfg.device_ids is None
    # what mmengine does with cfg.sync_bn: every BatchNorm becomes a SyncBatchNorm, statistics kept
    from mmengine.model import convert_sync_batchnorm

    bn = torch.nn.BatchNorm2d(3)
    bn.running_mean.fill_(0.5)
    net = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), bn), "torch")
    assert isinstance(net[1], torch.nn.SyncBatchNorm) and torch.equal(net[1].running_mean, torch.full((3,), 0.5))


def _stub(folder: Path, name: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def test_slurm_stage_runs_its_command_as_srun_tasks(tmp_path):
    """`base.launcher: slurm`: the stage command becomes `srun --ntasks=N python -m experiments.pipeline
    ...` (a stand-in srun records what it was given and that it runs as a launched process)."""
    import yaml

    from experiments import pipeline as P

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"].update(launcher="slurm", gpus=3)
    path = tmp_path / "params-slurm.yaml"
    path.write_text(yaml.safe_dump(params))
    bin_dir, record = tmp_path / "bin", tmp_path / "srun-args.txt"
    _stub(bin_dir, "srun", f'printf "%s\\n" "$@" > {record}\necho "launched=${P.LAUNCHED_ENV}" >> {record}\n')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONPATH=str(REPO))
    env.pop(P.LAUNCHED_ENV, None)
    argv = ["train", "--method", "zegclip", "--seed", "2", "--evaluate", "--params", str(path)]
    res = subprocess.run([sys.executable, "-m", "experiments.pipeline", *argv], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert record.read_text().splitlines() == ["--ntasks=3", "--kill-on-bad-exit=1", sys.executable, "-m",
                                               "experiments.pipeline", *argv, "launched=1"]
    _stub(bin_dir, "srun", "exit 7\n")  # a failed step fails the stage
    res = subprocess.run([sys.executable, "-m", "experiments.pipeline", *argv], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 7


def test_slurm_batch_script_runs_the_study_over_the_jobs_tasks(tmp_path):
    """experiments/tools/slurm_repro.sh (the README's sbatch line): `dvc exp run` with the Slurm launcher
    and one process per task, the caller's arguments passed on; params.yaml accepts the overrides."""
    import yaml

    from experiments.params import problems

    script = REPO / "experiments" / "tools" / "slurm_repro.sh"
    venv, record = tmp_path / "venv", tmp_path / "dvc-args.txt"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    _stub(tmp_path / "bin", "dvc", f'printf "%s\\n" "$@" > {record}\n')
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", ALIGNZEG_VENV=str(venv),
               SLURM_NTASKS="8", SLURM_SUBMIT_DIR=str(REPO))
    res = subprocess.run(["bash", str(script), "-S", "train.batch_size=2"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    args = record.read_text().splitlines()
    assert args == ["exp", "run", "-S", "base.launcher=slurm", "-S", "base.gpus=8", "-S", "train.batch_size=2"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for item in args[3::2]:
        key, value = item.split("=")
        section, name = key.split(".")
        assert name in params[section], key
        params[section][name] = yaml.safe_load(value)
    assert problems(params, REPO) == []
    del env["SLURM_NTASKS"]
    res = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "SLURM_NTASKS is not set" in res.stderr
