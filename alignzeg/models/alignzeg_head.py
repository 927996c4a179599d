"""AlignZeg head: mask proposals from a CLIP side adapter, classified in CLIP's joint space.

Paper: Ge et al., "AlignZeg: Mitigating Objective Misalignment for Zero-shot Semantic Segmentation",
ECCV 2024, arXiv 2404.05667. The paper body and the official code could not be read when this module
was written; only the abstract and secondary summaries were. Everything below that the abstract does
not fix is a *reconstruction*: a named parameter with a default chosen from the closest parent
(a SAN-style side-adapter CLIP segmenter, Xu et al. CVPR 2023, github.com/MendelXu/SAN, MIT licence,
with Mask2Former's set criterion, Cheng et al. CVPR 2022, MIT licence). The README's
"Reconstruction notes" list each choice and its reason. Nothing here was copied from those repositories.

Structure (one decoder layer = one deep-supervision output):

- :class:`~alignzeg.models.side_network.SideNetwork` encodes the normalised image at CLIP's patch grid,
  fused with frozen intermediate CLIP maps (``feats['layers']``), and keeps a stride-4 branch.
- N learnable queries are refined by ``num_decoder_layers`` :class:`QueryDecoderLayer` s. With
  ``mrpe=True`` (Mutually-Refined Proposal Extraction) each layer also lets the visual tokens
  cross-attend to the queries, so the features used by the next layer and for the masks are refined
  too; ``mrpe=False`` is the queries-only Mask2Former-style layer (no masked attention).
- Masks: ``mask_embed(q) · pixel_features`` at 1/4 resolution (class-agnostic proposals).
- Proposal embedding ``z`` (unit vector in CLIP's joint space, dimension D): the CLIP dense embedding
  (``feats['dense_embed']``, MaskCLIP value path) average-pooled under the proposal's sigmoid mask
  (mask logits detached), normalised, plus a learned projection of the query (zero-initialised, so training starts from
  CLIP's own region recognition), normalised again. With ``pixel_pool=True`` the learned part also gets a
  projection of the pixel (mask) features average-pooled under the proposal's sigmoid mask (detached), so a
  proposal's class sees what lies inside its mask (mask pooling of decoder features as in ODISE, Xu et al.
  CVPR 2023, arXiv 2303.04803); without masked attention, global cross-attention to the patch grid hardly
  sees small objects.
- Class logits: ``s · cos(z, t_c)`` for the C text embeddings, and a last "no object / background"
  column ``background_logit(z, prototypes, s)``; ``s`` is a learnable logit scale (temperature⁻¹).
  One background prototype = the parent; ``bds=True`` uses K > 1 prototypes (Background Diversity
  Strategy) with the regulariser :func:`background_regulariser`.
- ``fes=True`` (Feature Expansion Strategy): virtual proposal embeddings by manifold mixup of matched
  embeddings of different seen classes (:func:`mixup_virtual_features`), trained with a soft
  cross-entropy over the seen vocabulary (``loss_vir``).
- ``pbc=True`` (Predictive Bias Correction): a class indicator MLP on ``z`` trained with BCE
  (``loss_bc``) on surrogate labels; at inference :func:`apply_bias_correction` lowers the seen-class
  logits of proposals it flags.
- Semantic inference as in MaskFormer: ``Σ_q softmax(logits)[q, c] · sigmoid(mask_q)`` (background
  column dropped), returned as B×C×H×W at the input size.

Loss: ``L = λ_bc·L_bc + λ1·L_cls + λ2·(w_bce·L_mask_bce + w_dice·L_dice) + λ3·L_vir + λ4·L_reg``,
computed on the last decoder layer, with ``L_cls``/mask terms also on every earlier layer
(``d{i}.loss_*``). The classification/mask terms use :class:`alignzeg.models.losses.MaskClassificationLoss`
and :class:`alignzeg.models.matcher.HungarianMatcher`.

Pure PyTorch; no mmseg import. The MMSegmentation adapter is ``alignzeg.mmseg_modules.alignzeg_head``.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignzeg.models.losses import MaskClassificationLoss, _reduce_num_masks
from alignzeg.models.matcher import HungarianMatcher
from alignzeg.models.side_network import SideNetwork

__all__ = [
    "sample_beta", "mixup_virtual_features", "soft_cross_entropy", "background_logit",
    "background_regulariser", "apply_bias_correction", "semantic_inference", "indicator_targets",
    "QueryDecoderLayer", "SideAdapterParent", "AlignZeg", "DEFAULT_FES", "DEFAULT_BDS", "DEFAULT_PBC",
    "DEFAULT_LOSS", "LABEL_RULES", "UNSEEN_LOCATION_RULES",
]

# Defaults of every reconstructed choice (see the README's "Reconstruction notes").
DEFAULT_FES = dict(alpha=1.0, num_virtual=None)
DEFAULT_BDS = dict(num_prototypes=4, reduce="max")
DEFAULT_PBC = dict(hidden_dims=128, label_rule="virtual", ignore_ratio=0.5, mask_threshold=0.5,
                   detach_input=True, threshold=0.5, strength=2.0)
DEFAULT_LOSS = dict(bc=1.0, cls=2.0, mask=5.0, dice=5.0, vir=1.0, reg=1.0, eos_coef=0.1,
                    num_points=12544, oversample_ratio=3.0, importance_sample_ratio=0.75,
                    cost_class=2.0, cost_mask=5.0, cost_dice=5.0)
LABEL_RULES = ("virtual", "ignore", "virtual+ignore")
# Label rules whose positives come from where the (ignored) unseen pixels lie: not strictly inductive.
UNSEEN_LOCATION_RULES = ("ignore", "virtual+ignore")


# ================================================================================ pure functions
def _gamma(shape: float, n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` Gamma(shape, 1) draws (float64, CPU) from ``generator``: Marsaglia & Tsang (2000) squeeze
    method, with the ``U^(1/a)`` boost for ``shape < 1``. Deterministic given the generator state."""
    boost = shape < 1.0
    a = shape + 1.0 if boost else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64)
    todo = torch.arange(n)
    while todo.numel():
        m = todo.numel()
        x = torch.randn(m, generator=generator, dtype=torch.float64)
        u = torch.rand(m, generator=generator, dtype=torch.float64)
        v = (1.0 + c * x) ** 3
        ok = v > 0
        logv = torch.log(torch.where(ok, v, torch.ones_like(v)))
        accept = ok & (torch.log(u) < 0.5 * x * x + d - d * v + d * logv)
        out[todo[accept]] = (d * v)[accept]
        todo = todo[~accept]
    if boost:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        out = out * u.pow(1.0 / shape)
    return out


def sample_beta(alpha: float, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` draws of Beta(alpha, alpha) as ``X / (X + Y)`` with X, Y ~ Gamma(alpha) from ``generator``.

    Returns a float64 CPU tensor. ``torch.distributions.Beta`` cannot take a generator, which the
    virtual-feature sampling needs to be reproducible and testable.
    """
    if not alpha > 0:
        raise ValueError(f"sample_beta: alpha must be > 0, got {alpha}")
    if n == 0:
        return torch.empty(0, dtype=torch.float64)
    x = _gamma(float(alpha), n, generator)
    y = _gamma(float(alpha), n, generator)
    total = x + y
    # both draws underflow only for tiny alpha; then the mixture is an endpoint, pick it by x >= y
    lam = torch.where(total > 0, x / total.clamp_min(torch.finfo(torch.float64).tiny), (x >= y).double())
    return lam.clamp(0.0, 1.0)


def mixup_virtual_features(emb: Tensor, labels: Tensor, alpha: float, num_virtual: int,
                           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Virtual proposal features by manifold mixup of embeddings of *different* classes (FES).

    ``emb`` M×D proposal embeddings, ``labels`` M class ids. Draws, in this order from ``generator``:
    ``lam = sample_beta(alpha, num_virtual)``; ``idx_i`` uniformly among the embeddings that have at least
    one embedding of another class; ``idx_j`` uniformly among the embeddings whose label differs from
    ``labels[idx_i]``. Returns ``(features, lam, idx_i, idx_j)`` with
    ``features = lam·emb[idx_i] + (1 − lam)·emb[idx_j]`` (num_virtual×D, not renormalised: they lie on
    the segment between their parents; the classifier uses cosine similarity), ``lam`` in ``emb``'s
    dtype. With fewer than two distinct labels the four outputs are empty.
    """
    if emb.dim() != 2 or labels.dim() != 1 or labels.shape[0] != emb.shape[0]:
        raise ValueError(f"mixup_virtual_features: emb must be M×D and labels M, got {tuple(emb.shape)} "
                         f"and {tuple(labels.shape)}")
    device = emb.device
    num_virtual = int(num_virtual)
    lab = labels.detach().cpu()
    differs = lab[:, None] != lab[None, :]  # M×M
    candidates = torch.nonzero(differs.any(1)).flatten()
    if num_virtual <= 0 or candidates.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return emb.new_zeros((0, emb.shape[1])), emb.new_zeros(0), empty, empty.clone()
    lam = sample_beta(alpha, num_virtual, generator)
    idx_i = candidates[torch.randint(candidates.numel(), (num_virtual,), generator=generator)]
    scores = torch.rand(num_virtual, lab.shape[0], generator=generator)
    scores = torch.where(differs[idx_i], scores, torch.full_like(scores, -1.0))
    idx_j = scores.argmax(1)
    lam = lam.to(device=device, dtype=emb.dtype)
    idx_i, idx_j = idx_i.to(device), idx_j.to(device)
    features = lam[:, None] * emb[idx_i] + (1.0 - lam[:, None]) * emb[idx_j]
    return features, lam, idx_i, idx_j


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over rows of ``−Σ_c target_c · log_softmax(logits)_c`` (``target`` rows sum to 1)."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def background_logit(emb: Tensor, prototypes: Tensor, logit_scale: Tensor | float,
                     reduce: str = "max") -> Tensor:
    """Background ("no object") logit of proposal embeddings ``emb`` (...×D) against K prototypes (K×D).

    ``reduce='max'``: ``s · max_k cos(z, b_k)`` (the nearest prototype decides);
    ``reduce='logsumexp'``: ``logsumexp_k(s · cos(z, b_k)) − log K`` (a soft maximum, calibrated so that
    K identical prototypes give the K=1 value). Both equal ``s · cos(z, b)`` for K = 1.
    Returns ``...×1``.
    """
    cos = F.normalize(emb, dim=-1) @ F.normalize(prototypes, dim=-1).T  # ...×K
    if reduce == "max":
        return logit_scale * cos.max(-1, keepdim=True).values
    if reduce == "logsumexp":
        return torch.logsumexp(logit_scale * cos, dim=-1, keepdim=True) - math.log(prototypes.shape[0])
    raise ValueError(f"background_logit: reduce must be 'max' or 'logsumexp', got {reduce!r}")


def background_regulariser(prototypes: Tensor, text_embeds: Tensor) -> Tensor:
    """BDS regulariser ``L_reg = mean_{k≠l} cos(b_k, b_l) + mean_{k,c} max(0, cos(b_k, t_c))``.

    First term: prototypes mutually diverse (its minimum, −1/(K−1), is reached by a regular simplex;
    0 when K = 1). Second term: prototypes not aligned with any seen-class text embedding ``t_c`` (only
    positive similarity is penalised; orthogonal or opposite is fine).
    """
    b = F.normalize(prototypes.float(), dim=-1)
    t = F.normalize(text_embeds.float(), dim=-1)
    k = b.shape[0]
    if k > 1:
        sim = b @ b.T
        off = ~torch.eye(k, dtype=torch.bool, device=b.device)
        diversity = sim[off].mean()
    else:
        diversity = b.sum() * 0.0
    return diversity + (b @ t.T).clamp_min(0).mean()


def apply_bias_correction(class_logits: Tensor, indicator_prob: Tensor, seen_mask: Tensor,
                          threshold: float, strength: float) -> Tensor:
    """Predictive bias correction: ``logit[q, c] − strength · p_q`` for seen classes c of flagged proposals.

    ``class_logits`` ...×Q×C' (C' may include the background column), ``indicator_prob`` ...×Q (the class
    indicator's probability that proposal q is an unseen class), ``seen_mask`` bool C' (True = seen
    class; False for unseen classes and background). A proposal is flagged when ``p_q > threshold``.
    Every other entry is returned bit-identical (``torch.where``).
    """
    if seen_mask.dtype != torch.bool or seen_mask.shape[-1] != class_logits.shape[-1]:
        raise ValueError(f"apply_bias_correction: seen_mask must be bool with {class_logits.shape[-1]} "
                         f"entries, got {seen_mask.dtype} {tuple(seen_mask.shape)}")
    p = indicator_prob.to(class_logits.dtype)[..., None]
    flagged = p > threshold
    apply = flagged & seen_mask.to(class_logits.device)
    return torch.where(apply, class_logits - strength * p, class_logits)


def semantic_inference(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """MaskFormer semantic inference: B×Q×(C+1) logits, B×Q×H×W mask logits -> B×C×H×W scores."""
    probs = F.softmax(class_logits.float(), dim=-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, mask_logits.float().sigmoid())


def indicator_targets(pred_masks: Tensor, indices: Sequence[tuple[Tensor, Tensor]], targets: Sequence[dict],
                      rule: str, ignore_ratio: float, mask_threshold: float,
                      class_seen: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Surrogate labels of the class indicator for the *real* proposals (B×Q).

    Matched proposals -> 0 ("seen"); with ``class_seen`` (C bool, the training vocabulary's seen mask)
    a proposal matched to an unseen class -> 1 (transductive self-training, where pseudo-labels of unseen
    classes are matched; in inductive training every matched class is seen). Under a rule containing ``ignore``: an unmatched proposal whose
    binarised mask (``sigmoid > mask_threshold``, at the prediction's resolution) has at least
    ``ignore_ratio`` of its area on ignore pixels (``targets[b]['ignore']``, H×W bool; in inductive
    training unseen-class pixels are ignore) -> 1 ("potentially unseen"). Every other proposal is not
    labelled. Returns ``(labels B×Q float, valid B×Q bool)``. Virtual (FES) features get label 1 in the
    caller when the rule contains ``virtual``.
    """
    bsz, nq = pred_masks.shape[:2]
    labels = pred_masks.new_zeros((bsz, nq), dtype=torch.float32)
    valid = torch.zeros((bsz, nq), dtype=torch.bool, device=pred_masks.device)
    for b, (src, tgt) in enumerate(indices):
        src = src.to(valid.device)
        valid[b, src] = True
        if class_seen is not None and src.numel():
            cls = targets[b]["labels"].to(valid.device)[tgt.to(valid.device)].long()
            labels[b, src] = (~class_seen.to(valid.device)[cls]).float()
    if "ignore" in rule.split("+"):
        with torch.no_grad():
            binary = (pred_masks.detach().float().sigmoid() > mask_threshold).float()  # B×Q×h×w
            for b, tgt in enumerate(targets):
                ignore = tgt.get("ignore")
                if ignore is None:
                    raise KeyError("indicator label rule 'ignore' needs targets[b]['ignore'] (H×W bool)")
                ign = F.adaptive_avg_pool2d(ignore.to(binary.device, torch.float32)[None, None],
                                            binary.shape[-2:])[0, 0]
                area = binary[b].sum((-2, -1))
                cover = (binary[b] * ign).sum((-2, -1)) / area.clamp_min(1.0)
                flag = (area > 0) & (cover >= ignore_ratio) & ~valid[b]
                labels[b, flag] = 1.0
                valid[b] |= flag
    return labels, valid


# ================================================================================ modules
class _MLP(nn.Sequential):
    def __init__(self, cin: int, hidden: int, cout: int, num_layers: int) -> None:
        layers: list[nn.Module] = []
        dims = [cin] + [hidden] * (num_layers - 1) + [cout]
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class QueryDecoderLayer(nn.Module):
    """One decoder layer (post-norm, as Mask2Former's, without masked attention).

    Queries: cross-attention to the visual tokens, self-attention, FFN. With ``mutual=True`` (MRPE) the
    visual tokens then cross-attend to the updated queries and pass an FFN, so both sides are refined.
    ``forward(q B×N×E, q_pos, mem B×L×E, mem_pos) -> (q, mem)``.
    """

    def __init__(self, dims: int, num_heads: int, ffn_ratio: float = 4.0, mutual: bool = False) -> None:
        super().__init__()
        hidden = int(dims * ffn_ratio)
        self.cross_attn = nn.MultiheadAttention(dims, num_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dims)
        self.self_attn = nn.MultiheadAttention(dims, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dims)
        self.ffn = nn.Sequential(nn.Linear(dims, hidden), nn.GELU(), nn.Linear(hidden, dims))
        self.norm3 = nn.LayerNorm(dims)
        self.mutual = mutual
        if mutual:
            self.feat_cross_attn = nn.MultiheadAttention(dims, num_heads, batch_first=True)
            self.feat_norm1 = nn.LayerNorm(dims)
            self.feat_ffn = nn.Sequential(nn.Linear(dims, hidden), nn.GELU(), nn.Linear(hidden, dims))
            self.feat_norm2 = nn.LayerNorm(dims)

    def forward(self, q: Tensor, q_pos: Tensor, mem: Tensor, mem_pos: Tensor) -> tuple[Tensor, Tensor]:
        q = self.norm1(q + self.cross_attn(q + q_pos, mem + mem_pos, mem, need_weights=False)[0])
        qk = q + q_pos
        q = self.norm2(q + self.self_attn(qk, qk, q, need_weights=False)[0])
        q = self.norm3(q + self.ffn(q))
        if self.mutual:
            mem = self.feat_norm1(mem + self.feat_cross_attn(mem + mem_pos, q + q_pos, q, need_weights=False)[0])
            mem = self.feat_norm2(mem + self.feat_ffn(mem))
        return q, mem


class SideAdapterParent(nn.Module):
    """The structural parent: SAN-style side-adapter CLIP segmenter with one background embedding.

    Args:
        clip_channels: width W of ``feats['layers']`` maps. embed_dim: CLIP joint-space dimension D.
        patch_size: CLIP patch size (side network stride).
        num_queries: number N of mask queries.
        embed_dims: width E of the side network and the decoder.
        num_decoder_layers, num_heads, ffn_ratio: decoder settings.
        side_cfg: extra :class:`SideNetwork` arguments (``num_layers``, ``num_heads``, ``mlp_ratio``,
            ``fusion_index``, ``ref_grid``). ``len(fusion_index)`` CLIP maps are fused.
        clip_layer_ids: which entries of ``feats['layers']`` are fused (default: the last
            ``len(fusion_index)``).
        clip_pool: add the CLIP dense embedding pooled under each mask to the proposal embedding.
        pixel_pool: add a learned projection (``region_proj``) of the pixel features pooled under each
            sigmoid mask (detached) to the learned part of the proposal embedding (see the module docstring).
        logit_scale_init, learnable_logit_scale, max_logit_scale: the class-logit scale ``s``
            (init 1/0.07 as CLIP's).
        loss: weights and sampling of the losses; keys of :data:`DEFAULT_LOSS`.
        mrpe: mutual query/feature refinement (AlignZeg); the parent has ``False``.
        num_bg_prototypes, bg_reduce: background prototypes (the parent: 1, ``'max'``).
    """

    def __init__(self, clip_channels: int, embed_dim: int, patch_size: int = 16, num_queries: int = 100,
                 embed_dims: int = 240, num_decoder_layers: int = 6, num_heads: int = 8,
                 ffn_ratio: float = 4.0, side_cfg: Mapping | None = None,
                 clip_layer_ids: Sequence[int] | None = None, clip_pool: bool = True,
                 logit_scale_init: float = 1 / 0.07, learnable_logit_scale: bool = True,
                 max_logit_scale: float = 100.0, loss: Mapping | None = None, pixel_pool: bool = False, *,
                 mrpe: bool = False,
                 num_bg_prototypes: int = 1, bg_reduce: str = "max") -> None:
        super().__init__()
        side_cfg = dict(side_cfg or {})
        unknown = set(side_cfg) - {"num_layers", "num_heads", "mlp_ratio", "fusion_index", "ref_grid"}
        if unknown:
            raise ValueError(f"side_cfg: unknown keys {sorted(unknown)}")
        loss = {**DEFAULT_LOSS, **dict(loss or {})}
        unknown = set(loss) - set(DEFAULT_LOSS)
        if unknown:
            raise ValueError(f"loss: unknown keys {sorted(unknown)} (known: {sorted(DEFAULT_LOSS)})")
        if num_bg_prototypes < 1:
            raise ValueError(f"num_bg_prototypes must be >= 1, got {num_bg_prototypes}")
        if bg_reduce not in ("max", "logsumexp"):
            raise ValueError(f"bg_reduce must be 'max' or 'logsumexp', got {bg_reduce!r}")
        self.embed_dim = embed_dim
        self.num_queries = num_queries
        self.clip_pool = clip_pool
        self.pixel_pool = bool(pixel_pool)
        self.mrpe = mrpe
        self.bg_reduce = bg_reduce
        self.loss_cfg = loss
        self.side = SideNetwork(clip_channels, embed_dims=embed_dims, patch_size=patch_size, **side_cfg)
        self.clip_layer_ids = None if clip_layer_ids is None else tuple(clip_layer_ids)
        if self.clip_layer_ids is not None and len(self.clip_layer_ids) != len(self.side.fusion_index):
            raise ValueError(f"clip_layer_ids={self.clip_layer_ids} must have one entry per "
                             f"side_cfg.fusion_index={self.side.fusion_index}")
        self.query_feat = nn.Parameter(torch.zeros(1, num_queries, embed_dims))
        self.query_pos = nn.Parameter(torch.zeros(1, num_queries, embed_dims))
        nn.init.normal_(self.query_feat, std=0.02)
        nn.init.normal_(self.query_pos, std=0.02)
        self.layers = nn.ModuleList([QueryDecoderLayer(embed_dims, num_heads, ffn_ratio, mutual=mrpe)
                                     for _ in range(num_decoder_layers)])
        self.decoder_norm = nn.LayerNorm(embed_dims)
        self.pixel_proj = nn.Conv2d(embed_dims, embed_dims, 1)
        self.grid_proj = nn.Conv2d(embed_dims, embed_dims, 1)
        self.mask_conv = nn.Conv2d(embed_dims, embed_dims, 3, padding=1)
        self.mask_embed = _MLP(embed_dims, embed_dims, embed_dims, 3)
        self.embed_proj = nn.Linear(embed_dims, embed_dim)
        if self.pixel_pool:
            self.region_proj = nn.Linear(embed_dims, embed_dim)
        if clip_pool:  # start from CLIP's own region recognition: every learned part of z starts at zero
            for lin in (self.embed_proj, self.region_proj) if self.pixel_pool else (self.embed_proj,):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)),
                                        requires_grad=learnable_logit_scale)
        self.max_log_scale = math.log(max_logit_scale)
        self.bg_prototypes = nn.Parameter(F.normalize(torch.randn(num_bg_prototypes, embed_dim), dim=-1))
        self.matcher = HungarianMatcher(cost_class=loss["cost_class"], cost_mask=loss["cost_mask"],
                                        cost_dice=loss["cost_dice"], num_points=loss["num_points"])
        self.criterion = MaskClassificationLoss(
            self.matcher, loss_cls_weight=loss["cls"], loss_mask_weight=loss["mask"],
            loss_dice_weight=loss["dice"], eos_coef=loss["eos_coef"], num_points=loss["num_points"],
            oversample_ratio=loss["oversample_ratio"], importance_sample_ratio=loss["importance_sample_ratio"])

    # ------------------------------------------------------------------------------------ forward
    def scale(self) -> Tensor:
        """The logit scale ``s = exp(logit_scale)``, clamped to ``max_logit_scale``."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def _clip_maps(self, feats: Mapping) -> list[Tensor]:
        layers = list(feats["layers"])
        ids = self.clip_layer_ids
        if ids is None:
            n = len(self.side.fusion_index)
            if len(layers) < n:
                raise ValueError(f"feats['layers'] has {len(layers)} maps; side_cfg.fusion_index needs {n}")
            return layers[len(layers) - n:]
        return [layers[i] for i in ids]

    def mask_features(self, hires: Tensor, mem: Tensor, grid: tuple[int, int]) -> Tensor:
        """Stride-4 pixel features: stem branch plus the upsampled (refined) grid tokens."""
        b, _, e = mem.shape
        g = self.grid_proj(mem.transpose(1, 2).reshape(b, e, *grid))
        g = F.interpolate(g, size=hires.shape[-2:], mode="bilinear", align_corners=False)
        return self.mask_conv(F.gelu(self.pixel_proj(hires) + g))

    def proposal_embeddings(self, q: Tensor, masks: Tensor, dense: Tensor | None,
                            pixel: Tensor | None = None) -> Tensor:
        """Unit proposal embeddings B×N×D from decoder queries and (optionally) mask-pooled CLIP embeddings
        and mask-pooled pixel features (``pixel`` B×E×h×w at the masks' resolution)."""
        z = self.embed_proj(q)
        if self.pixel_pool:
            if pixel is None:
                raise ValueError("pixel_pool=True needs the pixel features")
            w = masks.detach().sigmoid()  # B×N×h×w
            pooled = torch.einsum("bnhw,behw->bne", w, pixel) / w.sum((-2, -1))[..., None].clamp_min(1e-6)
            z = z + self.region_proj(pooled)
        if self.clip_pool:
            w = F.adaptive_avg_pool2d(masks.detach(), dense.shape[-2:]).sigmoid()  # B×N×h×w
            pooled = torch.einsum("bnhw,bdhw->bnd", w, dense) / w.sum((-2, -1))[..., None].clamp_min(1e-6)
            z = F.normalize(pooled, dim=-1) + z
        return F.normalize(z, dim=-1)

    def class_logits(self, z: Tensor, text_embeds: Tensor) -> Tensor:
        """B×N×(C+1): ``s·cos(z, t_c)`` then the background column."""
        s = self.scale()
        cls = s * (z @ F.normalize(text_embeds.to(z.dtype), dim=-1).T)
        bg = background_logit(z, self.bg_prototypes, s, self.bg_reduce)
        return torch.cat([cls, bg], dim=-1)

    def forward(self, feats: Mapping, text_embeds: Tensor, aux: bool = True) -> dict:
        """Returns ``dict(pred_logits B×N×(C+1), pred_masks B×N×(H/4)×(W/4), embeds B×N×D,
        aux_outputs=[dict(pred_logits, pred_masks, embeds) per earlier decoder layer])``.

        ``aux=False`` (inference) predicts from the last decoder layer only and leaves ``aux_outputs``
        empty: no layer reads an earlier layer's masks or logits, so the last layer's outputs are the
        same, without the per-layer pixel features, masks and logits that only deep supervision uses."""
        images = feats["images"]
        clip_maps = self._clip_maps(feats)
        width = self.side.clip_proj[0][0].weight.shape[0] if len(self.side.clip_proj) else None
        if width is not None and any(m.shape[1] != width for m in clip_maps):
            raise ValueError(f"clip_channels={width} but feats['layers'] maps have widths "
                             f"{[m.shape[1] for m in clip_maps]}")
        if text_embeds.dim() != 2 or text_embeds.shape[1] != self.embed_dim:
            raise ValueError(f"text_embeds must be C×{self.embed_dim} (embed_dim), got {tuple(text_embeds.shape)}")
        side = self.side(images, clip_maps)
        feat, pos, hires = side["feat"], side["pos"], side["hires"]
        grid = (feat.shape[-2], feat.shape[-1])
        b = feat.shape[0]
        mem = feat.flatten(2).transpose(1, 2)
        mem_pos = pos.flatten(2).transpose(1, 2).expand(b, -1, -1)
        q = self.query_feat.expand(b, -1, -1)
        q_pos = self.query_pos.expand(b, -1, -1)
        dense = feats.get("dense_embed") if self.clip_pool else None
        if self.clip_pool and dense is None:
            raise KeyError("clip_pool=True needs feats['dense_embed'] (B×D×h×w)")
        if dense is not None and dense.shape[1] != self.embed_dim:
            raise ValueError(f"embed_dim={self.embed_dim} but feats['dense_embed'] has {dense.shape[1]} channels")
        pixel = None if self.mrpe else self.mask_features(hires, mem, grid)
        outs = []
        for i, layer in enumerate(self.layers):
            q, mem = layer(q, q_pos, mem, mem_pos)
            if not aux and i < len(self.layers) - 1:
                continue
            if self.mrpe:
                pixel = self.mask_features(hires, mem, grid)
            qn = self.decoder_norm(q)
            masks = torch.einsum("bne,behw->bnhw", self.mask_embed(qn), pixel)
            z = self.proposal_embeddings(qn, masks, dense, pixel)
            outs.append(dict(pred_logits=self.class_logits(z, text_embeds), pred_masks=masks, embeds=z))
        out = dict(outs[-1])
        out["aux_outputs"] = outs[:-1]
        return out

    # ------------------------------------------------------------------------------------ losses
    def mask_class_losses(self, out: dict, targets: Sequence[dict]) -> tuple[dict, list]:
        """Matched classification / mask-BCE / dice losses on every decoder layer; also returns the
        last layer's matching. Uses the shared criterion's terms (keys ``loss_cls``, ``loss_mask``,
        ``loss_dice``, ``d{i}.loss_*``)."""
        crit = self.criterion
        num_masks = _reduce_num_masks(sum(len(t["labels"]) for t in targets), out["pred_logits"].device)
        losses: dict = {}
        last_indices: list = []
        layers = list(out.get("aux_outputs") or []) + [out]
        for i, layer_out in enumerate(layers):
            indices = self.matcher(layer_out, targets)
            mask_l, dice_l = crit.loss_masks(layer_out["pred_masks"], targets, indices, num_masks)
            terms = dict(loss_cls=crit.loss_cls_weight * crit.loss_labels(layer_out["pred_logits"], targets, indices),
                         loss_mask=crit.loss_mask_weight * mask_l, loss_dice=crit.loss_dice_weight * dice_l)
            prefix = "" if i == len(layers) - 1 else f"d{i}."
            losses.update({prefix + k: v for k, v in terms.items()})
            last_indices = indices
        return losses, last_indices

    def loss(self, feats: Mapping, text_embeds: Tensor, targets: Sequence[dict],
             seen_mask: Tensor | None = None) -> dict:
        """Training losses. ``targets``: per image ``dict(labels=K long (index into text_embeds),
        masks=K×H×W bool, ignore=H×W bool (needed by the PBC 'ignore' rule))``. ``seen_mask`` (C bool)
        is read by AlignZeg's class indicator only."""
        out = self.forward(feats, text_embeds)
        losses, _ = self.mask_class_losses(out, targets)
        return losses

    def predict(self, feats: Mapping, text_embeds: Tensor, seen_mask: Tensor | None = None,
                size: tuple[int, int] | None = None) -> Tensor:
        """B×C×H×W semantic scores at ``size`` (default: the input image size)."""
        out = self.forward(feats, text_embeds, aux=False)
        logits = self.correct_logits(out, seen_mask)
        # Per-proposal outputs of the latest prediction, for analysis (the indicator ROC); not used for scores.
        self.last_aux = self.inference_aux(out)
        size = tuple(size) if size is not None else tuple(feats["images"].shape[-2:])
        masks = F.interpolate(out["pred_masks"], size=size, mode="bilinear", align_corners=False)
        return semantic_inference(logits, masks)

    def correct_logits(self, out: dict, seen_mask: Tensor | None) -> Tensor:
        """Hook for inference-time calibration of class logits; the parent returns them unchanged."""
        return out["pred_logits"]

    def inference_aux(self, out: dict) -> dict:
        """Detached per-proposal outputs kept after ``predict``; the parent keeps none."""
        return {}


class AlignZeg(SideAdapterParent):
    """AlignZeg (reconstructed): the parent plus the four switchable components.

    Args (besides :class:`SideAdapterParent`'s):
        mrpe: Mutually-Refined Proposal Extraction (features cross-attend back to queries in every layer).
        fes: Feature Expansion Strategy. ``fes_cfg``: ``alpha`` (Beta(α, α) mixing weights),
            ``num_virtual`` (virtual features per batch; ``None`` = as many as matched proposals).
        bds: Background Diversity Strategy. ``bds_cfg``: ``num_prototypes`` K (≥ 2 when on),
            ``reduce`` (``'max'`` | ``'logsumexp'``, see :func:`background_logit`). Off = one prototype.
        pbc: Predictive Bias Correction. ``pbc_cfg``: ``hidden_dims`` of the indicator MLP,
            ``label_rule`` (``'virtual'``, the strictly inductive default: positives are mixed seen
            embeddings, made as FES makes them even when ``fes`` is off; ``'ignore'`` and
            ``'virtual+ignore'`` also label proposals on ignore pixels, that is on where the unseen
            pixels lie: the "uses unseen locations" variant, see :func:`indicator_targets`),
            ``ignore_ratio``, ``mask_threshold``,
            ``detach_input`` (indicator trained on detached embeddings, so L_bc does not move the
            classifier's space), ``threshold`` τ and ``strength`` β of :func:`apply_bias_correction`.
        loss: also ``bc`` (λ_bc), ``vir`` (λ3), ``reg`` (λ4).
    With ``mrpe=fes=bds=pbc=False`` the module has the parent's parameters and outputs.
    """

    def __init__(self, *args, mrpe: bool = True, fes: bool = True, bds: bool = True, pbc: bool = True,
                 fes_cfg: Mapping | None = None, bds_cfg: Mapping | None = None,
                 pbc_cfg: Mapping | None = None, **kwargs) -> None:
        fes_cfg = self._merge("fes_cfg", DEFAULT_FES, fes_cfg)
        bds_cfg = self._merge("bds_cfg", DEFAULT_BDS, bds_cfg)
        pbc_cfg = self._merge("pbc_cfg", DEFAULT_PBC, pbc_cfg)
        if "num_bg_prototypes" in kwargs or "bg_reduce" in kwargs:
            raise ValueError("AlignZeg: set background prototypes through bds/bds_cfg, not num_bg_prototypes")
        if bds and int(bds_cfg["num_prototypes"]) < 2:
            raise ValueError(f"bds_cfg.num_prototypes must be >= 2 when bds=True (K=1 is bds=False), "
                             f"got {bds_cfg['num_prototypes']}")
        if pbc:
            rule = pbc_cfg["label_rule"]
            if rule not in LABEL_RULES:
                raise ValueError(f"pbc_cfg.label_rule must be one of {LABEL_RULES}, got {rule!r}")
        if fes and not fes_cfg["alpha"] > 0:
            raise ValueError(f"fes_cfg.alpha must be > 0, got {fes_cfg['alpha']}")
        super().__init__(*args, mrpe=mrpe, num_bg_prototypes=int(bds_cfg["num_prototypes"]) if bds else 1,
                         bg_reduce=bds_cfg["reduce"] if bds else "max", **kwargs)
        self.fes, self.bds, self.pbc = bool(fes), bool(bds), bool(pbc)
        self.fes_cfg, self.bds_cfg, self.pbc_cfg = fes_cfg, bds_cfg, pbc_cfg
        if pbc:
            self.indicator = _MLP(self.embed_dim, int(pbc_cfg["hidden_dims"]), 1, 2)

    @staticmethod
    def _merge(name: str, defaults: Mapping, given: Mapping | None) -> dict:
        given = dict(given or {})
        unknown = set(given) - set(defaults)
        if unknown:
            raise ValueError(f"{name}: unknown keys {sorted(unknown)} (known: {sorted(defaults)})")
        return {**defaults, **given}

    def inference_aux(self, out: dict) -> dict:
        if not self.pbc:
            return {}
        return dict(indicator_prob=self.indicator_prob(out["embeds"]).detach(),
                    mask_logits=out["pred_masks"].detach())

    def indicator_prob(self, z: Tensor) -> Tensor:
        """Class-indicator probability (…) that a proposal with unit embedding ``z`` (…×D) is unseen."""
        return self.indicator(z).squeeze(-1).sigmoid()

    def correct_logits(self, out: dict, seen_mask: Tensor | None) -> Tensor:
        logits = out["pred_logits"]
        if not self.pbc:
            return logits
        num_classes = logits.shape[-1] - 1
        if seen_mask is None:
            seen_mask = torch.ones(num_classes, dtype=torch.bool, device=logits.device)
        seen_mask = seen_mask.to(device=logits.device, dtype=torch.bool)
        if seen_mask.shape[0] != num_classes:
            raise ValueError(f"seen_mask has {seen_mask.shape[0]} entries for {num_classes} classes")
        seen_ext = torch.cat([seen_mask, seen_mask.new_zeros(1)])  # background is never "seen-class"
        return apply_bias_correction(logits, self.indicator_prob(out["embeds"]), seen_ext,
                                     self.pbc_cfg["threshold"], self.pbc_cfg["strength"])

    def loss(self, feats: Mapping, text_embeds: Tensor, targets: Sequence[dict],
             seen_mask: Tensor | None = None, generator: torch.Generator | None = None) -> dict:
        out = self.forward(feats, text_embeds)
        losses, indices = self.mask_class_losses(out, targets)
        lw = self.loss_cfg
        z = out["embeds"]
        matched = [z[b, src.to(z.device)] for b, (src, _) in enumerate(indices)]
        matched_labels = [targets[b]["labels"].to(z.device)[tgt.to(z.device)].long()
                          for b, (_, tgt) in enumerate(indices)]
        emb = torch.cat(matched) if matched else z.new_zeros((0, z.shape[-1]))
        lab = torch.cat(matched_labels) if matched_labels else torch.zeros(0, dtype=torch.long, device=z.device)
        virtual = z.new_zeros((0, z.shape[-1]))
        pbc_virtual = self.pbc and "virtual" in self.pbc_cfg["label_rule"].split("+")
        if self.fes or pbc_virtual:
            # FES's mixed seen embeddings. Without FES they are made all the same, as the class
            # indicator's positives only (no L_vir, the classifier never sees them): the strictly
            # inductive rule 'virtual' needs positives that do not come from unseen locations.
            n = self.fes_cfg["num_virtual"]
            n = emb.shape[0] if n is None else int(n)
            virtual, lam, ii, jj = mixup_virtual_features(emb, lab, self.fes_cfg["alpha"], n, generator)
        if self.fes:
            if virtual.shape[0]:
                c = text_embeds.shape[0]
                soft = torch.zeros(virtual.shape[0], c, device=z.device, dtype=torch.float32)
                soft.scatter_add_(1, lab[ii][:, None], lam.float()[:, None])
                soft.scatter_add_(1, lab[jj][:, None], (1 - lam.float())[:, None])
                logits = self.scale() * (F.normalize(virtual, dim=-1)
                                         @ F.normalize(text_embeds.to(z.dtype), dim=-1).T)
                losses["loss_vir"] = lw["vir"] * soft_cross_entropy(logits, soft)
            else:
                losses["loss_vir"] = z.sum() * 0.0
        if self.bds:
            losses["loss_reg"] = lw["reg"] * background_regulariser(self.bg_prototypes, text_embeds)
        if self.pbc:
            rule = self.pbc_cfg["label_rule"]
            parts = rule.split("+")
            labels, valid = indicator_targets(out["pred_masks"], indices, targets, rule,
                                              self.pbc_cfg["ignore_ratio"], self.pbc_cfg["mask_threshold"],
                                              None if seen_mask is None else seen_mask.to(torch.bool))
            inputs = [z[valid]]
            ys = [labels[valid]]
            if "virtual" in parts and virtual.shape[0]:
                inputs.append(F.normalize(virtual, dim=-1))  # unit norm: the norm must not give them away
                ys.append(labels.new_ones(virtual.shape[0]))
            x = torch.cat(inputs)
            y = torch.cat(ys)
            if self.pbc_cfg["detach_input"]:
                x = x.detach()
            if x.shape[0]:
                logit = self.indicator(x).squeeze(-1)
                losses["loss_bc"] = lw["bc"] * F.binary_cross_entropy_with_logits(logit.float(), y.float())
            else:
                losses["loss_bc"] = sum(p.sum() for p in self.indicator.parameters()) * 0.0
        return losses
