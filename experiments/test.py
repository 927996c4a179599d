"""``alignzeg test CONFIG CHECKPOINT|--no-checkpoint``: evaluate with the zero-shot metric.

Also runnable as ``python experiments/test.py ...``. Follows mmsegmentation's ``tools/test.py``
(Apache-2.0): config + ``--cfg-options``, ``Runner.from_cfg``, ``runner.test()``. Differences: the
``ZeroShotIoUMetric`` writes ``zeroshot_metrics.json`` into the work dir (and ``--out-json`` copies it to
a chosen path, atomically); ``--no-checkpoint`` evaluates training-free models (MaskCLIP) with the CLIP
weights named in the config; checkpoints are read with a restricted loader under torch >= 2.6; the model's
full vocabulary is checked against the test dataset's classes.
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import sys

if __package__ in (None, ""):  # `python experiments/test.py`: make the repository importable
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from experiments.train import (add_common_arguments, check_vocabulary, load_config, prepare_runtime,  # noqa: E402
                               set_metric_output_dir)

METRICS_FILE = "zeroshot_metrics.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="config file (experiments/configs/...)")
    parser.add_argument("checkpoint", nargs="?", default=None, help="checkpoint file written by 'alignzeg train'")
    parser.add_argument("--no-checkpoint", action="store_true",
                        help="evaluate without a checkpoint (training-free models such as MaskCLIP)")
    add_common_arguments(parser)
    parser.add_argument("--out-json", default=None,
                        help=f"also write the metric JSON here (always written to WORK_DIR/{METRICS_FILE})")


def _set_output_dir(evaluator, out_dir: str) -> bool:
    """Point every ZeroShotIoUMetric of a test evaluator config at ``out_dir`` (used by experiments/pipeline.py)."""
    return set_metric_output_dir(evaluator, out_dir, overwrite=True)


def load_strict(runner, checkpoint) -> None:
    """Load ``checkpoint`` into the runner's model with every key required.

    mmengine's ``load_from`` loads non-strictly: a head whose weights are missing from the file keeps
    its random initialisation and would be scored. Here a missing or unexpected key is an error that
    names the file and the keys. The test loop is built first so that the split check of
    ``ZeroShotMetaHook`` sees the test dataset.
    """
    runner._test_loop = runner.build_test_loop(runner._test_loop)
    try:
        runner.load_checkpoint(str(checkpoint), strict=True)
    except ValueError as err:  # ZeroShotMetaHook: another class list or unseen split; name the file
        msg = str(err)
        if msg.startswith("checkpoint "):
            msg = f"{checkpoint}{msg[len('checkpoint'):]}"
        raise ValueError(msg) from err
    except RuntimeError as err:
        text = " ".join(str(err).split())
        raise SystemExit(f"{checkpoint}: does not fit the model of this config ({text[:800]})") from err


def run(args: argparse.Namespace) -> int:
    from mmengine.runner import Runner

    from alignzeg.utils import atomic_write_json

    if args.no_checkpoint and args.checkpoint:
        raise SystemExit("give either CHECKPOINT or --no-checkpoint, not both")
    if not args.no_checkpoint and not args.checkpoint:
        raise SystemExit("CHECKPOINT is required (use --no-checkpoint for training-free models such as MaskCLIP)")
    if args.checkpoint and not osp.isfile(args.checkpoint):
        raise SystemExit(f"checkpoint not found: {args.checkpoint}")
    prepare_runtime()
    cfg = load_config(args)
    cfg.load_from = None if args.no_checkpoint else args.checkpoint
    cfg.resume = False
    if not _set_output_dir(cfg.test_evaluator, cfg.work_dir):
        raise SystemExit(f"{args.config}: test_evaluator has no ZeroShotIoUMetric "
                         f"(got {cfg.test_evaluator!r}); cannot write {METRICS_FILE}")
    # Test-only run: no training state to build.
    for key in ("train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler"):
        cfg.pop(key, None)

    checkpoint = cfg.load_from
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    if checkpoint is not None:
        load_strict(runner, checkpoint)
    check_vocabulary(runner, runner.test_loop.dataloader.dataset, "all")
    metrics = runner.test()
    out = osp.join(cfg.work_dir, METRICS_FILE)
    if runner.rank == 0:
        if not osp.isfile(out):
            raise RuntimeError(f"evaluation finished but {out} was not written")
        if args.out_json:
            with open(out, encoding="utf-8") as fh:
                atomic_write_json(args.out_json, json.load(fh))
        summary = {k: round(float(v), 2) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/test.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return int(run(parser.parse_args(argv)) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
