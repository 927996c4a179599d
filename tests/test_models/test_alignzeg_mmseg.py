"""AlignZegHead (mmseg adapter) and the AlignZeg configs through ZeroShotEncoderDecoder, tiny random CLIP."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmseg.models", reason="mmseg.models needs mmcv with ops")

from mmengine.config import Config  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

import alignzeg.mmseg_modules  # noqa: E402,F401
from alignzeg.clip.model import TINY_CLIP_CONFIG  # noqa: E402
from alignzeg.mmseg_modules.alignzeg_head import AlignZegHead  # noqa: E402

register_all_modules(init_default_scope=True)

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "experiments" / "configs" / "alignzeg"
TINY = CONFIG_DIR / "alignzeg_tiny-vit_1xb16-2k_synthetic-default-64x64.py"
PARENT = CONFIG_DIR / "alignzeg-parent_tiny-vit_1xb16-2k_synthetic-default-64x64.py"
CLASSES = ["red circle", "blue square", "green triangle", "sky", "grass"]
UNSEEN = ["green triangle"]


def write_split(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps(dict(name="toy", dataset="toy", source="test", classes=CLASSES, unseen=UNSEEN)))
    return str(path)


def model_cfg(config: Path, tmp_path, **head_over):
    cfg = Config.fromfile(str(config))
    model = cfg.model.to_dict()
    model["backbone"]["clip"] = dict(model=TINY_CLIP_CONFIG, pretrained=None)
    model["split"] = write_split(tmp_path)
    model["text"] = dict(templates="single")
    model["decode_head"]["loss"]["num_points"] = 64
    model["decode_head"].update(head_over)
    return model


def make_batch(num=2, size=64, num_labels=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(num):
        inputs.append(torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8))
        blocks = torch.randint(0, num_labels, (4, 4), generator=g)
        sem = blocks.repeat_interleave(size // 4, 0).repeat_interleave(size // 4, 1)
        sem[: size // 4, : size // 4] = 255
        ds = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
        ds.gt_sem_seg = PixelData(data=sem[None].long())
        samples.append(ds)
    return dict(inputs=inputs, data_samples=samples)


def test_targets_keep_ignore_inside_the_image_only():
    head = AlignZegHead(clip_channels=8, embed_dim=8, patch_size=8, num_queries=2, embed_dims=8,
                        num_decoder_layers=1, num_heads=2, side_cfg=dict(num_layers=1, num_heads=2, fusion_index=(0,)))
    sem = torch.full((1, 8, 8), 255, dtype=torch.long)
    sem[0, :4, :4] = 1
    sem[0, :4, 4:6] = 0  # columns 6-7 and rows 4-5 stay 255 inside the image; rows 6-7 are padding
    ds = SegDataSample(metainfo=dict(img_shape=(6, 8)))
    ds.gt_sem_seg = PixelData(data=sem)
    t = head._targets(ds, num_classes=2)
    assert t["labels"].tolist() == [0, 1]
    assert t["masks"].sum((1, 2)).tolist() == [8, 16]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:6] = sem[0, :6] == 255
    assert torch.equal(t["ignore"], expected)
    assert int(t["ignore"].sum()) == 48 - 24


def test_tiny_config_train_val_tensor_modes(tmp_path):
    torch.manual_seed(0)
    model = MODELS.build(model_cfg(TINY, tmp_path))
    assert isinstance(model.decode_head, AlignZegHead)
    batch = make_batch(num_labels=4)  # 4 seen classes
    optim = OptimWrapper(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3))
    model.train()
    log = model.train_step(batch, optim)
    for key in ("decode.loss_cls", "decode.loss_mask", "decode.loss_dice", "decode.d0.loss_cls",
                "decode.loss_vir", "decode.loss_reg", "decode.loss_bc"):
        assert key in log and torch.isfinite(log[key]), key
    assert not any(p.grad is not None for p in model.backbone.parameters()), "CLIP must stay frozen"
    model.eval()
    with torch.no_grad():
        out = model.val_step(make_batch(num_labels=5))
    assert out[0].seg_logits.data.shape == (5, 64, 64)
    assert out[0].pred_sem_seg.data.shape == (1, 64, 64)
    assert model.decode_head.vocab_info["seen_mask"].tolist() == [True, True, False, True, True]
    with torch.no_grad():
        data = model.data_preprocessor(make_batch(), False)
        logits = model(data["inputs"], data["data_samples"], mode="tensor")
    assert logits.shape == (2, 5, 64, 64)
    # MaskFormer inference: per-pixel class scores are sums of probabilities times sigmoids, so within [0, N]
    assert float(logits.min()) >= 0 and float(logits.max()) <= model.decode_head.model.num_queries


def test_parent_config_is_the_all_off_head(tmp_path):
    cfg = Config.fromfile(str(PARENT))
    head = cfg.model.decode_head
    assert (head.mrpe, head.fes, head.bds, head.pbc) == (False, False, False, False)
    torch.manual_seed(0)
    parent = MODELS.build(model_cfg(PARENT, tmp_path))
    full = MODELS.build(model_cfg(TINY, tmp_path))
    p_keys = {k for k in parent.state_dict() if k.startswith("decode_head.")}
    f_keys = {k for k in full.state_dict() if k.startswith("decode_head.")}
    assert p_keys < f_keys
    assert parent.decode_head.model.bg_prototypes.shape[0] == 1
    model = parent.train()
    log = model.train_step(make_batch(), OptimWrapper(torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3)))
    assert not any(k.endswith(("loss_vir", "loss_reg", "loss_bc")) for k in log)
