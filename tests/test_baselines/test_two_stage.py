"""Two-stage (ZegFormer / zsseg style) pieces against hand-computed or independently computed values."""

import pytest
import torch
import torch.nn.functional as F

from baselines.two_stage import (
    TwoStageHeadModule, classify_regions, geometric_ensemble, mask_to_box, masked_region_images,
)


def _head(**kw):
    proposal = dict(side=dict(clip_channels=128, patch_size=8, embed_dims=32, num_layers=1, num_heads=4,
                              fusion_index=(0, 1), ref_grid=8),
                    clip_dims=64, num_queries=6, num_layers=2, num_heads=4)
    return TwoStageHeadModule(proposal=proposal, matcher=dict(num_points=None), loss=dict(num_points=None), **kw)


def _feats(images, tiny_clip=None):
    g = torch.Generator().manual_seed(2)
    feats = dict(images=images, layers=[torch.randn(images.shape[0], 128, 8, 8, generator=g) for _ in range(2)])
    if tiny_clip is not None:
        feats["clip_model"] = tiny_clip
    return feats


def test_geometric_ensemble_two_classes_by_hand():
    p_cls = torch.tensor([[0.6, 0.4]])
    p_clip = torch.tensor([[0.2, 0.8]])
    seen = torch.tensor([True, False])
    out = geometric_ensemble(p_cls, p_clip, seen, weight=0.8)
    seen_ref = 0.6 ** 0.8 * 0.2 ** 0.2  # seen: classifier-weighted
    unseen_ref = 0.4 ** 0.2 * 0.8 ** 0.8  # unseen: CLIP-weighted
    assert out[0, 0].item() == pytest.approx(seen_ref, rel=1e-6)
    assert out[0, 1].item() == pytest.approx(unseen_ref, rel=1e-6)
    assert seen_ref == pytest.approx(0.4816, abs=1e-4) and unseen_ref == pytest.approx(0.6964, abs=1e-4)
    # weight 0.5 is symmetric: both sqrt(p_cls * p_clip)
    half = geometric_ensemble(p_cls, p_clip, seen, weight=0.5)
    assert torch.allclose(half, (p_cls * p_clip).sqrt())
    with pytest.raises(ValueError, match="clip_ensemble_weight"):
        geometric_ensemble(p_cls, p_clip, seen, weight=1.5)


def test_mask_to_box():
    m = torch.zeros(6, 7, dtype=torch.bool)
    m[2:4, 1:5] = True
    assert mask_to_box(m) == (1, 2, 5, 4)
    assert mask_to_box(torch.zeros(3, 3, dtype=torch.bool)) is None


def test_whole_image_proposal_equals_encode_image(tiny_clip, images):
    masks = torch.ones(1, 64, 64)
    regions, valid = masked_region_images(images[0], masks, size=64)
    assert valid.tolist() == [True]
    assert torch.equal(regions[0], images[0])
    text = F.normalize(torch.randn(3, 64), dim=-1)
    probs, embeds = classify_regions(tiny_clip, regions, text)
    with torch.no_grad():
        ref = F.normalize(tiny_clip.encode_image(images[:1]), dim=-1)
    assert torch.allclose(embeds, ref, atol=1e-6)
    scale = tiny_clip.logit_scale.exp()
    assert torch.allclose(probs, (scale * ref @ text.T).softmax(-1), atol=1e-6)


def test_masked_crop_fills_outside_and_resizes(images):
    masks = torch.zeros(3, 64, 64)
    masks[0, :32, :32] = 0.9  # a full quadrant
    masks[1, 10:20, 30:40] = 1.0
    masks[1, 10, 30] = 0.2  # one pixel below mask_thr inside the box: filled
    regions, valid = masked_region_images(images[0], masks, size=64, mask_thr=0.5)
    assert valid.tolist() == [True, True, False]  # the empty mask gives no region
    ref0 = F.interpolate(images[:1, :, :32, :32], size=(64, 64), mode="bicubic", align_corners=False)[0]
    assert torch.allclose(regions[0], ref0, atol=1e-6)
    crop = images[0, :, 10:20, 30:40].clone()
    crop[:, 0, 0] = 0.0
    ref1 = F.interpolate(crop[None], size=(64, 64), mode="bicubic", align_corners=False)[0]
    assert torch.allclose(regions[1], ref1, atol=1e-6)
    whole, _ = masked_region_images(images[0], masks[:1], size=64, mode="mask")
    assert torch.equal(whole[0], images[0] * (masks[0] > 0.5))


def test_predict_is_ensemble_weighted_sum_of_masks(tiny_clip, images):
    torch.manual_seed(0)
    head = _head(clip_ensemble_weight=0.8).eval()
    text = F.normalize(torch.randn(3, 64), dim=-1)
    seen = torch.tensor([True, True, False])
    feats = _feats(images, tiny_clip)
    out = head(feats, text)
    masks = F.interpolate(out["pred_masks"], size=(64, 64), mode="bilinear", align_corners=False).sigmoid()
    p_cls = out["pred_logits"].softmax(-1)[..., :-1]
    pred = head.predict(feats, text, (64, 64), seen_mask=seen, clip_model=tiny_clip)
    for b in range(2):
        p_clip = head.region_probs(tiny_clip, images[b], masks[b], text)
        valid = (masks[b] > 0.5).flatten(1).any(-1)
        assert torch.all(p_clip[~valid] == 1.0)
        lam = 0.8
        p = torch.empty_like(p_cls[b])
        p[:, :2] = p_cls[b, :, :2] ** lam * p_clip[:, :2] ** (1 - lam)
        p[:, 2] = p_cls[b, :, 2] ** (1 - lam) * p_clip[:, 2] ** lam
        ref = (p[:, :, None, None] * masks[b][:, None]).sum(0)
        assert torch.allclose(pred[b], ref, atol=1e-5)
    no_clip = _head(clip_ensemble=False)
    no_clip.load_state_dict(head.state_dict())
    ref = torch.einsum("bqc,bqhw->bchw", p_cls, masks)
    assert torch.allclose(no_clip.eval().predict(feats, text, (64, 64), seen_mask=seen), ref, atol=1e-6)


def test_loss_targets_and_decrease(images):
    torch.manual_seed(0)
    head = _head().train()
    text = F.normalize(torch.randn(3, 64), dim=-1)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, :, 32:] = 1
    labels[1, 40:] = 2
    labels[0, :4] = 255
    feats = _feats(images)
    losses = head.loss(feats, text, labels)
    assert {"loss_cls", "loss_mask", "loss_dice", "d0.loss_cls"} <= set(losses)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(6):
        loss = sum(head.loss(feats, text, labels).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.8 * history[0], history
    with pytest.raises(ValueError, match="outside"):
        head.loss(feats, text, torch.full((2, 64, 64), 5))
