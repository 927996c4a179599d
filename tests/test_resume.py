"""Every number is the number a fresh run would print: fingerprinted run folders, exact resume, loud
failures. The real tiny AlignZeg config (random point sampling, feature mixup, dropout-free) trains for
a few iterations on a small synthetic benchmark, on CPU, deterministically.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mmseg.models", reason="mmseg.models needs mmcv with ops")

from mmengine.hooks import Hook  # noqa: E402
from mmseg.registry import HOOKS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = "experiments/configs/alignzeg/alignzeg_tiny-vit_1xb16-2k_synthetic-default-64x64.py"


class SimulatedKill(BaseException):
    """Stands for SIGKILL between two checkpoints: nothing of the run's own code handles it."""


@HOOKS.register_module(force=True)
class KillAtIterHook(Hook):
    priority = "NORMAL"  # before CheckpointHook (VERY_LOW): the iteration's checkpoint is never written

    def __init__(self, at: int) -> None:
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.at:
            raise SimulatedKill(f"killed after iteration {self.at}")


@HOOKS.register_module(force=True)
class PoisonAtIterHook(Hook):
    """Makes the logit scale NaN before iteration ``at`` (1-based), so that iteration's loss is NaN."""

    def __init__(self, at: int) -> None:
        self.at = at

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter + 1 == self.at:
            import torch

            head = runner.model.decode_head
            with torch.no_grad():
                for p in head.parameters():
                    p.fill_(float("nan"))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A small benchmark, tiny CLIP and text cache, built by the real CLI commands."""
    from alignzeg.cli import main as cli

    root = tmp_path_factory.mktemp("study")
    data, clip, text = root / "data" / "synthetic", root / "data" / "clip.safetensors", root / "data" / "text"
    assert cli(["prepare", "synthetic", "--out", str(data), "--seed", "0", "--num-train", "24",
                "--num-val", "6", "--num-test", "6", "--image-size", "64"]) == 0
    assert cli(["pretrain-clip", "--data", str(data), "--out", str(clip), "--seed", "0", "--epochs", "1",
                "--batch-size", "8", "--num-scenes", "24", "--num-heldout", "0", "--threads", "2", "--no-progress"]) == 0
    assert cli(["text-embed", "--pretrained", str(clip), "--split", str(data / "split.json"),
                "--templates", "vild", "--cache-dir", str(text), "--seen-too",
                "--out", str(text / "vocabulary.safetensors")]) == 0
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"].update(data_root=str(data), split=str(data / "split.json"), clip_checkpoint=str(clip),
                          text_cache=str(text), num_threads=2)
    params["train"].update(methods=["alignzeg"], max_iters=6, warmup_iters=1, batch_size=2,
                           log_interval=1, checkpoint_interval=2, deterministic=True,
                           configs={"alignzeg": str(REPO / CONFIG)})
    params["evaluate"].update(methods=["alignzeg"], training_free=[], score_softmax=[], score_samples=500)
    params["ablate"].update(variants=[], from_main={})
    params["analyse"].update(ours="alignzeg", methods={"alignzeg": "AlignZeg"}, calibrated=[])
    params["self_train"].update(methods=["alignzeg"], configs={"alignzeg": str(
        REPO / "experiments/configs/alignzeg/alignzeg-st_tiny-vit_1xb16-1k_synthetic-default-64x64.py")})
    from experiments.params import validate

    validate(params, "test params", root=REPO)
    return root, params


def _at(params: dict, root: Path, name: str) -> dict:
    p = copy.deepcopy(params)
    p["base"].update(runs_dir=str(root / f"runs-{name}"), results_dir=str(root / f"results-{name}"),
                     reports_dir=str(root / f"reports-{name}"))
    return p


def _train(params: dict, seed: int = 0, extra_hooks=None) -> Path:
    from experiments import pipeline as P

    P.configure(params, "alignzeg")
    return P.train_run(params, "alignzeg", seed, extra_hooks=extra_hooks)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fresh(study):
    """An uninterrupted run (seed 0) and its evaluation: the reference of the other tests."""
    from experiments import pipeline as P

    root, params = study
    p = _at(params, root, "fresh")
    model = _train(p)
    metrics = P.evaluate_run(p, "alignzeg", 0)
    return p, model, _sha(model), metrics


def test_changed_param_clears_the_run_folder_and_matches_a_fresh_run(study, fresh, capsys):
    """The stale folder of a finished run (iter_6.pth, last_checkpoint) never becomes the new model."""
    root, params = study
    p, model, reference, _ = fresh
    changed = copy.deepcopy(p)
    changed["train"]["warmup_iters"] = 3  # one training param
    work = Path(changed["base"]["runs_dir"]) / "alignzeg" / "seed0"
    assert (work / "iter_6.pth").is_file() and (work / "last_checkpoint").is_file()
    stale = _train(changed)
    out = capsys.readouterr().out
    assert "written by another run (config changed); starting from scratch" in out
    fresh_changed = _train(_at(changed, root, "fresh-changed"))
    assert _sha(stale) == _sha(fresh_changed)  # deterministic CPU training: bit-identical
    assert _sha(stale) != reference  # the param matters, so an old model would have been detected


def test_finished_run_is_not_trained_again(study, fresh):
    """What the `train --evaluate` stage does when only evaluation inputs changed: the run folder of the
    same fingerprint is finished, so no iteration runs and model.pth comes back byte-identical."""
    root, params = study
    p = _at(params, root, "finished")
    first = _sha(_train(p))
    work = Path(p["base"]["runs_dir"]) / "alignzeg" / "seed0"
    logs_before = set(work.rglob("*.log"))
    again = _train(p)
    new_logs = [f for f in work.rglob("*.log") if f not in logs_before]
    assert len(new_logs) == 1
    text = new_logs[0].read_text()
    assert "resumed epoch: 0, iter: 6" in text
    assert "Iter(train)" not in text  # no training iteration
    assert _sha(again) == first == fresh[2]


def test_interrupted_run_resumes_to_the_same_model_and_metrics(study, fresh):
    from experiments import pipeline as P

    root, params = study
    _, _, reference, metrics = fresh
    p = _at(params, root, "killed")
    with pytest.raises(SimulatedKill):
        _train(p, extra_hooks=[dict(type="KillAtIterHook", at=5)])
    work = Path(p["base"]["runs_dir"]) / "alignzeg" / "seed0"
    assert (work / "iter_4.pth").is_file() and not (work / "iter_5.pth").exists()
    assert not (work / "model.pth").exists()
    resumed = _train(p)  # what `dvc repro` runs again
    log = "\n".join(f.read_text() for f in work.rglob("*.log"))
    assert "resumed epoch: 0, iter: 4" in log
    assert _sha(resumed) == reference
    again = P.evaluate_run(p, "alignzeg", 0)
    assert again == metrics
    a = json.loads((Path(p["base"]["results_dir"]) / "alignzeg/seed0/zeroshot_metrics.json").read_text())
    b = json.loads((Path(fresh[0]["base"]["results_dir"]) / "alignzeg/seed0/zeroshot_metrics.json").read_text())
    assert a == b  # per-class IoU, confusion and every derived number


def test_resume_from_another_fingerprint_is_refused(study):
    """`alignzeg train --resume` (not the pipeline) never continues another run's checkpoint."""
    from mmengine.runner import Runner

    from experiments import pipeline as P
    from experiments.train import add_run_state, prepare_runtime

    root, params = study
    p = _at(params, root, "refuse")
    with pytest.raises(SimulatedKill):
        _train(p, extra_hooks=[dict(type="KillAtIterHook", at=3)])
    prepare_runtime()
    cfg = P.load_run_config(p, "alignzeg")
    cfg.work_dir = str(Path(p["base"]["runs_dir"]) / "alignzeg" / "seed0")
    cfg.randomness = dict(seed=0, deterministic=True)
    cfg.optim_wrapper.optimizer.lr = 1e-4  # another config
    cfg.resume, cfg.load_from = True, None
    add_run_state(cfg)
    with pytest.raises(ValueError, match=r"refusing to resume in .*seed0: .*config.* changed"):
        Runner.from_cfg(cfg).train()


def test_non_finite_loss_stops_with_iteration_and_terms_and_keeps_last_checkpoint(study):
    root, params = study
    p = _at(params, root, "nan")
    work = Path(p["base"]["runs_dir"]) / "alignzeg" / "seed0"
    with pytest.raises(SystemExit) as err:
        _train(p, extra_hooks=[dict(type="PoisonAtIterHook", at=5)])
    msg = str(err.value)
    assert "non-finite loss at iteration 5" in msg and "loss_cls=nan" in msg.replace("d0.", "")
    assert "last good checkpoint" in msg and "iter_4.pth" in msg
    from alignzeg.engine.checkpoint import load_checkpoint_file

    import torch

    last = load_checkpoint_file(work / "iter_4.pth")
    assert last["meta"]["iter"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not (work / "iter_5.pth").exists() and not (work / "model.pth").exists()


def test_evaluation_refuses_a_checkpoint_with_a_missing_key(study, fresh, tmp_path):
    import torch

    from experiments import pipeline as P

    p, model, _, _ = fresh
    ckpt = torch.load(model, map_location="cpu", weights_only=False)
    key = next(k for k in ckpt["state_dict"] if k.startswith("decode_head."))
    del ckpt["state_dict"][key]
    ckpt["state_dict"]["decode_head.not_a_weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(ckpt, bad)
    with pytest.raises(SystemExit) as err:
        P.evaluate_run(p, "alignzeg", 0, checkpoint=bad)
    msg = str(err.value)
    assert str(bad) in msg and key in msg and "decode_head.not_a_weight" in msg


def test_launched_stage_trains_in_two_processes_and_evaluates_as_one_process(study, tmp_path):
    """`base.launcher: pytorch`, `base.gpus: 2`: the DVC train stage command starts itself again under
    torchrun (gloo on CPU), trains with DDP, and rank 0 alone writes model.pth and the results. The
    2-process evaluation (val γ grid, the test bootstrap, every metric) equals a 1-process evaluation of
    the same model.pth."""
    import os
    import subprocess
    import sys

    import numpy as np

    from experiments import pipeline as P

    root, params = study
    ddp = _at(params, root, "ddp")
    ddp["base"].update(launcher="pytorch", gpus=2)
    assert ddp["evaluate"]["gamma_points"] > 0 and ddp["evaluate"]["bootstrap"] > 0
    path = tmp_path / "params-ddp.yaml"
    path.write_text(yaml.safe_dump(ddp))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env.pop(P.LAUNCHED_ENV, None)
    for args in (["configure", "--method", "alignzeg"],
                 ["train", "--method", "alignzeg", "--seed", "0", "--evaluate"]):
        res = subprocess.run([sys.executable, "-m", "experiments.pipeline", *args, "--params", str(path)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "launching: " in res.stdout and "torch.distributed.run --standalone --nproc_per_node 2" in res.stdout
    assert res.stdout.count('"split": "test"') == 1  # the metrics line: rank 0 only
    work = Path(ddp["base"]["runs_dir"]) / "alignzeg" / "seed0"
    from alignzeg.engine.run_state import FINGERPRINT_FILE

    assert json.loads((work / FINGERPRINT_FILE).read_text())["processes"] == 2
    logs = "".join(f.read_text() for f in work.glob("*/*.log"))
    assert "effective batch size: 2 process(es) x 2 image(s) = 4" in logs
    model = work / "model.pth"
    out2 = Path(ddp["base"]["results_dir"]) / "alignzeg" / "seed0"

    one = _at(params, root, "ddp-one")  # one process, the same checkpoint
    P.configure(one, "alignzeg")
    P.evaluate_run(one, "alignzeg", 0, checkpoint=model)
    out1 = Path(one["base"]["results_dir"]) / "alignzeg" / "seed0"
    for rel in ("metrics.json", "zeroshot_metrics.json", "val/zeroshot_metrics.json", "protocol.json"):
        assert json.loads((out2 / rel).read_text()) == json.loads((out1 / rel).read_text()), rel
    full = json.loads((out1 / "zeroshot_metrics.json").read_text())
    assert full["bootstrap"] and full["gamma_sweep"]["calibrated"]
    a, b = np.load(out1 / "scores.npz"), np.load(out2 / "scores.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:  # the score samples: the same pixels' values, whatever the rank order
        assert np.array_equal(np.sort(a[key], axis=None), np.sort(b[key], axis=None)), key
