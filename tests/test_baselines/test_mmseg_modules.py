"""Baseline adapters and configs through ZeroShotEncoderDecoder with a tiny random CLIP (64 px)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmseg.models", reason="mmseg.models needs mmcv with ops")

from mmengine.config import Config  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

import alignzeg.mmseg_modules  # noqa: E402,F401
import baselines.mmseg_modules  # noqa: E402,F401
from alignzeg.clip.model import TINY_CLIP_CONFIG  # noqa: E402
from baselines.mmseg_modules import TwoStageHead, ZegCLIPHead, ZegCLIPPromptedBackbone  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "experiments" / "configs"
ZEGCLIP_TINY = CONFIGS / "zegclip" / "zegclip_tiny-vit_1xb16-2k_synthetic-default-64x64.py"
TWO_STAGE_TINY = CONFIGS / "two-stage" / "two-stage_tiny-vit_1xb16-2k_synthetic-default-64x64.py"
ALL_CONFIGS = sorted((CONFIGS / "zegclip").glob("*.py")) + sorted((CONFIGS / "two-stage").glob("*.py"))
CLASSES = ["red circle", "blue square", "green triangle", "sky", "grass"]
UNSEEN = ["green triangle"]


@pytest.fixture(autouse=True)
def _mmseg_scope():
    init_default_scope("mmseg")


def write_split(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps(dict(name="toy", dataset="toy", source="test", classes=CLASSES, unseen=UNSEEN)))
    return str(path)


def model_cfg(config: Path, tmp_path) -> dict:
    cfg = Config.fromfile(str(config))
    model = cfg.model.to_dict()
    model["backbone"]["clip"] = dict(model=TINY_CLIP_CONFIG, pretrained=None)
    model["split"] = write_split(tmp_path)
    model["text"] = dict(templates="single")
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


def test_every_baseline_config_parses_and_names_registered_types():
    assert len(ALL_CONFIGS) == 20, ALL_CONFIGS  # ZegCLIP and two-stage: (tiny + 4 dataset splits) x {inductive, -st}
    for path in ALL_CONFIGS:
        cfg = Config.fromfile(str(path))
        assert cfg.custom_imports.imports == ["alignzeg.mmseg_modules", "baselines.mmseg_modules"], path
        assert MODELS.get(cfg.model.backbone.type) is not None, path
        head = MODELS.build(cfg.model.decode_head)  # heads are cheap to build at full size
        assert isinstance(head, (ZegCLIPHead, TwoStageHead)), path
        method, backbone, gpus_batch_iters, data_split_crop = path.stem.split("_")
        st = method.endswith("-st")
        assert method.removesuffix("-st") in ("zegclip", "two-stage") and backbone in ("tiny-vit", "vit-b16"), path
        assert (cfg.model.get("self_training") is not None) == st, path
        assert cfg.train_dataloader.dataset.mode == ("transductive" if st else "seen"), path
        gpus, rest = gpus_batch_iters.split("xb")
        batch, iters = rest.split("-")
        assert cfg.train_dataloader.batch_size == int(batch), path
        assert cfg.train_cfg.max_iters == int(iters.rstrip("k")) * 1000, path
        assert data_split_crop.endswith(f"{cfg.crop_size[0]}x{cfg.crop_size[1]}"), path


def test_zegclip_tiny_train_val_tensor_modes(tmp_path):
    torch.manual_seed(0)
    model = MODELS.build(model_cfg(ZEGCLIP_TINY, tmp_path))
    assert isinstance(model.backbone, ZegCLIPPromptedBackbone) and isinstance(model.decode_head, ZegCLIPHead)
    trainable = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert trainable and all(".prompts." in n for n in trainable), trainable
    optim = OptimWrapper(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3))
    model.train()
    assert model.backbone.features.prompts.training and not model.backbone.clip_model.training
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    batch = make_batch(num_labels=4)  # labels in the 4-class seen space
    history = []
    for _ in range(5):
        log = model.train_step(batch, optim)
        assert set(log) == {"decode.loss_focal", "decode.loss_dice", "loss"}
        history.append(log["loss"].item())
    assert history[-1] < history[0], history
    for n, p in model.backbone.named_parameters():  # only the prompts moved
        assert torch.equal(p, before[n]) != (".prompts." in n), n
    model.eval()
    with torch.no_grad():
        out = model.val_step(make_batch(num_labels=5))
    assert out[0].seg_logits.data.shape == (5, 64, 64)
    assert out[0].pred_sem_seg.data.shape == (1, 64, 64)
    seen = model.decode_head.vocab_info["seen_mask"]
    assert seen.tolist() == [True, True, False, True, True]
    with torch.no_grad():
        data = model.data_preprocessor(make_batch(), False)
        logits = model(data["inputs"], data["data_samples"], mode="tensor")
        feats = model.extract_feat(data["inputs"])
        raw = model.decode_head.head.predict(feats, model.text_embeddings("all"), (64, 64), calibration=0.0)
    assert logits.shape == (2, 5, 64, 64)
    # calibrated scores: sigmoid minus 0.1 on the seen classes only
    assert torch.allclose(logits[:, seen], raw[:, seen] - 0.1, atol=1e-6)
    assert torch.allclose(logits[:, ~seen], raw[:, ~seen], atol=1e-6)


def test_zegclip_prompts_survive_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = MODELS.build(model_cfg(ZEGCLIP_TINY, tmp_path))
    with torch.no_grad():
        model.backbone.features.prompts.prompt_embeddings.add_(0.5)
    state = model.state_dict()
    assert "backbone.features.prompts.prompt_embeddings" in state
    assert not any(k.startswith("backbone.features.visual.") for k in state), "CLIP weights saved twice"
    path = tmp_path / "ckpt.pth"
    torch.save(dict(state_dict=state), path)
    torch.manual_seed(1)
    other = MODELS.build(model_cfg(ZEGCLIP_TINY, tmp_path))
    other.load_state_dict(torch.load(path, weights_only=True)["state_dict"], strict=True)
    for key, value in state.items():
        assert torch.equal(other.state_dict()[key], value), key
    assert other.backbone.features.visual.conv1.weight is other.backbone.clip_model.visual.conv1.weight


def test_two_stage_tiny_train_val_tensor_modes(tmp_path):
    torch.manual_seed(0)
    cfg = model_cfg(TWO_STAGE_TINY, tmp_path)
    cfg["decode_head"]["matcher"]["num_points"] = None
    cfg["decode_head"]["loss"]["num_points"] = None
    model = MODELS.build(cfg)
    assert isinstance(model.decode_head, TwoStageHead)
    optim = OptimWrapper(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3))
    model.train()
    batch = make_batch(num_labels=4)
    history = []
    for _ in range(5):
        log = model.train_step(batch, optim)
        for key in ("decode.loss_cls", "decode.loss_mask", "decode.loss_dice", "decode.d0.loss_cls"):
            assert key in log and torch.isfinite(log[key]), key
        history.append(log["loss"].item())
    assert history[-1] < history[0], history
    assert not any(p.grad is not None for p in model.backbone.parameters()), "CLIP must stay frozen"
    model.eval()
    with torch.no_grad():
        out = model.val_step(make_batch(num_labels=5))
    assert out[0].seg_logits.data.shape == (5, 64, 64)
    assert out[0].pred_sem_seg.data.shape == (1, 64, 64)
    with torch.no_grad():
        data = model.data_preprocessor(make_batch(), False)
        logits = model(data["inputs"], data["data_samples"], mode="tensor")
    assert logits.shape == (2, 5, 64, 64)
    # sums over 16 proposals of (probability ensemble <= 1) x sigmoid: within [0, 16]
    assert float(logits.min()) >= 0 and float(logits.max()) <= 16


def test_zegclip_backbone_refuses_unfrozen_clip():
    with pytest.raises(ValueError, match="frozen=False"):
        ZegCLIPPromptedBackbone(clip=dict(model=TINY_CLIP_CONFIG, pretrained=None), frozen=False)
