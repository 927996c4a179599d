"""ZeroShotEncoderDecoder, CLIPBackbone and MaskCLIPHead with a random tiny CLIP (64 px)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("mmseg.models", reason="mmseg.models needs mmcv with ops")

from mmengine.model import BaseModule  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

import alignzeg.mmseg_modules  # noqa: E402,F401
from alignzeg.clip.model import CLIP_MEAN, CLIP_STD, TINY_CLIP_CONFIG  # noqa: E402

register_all_modules(init_default_scope=True)

CLASSES = ["red circle", "blue square", "green triangle", "sky", "grass"]
UNSEEN = ["green triangle"]
SEEN = [c for c in CLASSES if c not in UNSEEN]


@MODELS.register_module(force=True)
class TrivialTestHead(BaseModule):
    """Test head: 1×1 projection of the last CLIP layer into the text space, cosine logits, pixel CE.

    Records the text embeddings and vocabulary info it was called with.
    """

    def __init__(self, in_channels: int = 128, embed_dim: int = 64, align_corners: bool = False, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.proj = torch.nn.Conv2d(in_channels, embed_dim, 1)
        self.align_corners = align_corners
        self.calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def forward(self, inputs, text_embeds):
        feat = F.normalize(self.proj(inputs["layers"][-1]), dim=1)
        logits = 10.0 * torch.einsum("bdhw,cd->bchw", feat, text_embeds)
        return F.interpolate(logits, size=inputs["images"].shape[-2:], mode="bilinear", align_corners=False)

    def loss(self, inputs, text_embeds, batch_data_samples, train_cfg):
        self.calls.append(("loss", text_embeds.detach().clone(), self.vocab_info["seen_mask"].clone()))
        logits = self.forward(inputs, text_embeds)
        gt = torch.stack([ds.gt_sem_seg.data[0] for ds in batch_data_samples]).long()
        return dict(loss_ce=F.cross_entropy(logits, gt, ignore_index=255))

    def predict(self, inputs, text_embeds, batch_img_metas, test_cfg):
        self.calls.append(("predict", text_embeds.detach().clone(), self.vocab_info["seen_mask"].clone()))
        return self.forward(inputs, text_embeds)


def write_split(path, classes=CLASSES, unseen=UNSEEN):
    path.write_text(json.dumps(dict(name="toy", dataset="toy", source="test", classes=classes, unseen=unseen)))
    return str(path)


def build_model(tmp_path, head=None, test_cfg=None, train_vocabulary="seen"):
    torch.manual_seed(0)
    cfg = dict(
        type="ZeroShotEncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=list(CLIP_MEAN), std=list(CLIP_STD),
                               bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(64, 64),
                               test_cfg=dict(size_divisor=8)),
        backbone=dict(type="CLIPBackbone", clip=dict(model=TINY_CLIP_CONFIG, pretrained=None)),
        decode_head=head or dict(type="TrivialTestHead"),
        split=write_split(tmp_path / "split.json"),
        text=dict(templates="single"),
        train_vocabulary=train_vocabulary,
        test_cfg=test_cfg or dict(mode="whole"))
    return MODELS.build(cfg)


def make_batch(num=2, size=64, labels=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for i in range(num):
        inputs.append(torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8))
        ds = SegDataSample()
        lab = labels[i] if labels is not None else torch.randint(0, len(SEEN), (1, size, size), generator=g)
        ds.gt_sem_seg = PixelData(data=lab.long())
        ds.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                             padding_size=[0, 0, 0, 0], img_path=f"img{i}.png"))
        samples.append(ds)
    return dict(inputs=inputs, data_samples=samples)


def independent_text(model, names):
    from alignzeg.clip.text import TextEncoder

    return TextEncoder(model.backbone.clip_model, model.backbone.tokenizer, templates="single").embed(list(names))


def test_train_step_uses_seen_vocabulary_and_only_trains_the_head(tmp_path):
    model = build_model(tmp_path)
    model.train()
    clip_before = {k: v.clone() for k, v in model.backbone.clip_model.state_dict().items()}
    head_before = model.decode_head.proj.weight.detach().clone()
    optim = OptimWrapper(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0))
    log_vars = model.train_step(make_batch(), optim)
    assert "loss" in log_vars and "decode.loss_ce" in log_vars and torch.isfinite(log_vars["loss"])
    (mode, text, seen_mask), = model.decode_head.calls
    assert mode == "loss" and text.shape == (len(SEEN), 64)
    assert torch.allclose(text, independent_text(model, SEEN), atol=1e-6)
    assert seen_mask.tolist() == [True] * len(SEEN)
    assert not torch.equal(model.decode_head.proj.weight, head_before)
    for k, v in model.backbone.clip_model.state_dict().items():
        assert torch.equal(v, clip_before[k]), k
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert model.backbone.clip_model.training is False


def test_val_and_test_step_use_the_full_vocabulary(tmp_path):
    model = build_model(tmp_path)
    model.train()  # the vocabulary follows the step, not the module mode
    for step in (model.val_step, model.test_step):
        model.decode_head.calls.clear()
        out = step(make_batch(labels=[torch.randint(0, 5, (1, 64, 64)) for _ in range(2)]))
        (mode, text, seen_mask), = model.decode_head.calls
        assert mode == "predict" and text.shape == (len(CLASSES), 64)
        assert torch.allclose(text, independent_text(model, CLASSES), atol=1e-6)
        assert seen_mask.tolist() == [c not in UNSEEN for c in CLASSES]
        assert len(out) == 2
        assert out[0].seg_logits.data.shape == (len(CLASSES), 64, 64)
        assert out[0].pred_sem_seg.data.shape == (1, 64, 64)
        assert torch.equal(out[0].pred_sem_seg.data[0], out[0].seg_logits.data.argmax(0))


def test_postprocess_skips_only_the_identity_resize(tmp_path):
    """The override returns mmseg's values where the resize is the identity, and mmseg's own output (its
    crop of the padding, flip and resize to ori_shape) everywhere else."""
    from mmseg.models.segmentors.base import BaseSegmentor

    model = build_model(tmp_path)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, len(CLASSES), 64, 64, generator=g)
    plain = make_batch()["data_samples"]
    ours = model.postprocess_result(logits, [s.clone() for s in plain])
    ref = BaseSegmentor.postprocess_result(model, logits, [s.clone() for s in plain])
    for a, b in zip(ours, ref):
        assert torch.equal(a.seg_logits.data, b.seg_logits.data)
        assert torch.equal(a.pred_sem_seg.data, b.pred_sem_seg.data)
    assert ours[0].seg_logits.data.data_ptr() == logits[0].data_ptr()   # no copy was made
    odd = [s.clone() for s in plain]
    odd[0].set_metainfo(dict(padding_size=[0, 8, 0, 8], ori_shape=(56, 56)))   # padded: cropped back
    odd[1].set_metainfo(dict(flip=True, flip_direction="horizontal"))
    ours = model.postprocess_result(logits, [s.clone() for s in odd])
    assert ours[0].seg_logits.data.shape == (len(CLASSES), 56, 56)
    assert torch.equal(ours[0].seg_logits.data, logits[0, :, :56, :56])
    assert torch.equal(ours[1].seg_logits.data, logits[1].flip(-1))
    assert torch.equal(ours[1].pred_sem_seg.data[0], logits[1].flip(-1).argmax(0))


def test_tensor_mode_and_vocabulary_override(tmp_path):
    model = build_model(tmp_path)
    batch = model.data_preprocessor(make_batch(), False)
    model.eval()
    assert model(batch["inputs"], batch["data_samples"], mode="tensor").shape == (2, len(CLASSES), 64, 64)
    model.train()
    assert model(batch["inputs"], mode="tensor").shape == (2, len(SEEN), 64, 64)
    model.set_vocabulary("all")
    assert model(batch["inputs"], mode="tensor").shape == (2, len(CLASSES), 64, 64)
    model.eval()
    model.set_vocabulary("seen")
    preds = model(batch["inputs"], batch["data_samples"], mode="predict")
    assert preds[0].seg_logits.data.shape[0] == len(SEEN)
    model.set_vocabulary(None)
    with pytest.raises(ValueError, match="set_vocabulary"):
        model.set_vocabulary("unseen")


def test_loss_mode_rejects_labels_outside_the_training_vocabulary(tmp_path):
    model = build_model(tmp_path)
    batch = model.data_preprocessor(make_batch(labels=[torch.full((1, 64, 64), 4) for _ in range(2)]), True)
    with pytest.raises(ValueError, match="mode 'seen'"):
        model(batch["inputs"], batch["data_samples"], mode="loss")
    transductive = build_model(tmp_path, train_vocabulary="all")
    losses = transductive(batch["inputs"], batch["data_samples"], mode="loss")
    assert set(losses) == {"decode.loss_ce"}
    assert transductive.decode_head.calls[-1][1].shape[0] == len(CLASSES)


def test_slide_inference_equals_whole_and_averages_windows(tmp_path):
    model = build_model(tmp_path)
    model.eval()
    batch = model.data_preprocessor(make_batch(), False)
    metas = [ds.metainfo for ds in batch["data_samples"]]
    whole = model.inference(batch["inputs"], metas)
    model.test_cfg = dict(mode="slide", crop_size=(64, 64), stride=(48, 48))
    slide = model.inference(batch["inputs"], metas)
    assert torch.allclose(slide, whole, atol=1e-5)
    assert metas[0]["img_shape"] == (64, 64)  # caller's metas untouched
    # 32-px windows every 16 px: independent average of the window logits
    model.test_cfg = dict(mode="slide", crop_size=(32, 32), stride=(16, 16))
    slide = model.inference(batch["inputs"], metas)
    acc = torch.zeros_like(whole)
    cnt = torch.zeros(1, 1, 64, 64)
    for y in (0, 16, 32):
        for x in (0, 16, 32):
            acc[:, :, y:y + 32, x:x + 32] += model.encode_decode(batch["inputs"][:, :, y:y + 32, x:x + 32], metas)
            cnt[:, :, y:y + 32, x:x + 32] += 1
    assert torch.allclose(slide, acc / cnt, atol=1e-5)


def test_inputs_not_multiple_of_patch_are_padded_and_cropped_back(tmp_path):
    model = build_model(tmp_path)
    model.eval()
    x = torch.randn(1, 3, 60, 60)
    logits = model(x, mode="tensor")
    assert logits.shape == (1, len(CLASSES), 60, 60)
    padded = model.encode_decode(F.pad(x, (0, 4, 0, 4)), [dict(img_shape=(64, 64))])
    assert torch.allclose(logits, padded[..., :60, :60], atol=1e-5)


def test_checkpoint_holds_clip_once_and_no_text_embeddings(tmp_path):
    model = build_model(tmp_path)
    model.eval()
    model.val_step(make_batch())
    assert model.text_embeds_all is not None
    state = model.state_dict()
    assert not any("text_embeds" in k for k in state)
    assert not any(k.startswith("backbone.features.") for k in state)
    ptrs = [v.data_ptr() for v in state.values() if v.numel()]
    assert len(ptrs) == len(set(ptrs)), "a tensor is stored under two names"
    assert any(k.startswith("backbone.clip_model.visual.") for k in state)
    # round trip into a differently initialised model restores CLIP, features and head
    other = build_model(tmp_path)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    other.text_embeddings("all")
    other.load_state_dict(state, strict=True)
    assert other.text_embeds_all is None  # recomputed from the loaded CLIP
    for k, v in state.items():
        assert torch.equal(other.state_dict()[k], v), k
    assert torch.equal(other.backbone.features.visual.conv1.weight, model.backbone.clip_model.visual.conv1.weight)
    x = torch.randn(1, 3, 64, 64)
    other.eval()
    assert torch.allclose(other(x, mode="tensor"), model(x, mode="tensor"), atol=1e-5)


def test_check_dataset_meta_names_the_first_difference(tmp_path):
    model = build_model(tmp_path)
    model.check_dataset_meta(dict(classes=tuple(SEEN)), "seen")
    model.check_dataset_meta(dict(classes=tuple(CLASSES)), "all")
    swapped = [CLASSES[1], CLASSES[0]] + CLASSES[2:]
    with pytest.raises(ValueError, match="index 0: dataset 'blue square', model 'red circle'"):
        model.check_dataset_meta(dict(classes=swapped), "all")


def test_maskclip_logits_equal_independent_cosine(tmp_path):
    from alignzeg.clip.dense import CLIPVisualFeatures

    model = build_model(tmp_path, head=dict(type="MaskCLIPHead"))
    assert sum(p.numel() for p in model.decode_head.parameters()) == 0
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 0
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    logits = model(x, mode="tensor")
    clip = model.backbone.clip_model
    dense = CLIPVisualFeatures(clip)(x)["dense_embed"]  # B×D×8×8
    text = independent_text(model, CLASSES)
    cos = torch.einsum("bdhw,cd->bchw", dense / dense.norm(dim=1, keepdim=True), text / text.norm(dim=1, keepdim=True))
    expected = F.interpolate(clip.logit_scale.exp() * cos, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(logits, expected, atol=1e-4)
    # on the 8×8 grid (no upsampling): one pixel by hand
    grid = model.decode_head(dict(dense_embed=dense, clip_model=clip), model.text_embeddings("all"))
    d, t = dense[1, :, 3, 5], text[2]
    assert grid[1, 2, 3, 5].item() == pytest.approx((clip.logit_scale.exp() * (d @ t) / d.norm() / t.norm()).item(),
                                                    rel=1e-4)
    batch = model.data_preprocessor(make_batch(), True)
    with pytest.raises(RuntimeError, match="training-free"):
        model(batch["inputs"], batch["data_samples"], mode="loss")
    scaled = build_model(tmp_path, head=dict(type="MaskCLIPHead", logit_scale=1.0))
    scaled.eval()
    assert torch.allclose(scaled(x, mode="tensor") * clip.logit_scale.exp(), logits, atol=1e-4)


def test_backbone_contract(tmp_path):
    model = build_model(tmp_path)
    bb = model.backbone
    feats = bb(torch.randn(1, 3, 64, 96))
    assert feats["grid"] == (8, 12) and feats["dense_embed"].shape == (1, 64, 8, 12)
    assert len(feats["layers"]) == len(bb.out_layers) and feats["layers"][-1].shape == (1, 128, 8, 12)
    assert bb.patch_size == (8, 8) and bb.embed_dim == 64 and callable(bb.tokenizer)
    with pytest.raises(ValueError, match="unknown 'clip' keys"):
        MODELS.build(dict(type="CLIPBackbone", clip=dict(model=TINY_CLIP_CONFIG, pretraind=None)))
