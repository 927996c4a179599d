"""ZegCLIP pieces against hand-computed or independently computed values (tiny CLIP, 64 px)."""
import math

import pytest
import torch
import torch.nn.functional as F

from alignzeg.clip.dense import CLIPVisualFeatures
from baselines.zegclip import (
    PromptedCLIPVisualFeatures, ZegCLIPDecoder, ZegCLIPHeadModule, calibrate_seen_scores, relationship_descriptor,
    sigmoid_focal_loss, zegclip_mask_loss,
)

KEYS = ("image_embed", "dense_embed")


def _assert_same(a, b, exact=True):
    for key in KEYS:
        assert torch.allclose(a[key], b[key], atol=0 if exact else 1e-5, rtol=0 if exact else 1e-5), key
    assert len(a["layers"]) == len(b["layers"]) > 0
    for x, y in zip(a["layers"] + a["cls_layers"], b["layers"] + b["cls_layers"]):
        assert torch.allclose(x, y, atol=0 if exact else 1e-5, rtol=0 if exact else 1e-5)
    assert a["grid"] == b["grid"]


def test_zero_prompts_equal_plain_clip(tiny_clip, images):
    plain = CLIPVisualFeatures(tiny_clip, out_layers=(1, 3))(images)
    prompted = PromptedCLIPVisualFeatures(tiny_clip, out_layers=(1, 3), num_tokens=0)
    out = prompted(images)
    _assert_same(plain, out)
    assert torch.allclose(out["image_embed"], tiny_clip.encode_image(images), atol=1e-5)
    # patch_embed: last-block patch tokens through ln_post and proj, computed independently via open_clip
    visual = tiny_clip.visual
    visual.output_tokens = True
    try:
        _, tokens = visual(images)
    finally:
        visual.output_tokens = False
    ref = (tokens @ visual.proj).transpose(1, 2).reshape(2, -1, 8, 8)  # open_clip's tokens are after ln_post
    assert torch.allclose(out["patch_embed"], ref, atol=1e-5)
    assert [n for n, p in prompted.named_parameters() if p.requires_grad] == []


def test_prompts_change_outputs_and_removal_restores_plain(tiny_clip, images):
    """Prompts change every output; removing them (0 tokens) restores the plain features exactly."""
    torch.manual_seed(0)
    prompted = PromptedCLIPVisualFeatures(tiny_clip, out_layers=(3,), num_tokens=3).eval()
    plain = CLIPVisualFeatures(tiny_clip, out_layers=(3,))(images)
    out = prompted(images)
    for key in KEYS:
        assert (out[key] - plain[key]).abs().max() > 1e-3, key
    assert (out["layers"][0] - plain["layers"][0]).abs().max() > 1e-3
    # removing the prompts (num_tokens=0 on the same module) restores the plain features exactly
    prompted.prompts.num_tokens = 0
    _assert_same(plain, prompted(images))


def test_only_prompts_receive_gradients(tiny_clip, images):
    prompted = PromptedCLIPVisualFeatures(tiny_clip, out_layers=(1, 3), num_tokens=2).train()
    assert not prompted.visual.training and prompted.prompts.training
    out = prompted(images)
    (out["patch_embed"].square().mean() + out["image_embed"].sum()).backward()
    trainable = {n for n, p in prompted.named_parameters() if p.requires_grad}
    assert trainable == {"prompts.prompt_embeddings", "prompts.prompt_proj.weight", "prompts.prompt_proj.bias",
                         "prompts.prompt_norm.weight", "prompts.prompt_norm.bias"}
    for n, p in prompted.named_parameters():
        if n in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    assert all(p.grad is None for p in tiny_clip.parameters())


def test_prompts_are_replaced_per_layer(tiny_clip, images):
    """Deep prompts: the prompt set of block 3 influences only what follows block 3; block 0..2 outputs do
    not depend on it (the previous layer's prompt outputs are discarded, not accumulated)."""
    prompted = PromptedCLIPVisualFeatures(tiny_clip, out_layers=(2, 3), num_tokens=2, final_norm=False).eval()
    a = prompted(images)
    with torch.no_grad():
        prompted.prompts.prompt_embeddings[3].add_(1.0)
    b = prompted(images)
    assert torch.equal(a["layers"][0], b["layers"][0])
    assert (a["layers"][1] - b["layers"][1]).abs().max() > 1e-4
    with torch.no_grad():
        prompted.prompts.prompt_embeddings[0].add_(1.0)
    c = prompted(images)
    assert (b["layers"][0] - c["layers"][0]).abs().max() > 1e-4
    # sequence length stays 1 + T + hw: the patch grid of each layer is 8×8
    assert c["layers"][0].shape == (2, 128, 8, 8)


def test_relationship_descriptor_hand():
    t = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]])
    g = torch.tensor([[2.0, 0.5], [-1.0, 1.0]])
    r = relationship_descriptor(t, g)
    assert r.shape == (2, 3, 4)
    expected_b0 = torch.tensor([[2.0, 1.0, 1.0, 2.0], [6.0, -0.5, 3.0, -1.0], [1.0, 0.0, 0.5, 0.0]])
    expected_b1 = torch.tensor([[-1.0, 2.0, 1.0, 2.0], [-3.0, -1.0, 3.0, -1.0], [-0.5, 0.0, 0.5, 0.0]])
    assert torch.equal(r[0], expected_b0)
    assert torch.equal(r[1], expected_b1)


def test_decoder_masks_are_head_averaged_attention_logits():
    torch.manual_seed(0)
    dec = ZegCLIPDecoder(in_channels=8, embed_dims=8, num_layers=1, num_heads=2).eval()
    patch = torch.randn(1, 8, 2, 3)
    image = F.normalize(torch.randn(1, 8), dim=-1)
    text = F.normalize(torch.randn(4, 8), dim=-1)
    out = dec(patch, image, text)
    # by hand: q = q_proj([t*g, t]); logits_h = (Wq q)_h · (Wk m)_h / sqrt(4); mask = mean over heads
    r = torch.cat([text * image, text], dim=-1)
    q = r @ dec.q_proj.weight.T + dec.q_proj.bias
    attn = dec.layers[0].cross_attn
    qq = q @ attn.q.weight.T + attn.q.bias
    mem = patch[0].reshape(8, -1).T  # 6×8 tokens in row-major order
    kk = mem @ attn.k.weight.T + attn.k.bias
    heads = [(qq[:, h * 4:(h + 1) * 4] @ kk[:, h * 4:(h + 1) * 4].T) / 2.0 for h in range(2)]
    expected = ((heads[0] + heads[1]) / 2).reshape(4, 2, 3)
    assert out["pred_masks"].shape == (1, 4, 2, 3)
    assert torch.allclose(out["pred_masks"][0], expected, atol=1e-5)
    assert out["aux_masks"] == []


def test_calibration_lowers_exactly_seen_scores():
    scores = torch.rand(2, 4, 3, 3)
    seen = torch.tensor([True, False, True, False])
    out = calibrate_seen_scores(scores, seen, 0.1)
    assert torch.allclose(out[:, [0, 2]], scores[:, [0, 2]] - 0.1, atol=1e-7)
    assert torch.equal(out[:, [1, 3]], scores[:, [1, 3]])
    with pytest.raises(ValueError, match="seen_mask"):
        calibrate_seen_scores(scores, seen[:3], 0.1)


def test_head_predict_applies_sigmoid_then_calibration():
    torch.manual_seed(0)
    head = ZegCLIPHeadModule(decoder=dict(in_channels=8, embed_dims=8, num_layers=2, num_heads=2),
                             seen_calibration=0.25).eval()
    feats = dict(patch_embed=torch.randn(1, 8, 4, 4), image_embed=torch.randn(1, 8))
    text = F.normalize(torch.randn(3, 8), dim=-1)
    seen = torch.tensor([True, True, False])
    raw = head(feats, text)["pred_masks"]
    probs = F.interpolate(raw, size=(16, 16), mode="bilinear", align_corners=False).sigmoid()
    out = head.predict(feats, text, (16, 16), seen_mask=seen)
    assert torch.allclose(out[:, :2], probs[:, :2] - 0.25, atol=1e-6)
    assert torch.allclose(out[:, 2], probs[:, 2], atol=1e-7)
    off = head.predict(feats, text, (16, 16), seen_mask=seen, calibration=0.0)  # transductive
    assert torch.allclose(off, probs, atol=1e-7)


def test_focal_and_dice_loss_by_hand():
    # 1 image, 2 classes, 2×2 pixels, one ignored pixel
    logits = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]], [[-0.5, 1.0], [0.0, 3.0]]]])
    labels = torch.tensor([[[0, 1], [0, 255]]])

    def focal(x, t, a=0.25):
        p = 1 / (1 + math.exp(-x))
        ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        pt = p * t + (1 - p) * (1 - t)
        return (a * t + (1 - a) * (1 - t)) * ce * (1 - pt) ** 2

    t0, t1 = [1, 0, 1, 0], [0, 1, 0, 0]  # ignored pixel is a negative of both classes
    x0, x1 = [0.5, -1.0, 2.0, 0.0], [-0.5, 1.0, 0.0, 3.0]
    focal_ref = (sum(focal(x, t) for x, t in zip(x0, t0)) / 4 + sum(focal(x, t) for x, t in zip(x1, t1)) / 4) / 2

    def dice(xs, ts):
        p = [1 / (1 + math.exp(-x)) for x in xs]
        return 1 - (2 * sum(a * b for a, b in zip(p, ts)) + 1) / (sum(p) + sum(ts) + 1)

    dice_ref = (dice(x0, t0) + dice(x1, t1)) / 2
    out = zegclip_mask_loss(logits, labels, focal_weight=100.0, dice_weight=1.0)
    assert out["loss_focal"].item() == pytest.approx(100 * focal_ref, rel=1e-5)
    assert out["loss_dice"].item() == pytest.approx(dice_ref, rel=1e-5)
    # ignored pixel excluded instead
    focal_ex = (sum(focal(x, t) for x, t in zip(x0[:3], t0[:3])) / 3
                + sum(focal(x, t) for x, t in zip(x1[:3], t1[:3])) / 3) / 2
    out = zegclip_mask_loss(logits, labels, focal_weight=1.0, ignore_as_negative=False)
    assert out["loss_focal"].item() == pytest.approx(focal_ex, rel=1e-5)
    with pytest.raises(ValueError, match="outside"):
        zegclip_mask_loss(logits, torch.tensor([[[0, 2], [0, 0]]]))
    assert sigmoid_focal_loss(torch.zeros(1, 4), torch.zeros(1, 4), 1.0).item() == pytest.approx(
        0.75 * math.log(2) * 0.25, rel=1e-6)


def test_zegclip_loss_decreases_on_fixed_batch(tiny_clip, images):
    torch.manual_seed(0)
    backbone = PromptedCLIPVisualFeatures(tiny_clip, out_layers=(3,), num_tokens=2)
    head = ZegCLIPHeadModule(decoder=dict(in_channels=64, embed_dims=64, num_layers=2, num_heads=4))
    text = F.normalize(torch.randn(3, 64), dim=-1)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, :, 32:] = 1
    labels[1, 32:] = 2
    params = [p for p in list(backbone.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-3)
    backbone.train()
    head.train()
    history = []
    for _ in range(8):
        losses = head.loss(backbone(images), text, labels)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.8 * history[0], history


def test_calibration_larger_than_score_spread_sends_every_pixel_to_unseen():
    # Undertrained maps (the tiny config with ZegCLIP's 2e-5 lr at 250 iterations): sigmoid scores of
    # 0.22 +- 0.02. The seen class wins both pixels by 0.01-0.03 uncalibrated; 0.1 hands them to the unseen one.
    seen_mask = torch.tensor([True, False])
    scores = torch.tensor([[0.25, 0.23], [0.22, 0.22]]).view(1, 2, 1, 2)  # channel 0 seen, channel 1 unseen
    assert calibrate_seen_scores(scores, seen_mask, 0.0).argmax(1).flatten().tolist() == [0, 0]
    calibrated = calibrate_seen_scores(scores, seen_mask, 0.1)
    assert torch.allclose(calibrated[0, 0].flatten(), torch.tensor([0.15, 0.13]))
    assert calibrated.argmax(1).flatten().tolist() == [1, 1]


def test_tiny_config_optimiser_and_calibration_as_measured():
    from mmengine.config import Config

    cfg = Config.fromfile("experiments/configs/zegclip/zegclip_tiny-vit_1xb16-2k_synthetic-default-64x64.py")
    head = cfg.model.decode_head
    assert head.seen_calibration == pytest.approx(0.1)
    assert head.decoder.use_proj is False  # as ZegCLIP's released configs; see the next test for why
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(5e-4)
    assert cfg.optim_wrapper.clip_grad is None
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys.decode_head.lr_mult == pytest.approx(10.0)
    paper = Config.fromfile("experiments/configs/zegclip/zegclip_vit-b16_4xb4-20k_voc12aug-15s5u-512x512.py")
    assert paper.model.decode_head.seen_calibration == pytest.approx(0.1)


def _class_query_cosine(queries):
    """Mean pairwise cosine between the class queries (B×C×E), averaged over the batch."""
    q = F.normalize(queries, dim=-1)
    sim = q @ q.transpose(1, 2)
    n = sim.shape[-1]
    return float(((sim.sum((1, 2)) - n) / (n * (n - 1))).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_input_projection_makes_class_queries_alike_at_init(seed):
    # The cause of ZegCLIP's collapse in the synthetic study (README "Why ZegCLIP collapsed, and the fix"): at init the
    # attention is uniform, so every class query receives the same attention output. On unit-norm CLIP
    # tokens (use_proj=False, as released) that output is as small as the queries and the classes stay
    # apart; behind Linear + LayerNorm (use_proj=True) the tokens have unit variance per channel, the shared
    # output outweighs the queries, and after the first layer's post-norm the classes are nearly alike.
    g = torch.Generator().manual_seed(seed)
    d, c = 64, 40
    mean = F.normalize(torch.randn(d, generator=g), dim=0)  # CLIP tokens share a common direction
    tokens = F.normalize(mean.view(1, d, 1, 1) + 0.5 * torch.randn(2, d, 8, 8, generator=g) / d ** 0.5, dim=1)
    text = F.normalize(0.3 * torch.randn(c, d, generator=g) + mean, dim=1)
    image = F.normalize(0.3 * torch.randn(2, d, generator=g) + mean, dim=1)
    cosines = {}
    for use_proj in (False, True):
        torch.manual_seed(seed)
        decoder = ZegCLIPDecoder(d, d, num_layers=1, num_heads=4, use_proj=use_proj).eval()
        with torch.no_grad():
            before = _class_query_cosine(decoder.q_proj(relationship_descriptor(text, image)))
            after = _class_query_cosine(decoder(tokens, image, text)["queries"])  # after its one layer
        cosines[use_proj] = (before, after)
    (before, after), (before_p, after_p) = cosines[False], cosines[True]
    assert before < 0.25 and before_p < 0.25  # distinct classes at the decoder's input either way
    assert after < before + 0.05  # unit-norm tokens: the classes stay as distinct as they came in
    assert after_p > before_p + 0.3  # the projection: the shared attention output dominates every query
