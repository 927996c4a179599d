"""Stage commands of the DVC pipeline (``dvc.yaml``): train, evaluate and ablate one run.

Every number comes from ``params.yaml``; ``dvc.yaml`` only names the stage, the method or ablation
variant and the seed. A run is an mmengine Runner built from the method's config file with the
``base`` paths (data root, split, CLIP checkpoint, text-embedding cache) and the ``train`` schedule
applied on top. Interrupted training resumes from the last checkpoint in the run folder (DVC removes
only the declared output, ``model.pth``, before re-running a stage).

    python -m experiments.pipeline train --method alignzeg --seed 0
    python -m experiments.pipeline evaluate --method alignzeg --seed 0
    python -m experiments.pipeline ablate --variant drop-fes --seed 0
    python -m experiments.pipeline link-ablation --seed 0
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import os.path as osp
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python experiments/pipeline.py`
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

COMPONENTS = ("mrpe", "fes", "bds", "pbc")
FLAT_METRICS = ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "aAcc", "unseen_to_seen")


# ----------------------------------------------------------------------------------------- params
def load_params(path: str | os.PathLike = "params.yaml") -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"params file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        params = yaml.safe_load(fh)
    for section in ("base", "train", "evaluate", "ablate"):
        if section not in params:
            raise SystemExit(f"{path}: missing section {section!r}")
    return params


def _get(section: dict, key: str, where: str):
    if key not in section:
        raise SystemExit(f"params.yaml: missing field {where}.{key}")
    return section[key]


def variant_components(variant: str) -> dict[str, bool]:
    """Components of an ablation variant name: ``parent``, ``full``, ``add-X`` (parent + X), ``drop-X`` (full − X)."""
    if variant == "parent":
        return {c: False for c in COMPONENTS}
    if variant == "full":
        return {c: True for c in COMPONENTS}
    kind, _, comp = variant.partition("-")
    if kind not in ("add", "drop") or comp not in COMPONENTS:
        raise SystemExit(f"params.yaml: ablate.variants: unknown variant {variant!r} "
                         f"(use parent, full, add-<c> or drop-<c> with c in {COMPONENTS})")
    return {c: (c == comp) if kind == "add" else (c != comp) for c in COMPONENTS}


def run_dir(params: dict, method: str, seed: int, group: str = "") -> Path:
    base = params["base"]
    return Path(_get(base, "runs_dir", "base")) / group / method / f"seed{seed}"


def result_dir(params: dict, method: str, seed: int, group: str = "") -> Path:
    base = params["base"]
    return Path(_get(base, "results_dir", "base")) / group / method / f"seed{seed}"


# ----------------------------------------------------------------------------------------- configs
def method_config(params: dict, method: str, seed: int, work_dir: Path, components: dict | None = None):
    """The mmengine Config of one run: the method's config file + params.yaml."""
    from mmengine.config import Config

    base, train = params["base"], params["train"]
    configs = _get(train, "configs", "train")
    if method not in configs:
        raise SystemExit(f"params.yaml: train.configs has no entry for method {method!r}")
    cfg = Config.fromfile(configs[method])
    data_root = _get(base, "data_root", "base")
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(loader) is not None:
            cfg[loader].dataset.data_root = data_root
    cfg.model.split = _get(base, "split", "base")
    cfg.model.backbone.clip.pretrained = _get(base, "clip_checkpoint", "base")
    cfg.model.text.cache_dir = str(_run_text_cache(_get(base, "text_cache", "base"), work_dir))
    overrides = (train.get("overrides") or {}).get(method) or {}
    if overrides:
        cfg.merge_from_dict(overrides)
    if components is not None:
        for comp, on in components.items():
            cfg.model.decode_head[comp] = bool(on)

    max_iters = int(_get(train, "max_iters", "train"))
    cfg.train_cfg.max_iters = max_iters
    cfg.train_cfg.val_interval = max_iters + 1
    for key in ("val_dataloader", "val_cfg", "val_evaluator"):  # evaluation is its own stage
        cfg[key] = None
    cfg.train_dataloader.batch_size = int(_get(train, "batch_size", "train"))
    if "lr" in train and train["lr"] is not None:
        cfg.optim_wrapper.optimizer.lr = float(train["lr"])
    warmup = int(train.get("warmup_iters", 0))
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
    cfg.default_hooks.checkpoint.interval = max_iters
    cfg.default_hooks.checkpoint.save_last = True
    cfg.default_hooks.logger.interval = int(train.get("log_interval", 50))
    cfg.randomness = dict(seed=int(seed), deterministic=False)
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = f"{method}-seed{seed}-{time.strftime('%Y%m%d_%H%M%S')}-{os.getpid()}"
    return cfg


def _run_text_cache(shared: str, work_dir: Path) -> Path:
    """A per-run copy of the text-embedding cache written by the ``text_embed`` stage.

    Runs read the stage's embeddings (cache hits) but never write into the stage's output, so
    ``dvc status`` stays clean whatever vocabulary a method asks for.
    """
    own = Path(work_dir) / "text_cache"
    own.mkdir(parents=True, exist_ok=True)
    for src in Path(shared).glob("text-*.safetensors"):
        if not (own / src.name).exists():
            shutil.copyfile(src, own / src.name)
    return own


def _set_threads(params: dict) -> None:
    import torch

    n = int(params["base"].get("num_threads") or 0)
    if n > 0:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------- stages
def train_run(params: dict, method: str, seed: int, group: str = "", components: dict | None = None) -> Path:
    """Train one run (resuming from its last checkpoint) and write ``model.pth`` atomically."""
    from mmengine.runner import Runner

    from experiments.train import prepare_runtime

    prepare_runtime()
    _set_threads(params)
    work = run_dir(params, method, seed, group)
    cfg = method_config(params, method, seed, work, components)
    last = work / "last_checkpoint"
    cfg.resume = last.is_file()
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    runner.train()
    ckpt = work / f"iter_{cfg.train_cfg.max_iters}.pth"
    if not ckpt.is_file():
        raise RuntimeError(f"training finished but {ckpt} was not written")
    final = work / "model.pth"
    tmp = work / ".model.pth.tmp"
    shutil.copyfile(ckpt, tmp)
    os.replace(tmp, final)
    return final


def evaluate_run(params: dict, method: str, seed: int, group: str = "", components: dict | None = None,
                 checkpoint: Path | None = None) -> dict:
    """Evaluate one run on the full vocabulary; write the metric JSON, flat metrics and score samples."""
    from mmengine.runner import Runner

    from alignzeg.utils import atomic_write_json
    from experiments.test import _set_output_dir
    from experiments.train import prepare_runtime

    prepare_runtime()
    _set_threads(params)
    ev = params["evaluate"]
    out = result_dir(params, method, seed, group)
    out.mkdir(parents=True, exist_ok=True)
    cfg = method_config(params, method, seed, run_dir(params, method, seed, group) / "eval", components)
    training_free = method in (ev.get("training_free") or [])
    if checkpoint is None and not training_free:
        checkpoint = run_dir(params, method, seed, group) / "model.pth"
    if checkpoint is not None and not checkpoint.is_file():
        raise SystemExit(f"checkpoint not found: {checkpoint} (run the train stage first)")
    cfg.load_from = None if checkpoint is None else str(checkpoint)
    cfg.resume = False
    for key in ("train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler"):
        cfg.pop(key, None)
    if not _set_output_dir(cfg.test_evaluator, str(out)):
        raise SystemExit(f"{method}: test_evaluator has no ZeroShotIoUMetric")
    softmax = method in (ev.get("score_softmax") or [])
    hooks = list(cfg.get("custom_hooks") or [])
    hooks.append(dict(type="UnseenScoreSamplerHook", out_file=str(out / "scores.npz"),
                      max_samples=int(ev.get("score_samples", 20000)), seed=int(seed), apply_softmax=softmax))
    cfg.custom_hooks = hooks
    import alignzeg.engine.score_hook  # noqa: F401  registers the hook

    runner = Runner.from_cfg(cfg)
    metrics = runner.test() or {}
    flat = {k: float(metrics[k]) for k in FLAT_METRICS if k in metrics}
    missing = [k for k in FLAT_METRICS if k not in flat]
    if missing:
        raise RuntimeError(f"{method}: the evaluator returned no {missing}")
    atomic_write_json(out / "metrics.json", flat)
    if components is not None:
        atomic_write_json(out / "components.json", components)
    print(json.dumps({"method": method, "seed": seed, **{k: round(v, 2) for k, v in flat.items()}}))
    return flat


def link_ablation(params: dict, seed: int) -> None:
    """Copy the main AlignZeg and parent results into the ablation table's ``full`` / ``parent`` rows."""
    from alignzeg.utils import atomic_output_dir, atomic_write_json

    ab = params["ablate"]
    for variant, method in (ab.get("from_main") or {}).items():
        src = result_dir(params, method, seed)
        if not (src / "zeroshot_metrics.json").is_file():
            raise SystemExit(f"{src}/zeroshot_metrics.json not found (evaluate {method} first)")
        dst = result_dir(params, variant, seed, "ablation")
        with atomic_output_dir(dst) as tmp:
            for name in ("zeroshot_metrics.json", "metrics.json", "scores.npz"):
                if (src / name).is_file():
                    shutil.copyfile(src / name, tmp / name)
            atomic_write_json(tmp / "components.json", variant_components(variant))


# ----------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["train", "evaluate", "ablate", "link-ablation"])
    parser.add_argument("--method", help="method name (a key of train.configs)")
    parser.add_argument("--variant", help="ablation variant: parent, full, add-<c>, drop-<c>")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.command in ("train", "evaluate") and not args.method:
        parser.error(f"{args.command} needs --method")
    if args.command == "train":
        train_run(params, args.method, args.seed)
    elif args.command == "evaluate":
        evaluate_run(params, args.method, args.seed)
    elif args.command == "ablate":
        if not args.variant:
            parser.error("ablate needs --variant")
        comps = variant_components(args.variant)
        method = _get(params["ablate"], "method", "ablate")
        variant_params = copy.deepcopy(params)
        variant_params["train"]["configs"][args.variant] = params["train"]["configs"][method]
        overrides = (params["train"].get("overrides") or {}).get(method)
        if overrides:
            variant_params["train"].setdefault("overrides", {})[args.variant] = overrides
        train_run(variant_params, args.variant, args.seed, "ablation", comps)
        evaluate_run(variant_params, args.variant, args.seed, "ablation", comps)
    else:
        link_ablation(params, args.seed)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
