"""``alignzeg train CONFIG``: train a zero-shot segmenter with mmengine's Runner.

Also runnable as ``python experiments/train.py CONFIG [options]``. Follows mmsegmentation's
``tools/train.py`` (Apache-2.0): config file + ``--cfg-options`` overrides, ``Runner.from_cfg``, mmengine
launchers for distributed training (``torchrun ... --launcher pytorch``, Slurm). Differences:
``--resume`` without a path auto-resumes from the last checkpoint of the work dir, ``--seed`` sets
``randomness.seed``, mmengine checkpoints are read with a restricted loader under torch >= 2.6, and the
model's vocabulary is checked against the training dataset's classes before the first iteration.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

if __package__ in (None, ""):  # `python experiments/train.py`: make the repository importable
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``test``."""
    from mmengine.config import DictAction

    parser.add_argument("--work-dir", help="folder for logs, checkpoints and metrics "
                                           "(default: the config's work_dir, else work_dirs/<config name>)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                        help="override config entries, e.g. model.backbone.clip.pretrained=PATH "
                             "train_dataloader.dataset.data_root=DIR")
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="a prepared folder (`alignzeg prepare ...`): sets data_root of the train, val and "
                             "test datasets and, where the config leaves model.split unset, DIR/split.json")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="distributed launcher (use with torchrun or srun)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="config file (experiments/configs/...)")
    add_common_arguments(parser)
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                        help="resume training: from CHECKPOINT, or (no value) from the last checkpoint in the "
                             "work dir; starts from scratch when there is none")
    parser.add_argument("--load-from", default=None, metavar="CHECKPOINT",
                        help="start from these weights (a new run: iteration 0, new optimizer); transductive "
                             "self-training configs need the inductive checkpoint here, and every weight of "
                             "the model must then come from it")
    parser.add_argument("--seed", type=int, default=None, help="random seed (sets randomness.seed)")
    parser.add_argument("--deterministic", action="store_true", help="deterministic cuDNN/torch algorithms")
    parser.add_argument("--amp", action="store_true", help="automatic mixed precision (AmpOptimWrapper)")


def read_config(path: str):
    """``Config.fromfile`` without the yapf pass over the config text.

    mmengine formats the text with yapf (seconds per call) for the log, the work-dir dump and every
    checkpoint; mmengine 0.10.7's ``fromfile`` ignores its own ``format_python_code`` for ``.py`` files.
    """
    from mmengine.config import Config

    cfg = Config.fromfile(str(path))
    object.__setattr__(cfg, "_format_python_code", False)
    return cfg


def load_config(args: argparse.Namespace):
    """Read the config, apply ``--cfg-options``, ``--launcher`` and the work dir."""
    if not osp.isfile(args.config):
        raise SystemExit(f"config file not found: {args.config}")
    cfg = read_config(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    apply_data_root(cfg, getattr(args, "data_root", None))
    cfg.launcher = args.launcher
    if args.launcher != "none":
        setup_distributed(cfg)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(args.config))[0])
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return cfg


def _datasets(cfg):
    """The dataset configs of the train/val/test loaders (a ConcatDataset's parts included)."""
    out = []
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        ds = (cfg.get(key) or {}).get("dataset")
        stack = [ds] if ds is not None else []
        while stack:
            d = stack.pop()
            out.append((key, d))
            stack.extend(d.get("datasets") or [])
    return out


def apply_data_root(cfg, data_root: str | None) -> None:
    """``--data-root``: set every dataset's ``data_root``; an unset ``model.split`` becomes the split.json
    of the datasets' root. Either way an unset ``model.split`` is an error naming what is missing."""
    sets = _datasets(cfg)
    if data_root is not None:
        if not osp.isdir(data_root):
            raise SystemExit(f"--data-root: folder not found: {data_root}")
        for _, d in sets:
            if "datasets" not in d:
                d["data_root"] = data_root
    model = cfg.get("model") or {}
    if "split" not in model or model.get("split") not in (None, ""):
        return
    roots = [d.get("data_root") for key, d in sets if key == "train_dataloader" and d.get("data_root")]
    roots = roots or [d.get("data_root") for _, d in sets if d.get("data_root")]
    if not roots:
        raise SystemExit("model.split is not set and no dataset names a data_root: set model.split "
                         "(a shipped split name or a split.json) or pass --data-root DIR")
    candidate = osp.join(roots[0], "split.json")
    if not osp.isfile(candidate):
        raise SystemExit(f"model.split is not set and {candidate} does not exist: run `alignzeg prepare folder "
                         f"... --out {roots[0]}` (it writes split.json) or set model.split")
    cfg.model.split = candidate


def init_processes(launcher: str) -> None:
    """Make the process group of a launched run (idempotent).

    With CUDA, mmengine's ``init_dist`` (NCCL; ``pytorch``: torchrun's LOCAL_RANK picks the GPU, ``slurm``:
    SLURM_PROCID). Without CUDA, only ``pytorch`` (torchrun) works: mmengine's ``init_dist`` always calls
    ``torch.cuda.set_device``, so a gloo group is made here from torchrun's RANK, WORLD_SIZE, MASTER_ADDR.
    """
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        from mmengine.dist import init_dist

        init_dist(launcher)
        return
    if launcher != "pytorch":
        raise SystemExit(f"--launcher {launcher} without CUDA: only 'pytorch' (torchrun) runs on CPU (gloo)")
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise SystemExit(f"--launcher pytorch: environment variables {missing} are not set; start the "
                         "command with torchrun (python -m torch.distributed.run --nproc_per_node N ...)")
    dist.init_process_group(backend="gloo")


def setup_distributed(cfg) -> None:
    """Prepare a config for a launched (DDP) run: the process group, and on CPU a DDP wrapper without
    device ids. With CUDA, ``sync_bn='torch'`` (unless the config sets it): mmengine then converts every
    BatchNorm of the model to SyncBatchNorm before wrapping it (none of the shipped models has one: their
    CLIP and heads use LayerNorm); torch's SyncBatchNorm runs on GPUs only, so CPU runs keep BatchNorm."""
    import torch

    init_processes(cfg.launcher)
    if torch.cuda.is_available():
        if cfg.get("sync_bn") is None:
            cfg.sync_bn = "torch"
        return
    wrapper = dict(cfg.get("model_wrapper_cfg") or {})
    wrapper.setdefault("type", "MMDistributedDataParallel")
    wrapper.setdefault("broadcast_buffers", False)
    wrapper.setdefault("find_unused_parameters", bool(cfg.get("find_unused_parameters", False)))
    wrapper["device_ids"] = None
    cfg.model_wrapper_cfg = wrapper


def log_batch_size(runner) -> None:
    """Log the effective batch size: processes x images per process (x gradient accumulation)."""
    cfg = runner.cfg
    per = int((cfg.get("train_dataloader") or {}).get("batch_size", 0) or 0)
    accum = int((cfg.get("optim_wrapper") or {}).get("accumulative_counts", 1) or 1)
    runner.logger.info(f"effective batch size: {runner.world_size} process(es) x {per} image(s)"
                       + (f" x {accum} accumulation steps" if accum > 1 else "")
                       + f" = {runner.world_size * per * accum}")


def prepare_runtime() -> None:
    """Install the checkpoint loader that reads mmengine checkpoints under torch >= 2.6."""
    from alignzeg.engine.checkpoint import register_mmengine_loader

    register_mmengine_loader()


def zeroshot_metric_cfgs(evaluator) -> list:
    """The ZeroShotIoUMetric entries (config dicts, editable in place) of an evaluator config."""
    items = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
    found = []
    for item in items:
        if item is None:
            continue
        metrics = item.get("metrics") if item.get("type") == "Evaluator" else item
        for metric in (metrics if isinstance(metrics, (list, tuple)) else [metrics]):
            if metric is not None and metric.get("type") == "ZeroShotIoUMetric":
                found.append(metric)
    return found


def set_metric_output_dir(evaluator, out_dir: str, overwrite: bool) -> bool:
    """Point the ZeroShotIoUMetric entries of an evaluator config at ``out_dir`` (only unset ones unless
    ``overwrite``). Returns whether there was one."""
    metrics = zeroshot_metric_cfgs(evaluator)
    for metric in metrics:
        if overwrite or metric.get("output_dir") is None:
            metric["output_dir"] = out_dir
    return bool(metrics)


def unwrap(model):
    from mmengine.model import is_model_wrapper

    return model.module if is_model_wrapper(model) else model


def check_vocabulary(runner, dataset, which: str) -> None:
    """Raise if the model's vocabulary ('seen' / 'all') is not the dataset's class list (label order)."""
    model = unwrap(runner.model)
    if not hasattr(model, "check_dataset_meta"):
        return
    model.check_dataset_meta(dataset.metainfo, which)


def config_inputs(cfg) -> dict:
    """The input files of a training config whose content the run's fingerprint covers."""
    found = {}
    loader = cfg.get("train_dataloader") or {}
    dataset = loader.get("dataset") or {}
    while isinstance(dataset, dict) and "dataset" in dataset and "data_root" not in dataset:
        dataset = dataset["dataset"]  # RepeatDataset and other wrappers
    if isinstance(dataset, dict) and dataset.get("data_root"):
        found["data_root"] = dataset["data_root"]
    model = cfg.get("model") or {}
    if model.get("split") and osp.isfile(str(model["split"])):
        found["split"] = model["split"]
    clip = ((model.get("backbone") or {}).get("clip") or {})
    if clip.get("pretrained"):
        found["clip"] = clip["pretrained"]
    if cfg.get("load_from") and osp.isfile(str(cfg.load_from)):
        found["init"] = cfg.load_from    # the weights a self-training run starts from
    return found


def add_run_state(cfg) -> dict:
    """Fingerprint the run and add the hook that records it (and the RNG state) in every checkpoint.

    Resuming (``--resume``) from a checkpoint of another fingerprint then stops with an error naming
    what changed, instead of continuing another run. Returns the fingerprint.
    """
    from mmengine.dist import get_world_size

    from alignzeg.engine.run_state import run_fingerprint

    seed = int((cfg.get("randomness") or {}).get("seed") or 0)
    fp = run_fingerprint(cfg, seed, config_inputs(cfg), ignore=("model.text.cache_dir",),
                         processes=get_world_size())
    set_run_state_hook(cfg, fp)
    return fp


def add_init_check(cfg, checkpoint) -> None:
    """Add :class:`alignzeg.engine.hooks.InitCheckpointHook`: the run must start from ``checkpoint``."""
    hooks = [h for h in (cfg.get("custom_hooks") or []) if h.get("type") != "InitCheckpointHook"]
    hooks.append(dict(type="InitCheckpointHook", checkpoint=str(checkpoint)))
    cfg.custom_hooks = hooks


def set_run_state_hook(cfg, fingerprint: dict | None) -> None:
    """Add ``RunStateHook`` (fingerprint + RNG state in checkpoints) to the config's custom hooks."""
    hooks = [h for h in (cfg.get("custom_hooks") or []) if h.get("type") != "RunStateHook"]
    hooks.append(dict(type="RunStateHook", fingerprint=fingerprint))
    cfg.custom_hooks = hooks


def run(args: argparse.Namespace) -> int:
    from mmengine.runner import Runner

    prepare_runtime()
    cfg = load_config(args)
    if args.seed is not None:
        randomness = dict(cfg.get("randomness") or {})
        randomness["seed"] = args.seed
        cfg.randomness = randomness
    if args.deterministic:
        randomness = dict(cfg.get("randomness") or {})
        randomness["deterministic"] = True
        cfg.randomness = randomness
    if args.amp:
        wrapper = cfg.optim_wrapper.get("type", "OptimWrapper")
        if wrapper != "AmpOptimWrapper":
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    if args.resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise SystemExit(f"--resume: checkpoint not found: {args.resume}")
        cfg.resume = True
        cfg.load_from = args.resume

    if args.load_from is not None:
        if args.resume is not None:
            raise SystemExit("--load-from and --resume exclude each other (resume continues a run; load-from "
                             "starts a new one from other weights)")
        if not osp.isfile(args.load_from):
            raise SystemExit(f"--load-from: checkpoint not found: {args.load_from}")
        cfg.load_from = args.load_from
    if (cfg.model.get("self_training") is not None and not cfg.get("load_from")
            and args.resume is None):
        raise SystemExit(f"{args.config}: model.self_training is set, and self-training starts from the "
                         f"inductive checkpoint (ZegCLIP's recipe): pass --load-from CHECKPOINT (the model.pth "
                         f"or iter_N.pth of the inductive run of the same method and split)")
    if cfg.get("load_from") and not cfg.get("resume"):
        add_init_check(cfg, cfg.load_from)
    if cfg.get("val_evaluator") is not None:
        set_metric_output_dir(cfg.val_evaluator, cfg.work_dir, overwrite=False)
    add_run_state(cfg)
    runner = Runner.from_cfg(cfg)
    log_batch_size(runner)
    model = unwrap(runner.model)
    check_vocabulary(runner, runner.train_loop.dataloader.dataset,
                     getattr(model, "train_vocabulary", "seen"))
    runner.train()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/train.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return int(run(parser.parse_args(argv)) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
