"""Stage commands of the DVC pipeline (``dvc.yaml``): check params, configure, train and evaluate runs.

Every number comes from ``params.yaml`` (validated by :mod:`experiments.params` before any work);
``dvc.yaml`` only names the stage, the method or ablation variant and the seed.

* ``configure`` writes the *resolved* config of a method or ablation variant (the method's config file
  with the ``base`` paths and the ``train`` schedule applied) to ``<runs_dir>/configs/``. Training and
  evaluation read only that file, so a stage reruns exactly when its own config's content changes.
* ``train`` trains one run in ``<runs_dir>/[ablation/]<name>/seed<k>/``. The folder is keyed by the run's
  fingerprint (resolved config, seed, code, input content, library versions;
  :mod:`alignzeg.engine.run_state`): a folder written by another fingerprint is cleared and training
  starts from scratch; a folder with the same fingerprint resumes from its last checkpoint (an
  interrupted run loses at most ``train.checkpoint_interval`` iterations, and ends bit-identical to an
  uninterrupted one on a deterministic CPU). ``model.pth`` holds only the weights and stable metadata.
* ``evaluate`` loads ``model.pth`` strictly (a missing or unexpected key is an error) and writes the
  metric JSON, flat metrics and score samples to ``<results_dir>/[ablation/]<name>/seed<k>/``.
* ``train --evaluate`` (the DVC ``train`` / ``ablate_train`` stages) does both in one process, which
  saves a process start-up (imports and runner, ~10-16 s) per run. When only evaluation inputs changed,
  the stage finds its run folder of the same fingerprint finished, runs no iteration and re-evaluates.

    python -m experiments.pipeline check
    python -m experiments.pipeline configure --method alignzeg
    python -m experiments.pipeline train --method alignzeg --seed 0
    python -m experiments.pipeline evaluate --method alignzeg --seed 0
    python -m experiments.pipeline train --method alignzeg --seed 0 --evaluate
    python -m experiments.pipeline configure --variant drop-fes
    python -m experiments.pipeline train --variant drop-fes --seed 0
    python -m experiments.pipeline link-ablation --seed 0
    python -m experiments.pipeline configure --method zegclip --setting transductive
    python -m experiments.pipeline train --method zegclip --seed 0 --setting transductive --evaluate
    python -m experiments.pipeline profile experiments/profiles/voc12aug-vit-b16.yaml --dvc-args

Distributed runs: with ``base.launcher`` ``pytorch`` or ``slurm`` the ``train`` and ``evaluate`` commands
start themselves again in ``base.gpus`` processes (:func:`launch_command`: ``torchrun --standalone`` on
this node, or ``srun --ntasks`` inside a Slurm allocation) and wait for them. The processes train with
DDP and evaluate with a distributed sampler; rank 0 alone prepares the run folder (behind a barrier) and
writes ``model.pth``, the train curve, the metric JSON, the flat metrics and the score samples, and the
numbers equal those of one process on the same checkpoint. The process count is part of the run's
fingerprint, so a run of another ``base.gpus`` is trained again rather than resumed.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import os.path as osp
import itertools
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python experiments/pipeline.py`
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from experiments.params import COMPONENTS, ParamsError, apply_profile, override_args, read_yaml  # noqa: E402
from experiments.params import load as load_params  # noqa: E402,F401  (public name)
from experiments.params import variant_components as _variant_components  # noqa: E402

FLAT_METRICS = ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "aAcc", "unseen_to_seen", "collapsed")
# written when defined (the split names its stuff classes; the γ sweep runs: evaluate.gamma_points)
OPTIONAL_METRICS = ("mIoU_unseen_stuff", "mIoU_unseen_objects", "AUSUC", "mIoU_seen_cal", "mIoU_unseen_cal",
                    "hIoU_cal", "gamma_cal")
ABLATION = "ablation"
TRANSDUCTIVE = "transductive"   # self-trained runs (params.yaml self_train): runs/transductive/<method>/seed<k>
TRAIN_CURVE = "train_curve.csv"
CHECK_FILE = "params-check.txt"
_RUN_IDS = itertools.count()
# Per-run names and folders (the text-cache copy, the visualizer): not part of what the run computes.
_FINGERPRINT_IGNORE = ("model.text.cache_dir", "visualizer.name")
# Set in the environment of the processes a launcher starts (they run the stage; they launch nothing).
LAUNCHED_ENV = "ALIGNZEG_LAUNCHED"


def variant_components(variant: str) -> dict[str, bool]:
    """Components of an ablation variant name: ``parent``, ``full``, ``add-X`` (parent + X), ``drop-X`` (full − X)."""
    comps = _variant_components(variant)
    if comps is None:
        raise SystemExit(f"params.yaml: ablate.variants: unknown variant {variant!r} "
                         f"(use parent, full, add-<c> or drop-<c> with c in {COMPONENTS})")
    return comps


def run_dir(params: dict, name: str, seed: int, group: str = "") -> Path:
    return Path(params["base"]["runs_dir"]) / group / name / f"seed{seed}"


def result_dir(params: dict, name: str, seed: int, group: str = "") -> Path:
    return Path(params["base"]["results_dir"]) / group / name / f"seed{seed}"


def config_path(params: dict, name: str, group: str = "") -> Path:
    return Path(params["base"]["runs_dir"]) / "configs" / group / f"{name}.py"


# ----------------------------------------------------------------------------------------- configs
def method_config(params: dict, method: str, components: dict | None = None, section: str = "train"):
    """The resolved mmengine Config of a method (or ablation variant): its config file + params.yaml.

    Applies the ``base`` paths (data root, split, CLIP checkpoint), the prompt templates
    (``text_embed.templates``, the same for every method), the ``train`` schedule (iterations,
    warm-up, batch size, checkpoint and log intervals, determinism) and the ablation switches. No
    validation inside training runs (evaluation is its own stage). Has no side effects.
    ``section='self_train'``: the transductive config of ``self_train.configs`` with that section's
    iterations and warm-up (the rest of the schedule from ``train``).
    """
    from mmengine.config import Config

    base, train = params["base"], params["train"]
    configs = params[section]["configs"]
    if method not in configs:
        raise SystemExit(f"params.yaml: {section}.configs has no entry for method {method!r}")
    if not Path(configs[method]).is_file():
        raise SystemExit(f"params.yaml: {section}.configs.{method}: config file not found: {configs[method]}")
    cfg = Config.fromfile(configs[method], import_custom_modules=False)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(loader) is not None:
            cfg[loader].dataset.data_root = base["data_root"]
    cfg.model.split = base["split"]
    cfg.model.backbone.clip.pretrained = base["clip_checkpoint"]
    # one prompt-template set for every method (text_embed.templates, chosen on val)
    cfg.model.text = dict(cfg.model.get("text") or {}, templates=params["text_embed"]["templates"])
    if components is not None:
        for comp, on in components.items():
            cfg.model.decode_head[comp] = bool(on)

    max_iters = int(params[section]["max_iters"])
    cfg.train_cfg.max_iters = max_iters
    cfg.train_cfg.val_interval = max_iters + 1
    # evaluation is its own stage; the val loader is kept aside for choices made on val
    # (``evaluate --split val``), every reported number comes from the test loader
    if cfg.get("val_dataloader") is not None:
        cfg.val_split_dataloader = copy.deepcopy(cfg.val_dataloader)
    for key in ("val_dataloader", "val_cfg", "val_evaluator"):
        cfg[key] = None
    cfg.train_dataloader.batch_size = int(train["batch_size"])
    warmup = int(params[section]["warmup_iters"])
    schedulers = []
    for sched in cfg.get("param_scheduler") or []:
        sched = copy.deepcopy(sched)
        if sched.get("type") == "LinearLR":
            sched["end"] = min(warmup, max_iters)
            if sched["end"] <= 0:
                continue
        else:
            sched["begin"] = min(warmup, max_iters)
            sched["end"] = max_iters
        schedulers.append(sched)
    cfg.param_scheduler = schedulers
    cfg.default_hooks.checkpoint.interval = min(int(train["checkpoint_interval"]), max_iters)
    cfg.default_hooks.checkpoint.save_last = True
    cfg.default_hooks.checkpoint.max_keep_ckpts = 2
    cfg.default_hooks.logger.interval = int(train["log_interval"])
    cfg.randomness = dict(seed=0, deterministic=bool(train["deterministic"]))
    return cfg


def configure(params: dict, name: str, group: str = "") -> Path:
    """Write the resolved config of a method (``group=''``) or ablation variant (``group='ablation'``)."""
    from alignzeg.utils import atomic_write_text

    if group == ABLATION:
        cfg = method_config(params, params["ablate"]["method"], variant_components(name))
    elif group == TRANSDUCTIVE:
        cfg = method_config(params, name, section="self_train")
    else:
        cfg = method_config(params, name)
    out = config_path(params, name, group)
    atomic_write_text(out, cfg.pretty_text + "\n")
    return out


def load_run_config(params: dict, name: str, group: str = ""):
    from experiments.train import read_config

    path = config_path(params, name, group)
    if not path.is_file():
        raise SystemExit(f"{path}: resolved config not found (run `python -m experiments.pipeline "
                         f"configure {'--variant' if group == ABLATION else '--method'} {name}"
                         f"{' --setting transductive' if group == TRANSDUCTIVE else ''}` first)")
    return read_config(path)  # formatted once, by `configure`


def _run_text_cache(shared: str, work_dir: Path) -> Path:
    """A per-run copy of the text-embedding cache written by the ``text_embed`` stage.

    Runs read the stage's embeddings (cache hits) but never write into the stage's output, so
    ``dvc status`` stays clean whatever vocabulary a method asks for.
    """
    own = Path(work_dir) / "text_cache"
    own.mkdir(parents=True, exist_ok=True)
    for src in Path(shared).glob("text-*.safetensors"):
        if not (own / src.name).exists():  # copy, then rename: the ranks of a launched run copy at once
            tmp = own / f".{src.name}.{os.getpid()}.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, own / src.name)
    return own


# ----------------------------------------------------------------------------------------- processes
def launch_command(params: dict, argv: list[str]) -> list[str] | None:
    """The command that runs ``python -m experiments.pipeline ARGV`` in ``base.gpus`` processes, or None
    when this process runs the stage itself (``base.launcher: none``, or already a launched process).

    ``pytorch``: ``torchrun --standalone`` (one node, a free rendezvous port); ``slurm``: ``srun`` with
    ``base.gpus`` tasks of the surrounding allocation (``sbatch``/``salloc`` set the nodes and GPUs;
    mmengine's Slurm launcher maps each task to a GPU).
    """
    base = params["base"]
    launcher, n = base.get("launcher", "none"), int(base.get("gpus", 1))
    if launcher == "none" or os.environ.get(LAUNCHED_ENV):
        return None
    stage = ["-m", "experiments.pipeline", *argv]
    if launcher == "pytorch":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *stage]
    if launcher == "slurm":
        return ["srun", f"--ntasks={n}", "--kill-on-bad-exit=1", sys.executable, *stage]
    raise SystemExit(f"params.yaml: base.launcher: unknown launcher {launcher!r}")


def _launch(cmd: list[str]) -> int:
    """Run the launcher and wait; its exit status is the stage's."""
    import subprocess

    print(f"[pipeline] launching: {' '.join(cmd)}", flush=True)
    try:
        return subprocess.run(cmd, env=dict(os.environ, **{LAUNCHED_ENV: "1"})).returncode
    except FileNotFoundError as err:
        raise SystemExit(f"params.yaml: base.launcher: cannot start {cmd[0]!r} ({err})") from err


def _launcher(params: dict) -> str:
    """The launcher of this process's run: ``none`` unless it is one of a launched run's processes."""
    return params["base"].get("launcher", "none") if os.environ.get(LAUNCHED_ENV) else "none"


def _distribute(params: dict, cfg) -> None:
    """A launched run's processes: the process group and the config's launcher and DDP wrapper."""
    launcher = _launcher(params)
    cfg.launcher = launcher
    if launcher != "none":
        from experiments.train import setup_distributed

        setup_distributed(cfg)


def _set_threads(params: dict) -> None:
    import torch

    n = int(params["base"].get("num_threads") or 0)
    if n > 0:
        torch.set_num_threads(n)


def _run_name(kind: str, name: str, seed: int, group: str) -> str:
    """Unique per run and process: mmengine keeps one logger and message hub per experiment name."""
    return (f"{kind}{group + '-' if group else ''}{name}-seed{seed}-{time.strftime('%Y%m%d_%H%M%S')}-"
            f"{os.getpid()}-{next(_RUN_IDS)}")


def _own_visualizer(cfg) -> None:
    """One visualizer per run: mmengine keeps visualizers by name, and mmseg's runtime names every one
    'visualizer', so a second run in the same process would write into the first run's log folder."""
    if cfg.get("visualizer") is not None:
        cfg.visualizer.name = cfg.experiment_name


def _inputs(params: dict) -> dict:
    base = params["base"]
    return {"data_root": base["data_root"], "split": base["split"], "clip": base["clip_checkpoint"],
            "text_cache": base["text_cache"]}


def _read_fingerprint(work: Path) -> dict | None:
    from alignzeg.engine.run_state import FINGERPRINT_FILE

    try:
        return json.loads((work / FINGERPRINT_FILE).read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------- stages
def train_run(params: dict, name: str, seed: int, group: str = "", extra_hooks: list | None = None) -> Path:
    """Train one run, resuming only a run of the same fingerprint; write ``model.pth`` atomically."""
    import torch
    from mmengine.runner import Runner

    import io

    from alignzeg.engine.checkpoint import load_checkpoint_file
    from alignzeg.engine.run_state import FINGERPRINT_FILE, fingerprint_difference, run_fingerprint, \
        stripped_checkpoint
    from alignzeg.utils import atomic_write_bytes, atomic_write_json
    from mmengine.dist import barrier, get_rank, get_world_size

    from experiments.train import log_batch_size, prepare_runtime, set_run_state_hook

    prepare_runtime()
    _set_threads(params)
    work = run_dir(params, name, seed, group)
    cfg = load_run_config(params, name, group)
    _distribute(params, cfg)
    rank = get_rank()
    cfg.randomness = dict(cfg.get("randomness") or {}, seed=int(seed))
    cfg.work_dir = str(work)
    cfg.experiment_name = _run_name("", name, seed, group)
    cfg.model.text.cache_dir = str(work / "text_cache")
    _own_visualizer(cfg)
    inputs = _inputs(params)
    init = None
    if group == TRANSDUCTIVE:   # self-training starts from the inductive run of the same method and seed
        init = run_dir(params, name, seed) / "model.pth"
        if not init.is_file():
            raise SystemExit(f"{name} seed {seed}: the inductive checkpoint {init} is not there (run the train "
                             f"stage of {name} first); self-training starts from it")
        inputs["init"] = str(init)
    fp = run_fingerprint(cfg, seed, inputs, ignore=_FINGERPRINT_IGNORE, processes=get_world_size())

    if rank == 0:  # one process prepares the folder; the others wait for it
        if work.exists():
            diff = fingerprint_difference(_read_fingerprint(work), fp)
            if diff:
                print(f"[pipeline] {work}: written by another run ({diff} changed); starting from scratch",
                      flush=True)
                shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_json(work / FINGERPRINT_FILE, fp)
        _run_text_cache(params["base"]["text_cache"], work)
        (work / "model.pth").unlink(missing_ok=True)
    barrier()
    cfg.resume = (work / "last_checkpoint").is_file()
    cfg.load_from = None
    if init is not None and not cfg.resume:
        from experiments.train import add_init_check

        cfg.load_from = str(init)
        add_init_check(cfg, init)
    set_run_state_hook(cfg, fp)
    if extra_hooks:
        cfg.custom_hooks = list(cfg.custom_hooks) + list(extra_hooks)
    runner = Runner.from_cfg(cfg)
    log_batch_size(runner)
    try:
        runner.train()
    except FloatingPointError as err:
        last = (work / "last_checkpoint").read_text().strip() if (work / "last_checkpoint").is_file() else None
        raise SystemExit(f"{name} seed {seed}: {err}; training stopped, last good checkpoint: "
                         f"{last or 'none (no checkpoint was written yet)'}") from err
    final = work / "model.pth"
    if rank == 0:
        ckpt = work / f"iter_{cfg.train_cfg.max_iters}.pth"
        if not ckpt.is_file():
            raise RuntimeError(f"training finished but {ckpt} was not written")
        write_train_curve(work, result_dir(params, name, seed, group) / TRAIN_CURVE)
        buf = io.BytesIO()
        torch.save(stripped_checkpoint(load_checkpoint_file(ckpt)), buf)
        atomic_write_bytes(final, buf.getvalue())
    barrier()  # every process evaluates the file rank 0 wrote
    return final


def write_train_curve(work: Path, out: Path) -> Path:
    """Every logged loss term and the learning rate per iteration, from mmengine's visualisation backend
    (``<work>/<timestamp>/vis_data/scalars.json``, one JSON object per logged iteration; the folders of
    a resumed run are merged, a later folder's entry winning for the same iteration), as CSV for DVC
    plots and the analysis. Columns: ``step``, ``lr``, ``loss`` and each ``*loss*`` term, sorted."""
    import csv
    import io

    from alignzeg.utils import atomic_write_text

    by_step: dict[int, dict] = {}
    for path in sorted(Path(work).glob("*/vis_data/scalars.json")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            if "step" in entry and "loss" in entry:
                by_step[int(entry["step"])] = entry
    keys = sorted({k for e in by_step.values() for k in e if "loss" in k and k != "loss"})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", "lr", "loss", *keys])
    for step in sorted(by_step):
        e = by_step[step]
        writer.writerow([step, e.get("lr", ""), e["loss"], *[e.get(k, "") for k in keys]])
    atomic_write_text(out, buf.getvalue())
    return out


def run_protocol(cfg) -> dict:
    """What a run's training signal may depend on, read off its resolved config.

    ``uses_unseen_locations``: the class indicator is trained with a label rule that reads the ignore
    pixels, i.e. where the unseen classes lie (AlignZeg's 'ignore' rules); such runs are not strictly
    inductive and the analysis never tables them with the inductive rows.
    """
    from alignzeg.models.alignzeg_head import DEFAULT_PBC, UNSEEN_LOCATION_RULES

    head = cfg.model.get("decode_head") or {}
    rule = (head.get("pbc_cfg") or {}).get("label_rule", DEFAULT_PBC["label_rule"])
    uses = bool(head.get("pbc", False)) and rule in UNSEEN_LOCATION_RULES
    st = cfg.model.get("self_training")
    return {"uses_unseen_locations": uses, "indicator_label_rule": rule if head.get("pbc", False) else None,
            "setting": TRANSDUCTIVE if st is not None else "inductive",
            "self_training": dict(st) if st is not None else None}


def evaluate_run(params: dict, name: str, seed: int, group: str = "",
                 checkpoint: Path | None = None, split: str = "test") -> dict:
    """Evaluate one run on the full vocabulary; write the metric JSON, flat metrics and score samples.

    ``split='test'`` (the DVC stages) writes to the run's result folder; ``split='val'`` evaluates the
    validation images instead, for choices made on val, and writes to ``<result folder>/val``.

    With ``evaluate.gamma_points > 0`` every evaluation also sweeps a constant offset γ on the seen-class
    scores in the same pass (:mod:`alignzeg.evaluation.calibration`: the S(γ), U(γ) curve and its area,
    AUSUC). A test evaluation first evaluates val (``<result folder>/val``), takes the γ with the best val
    hIoU and reports the test metrics at that γ beside the plain ones (``*_cal``): calibrated stacking
    with its offset chosen on val, never on test.
    """
    from alignzeg.evaluation.calibration import best_gamma

    if split not in ("test", "val"):
        raise SystemExit(f"evaluate --split: expected test or val, got {split!r}")
    ev = params["evaluate"]
    out = result_dir(params, name, seed, group)
    training_free = name in ev["training_free"]
    if checkpoint is None and not training_free:
        checkpoint = run_dir(params, name, seed, group) / "model.pth"
    if checkpoint is not None and not checkpoint.is_file():
        raise SystemExit(f"checkpoint not found: {checkpoint} (run the train stage first)")
    points = int(ev.get("gamma_points") or 0)
    if split == "val":
        return _evaluate_pass(params, name, seed, group, checkpoint, "val", out / "val",
                              dict(num=points) if points else None)
    sweep = None
    if points:
        sweep = dict(num=points)
        if load_run_config(params, name, group).get("val_split_dataloader") is not None:
            _evaluate_pass(params, name, seed, group, checkpoint, "val", out / "val", dict(num=points),
                           score_hook=False)
            curve = json.loads((out / "val" / "zeroshot_metrics.json").read_text())["gamma_sweep"]
            sweep["calibrated"] = best_gamma([float(g) for g in curve["gammas"]], curve["hIoU"])
    return _evaluate_pass(params, name, seed, group, checkpoint, "test", out, sweep)


def _qualitative_names(params: dict, cfg, k: int) -> list[str]:
    """The test images of the qualitative figure: the ``k`` where seen and unseen classes meet most
    (:func:`alignzeg.engine.score_hook.qualitative_images`)."""
    from alignzeg.engine.score_hook import qualitative_images
    from alignzeg.splits import load_split

    split = load_split(params["base"]["split"])
    ds = cfg.test_dataloader.dataset
    ann_dir = Path(ds.data_root) / ds.data_prefix["seg_map_path"]
    unseen = [split.classes.index(c) for c in split.unseen]
    return qualitative_images(ann_dir, unseen, k)


def _evaluate_pass(params: dict, name: str, seed: int, group: str, checkpoint: Path | None, split: str,
                   out: Path, gamma_sweep: dict | None, score_hook: bool = True) -> dict:
    """One evaluation of ``split`` into ``out``: a runner of its own, the checkpoint loaded strictly."""
    from mmengine.runner import Runner

    from alignzeg.utils import atomic_write_json
    from experiments.test import _set_output_dir, load_strict
    from experiments.train import prepare_runtime, zeroshot_metric_cfgs

    prepare_runtime()
    _set_threads(params)
    ev = params["evaluate"]
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_run_config(params, name, group)
    if split == "val":
        if cfg.get("val_split_dataloader") is None:
            raise SystemExit(f"{config_path(params, name, group)}: the config has no val_dataloader")
        cfg.test_dataloader = cfg.val_split_dataloader
    work = run_dir(params, name, seed, group) / "eval"
    cfg.work_dir = str(work)
    cfg.experiment_name = _run_name("eval-", name, seed, group)
    cfg.randomness = dict(cfg.get("randomness") or {}, seed=int(seed))
    cfg.model.text.cache_dir = str(_run_text_cache(params["base"]["text_cache"], work))
    _own_visualizer(cfg)
    _distribute(params, cfg)
    cfg.load_from = None
    cfg.resume = False
    for key in ("train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler"):
        cfg.pop(key, None)
    if not _set_output_dir(cfg.test_evaluator, str(out)):
        raise SystemExit(f"{name}: test_evaluator has no ZeroShotIoUMetric")
    for metric in zeroshot_metric_cfgs(cfg.test_evaluator):
        # the γ grid from the first batch's images, the same ones in one process or several
        metric["gamma_sweep"] = (None if gamma_sweep is None else
                                 dict(gamma_sweep, grid_images=int(cfg.test_dataloader.get("batch_size") or 1)))
        if split == "test" and int(ev.get("bootstrap") or 0):
            metric.update(bootstrap=int(ev["bootstrap"]), bootstrap_seed=int(seed))
    hooks = list(cfg.get("custom_hooks") or [])
    if split == "test" and int(ev.get("qualitative") or 0):
        hooks.append(dict(type="PredictionSaverHook", out_dir=str(out / "qualitative"),
                          names=_qualitative_names(params, cfg, int(ev["qualitative"]))))
    if score_hook:
        softmax = name in ev["score_softmax"] or (group == ABLATION and params["ablate"]["method"] in ev["score_softmax"])
        hooks.append(dict(type="UnseenScoreSamplerHook", out_file=str(out / "scores.npz"),
                          max_samples=int(ev["score_samples"]), seed=int(seed), apply_softmax=softmax))
    cfg.custom_hooks = hooks
    import alignzeg.engine.score_hook  # noqa: F401  registers the hook

    runner = Runner.from_cfg(cfg)
    if checkpoint is not None:
        load_strict(runner, checkpoint)
    metrics = runner.test() or {}
    flat = {k: float(metrics[k]) for k in FLAT_METRICS if k in metrics}
    flat.update({k: float(metrics[k]) for k in OPTIONAL_METRICS
                 if k in metrics and math.isfinite(float(metrics[k]))})
    missing = [k for k in FLAT_METRICS if k not in flat]
    if missing:
        raise RuntimeError(f"{name}: the evaluator returned no {missing}")
    from mmengine.dist import barrier, get_rank

    if get_rank() == 0:  # every process holds the same (broadcast) metrics; one writes them
        atomic_write_json(out / "metrics.json", flat)
        atomic_write_json(out / "protocol.json", run_protocol(cfg))
        if group == ABLATION:
            atomic_write_json(out / "components.json", variant_components(name))
        print(json.dumps({"method": name, "seed": seed, "split": split,
                          **{k: round(v, 2) for k, v in flat.items()}}))
    barrier()
    return flat


def oracle(params: dict, split: str = "test") -> Path:
    """The ``oracle`` stage: recognition and proposal ceilings (:mod:`alignzeg.evaluation.oracle`).

    Ground-truth segments of the ``split`` images (``base.data_root``: ``images/<split>``,
    ``annotations/<split>``) classified by the study's CLIP (``base.clip_checkpoint``) against the
    text embeddings of the study's templates (``base.text_cache``/vocabulary.safetensors). Writes
    ``<results_dir>/oracle/ceilings.json`` and, per ceiling, ``<ceiling>/zeroshot_metrics.json``.
    """
    import numpy as np
    import torch
    from PIL import Image

    from alignzeg.clip.model import build_clip
    from alignzeg.clip.text import load_embeddings
    from alignzeg.evaluation.confusion import nan_to_none
    from alignzeg.evaluation.oracle import oracle_ceilings
    from alignzeg.splits import load_split
    from alignzeg.utils import atomic_output_dir, atomic_write_json

    _set_threads(params)
    base = params["base"]
    split_obj = load_split(base["split"])
    vocab = Path(base["text_cache"]) / "vocabulary.safetensors"
    text, info = load_embeddings(vocab)
    if list(info["names"]) != list(split_obj.classes):
        raise SystemExit(f"{vocab}: names its embeddings {info['names'][:3]}..., not the classes of "
                         f"{base['split']} in label order (re-run the text_embed stage)")
    text = torch.nn.functional.normalize(text.float(), dim=-1)
    root = Path(base["data_root"])
    img_dir, ann_dir = root / "images" / split, root / "annotations" / split
    if not ann_dir.is_dir():
        raise SystemExit(f"{ann_dir}: no {split} annotations (prepare the data with a {split} split)")
    images, labels = [], []
    for ann in sorted(ann_dir.glob("*.png")):
        cands = [img_dir / (ann.stem + suf) for suf in (".png", ".jpg", ".jpeg")]
        img = next((c for c in cands if c.is_file()), None)
        if img is None:
            raise SystemExit(f"{ann}: no image {ann.stem}.png/.jpg in {img_dir}")
        images.append(np.asarray(Image.open(img).convert("RGB")))
        labels.append(np.asarray(Image.open(ann)))
    if not labels:
        raise SystemExit(f"{ann_dir}: no annotation files")
    model = build_clip(None, base["clip_checkpoint"])
    t0 = time.perf_counter()
    res = oracle_ceilings(model, np.stack(images), np.stack(labels), text, split_obj.classes,
                          split_obj.unseen, split_obj.stuff)
    out = Path(base["results_dir"]) / "oracle"
    with atomic_output_dir(out) as tmp:
        for kind in ("recognition", "proposal"):
            (tmp / kind).mkdir()
            atomic_write_json(tmp / kind / "zeroshot_metrics.json", nan_to_none(res[kind]))
        summary = {kind: {k: res[kind][k] for k in ("mIoU_seen", "mIoU_unseen", "hIoU", "mIoU",
                                                     "mIoU_unseen_stuff", "mIoU_unseen_objects")}
                   for kind in ("recognition", "proposal")}
        atomic_write_json(tmp / "ceilings.json", nan_to_none({
            "split": split, "num_images": len(labels), "num_segments": res["num_segments"],
            "gamma": res["gamma"], "gamma_curve": res["gamma_curve"], "templates": info["templates"],
            "seconds": time.perf_counter() - t0, **summary}))
    print("[pipeline] oracle ceilings on " + split + ": " + "; ".join(
        f"{k} seen {v['mIoU_seen']:.2f} unseen {v['mIoU_unseen']:.2f} hIoU {v['hIoU']:.2f}"
        for k, v in summary.items()) + f" (gamma {res['gamma']:+.2f})")
    return out


def link_ablation(params: dict, seed: int) -> None:
    """Copy the main AlignZeg and parent results into the ablation table's ``full`` / ``parent`` rows."""
    from alignzeg.utils import atomic_output_dir, atomic_write_json

    ab = params["ablate"]
    for variant, method in (ab.get("from_main") or {}).items():
        src = result_dir(params, method, seed)
        if not (src / "zeroshot_metrics.json").is_file():
            raise SystemExit(f"{src}/zeroshot_metrics.json not found (evaluate {method} first)")
        dst = result_dir(params, variant, seed, ABLATION)
        with atomic_output_dir(dst) as tmp:
            for name in ("zeroshot_metrics.json", "metrics.json", "scores.npz"):
                if (src / name).is_file():
                    shutil.copyfile(src / name, tmp / name)
            atomic_write_json(tmp / "components.json", variant_components(variant))


def check(params: dict, path: str) -> Path:
    """The ``check_params`` stage: params are valid (already checked on load); write the gate file.

    The file's content never changes, so the stages that depend on it rerun only for their own reasons.
    """
    from alignzeg.utils import atomic_write_text

    out = Path(params["base"]["runs_dir"]) / CHECK_FILE
    atomic_write_text(out, "params.yaml checked against experiments/params.py\n")
    print(f"[pipeline] {path}: params valid")
    return out


# ----------------------------------------------------------------------------------------- CLI
def _name(args, parser) -> tuple[str, str]:
    if bool(args.method) == bool(args.variant):
        parser.error(f"{args.command} needs exactly one of --method or --variant")
    if args.setting == TRANSDUCTIVE:
        if not args.method:
            parser.error("--setting transductive needs --method (ablation variants are inductive)")
        return args.method, TRANSDUCTIVE
    return (args.method, "") if args.method else (args.variant, ABLATION)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "configure", "train", "evaluate", "link-ablation",
                                            "oracle", "profile"])
    parser.add_argument("profile_file", nargs="?", help="profile: the profile YAML (only what differs)")
    parser.add_argument("--method", help="method name (a key of train.configs)")
    parser.add_argument("--variant", help="ablation variant: add-<c>, drop-<c>")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--setting", default="inductive", choices=["inductive", TRANSDUCTIVE],
                        help="configure, train, evaluate: transductive = the self-trained run of --method "
                             "(params.yaml self_train; starts from the inductive run's model.pth)")
    parser.add_argument("--split", default="test", choices=["test", "val"],
                        help="evaluate, oracle: test (reported numbers, the default) or val (for choices "
                             "made on val)")
    parser.add_argument("--evaluate", action="store_true",
                        help="train: evaluate the trained run on test in the same process (the DVC stages)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dvc-args", action="store_true",
                        help="profile: print `dvc exp run -S` arguments instead of the merged params")
    parser.add_argument("--write", metavar="PATH", help="profile: write the merged params to PATH")
    args = parser.parse_args(argv)
    if args.command == "profile":
        if not args.profile_file:
            parser.error("profile needs the profile YAML file")
        defaults = load_params(args.params)
        overlay = read_yaml(args.profile_file)
        merged = apply_profile(defaults, overlay, args.profile_file)
        if args.dvc_args:
            print(" ".join(f"-S {a}" for a in override_args(overlay)))
        elif args.write:
            import yaml

            from alignzeg.utils import atomic_write_text

            atomic_write_text(args.write, yaml.safe_dump(merged, sort_keys=False))
        else:
            import yaml

            print(yaml.safe_dump(merged, sort_keys=False), end="")
        return 0
    try:
        params = load_params(args.params)
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    if args.command == "check":
        check(params, args.params)
        return 0
    if args.command == "oracle":
        oracle(params, args.split)
        return 0
    if args.command == "configure":
        name, group = _name(args, parser)
        print(f"[pipeline] wrote {configure(params, name, group)}")
        return 0
    if args.seed is None:
        parser.error(f"{args.command} needs --seed")
    if args.command == "link-ablation":
        link_ablation(params, args.seed)
        return 0
    name, group = _name(args, parser)
    if group == ABLATION:
        variant_components(name)
    if group == TRANSDUCTIVE and name not in params["self_train"]["methods"]:
        raise SystemExit(f"params.yaml: self_train.methods does not list {name!r}")
    cmd = launch_command(params, list(sys.argv[1:] if argv is None else argv))
    if cmd is not None:  # base.launcher: this stage runs in base.gpus processes started by the launcher
        return _launch(cmd)
    if args.command == "train":
        train_run(params, name, args.seed, group)
        if args.evaluate:  # the DVC train stages: one process trains and scores the run on test
            evaluate_run(params, name, args.seed, group)
    else:
        evaluate_run(params, name, args.seed, group, split=args.split)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
