"""CLIPVisualFeatures: checked against open_clip's own forward passes and an independent value-path computation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alignzeg.clip.dense import CLIPVisualFeatures, default_out_layers, interpolate_pos_embed
from alignzeg.clip.model import build_clip

ATOL = 1e-5


@pytest.fixture(scope="module")
def openai_model(openai_tiny):
    return build_clip(None, openai_tiny[0])


def _independent_value_path(visual, images, variant):
    """MaskCLIP's last-block value path written out from the raw weights (no module forward calls).

    The input of the last block comes from open_clip's ``forward_intermediates`` (output of block L-2).
    """
    n = len(visual.transformer.resblocks)
    inter = visual.forward_intermediates(images, indices=[n - 2], output_fmt="NLC", output_extra_tokens=True,
                                         intermediates_only=True)
    x = torch.cat([inter["image_intermediates_prefix"][0], inter["image_intermediates"][0]], dim=1)
    blk = visual.transformer.resblocks[-1]
    width = x.shape[-1]

    def ln(t, mod):
        return F.layer_norm(t, (width,), mod.weight, mod.bias, mod.eps)

    _, _, v = F.linear(ln(x, blk.ln_1), blk.attn.in_proj_weight, blk.attn.in_proj_bias).split(width, dim=-1)
    v = v @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
    if variant == "maskclip":
        v = x + v
        hidden = ln(v, blk.ln_2) @ blk.mlp.c_fc.weight.T + blk.mlp.c_fc.bias
        hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU (OpenAI weights)
        v = v + hidden @ blk.mlp.c_proj.weight.T + blk.mlp.c_proj.bias
    out = ln(v[:, 1:], visual.ln_post) @ visual.proj
    h, w = images.shape[-2] // 8, images.shape[-1] // 8
    return out.transpose(1, 2).reshape(images.shape[0], -1, h, w)


def test_image_embed_equals_encode_image_at_native_size(openai_model, images):
    feats = CLIPVisualFeatures(openai_model, out_layers=(0, 2))
    with torch.no_grad():
        out = feats(images)
        torch.testing.assert_close(out["image_embed"], openai_model.encode_image(images), atol=ATOL, rtol=0)
    assert out["grid"] == (8, 8)


def test_layers_and_class_tokens_match_open_clip_intermediates(openai_model, images):
    feats = CLIPVisualFeatures(openai_model, out_layers=(2, 0, -2))
    assert feats.out_layers == (2, 0, 1)
    with torch.no_grad():
        out = feats(images)
        ref = openai_model.visual.forward_intermediates(images, indices=[0, 1, 2], output_fmt="NCHW",
                                                        output_extra_tokens=True)
    order = {0: 0, 1: 1, 2: 2}
    for mine, mine_cls, idx in zip(out["layers"], out["cls_layers"], feats.out_layers):
        assert mine.shape == (2, 128, 8, 8) and mine_cls.shape == (2, 128)
        torch.testing.assert_close(mine, ref["image_intermediates"][order[idx]], atol=ATOL, rtol=0)
        torch.testing.assert_close(mine_cls, ref["image_intermediates_prefix"][order[idx]][:, 0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["maskclip", "value"])
def test_value_path_matches_independent_computation(openai_model, images, variant):
    feats = CLIPVisualFeatures(openai_model, value_path=variant)
    with torch.no_grad():
        out = feats(images)["dense_embed"]
        ref = _independent_value_path(openai_model.visual, images, variant)
    assert out.shape == (2, 32, 8, 8)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_value_path_equals_pooled_path_when_attention_is_uniform_over_one_token(openai_model):
    """With a 1x1 patch grid and the class token fed as the only key (mask), attention of the patch token to
    itself is the identity, so the attention output equals out_proj(v): the MaskCLIP path at the patch equals
    the model's own last block at the patch. Checked by running the real block with the class token masked out."""
    feats = CLIPVisualFeatures(openai_model)
    visual = openai_model.visual
    img = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        dense = feats(img)["dense_embed"][0, :, 0, 0]
        x = visual.ln_pre(torch.cat([visual.class_embedding.view(1, 1, -1),
                                     visual.conv1(img).flatten(2).transpose(1, 2)], 1)
                          + feats.pos_embed((1, 1)))
        for blk in visual.transformer.resblocks[:-1]:
            x = blk(x)
        mask = torch.tensor([[0.0, float("-inf")], [float("-inf"), 0.0]])  # each token attends to itself only
        y = visual.transformer.resblocks[-1](x, attn_mask=mask)
        ref = visual.ln_post(y[0, 1]) @ visual.proj
    torch.testing.assert_close(dense, ref, atol=ATOL, rtol=0)


def test_interpolation_identity_and_open_clip_agreement(openai_tiny, openai_model):
    pos = openai_model.visual.positional_embedding
    assert interpolate_pos_embed(pos, (8, 8), (8, 8)) is pos
    big = build_clip(None, openai_tiny[0], image_size=128)  # open_clip's resize_pos_embed at load time
    torch.testing.assert_close(interpolate_pos_embed(pos.detach(), (8, 8), (16, 16)),
                               big.visual.positional_embedding.detach(), atol=1e-6, rtol=0)
    img = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = CLIPVisualFeatures(openai_model)(img)
        torch.testing.assert_close(out["image_embed"], big.encode_image(img), atol=ATOL, rtol=0)
        torch.testing.assert_close(out["dense_embed"], CLIPVisualFeatures(big)(img)["dense_embed"], atol=ATOL, rtol=0)


def test_double_and_rectangular_sizes_give_matching_grids(tiny_model):
    feats = CLIPVisualFeatures(tiny_model, out_layers=(1, 3))
    with torch.no_grad():
        out = feats(torch.randn(1, 3, 128, 128))
        rect = feats(torch.randn(2, 3, 64, 96))
    assert out["grid"] == (16, 16) and rect["grid"] == (8, 12)
    assert [t.shape for t in out["layers"]] == [(1, 128, 16, 16)] * 2
    assert out["dense_embed"].shape == (1, 64, 16, 16) and out["image_embed"].shape == (1, 64)
    assert rect["dense_embed"].shape == (2, 64, 8, 12) and rect["cls_layers"][0].shape == (2, 128)
    assert all(torch.isfinite(t).all() for t in [out["dense_embed"], rect["dense_embed"], *out["layers"]])


def test_frozen_and_eval_under_train(tiny_model):
    feats = CLIPVisualFeatures(tiny_model)
    assert not any(p.requires_grad for p in feats.parameters())
    assert feats.train() is feats
    assert not feats.training and not tiny_model.visual.training
    img = torch.randn(1, 3, 64, 64, requires_grad=True)
    feats(img)["dense_embed"].sum().backward()  # gradients still reach the input (prompt / adapter use)
    assert img.grad is not None and all(p.grad is None for p in feats.parameters())


def test_argument_errors(tiny_model):
    with pytest.raises(ValueError, match="out_layers entry 4"):
        CLIPVisualFeatures(tiny_model, out_layers=(4,))
    with pytest.raises(ValueError, match="value_path"):
        CLIPVisualFeatures(tiny_model, value_path="qk")
    with pytest.raises(ValueError, match="patch size 8x8"):
        CLIPVisualFeatures(tiny_model)(torch.zeros(1, 3, 60, 64))
    assert default_out_layers(12) == (2, 5, 8, 11) and default_out_layers(4) == (0, 1, 2, 3)
    assert default_out_layers(24) == (5, 11, 17, 23)


def test_vit_b16_architecture_at_224_and_512():
    """Random-init ViT-B/16 (no weights, no network): 224 native and 512 crops, one image each."""
    model = build_clip("ViT-B-16")
    feats = CLIPVisualFeatures(model, out_layers=(5, 11))
    with torch.no_grad():
        out = feats(torch.randn(1, 3, 224, 224))
        big = feats(torch.randn(1, 3, 512, 512))
    assert out["grid"] == (14, 14) and out["dense_embed"].shape == (1, 512, 14, 14)
    assert out["image_embed"].shape == (1, 512) and torch.isfinite(big["dense_embed"]).all()
    assert big["grid"] == (32, 32) and big["layers"][1].shape == (1, 768, 32, 32)
    assert big["dense_embed"].shape == (1, 512, 32, 32)
