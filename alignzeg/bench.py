"""``alignzeg bench``: the cost of every method, as ratios measured in one run.

Each figure is a ratio of two timings taken in the same process on the same inputs, so that it says
something on any machine (absolute times are printed and stored too, with the machine):

* **inference**: a method's time per image (``encode_decode``: CLIP, head and the classifier over all
  classes) ÷ the frozen CLIP image encoder's time on the same input (``backbone``), the floor every
  method shares. A two-stage method re-encodes its proposals with CLIP, so it is expected above it.
* **training**: seconds per iteration of each trainable method on its config's training pipeline, and
  the share of that spent waiting for the next batch (target < 10 %).
* **evaluation**: :class:`~alignzeg.evaluation.metric.ZeroShotIoUMetric`'s accumulation throughput ÷ a
  bare ``torch.bincount`` over the same prediction / ground-truth arrays (target ≥ 0.8), and its peak
  Python-heap memory (``tracemalloc``) for ``4 N`` images ÷ for ``N`` images (flat: ≈ 1).
* **text embeddings**: the first :class:`~alignzeg.clip.text.TextEncoder` call (encodes every prompt)
  ÷ a second one in a new encoder that reads the disk cache (target ≥ 20×).

``--size tiny`` (default): the tiny-CLIP configs at the synthetic benchmark's 64×64, random CLIP
weights of the tiny architecture; ``--size full``: the VOC ViT-B/16 configs at 512×512 with random
ViT-B/16 weights (the real weights do not change the cost). Training runs on a small synthetic dataset
generated at that size into a temporary folder. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
SIZES = {
    "tiny": dict(image=64, clip=None, configs={
        "alignzeg": "alignzeg/alignzeg_tiny-vit_1xb16-2k_synthetic-default-64x64.py",
        "san-parent": "alignzeg/alignzeg-parent_tiny-vit_1xb16-2k_synthetic-default-64x64.py",
        "zegclip": "zegclip/zegclip_tiny-vit_1xb16-2k_synthetic-default-64x64.py",
        "two-stage": "two-stage/two-stage_tiny-vit_1xb16-2k_synthetic-default-64x64.py",
        "maskclip": "maskclip/maskclip_tiny-vit_1xb8-0k_synthetic-default-64x64.py"}),
    "full": dict(image=512, clip="ViT-B-16", configs={
        "alignzeg": "alignzeg/alignzeg_vit-b16_4xb4-20k_voc12aug-15s5u-512x512.py",
        "san-parent": "alignzeg/alignzeg-parent_vit-b16_4xb4-20k_voc12aug-15s5u-512x512.py",
        "zegclip": "zegclip/zegclip_vit-b16_4xb4-20k_voc12aug-15s5u-512x512.py",
        "two-stage": "two-stage/two-stage_vit-b16_4xb4-20k_voc12aug-15s5u-512x512.py",
        "maskclip": "maskclip/maskclip_vit-b16_1xb1-0k_voc12aug-15s5u-512x512.py"}),
}
TRAINING_FREE = {"maskclip"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny",
                        help="tiny: tiny-CLIP configs at 64x64 (default); full: ViT-B/16 configs at 512x512")
    parser.add_argument("--methods", nargs="+", default=None, help="subset of the methods (default: all five)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per inference figure (default 5)")
    parser.add_argument("--iters", type=int, default=6, help="timed training iterations per method (default 6)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the config's)")
    parser.add_argument("--metric-images", type=int, default=64, help="N of the evaluation figures (default 64)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None, help="JSON file for the figures (written atomically)")


# ------------------------------------------------------------------------------------------------ helpers
def _timed_pair(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Median seconds of ``fn_a()`` and of ``fn_b()``, timed alternately (a, b, a, b, ...) after one
    warm-up call of each, so that a drift of the machine's speed during the run affects both alike."""
    fn_a()
    fn_b()
    times: tuple[list, list] = ([], [])
    for _ in range(max(1, repeats)):
        for fn, out in ((fn_a, times[0]), (fn_b, times[1])):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return float(np.median(times[0])), float(np.median(times[1]))


def _config(size: str, method: str, data_root: Path):
    """The method's config with a random-weight CLIP of its architecture and the benchmark's data."""
    from alignzeg.clip.model import TINY_CLIP_CONFIG
    from experiments.train import read_config

    spec = SIZES[size]
    cfg = read_config(CONFIGS / spec["configs"][method])
    clip = dict(model=copy.deepcopy(TINY_CLIP_CONFIG) if spec["clip"] is None else spec["clip"], pretrained=None)
    cfg.model.backbone.clip = clip
    cfg.model.split = str(data_root / "split.json")
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(key) is not None:
            ds = cfg[key].dataset
            ds.type, ds.data_root, ds.split = "ZeroShotSegDataset", str(data_root), None
            cfg[key].num_workers, cfg[key].persistent_workers = 0, False
    return cfg


def _build(cfg):
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import alignzeg.mmseg_modules  # noqa: F401  (registers the suite's modules)
    import baselines.mmseg_modules  # noqa: F401

    register_all_modules(init_default_scope=True)
    return MODELS.build(cfg.model)


# ------------------------------------------------------------------------------------------------ figures
def bench_inference(model, image: int, repeats: int) -> dict:
    import torch

    model.eval()
    x = torch.randn(1, 3, image, image)
    metas = [dict(ori_shape=(image, image), img_shape=(image, image), pad_shape=(image, image),
                  padding_size=[0, 0, 0, 0])]
    with torch.no_grad():
        model.encode_decode(x, metas)  # text embeddings computed once, outside the timing
        t_clip, t_method = _timed_pair(lambda: model.backbone(x), lambda: model.encode_decode(x, metas), repeats)
    return {"seconds_per_image": t_method, "clip_encoder_seconds": t_clip, "ratio_to_clip": t_method / t_clip}


def bench_training(cfg, model, iters: int, batch_size: int | None) -> dict:
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner

    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    if batch_size is not None:
        loader_cfg.batch_size = batch_size
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    it = iter(loader)
    batch = next(it)
    model.train_step(batch, wrapper)  # warm-up (lazy text embeddings, allocator)
    wait = step = 0.0
    for _ in range(max(1, iters)):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        model.train_step(batch, wrapper)
        t2 = time.perf_counter()
        wait, step = wait + (t1 - t0), step + (t2 - t0)
    return {"seconds_per_iter": step / max(1, iters), "data_wait_share": wait / step if step else float("nan"),
            "batch_size": int(loader_cfg.batch_size)}


def bench_metric(num_classes: int, classes: list[str], unseen: list[str], n: int, image: int) -> dict:
    import torch

    from alignzeg.evaluation.metric import ZeroShotIoUMetric

    rng = np.random.default_rng(0)

    def samples(k):
        out = []
        for _ in range(k):
            gt = torch.from_numpy(rng.integers(0, num_classes, (image, image))).long()
            gt[:2] = 255
            pred = torch.from_numpy(rng.integers(0, num_classes, (image, image))).long()
            out.append({"pred_sem_seg": {"data": pred[None]}, "gt_sem_seg": {"data": gt[None]}})
        return out

    def run_metric(batch):
        metric = ZeroShotIoUMetric(unseen_classes=unseen)
        metric.dataset_meta = {"classes": classes}
        for i in range(0, len(batch), 8):
            metric.process({}, batch[i:i + 8])
        return metric

    def bare(batch):
        total = torch.zeros(num_classes * num_classes, dtype=torch.long)
        for s in batch:
            gt, pred = s["gt_sem_seg"]["data"].flatten(), s["pred_sem_seg"]["data"].flatten()
            keep = gt != 255
            total += torch.bincount(gt[keep] * num_classes + pred[keep], minlength=num_classes * num_classes)
        return total

    data = samples(n)
    t_metric, t_bare = _timed_pair(lambda: run_metric(data), lambda: bare(data), 3)
    ref = bare(data).view(num_classes, num_classes).numpy()
    got = run_metric(data).results[0]
    assert (got["conf"] + got["last_conf"] == ref).all(), "metric and bincount disagree"
    peaks = []
    for k in (n, 4 * n):
        batch = samples(k)
        tracemalloc.start()
        run_metric(batch)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        del batch
    return {"throughput_ratio_to_bincount": t_bare / t_metric, "metric_seconds": t_metric, "bincount_seconds": t_bare,
            "images": n, "peak_bytes": {str(n): peaks[0], str(4 * n): peaks[1]},
            "peak_ratio_4n_to_n": peaks[1] / peaks[0] if peaks[0] else float("nan")}


def bench_text(model, names: list[str], cache_dir: Path) -> dict:
    from alignzeg.clip.text import TextEncoder
    from alignzeg.mmseg_modules.backbone import clip_of

    clip, tok = clip_of(model.backbone), model.backbone.tokenizer
    templates = model.text_cfg.get("templates", "vild")
    t0 = time.perf_counter()
    first = TextEncoder(clip, tok, templates=templates, cache_dir=cache_dir).embed(names)
    t1 = time.perf_counter()
    enc = TextEncoder(clip, tok, templates=templates, cache_dir=cache_dir)
    second = enc.embed(names)
    t2 = time.perf_counter()
    assert enc.num_encode_calls == 0 and bool((first == second).all()), "the second run did not read the cache"
    return {"first_seconds": t1 - t0, "cached_seconds": t2 - t1, "speedup": (t1 - t0) / (t2 - t1)}


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run(args: argparse.Namespace) -> int:
    import torch

    from alignzeg.data.synthetic import generate
    from alignzeg.splits import load_split
    from alignzeg.utils import atomic_write_json

    from mmengine.logging import MMLogger

    MMLogger.get_instance("alignzeg-bench", log_level="WARNING")  # mmengine's per-parameter lines stay quiet
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = SIZES[args.size]
    methods = args.methods or list(spec["configs"])
    unknown = [m for m in methods if m not in spec["configs"]]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown} (choose from {', '.join(spec['configs'])})")
    out: dict = {"size": args.size, "image": spec["image"], "machine": machine(), "methods": {}}
    with tempfile.TemporaryDirectory(prefix="alignzeg-bench-") as tmp:
        data = Path(tmp) / "data"
        generate(data, seed=0, num_train=max(16, 4 * (args.batch_size or 16)), num_val=4, num_test=0,
                 image_size=spec["image"], progress=False)
        split = load_split(data / "split.json")
        for m in methods:
            torch.manual_seed(0)
            cfg = _config(args.size, m, data)
            model = _build(cfg)
            row = {"inference": bench_inference(model, spec["image"], args.repeats)}
            if m not in TRAINING_FREE:
                row["training"] = bench_training(cfg, model, args.iters, args.batch_size)
            if "text" not in out:
                out["text"] = bench_text(model, list(split.classes), Path(tmp) / "text-cache")
            out["methods"][m] = row
            inf = row["inference"]
            line = f"{m:<11} inference {1000 * inf['seconds_per_image']:8.1f} ms/img = {inf['ratio_to_clip']:5.2f}x CLIP"
            if "training" in row:
                tr = row["training"]
                line += (f" | training {tr['seconds_per_iter']:6.3f} s/iter (batch {tr['batch_size']}),"
                         f" data wait {100 * tr['data_wait_share']:4.1f} %")
            print(line, flush=True)
        out["evaluation"] = bench_metric(split.num_classes, list(split.classes), list(split.unseen),
                                         args.metric_images, spec["image"])
    ev, tx = out["evaluation"], out["text"]
    print(f"evaluation  metric accumulation {ev['throughput_ratio_to_bincount']:.2f}x bare bincount; peak memory "
          f"{ev['peak_ratio_4n_to_n']:.2f}x for 4x the images")
    print(f"text        cached second run {tx['speedup']:.0f}x faster than the first")
    if args.out:
        out["figure"] = plot_bench(out, Path(args.out).parent)
        atomic_write_json(args.out, out)
    return 0


def plot_bench(bench: dict, out_dir: Path) -> str:
    """A bar chart of inference ÷ frozen-CLIP encoder per method next to the JSON; returns the PNG name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.plots import save_figure

    names = list(bench["methods"])
    ratios = [bench["methods"][m]["inference"]["ratio_to_clip"] for m in names]
    fig, ax = plt.subplots(figsize=(5.5, 0.45 * len(names) + 1.2))
    ax.barh(names, ratios, color="#0072B2")
    ax.axvline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xlabel("inference time ÷ frozen CLIP image encoder (same input)")
    ax.invert_yaxis()
    ax.set_title(f"alignzeg bench --size {bench['size']} ({bench['image']}×{bench['image']})", fontsize=9)
    files = save_figure(fig, Path(out_dir), "bench_inference")
    return next(f for f in files if f.endswith(".png"))


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - `alignzeg bench` is the entry point
    parser = argparse.ArgumentParser(prog="alignzeg bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
