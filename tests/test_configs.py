"""Every config under experiments/configs parses, follows the naming scheme and builds (tiny CLIP)."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("mmseg.models", reason="mmseg.models needs mmcv with ops")

from mmengine.config import Config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "experiments" / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.py") if "_base_" not in p.relative_to(CONFIG_DIR).parts)
# Dataset tokens of the naming scheme (add new datasets here).
DATASETS = ("synthetic", "voc12aug", "coco-stuff164k", "context59", "folder")
NAME = re.compile(r"^(?P<method>[a-z0-9]+(?:-[a-z0-9]+)*)_(?P<backbone>[a-z0-9]+(?:-[a-z0-9]+)*)_"
                  r"(?P<gpus>\d+)xb(?P<batch>\d+)-(?P<iters>\d+k?)_"
                  r"(?P<dataset>{})-(?P<split>[a-z0-9]+(?:-[a-z0-9]+)*)-(?P<crop>\d+x\d+)\.py$"
                  .format("|".join(DATASETS)))


def _ids(paths):
    return [str(p.relative_to(CONFIG_DIR)) for p in paths]


def test_config_list_is_not_empty_and_includes_maskclip():
    assert CONFIG_DIR.is_dir(), CONFIG_DIR
    assert len(CONFIGS) >= 2, f"no configs found under {CONFIG_DIR}"
    names = {p.name for p in CONFIGS}
    assert "maskclip_tiny-vit_1xb8-0k_synthetic-default-64x64.py" in names
    assert "maskclip_vit-b16_1xb1-0k_voc12aug-15s5u-512x512.py" in names


@pytest.mark.parametrize("path", CONFIGS, ids=_ids(CONFIGS))
def test_config_name_follows_scheme(path):
    m = NAME.match(path.name)
    assert m, f"{path.name} does not follow {{method}}_{{backbone}}_{{gpus}}xb{{batch}}-{{iters}}_{{dataset}}-{{split}}-{{crop}}.py"
    folder = path.parent.name  # a method's variants (alignzeg-parent) live with the method (alignzeg/)
    assert m["method"] == folder or m["method"].startswith(folder + "-"), f"{path} is not under configs/{m['method']}/"
    h, w = (int(v) for v in m["crop"].split("x"))
    cfg = Config.fromfile(str(path))
    crop = cfg.get("crop_size")
    if crop is not None:
        assert tuple(crop) == (h, w), f"{path.name}: crop_size {crop} vs name {m['crop']}"


def _tiny_split(tmp_path) -> str:
    split = dict(name="tiny", dataset="synthetic", source="test", classes=["a", "b", "c"], unseen=["c"])
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    return str(path)


def _with_tiny_clip(model_cfg: dict, tmp_path) -> dict:
    from alignzeg.clip.model import TINY_CLIP_CONFIG

    cfg = copy.deepcopy(model_cfg)
    bb = cfg["backbone"]
    bb["clip"] = dict(model=copy.deepcopy(TINY_CLIP_CONFIG), pretrained=None)
    layers = bb.get("out_layers")
    if layers is not None and any(int(i) >= 4 or int(i) < -4 for i in layers):
        bb["out_layers"] = None  # the tiny CLIP has 4 blocks
    split = cfg.get("split")
    if split is None or (str(split).endswith(".json") and not Path(split).is_file()):
        cfg["split"] = _tiny_split(tmp_path)
    return cfg


@pytest.mark.parametrize("path", CONFIGS, ids=_ids(CONFIGS))
def test_config_builds_with_tiny_clip(path, tmp_path):
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    from alignzeg.clip.model import CLIP_MEAN, CLIP_STD

    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(str(path))
    assert cfg.default_scope == "mmseg"  # inherited from mmseg::_base_/default_runtime.py
    assert "alignzeg.mmseg_modules" in cfg.custom_imports["imports"]
    assert cfg.custom_imports.get("allow_failed_imports") is False
    pre = cfg.model.data_preprocessor
    assert list(pre.mean) == pytest.approx(list(CLIP_MEAN)) and list(pre.std) == pytest.approx(list(CLIP_STD))
    assert pre.bgr_to_rgb is True
    train_mode = "seen" if cfg.model.get("train_vocabulary", "seen") == "seen" else "transductive"
    assert cfg.train_dataloader.dataset.mode == train_mode
    assert cfg.val_dataloader.dataset.mode == "all" and cfg.test_dataloader.dataset.mode == "all"
    assert cfg.val_evaluator.type == "ZeroShotIoUMetric" and cfg.test_evaluator.type == "ZeroShotIoUMetric"
    assert cfg.model.test_cfg.mode in ("whole", "slide")
    model = MODELS.build(_with_tiny_clip(cfg.model.to_dict(), tmp_path))
    assert type(model).__name__ == "ZeroShotEncoderDecoder"
    assert not any("text_embeds" in k for k in model.state_dict())
