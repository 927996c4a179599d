"""AlignZeg head (pure PyTorch): each component's rule against independently computed numbers."""
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from alignzeg.models.alignzeg_head import (AlignZeg, SideAdapterParent, apply_bias_correction, background_logit,
                                           background_regulariser, indicator_targets, mixup_virtual_features,
                                           sample_beta, semantic_inference)
from alignzeg.models.side_network import SideNetwork

REPO = Path(__file__).resolve().parents[2]
W, D, P, S = 32, 16, 8, 32  # CLIP width, joint dim, patch size, image size
NUM_CLASSES = 4


def tiny_kwargs(**over):
    kw = dict(clip_channels=W, embed_dim=D, patch_size=P, num_queries=6, embed_dims=32, num_decoder_layers=2,
              num_heads=4, ffn_ratio=2.0, side_cfg=dict(num_layers=2, num_heads=4, fusion_index=(0, 1), ref_grid=4),
              loss=dict(num_points=None))
    kw.update(over)
    return kw


def fake_feats(batch=2, seed=0, size=S):
    g = torch.Generator().manual_seed(seed)
    h = size // P
    return dict(images=torch.randn(batch, 3, size, size, generator=g),
                layers=[torch.randn(batch, W, h, h, generator=g) for _ in range(3)],
                dense_embed=torch.randn(batch, D, h, h, generator=g))


def fake_targets(batch=2, seed=0, size=S, num_classes=NUM_CLASSES):
    """Blocky label maps (4 quadrants, one of them ignore) and their mask targets."""
    g = torch.Generator().manual_seed(seed + 100)
    targets = []
    for _ in range(batch):
        sem = torch.full((size, size), 255, dtype=torch.long)
        h = size // 2
        quads = [(slice(0, h), slice(0, h)), (slice(0, h), slice(h, size)), (slice(h, size), slice(0, h))]
        labels = torch.randperm(num_classes, generator=g)[:3]
        for (ys, xs), lab in zip(quads, labels):
            sem[ys, xs] = lab
        labs = sem.unique()
        labs = labs[labs != 255]
        targets.append(dict(labels=labs, masks=sem[None] == labs[:, None, None], ignore=sem == 255))
    return targets


def text_embeds(num=NUM_CLASSES, seed=1):
    return F.normalize(torch.randn(num, D, generator=torch.Generator().manual_seed(seed)), dim=-1)


ALL_OFF = dict(mrpe=False, fes=False, bds=False, pbc=False)


# ------------------------------------------------------------------------------------------------ FES
def test_mixup_features_lie_on_segment_with_drawn_lambda():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(10, D, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3, 0, 1])
    feats, lam, ii, jj = mixup_virtual_features(emb, labels, alpha=0.7, num_virtual=50,
                                                generator=torch.Generator().manual_seed(42))
    assert feats.shape == (50, D) and lam.shape == ii.shape == jj.shape == (50,)
    assert bool((labels[ii] != labels[jj]).all()), "parents must belong to different classes"
    assert bool(((lam >= 0) & (lam <= 1)).all())
    # on the segment: f - e_j = lam (e_i - e_j), component-wise
    torch.testing.assert_close(feats - emb[jj], lam[:, None] * (emb[ii] - emb[jj]), rtol=0, atol=1e-12)
    # lam is the first draw of the generator: Beta(alpha, alpha) from sample_beta with the same seed
    expected = sample_beta(0.7, 50, torch.Generator().manual_seed(42))
    assert torch.equal(lam, expected)
    # and reproducible
    again = mixup_virtual_features(emb, labels, 0.7, 50, torch.Generator().manual_seed(42))
    assert all(torch.equal(a, b) for a, b in zip((feats, lam, ii, jj), again))


@pytest.mark.parametrize("alpha", [0.4, 1.0, 2.0])
def test_sample_beta_matches_beta_distribution(alpha):
    draws = sample_beta(alpha, 20000, torch.Generator().manual_seed(3)).numpy()
    ks = stats.kstest(draws, stats.beta(alpha, alpha).cdf)
    assert ks.pvalue > 1e-3, ks
    var = 1.0 / (4 * (2 * alpha + 1))  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
    assert abs(draws.mean() - 0.5) < 0.01
    assert abs(draws.var() - var) < 0.01


def test_mixup_needs_two_classes():
    feats, lam, ii, jj = mixup_virtual_features(torch.randn(5, D), torch.zeros(5, dtype=torch.long), 1.0, 8)
    assert feats.shape == (0, D) and lam.numel() == ii.numel() == jj.numel() == 0


# ------------------------------------------------------------------------------------------------ BDS
@pytest.mark.parametrize("reduce", ["max", "logsumexp"])
def test_background_probability_formula_with_k_prototypes(reduce):
    torch.manual_seed(0)
    model = AlignZeg(**tiny_kwargs(), mrpe=False, fes=False, pbc=False, bds=True,
                     bds_cfg=dict(num_prototypes=3, reduce=reduce))
    text = text_embeds()
    z = F.normalize(torch.randn(2, 5, D), dim=-1)
    probs = model.class_logits(z, text).softmax(-1)[..., -1].detach().numpy().astype(np.float64)
    # independent float64 numpy computation of the documented formula
    s = math.exp(model.logit_scale.item())
    zn = z.numpy().astype(np.float64)
    b = model.bg_prototypes.detach().numpy().astype(np.float64)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    t = text.numpy().astype(np.float64)
    cos_bg = zn @ b.T
    if reduce == "max":
        bg = s * cos_bg.max(-1)
    else:
        bg = np.log(np.exp(s * cos_bg).sum(-1)) - math.log(3)
    cls = s * (zn @ t.T)
    expected = np.exp(bg) / (np.exp(cls).sum(-1) + np.exp(bg))
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)


def test_background_logit_single_prototype_is_scaled_cosine():
    z = torch.randn(7, D)
    b = torch.randn(1, D)
    expected = 10.0 * F.cosine_similarity(z, b.expand_as(z))[:, None]
    for reduce in ("max", "logsumexp"):
        torch.testing.assert_close(background_logit(z, b, 10.0, reduce), expected, rtol=1e-5, atol=1e-5)


def test_background_regulariser_hand_computed():
    t = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # cos(e1, t1) = 1/sqrt(2)
    b = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # orthogonal: diversity term 0
    r = 1 / math.sqrt(2)
    assert background_regulariser(b, t).item() == pytest.approx((r + 0 + r + 0) / 4, abs=1e-6)
    b = torch.tensor([[1.0, 0.0, 0.0], [-3.0, 0.0, 0.0]])  # opposite: diversity -1; negative cosines not penalised
    assert background_regulariser(b, t).item() == pytest.approx(-1 + r / 4, abs=1e-6)
    assert background_regulariser(b[:1], t).item() == pytest.approx(r / 2, abs=1e-6)


# ------------------------------------------------------------------------------------------------ PBC
def test_bias_correction_only_touches_seen_scores_of_flagged_proposals():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6)  # C'=6: 3 seen, 2 unseen, background
    seen = torch.tensor([True, True, True, False, False, False])
    prob = torch.tensor([[0.9, 0.2, 0.6, 0.5], [0.51, 0.0, 1.0, 0.49]])
    out = apply_bias_correction(logits, prob, seen, threshold=0.5, strength=3.0)
    flagged = prob > 0.5
    assert flagged.sum() == 4
    # flagged proposals: seen scores lowered by strength * p
    torch.testing.assert_close(out[flagged][:, :3], logits[flagged][:, :3] - 3.0 * prob[flagged][:, None])
    assert bool((out[flagged][:, :3] < logits[flagged][:, :3]).all())
    # other proposals bit-identical, unseen and background scores untouched everywhere
    assert torch.equal(out[~flagged], logits[~flagged])
    assert torch.equal(out[..., 3:], logits[..., 3:])


def test_bias_correction_in_inference_raises_unseen_share():
    torch.manual_seed(0)
    kw = tiny_kwargs()
    model = AlignZeg(**kw, mrpe=False, fes=False, bds=False, pbc=True,
                     pbc_cfg=dict(label_rule="ignore", threshold=0.0, strength=5.0)).eval()
    plain = AlignZeg(**kw, mrpe=False, fes=False, bds=False, pbc=True,
                     pbc_cfg=dict(label_rule="ignore", threshold=0.0, strength=0.0)).eval()
    plain.load_state_dict(model.state_dict())
    feats, text = fake_feats(), text_embeds()
    seen = torch.tensor([True, True, False, False])
    with torch.no_grad():
        a = model.predict(feats, text, seen_mask=seen)
        b = plain.predict(feats, text, seen_mask=seen)
    # every proposal is flagged (p > 0): seen scores go down, unseen scores go up (softmax renormalises)
    assert bool((a[:, :2] < b[:, :2]).all()) and bool((a[:, 2:] > b[:, 2:]).all())


def test_indicator_targets_rule():
    masks = torch.full((1, 4, 4, 4), -10.0)
    masks[0, 0, :2, :2] = 10.0  # matched
    masks[0, 1, 2:, 2:] = 10.0  # unmatched, entirely on ignore -> 1
    masks[0, 2, :, :2] = 10.0  # unmatched, 1/4 on ignore (< 0.5) -> unlabelled
    # proposal 3: empty mask -> unlabelled
    ignore = torch.zeros(16, 16, dtype=torch.bool)
    ignore[8:, 8:] = True
    ignore[12:, :4] = True  # a quarter of proposal 2's area
    targets = [dict(labels=torch.tensor([1]), masks=torch.ones(1, 16, 16, dtype=torch.bool), ignore=ignore)]
    indices = [(torch.tensor([0]), torch.tensor([0]))]
    labels, valid = indicator_targets(masks, indices, targets, "virtual+ignore", 0.5, 0.5)
    assert valid.tolist() == [[True, True, False, False]]
    assert labels[valid].tolist() == [0.0, 1.0]
    labels, valid = indicator_targets(masks, indices, targets, "virtual", 0.5, 0.5)
    assert valid.tolist() == [[True, False, False, False]]


# ------------------------------------------------------------------------------------------------ parent
def test_all_switches_off_equals_parent():
    torch.manual_seed(0)
    parent = SideAdapterParent(**tiny_kwargs())
    child = AlignZeg(**tiny_kwargs(), **ALL_OFF)
    assert set(child.state_dict()) == set(parent.state_dict())
    child.load_state_dict(parent.state_dict(), strict=True)
    feats, text, targets = fake_feats(), text_embeds(), fake_targets()
    parent.eval(), child.eval()
    with torch.no_grad():
        a = parent.predict(feats, text, seen_mask=torch.tensor([True, True, False, False]))
        b = child.predict(feats, text, seen_mask=torch.tensor([True, True, False, False]))
    assert a.shape == (2, NUM_CLASSES, S, S)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    parent.train(), child.train()
    la = parent.loss(feats, text, targets)
    lb = child.loss(feats, text, targets)
    assert set(la) == set(lb)
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-6, atol=1e-6)


def test_switches_add_their_parameters():
    base = set(SideAdapterParent(**tiny_kwargs()).state_dict())
    full = AlignZeg(**tiny_kwargs(), bds_cfg=dict(num_prototypes=5))
    extra = set(full.state_dict()) - base
    assert any(k.startswith("indicator.") for k in extra)
    assert any(".feat_cross_attn." in k for k in extra)
    assert full.bg_prototypes.shape == (5, D)
    with pytest.raises(ValueError, match="num_prototypes"):
        AlignZeg(**tiny_kwargs(), bds_cfg=dict(num_prototypes=1))
    with pytest.raises(ValueError, match="label_rule"):
        AlignZeg(**tiny_kwargs(), pbc_cfg=dict(label_rule="unseen"))
    with pytest.raises(ValueError, match="fes_cfg: unknown keys"):
        AlignZeg(**tiny_kwargs(), fes_cfg=dict(beta=1.0))


# ------------------------------------------------------------------------------------------------ losses
@pytest.mark.parametrize("mrpe,fes,bds,pbc", list(itertools.product([False, True], repeat=4))[::3])
def test_loss_terms_match_switches(mrpe, fes, bds, pbc):
    torch.manual_seed(0)
    model = AlignZeg(**tiny_kwargs(num_decoder_layers=3), mrpe=mrpe, fes=fes, bds=bds, pbc=pbc)
    losses = model.loss(fake_feats(), text_embeds(), fake_targets(), generator=torch.Generator().manual_seed(0))
    expected = {"loss_cls", "loss_mask", "loss_dice"}
    expected |= {f"d{i}.{k}" for i in range(2) for k in ("loss_cls", "loss_mask", "loss_dice")}
    expected |= {"loss_vir"} if fes else set()
    expected |= {"loss_reg"} if bds else set()
    expected |= {"loss_bc"} if pbc else set()
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())


def test_loss_weights_scale_terms():
    torch.manual_seed(0)
    kw = tiny_kwargs()
    a = AlignZeg(**kw)
    b = AlignZeg(**{**kw, "loss": dict(num_points=None, vir=3.0, reg=0.5, bc=2.0)})
    b.load_state_dict(a.state_dict())
    la = a.loss(fake_feats(), text_embeds(), fake_targets(), generator=torch.Generator().manual_seed(0))
    lb = b.loss(fake_feats(), text_embeds(), fake_targets(), generator=torch.Generator().manual_seed(0))
    for key, factor in (("loss_vir", 3.0), ("loss_reg", 0.5), ("loss_bc", 2.0), ("loss_cls", 1.0)):
        assert lb[key].item() == pytest.approx(factor * la[key].item(), rel=1e-5), key


def test_virtual_loss_is_soft_cross_entropy():
    """loss_vir equals the soft cross-entropy recomputed from the same mixup draw."""
    torch.manual_seed(0)
    model = AlignZeg(**tiny_kwargs(), mrpe=False, bds=False, pbc=False, fes_cfg=dict(num_virtual=7))
    feats, text, targets = fake_feats(), text_embeds(), fake_targets()
    losses = model.loss(feats, text, targets, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model.forward(feats, text)
        _, indices = model.mask_class_losses(out, targets)
    emb = torch.cat([out["embeds"][b, s] for b, (s, _) in enumerate(indices)])
    lab = torch.cat([targets[b]["labels"][t] for b, (_, t) in enumerate(indices)])
    virt, lam, ii, jj = mixup_virtual_features(emb, lab, 1.0, 7, torch.Generator().manual_seed(5))
    s = model.scale().item()
    logp = torch.log_softmax(s * F.normalize(virt, dim=-1) @ text.T, dim=-1).double()
    rows = torch.arange(7)
    expected = -(lam.double() * logp[rows, lab[ii]] + (1 - lam.double()) * logp[rows, lab[jj]]).mean()
    assert losses["loss_vir"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = AlignZeg(**tiny_kwargs())
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    feats, text, targets = fake_feats(), text_embeds(), fake_targets()
    history = []
    for step in range(6):
        losses = model.loss(feats, text, targets, generator=torch.Generator().manual_seed(0))
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert history[-1] < history[0], history
    # the frozen-CLIP inputs get no gradient; every trainable parameter of the used paths does
    assert model.indicator[0].weight.grad is not None and model.bg_prototypes.grad is not None


# ------------------------------------------------------------------------------------------------ pieces
def test_pixel_pool_adds_projection_of_mask_weighted_mean():
    """pixel_pool: z = normalise(normalise(CLIP pooled) + embed_proj(q) + region_proj(Σ σ(m)·F / Σ σ(m)))."""
    torch.manual_seed(0)
    model = SideAdapterParent(**tiny_kwargs(pixel_pool=True))
    # both learned parts of z start at zero (clip_pool, the default): z is CLIP's pooled embedding at step 0
    for lin in (model.embed_proj, model.region_proj):
        assert not lin.weight.any() and not lin.bias.any()
    nn_init = torch.nn.init
    for lin in (model.embed_proj, model.region_proj):
        nn_init.normal_(lin.weight, std=0.3)
        nn_init.normal_(lin.bias, std=0.3)
    q = torch.randn(1, 2, 32)
    masks = torch.full((1, 2, 2, 2), -30.0)
    masks[0, 0, 0, 0] = 30.0  # query 0: only the top-left pixel (sigmoid ~ 1, elsewhere ~ 0)
    masks[0, 1] = 0.0  # query 1: uniform weights 1/2 -> plain mean
    pixel = torch.randn(1, 32, 2, 2)
    dense = torch.randn(1, D, 1, 1)
    z = model.proposal_embeddings(q, masks, dense, pixel)
    pooled = torch.stack([pixel[0, :, 0, 0], pixel[0].mean((1, 2))])  # 2×E, hand-computed
    clip = F.normalize(dense[0, :, 0, 0], dim=0)  # one patch: pooling returns it whatever the weights
    with torch.no_grad():
        expected = F.normalize(clip + model.embed_proj(q[0]) + model.region_proj(pooled), dim=-1)
    torch.testing.assert_close(z[0].detach(), expected, rtol=1e-5, atol=1e-5)
    # off by default: no region_proj parameters, and the embedding ignores the pixel features
    assert not hasattr(SideAdapterParent(**tiny_kwargs()), "region_proj")
    with pytest.raises(ValueError, match="pixel_pool"):
        model.proposal_embeddings(q, masks, dense, None)


def test_semantic_inference_hand_computed():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]]])  # B=1, Q=2, C=2 + background
    masks = torch.tensor([[[[0.0]], [[2.0]]]])  # 1×1 image
    p0 = torch.softmax(logits[0, 0], 0)
    p1 = torch.softmax(logits[0, 1], 0)
    s0, s1 = torch.sigmoid(torch.tensor(0.0)), torch.sigmoid(torch.tensor(2.0))
    expected = (p0[:2] * s0 + p1[:2] * s1).reshape(1, 2, 1, 1)
    torch.testing.assert_close(semantic_inference(logits, masks), expected)


def test_side_network_shapes_and_clip_fusion():
    torch.manual_seed(0)
    net = SideNetwork(W, embed_dims=16, patch_size=8, num_layers=2, num_heads=2, fusion_index=(0, 2), ref_grid=4)
    images = torch.randn(1, 3, 48, 64)
    clip = [torch.randn(1, W, 6, 8) for _ in range(2)]
    out = net(images, clip)
    assert out["feat"].shape == (1, 16, 6, 8) and out["hires"].shape == (1, 16, 12, 16)
    # zero-initialised CLIP projections: CLIP has no effect at initialisation, but gets gradients
    out2 = net(images, [torch.randn_like(c) for c in clip])
    torch.testing.assert_close(out["feat"], out2["feat"])
    out["feat"].sum().backward()
    assert net.clip_proj[0][1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="fusion_index"):
        SideNetwork(W, fusion_index=(1, 0))


# ------------------------------------------------------------------------------------------------ paper scale
PAPER_CONFIGS = [
    "alignzeg_vit-b16_4xb4-20k_voc12aug-15s5u-512x512.py",
    "alignzeg_vit-b16_4xb4-80k_coco-stuff164k-156s15u-512x512.py",
    "alignzeg_vit-b16_4xb4-40k_context59-zs3-10u-480x480.py",
]


def _load_config(name):
    from mmengine.config import Config

    return Config.fromfile(str(REPO / "experiments" / "configs" / "alignzeg" / name), import_custom_modules=False)


def test_paper_scale_configs_share_the_head():
    """The three paper-scale configs differ only in the position-embedding reference grid (crop / 16)."""
    heads = []
    for name in PAPER_CONFIGS:
        cfg = _load_config(name)
        head = cfg.model.decode_head.to_dict()
        assert head["side_cfg"].pop("ref_grid") == cfg.crop_size[0] // 16
        assert cfg.model.backbone.clip.model == "ViT-B-16" and head["clip_channels"] == 768
        heads.append(head)
    assert heads[0] == heads[1] == heads[2]


def test_paper_scale_head_structure_with_tiny_clip():
    """The paper-scale head config (its side network, decoder, switches and losses), with the CLIP-dependent
    widths replaced by the tiny CLIP's and fewer queries, runs forward and backward on tiny CLIP features."""
    from alignzeg.clip.dense import CLIPVisualFeatures
    from alignzeg.clip.model import TINY_CLIP_CONFIG, build_clip

    name = PAPER_CONFIGS[0]
    cfg = _load_config(name)
    head = cfg.model.decode_head.to_dict()
    head.pop("_delete_", None)
    assert head.pop("type") == "AlignZegHead"
    for key in ("mrpe", "fes", "bds", "pbc"):
        assert head[key] is True, f"{name}: paper-scale config must switch {key} on"
    assert len(head["side_cfg"]["fusion_index"]) <= len(cfg.model.backbone.out_layers)
    head.pop("init_cfg", None)
    vision = TINY_CLIP_CONFIG["vision_cfg"]
    head.update(clip_channels=vision["width"], embed_dim=TINY_CLIP_CONFIG["embed_dim"],
                patch_size=vision["patch_size"], num_queries=8,
                loss={**head.get("loss", {}), "num_points": 64})
    head["side_cfg"] = {**head["side_cfg"], "ref_grid": 8}
    torch.manual_seed(0)
    clip = build_clip(TINY_CLIP_CONFIG)
    n = len(head["side_cfg"]["fusion_index"])
    extractor = CLIPVisualFeatures(clip, out_layers=tuple(range(vision["layers"] - n, vision["layers"])))
    model = AlignZeg(**head)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = dict(extractor(images), images=images)
    targets = fake_targets(batch=1, size=64)
    text = F.normalize(torch.randn(NUM_CLASSES, TINY_CLIP_CONFIG["embed_dim"]), dim=-1)
    losses = model.loss(feats, text, targets)
    sum(losses.values()).backward()
    assert {"loss_vir", "loss_reg", "loss_bc"} <= set(losses)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads[:5])
    model.eval()
    with torch.no_grad():
        seg = model.predict(feats, F.normalize(torch.randn(6, TINY_CLIP_CONFIG["embed_dim"]), dim=-1),
                            seen_mask=torch.tensor([True] * 4 + [False] * 2))
    assert seg.shape == (1, 6, 64, 64) and torch.isfinite(seg).all()


def test_predict_keeps_indicator_outputs_only_with_pbc():
    """After predict, PBC exposes the indicator probability of every proposal (used by the indicator ROC)."""
    from alignzeg.models.alignzeg_head import AlignZeg

    torch.manual_seed(0)
    kw = dict(clip_channels=32, embed_dim=16, patch_size=8, num_queries=4, embed_dims=32, num_decoder_layers=1,
              num_heads=2, side_cfg=dict(num_layers=2, num_heads=2, fusion_index=(0, 1)))
    feats = dict(images=torch.randn(1, 3, 32, 32), layers=[torch.randn(1, 32, 4, 4) for _ in range(2)],
                 cls_layers=[torch.randn(1, 32) for _ in range(2)], image_embed=torch.randn(1, 16),
                 dense_embed=torch.randn(1, 16, 4, 4), grid=(4, 4))
    text = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    on = AlignZeg(**kw, mrpe=False, fes=False, bds=False, pbc=True).eval()
    with torch.no_grad():
        on.predict(feats, text, torch.tensor([True, True, False]))
        out = on.forward(feats, text)
    torch.testing.assert_close(on.last_aux["indicator_prob"], on.indicator_prob(out["embeds"]))
    assert on.last_aux["mask_logits"].shape[:2] == (1, 4)
    off = AlignZeg(**kw, mrpe=False, fes=False, bds=False, pbc=False).eval()
    with torch.no_grad():
        off.predict(feats, text, torch.tensor([True, True, False]))
    assert off.last_aux == {}


@pytest.mark.parametrize("fes", [True, False])
def test_default_indicator_labels_do_not_depend_on_unseen_locations(fes):
    """Strictly inductive default: moving the ignore (unseen) pixels changes no loss term and no gradient.

    With the 'virtual+ignore' variant ("uses unseen locations") the indicator loss does change.
    """
    def run(rule, move_ignore):
        torch.manual_seed(0)
        model = AlignZeg(**tiny_kwargs(), fes=fes, pbc_cfg=dict(label_rule=rule))
        targets = fake_targets()
        for t in targets:  # no ignore pixel at all, or ignore everywhere: a rule reading them must notice
            t["ignore"] = torch.full_like(t["ignore"], bool(move_ignore))
        losses = model.loss(fake_feats(), text_embeds(), targets, generator=torch.Generator().manual_seed(0))
        sum(losses.values()).backward()
        return losses, [p.grad.clone() for p in model.indicator.parameters()]

    assert "virtual" == AlignZeg(**tiny_kwargs()).pbc_cfg["label_rule"]
    (a, ga), (b, gb) = run("virtual", False), run("virtual", True)
    assert set(a) == set(b) and ("loss_vir" in a) == fes and "loss_bc" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for x, y in zip(ga, gb):
        assert torch.equal(x, y)
    assert a["loss_bc"] > 0   # positives (mixed seen embeddings) and negatives (matched proposals) exist
    (c, _), (d, _) = run("virtual+ignore", False), run("virtual+ignore", True)
    assert not torch.equal(c["loss_bc"], d["loss_bc"])


@pytest.mark.parametrize("mrpe", [True, False])
def test_inference_forward_without_aux_outputs_equals_the_last_layer(mrpe):
    """predict() runs the decoder with aux=False: the last layer's logits, masks and embeddings are bit-
    identical to those of the full forward, and no earlier layer's outputs are made."""
    torch.manual_seed(0)
    model = AlignZeg(**tiny_kwargs(num_decoder_layers=3), mrpe=mrpe).eval()
    feats, text = fake_feats(), text_embeds()
    with torch.no_grad():
        full = model.forward(feats, text)
        last = model.forward(feats, text, aux=False)
        scores = model.predict(feats, text, seen_mask=torch.tensor([True, True, False, False]))
    assert len(full["aux_outputs"]) == 2 and last["aux_outputs"] == []
    for key in ("pred_logits", "pred_masks", "embeds"):
        assert torch.equal(full[key], last[key]), key
    logits = model.correct_logits(full, torch.tensor([True, True, False, False]))
    masks = F.interpolate(full["pred_masks"], size=(S, S), mode="bilinear", align_corners=False)
    assert torch.equal(scores, semantic_inference(logits, masks))
