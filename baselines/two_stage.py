"""Two-stage decoupled zero-shot segmentation: mask proposals, then CLIP classification of masked regions.

Follows the decoupled formulation of ZegFormer (Ding et al., "Decoupling Zero-Shot Semantic
Segmentation", CVPR 2022; github.com/dingjiansw101/ZegFormer) in the form of zsseg (Xu et al.,
"A Simple Baseline for Open-Vocabulary Semantic Segmentation with Pre-trained Vision-language Model",
ECCV 2022, arXiv 2112.14757; github.com/MendelXu/zsseg.baseline, built on MaskFormer), read for
``mask_former/zero_shot_mask_former_model.py`` (``semantic_inference``) and
``mask_former/modeling/clip_adapter`` (``MaskFormerClipAdapter``, ``crop_with_mask``). Written anew from
the papers and that code's description; nothing is copied (the licences of both repositories could not be
read here; see baselines/README.md).

1. Proposal stage (trained on seen classes): a MaskFormer-style set predictor. ``Q`` learnable queries are
   refined by a small transformer decoder over image features, each query predicts a mask (dot product of
   a mask embedding with per-pixel features) and an embedding in CLIP's joint space; the embedding is
   classified by ``τ · cos`` against the text embeddings of the active vocabulary plus one learned
   "no object" embedding (zsseg: τ = 100). Training uses Hungarian matching and the mask-classification
   losses of :mod:`alignzeg.models.losses` / :mod:`alignzeg.models.matcher` (shared with AlignZeg).
2. Region stage (frozen CLIP, inference only): every proposal is binarised (``mask_thr`` = 0.5), its
   bounding box is cropped from the normalised image with the pixels outside the mask set to the CLIP
   mean colour (0 after normalisation), resized to CLIP's input size and encoded with
   ``clip_model.encode_image``; ``p_clip = softmax(s · cos(region, text))`` over the classes (``s`` =
   CLIP's logit scale, 100 for OpenAI weights).
3. Ensemble (zsseg's rule, ``clip_ensemble_weight`` λ = 0.8 by default). With ``p_cls`` the proposal
   classifier's softmax over ``C+1`` without the "no object" column:

       p(c) = p_cls(c)^λ       · p_clip(c)^(1-λ)   if c is a seen (trained) class,
       p(c) = p_cls(c)^(1-λ)   · p_clip(c)^λ       if c is unseen,

   proposals whose binarised mask is empty get ``p_clip = 1``. With λ = 0 zsseg uses CLIP's scores alone
   on the non-empty proposals. The segmentation is ``S[c, x] = Σ_q p_q(c) · sigmoid(m_q(x))``.

What differs from zsseg:

- The proposal network is small: the image features are those of the shared side network
  (:class:`alignzeg.models.side_network.SideNetwork`, a light learnable encoder fused with frozen CLIP
  features) instead of a ResNet-101 + pixel decoder, and the decoder has a few layers. Queries are
  learned input embeddings without a separate positional query embedding.
- Mask losses are Mask2Former's (sigmoid BCE + dice on sampled points, weights 2/5/5 for class/mask/dice)
  from the shared criterion, not MaskFormer's focal + dice (20/1).
- Text embeddings are fixed prompt-template ensembles (zsseg first learns prompts in a separate stage).
- ``region_mode='mask'`` (no crop: the whole masked image) is offered besides zsseg's ``'crop'``.

No mmseg import; the mmseg adapter lives in :mod:`baselines.mmseg_modules`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignzeg.models.losses import MaskClassificationLoss, sem_seg_to_mask_targets
from alignzeg.models.matcher import HungarianMatcher
from alignzeg.models.side_network import SideNetwork

__all__ = [
    "geometric_ensemble", "mask_to_box", "masked_region_images", "classify_regions", "ProposalDecoder",
    "MaskProposalNetwork", "TwoStageHeadModule",
]


# ----------------------------------------------------------------------------------------------- ensemble
def geometric_ensemble(p_cls: Tensor, p_clip: Tensor, seen_mask: Tensor, weight: float = 0.8) -> Tensor:
    """zsseg's seen/unseen geometric ensemble of proposal-classifier and CLIP probabilities.

    ``p_cls``, ``p_clip``: ...×C probabilities; ``seen_mask``: C bool (True for classes the proposal
    classifier was trained on). Seen classes get ``p_cls^w · p_clip^(1-w)``, unseen classes
    ``p_cls^(1-w) · p_clip^w``.
    """
    if p_cls.shape != p_clip.shape:
        raise ValueError(f"geometric_ensemble: p_cls {tuple(p_cls.shape)} and p_clip {tuple(p_clip.shape)} differ")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"geometric_ensemble: clip_ensemble_weight must be in [0, 1], got {weight}")
    seen = torch.as_tensor(seen_mask, dtype=torch.bool, device=p_cls.device)
    if seen.dim() != 1 or seen.numel() != p_cls.shape[-1]:
        raise ValueError(f"geometric_ensemble: seen_mask of {seen.numel()} entries for {p_cls.shape[-1]} classes")
    seen = seen.to(p_cls.dtype)
    seen_part = p_cls.pow(weight) * p_clip.pow(1.0 - weight)
    unseen_part = p_cls.pow(1.0 - weight) * p_clip.pow(weight)
    return seen * seen_part + (1.0 - seen) * unseen_part


# ----------------------------------------------------------------------------------------------- regions
def mask_to_box(mask: Tensor) -> tuple[int, int, int, int] | None:
    """Tight box ``(x1, y1, x2, y2)`` (exclusive ends) of a binary H×W mask, ``None`` when empty."""
    ys = torch.nonzero(mask.any(dim=1)).flatten()
    xs = torch.nonzero(mask.any(dim=0)).flatten()
    if ys.numel() == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _expand_box(box: tuple[int, int, int, int], ratio: float, height: int, width: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    if ratio != 1.0:
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * ratio, (y2 - y1) * ratio
        x1, y1, x2, y2 = int(cx - w / 2), int(cy - h / 2), int(cx + w / 2), int(cy + h / 2)
    x1, y1 = max(x1, 0), max(y1, 0)
    x2, y2 = min(max(x2, x1 + 1), width), min(max(y2, y1 + 1), height)
    return x1, y1, x2, y2


def masked_region_images(image: Tensor, masks: Tensor, size: int | Sequence[int], mask_thr: float = 0.5,
                         mode: str = "crop", expand_ratio: float = 1.0, fill: float = 0.0) -> tuple[Tensor, Tensor]:
    """CLIP inputs for the proposals of one image.

    ``image`` 3×H×W (normalised), ``masks`` Q×H×W soft masks in [0, 1]. Each mask is binarised at
    ``mask_thr``; pixels outside it are set to ``fill`` (0 = the CLIP mean colour after normalisation);
    ``mode='crop'`` cuts the mask's bounding box (scaled by ``expand_ratio``, zsseg's ``crop_with_mask``),
    ``'mask'`` keeps the whole image. Regions are resized bicubically to ``size`` (unchanged when they
    already have it). Returns ``(regions N×3×S×S, valid Q bool)`` with N = number of non-empty masks.
    """
    if mode not in ("crop", "mask"):
        raise ValueError(f"masked_region_images: region mode must be 'crop' or 'mask', got {mode!r}")
    if image.dim() != 3 or masks.dim() != 3 or image.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"masked_region_images: expected image 3×H×W and masks Q×H×W of the same size, got "
                         f"{tuple(image.shape)} and {tuple(masks.shape)}")
    size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    height, width = image.shape[-2:]
    binary = masks > mask_thr
    valid = binary.flatten(1).any(-1)
    regions = []
    for q in torch.nonzero(valid).flatten().tolist():
        m = binary[q].to(image.dtype)
        region = image * m + (1.0 - m) * fill
        if mode == "crop":
            x1, y1, x2, y2 = _expand_box(mask_to_box(binary[q]), expand_ratio, height, width)
            region = region[:, y1:y2, x1:x2]
        region = region.unsqueeze(0)
        if tuple(region.shape[-2:]) != size:
            region = F.interpolate(region, size=size, mode="bicubic", align_corners=False)
        regions.append(region)
    if not regions:
        return image.new_zeros((0, 3) + size), valid
    return torch.cat(regions, dim=0), valid


@torch.no_grad()
def classify_regions(clip_model: nn.Module, regions: Tensor, text_embeds: Tensor, temperature: float | None = None,
                     batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """Encode regions (N×3×S×S) with ``clip_model.encode_image`` and score them against ``text_embeds`` (C×D).

    Returns ``(probs N×C, embeds N×D)``: ``softmax(s · cos)`` with ``s = temperature`` or CLIP's own logit
    scale, and the L2-normalised image embeddings.
    """
    if regions.shape[0] == 0:
        d = text_embeds.shape[-1]
        return regions.new_zeros((0, text_embeds.shape[0])), regions.new_zeros((0, d))
    embeds = torch.cat([clip_model.encode_image(regions[i:i + batch_size])
                        for i in range(0, regions.shape[0], batch_size)], dim=0)
    embeds = F.normalize(embeds.float(), dim=-1)
    if temperature is None:
        scale = clip_model.logit_scale.exp().float() if hasattr(clip_model, "logit_scale") else 100.0
    else:
        scale = float(temperature)
    logits = scale * embeds @ F.normalize(text_embeds.float(), dim=-1).T
    return logits.softmax(dim=-1), embeds


# ----------------------------------------------------------------------------------------------- proposals
class MLP(nn.Module):
    """A few linear layers with ReLU in between."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class ProposalDecoder(nn.Module):
    """Set-prediction decoder: learnable queries, DETR-style decoder layers, mask and CLIP-space heads.

    ``forward(memory B×E×h×w, memory_pos 1×E×h×w, mask_features B×E×H'×W')`` returns a list (one entry per
    decoder layer, last last) of ``(embeds B×Q×D, mask_logits B×Q×H'×W')``.
    """

    def __init__(self, embed_dims: int, clip_dims: int, num_queries: int = 16, num_layers: int = 3,
                 num_heads: int = 4, ffn_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.query_feat = nn.Embedding(num_queries, embed_dims)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(embed_dims, num_heads, embed_dims * ffn_ratio, dropout=dropout,
                                       batch_first=True, norm_first=False)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(embed_dims)
        self.mask_embed = MLP(embed_dims, embed_dims, embed_dims, 3)
        self.class_embed = MLP(embed_dims, embed_dims, clip_dims, 2)

    def heads(self, query: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        q = self.norm(query)
        masks = torch.einsum("bqe,behw->bqhw", self.mask_embed(q), mask_features)
        return self.class_embed(q), masks

    def forward(self, memory: Tensor, memory_pos: Tensor, mask_features: Tensor) -> list[tuple[Tensor, Tensor]]:
        b = memory.shape[0]
        mem = (memory + memory_pos).flatten(2).transpose(1, 2)
        query = self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)
        outs = []
        for layer in self.layers:
            query = layer(query, mem)
            outs.append(self.heads(query, mask_features))
        return outs


class MaskProposalNetwork(nn.Module):
    """Proposal stage of the two-stage baseline: side features -> queries -> masks + CLIP-space embeddings.

    Args:
        side: kwargs of :class:`alignzeg.models.side_network.SideNetwork` (``clip_channels``,
            ``patch_size``, ``embed_dims``, ``fusion_index``, ...).
        clip_dims: CLIP joint-space dimension D (text embedding width).
        num_queries, num_layers, num_heads: decoder settings (zsseg/MaskFormer: 100 queries, 6 layers).
        cls_temperature: τ of the proposal classifier ``τ · cos(embed, text)`` (zsseg: 100).

    ``forward(images, clip_layers, text_embeds)`` returns a Mask2Former-style output dict:
    ``pred_logits`` B×Q×(C+1) (last column "no object"), ``pred_masks`` B×Q×(H/4)×(W/4) logits,
    ``pred_embeds`` B×Q×D, ``aux_outputs`` (earlier decoder layers).
    """

    def __init__(self, side: dict, clip_dims: int, num_queries: int = 16, num_layers: int = 3, num_heads: int = 4,
                 cls_temperature: float = 100.0) -> None:
        super().__init__()
        self.side = SideNetwork(**side)
        e = self.side.embed_dims
        self.fuse = nn.Conv2d(e, e, kernel_size=1)
        self.mask_proj = nn.Conv2d(e, e, kernel_size=3, padding=1)
        self.decoder = ProposalDecoder(e, clip_dims, num_queries=num_queries, num_layers=num_layers,
                                       num_heads=num_heads)
        self.void_embedding = nn.Parameter(torch.randn(1, clip_dims) * clip_dims ** -0.5)
        self.cls_temperature = float(cls_temperature)

    def class_logits(self, embeds: Tensor, text_embeds: Tensor) -> Tensor:
        """``τ · cos`` of query embeddings (B×Q×D) with ``[text_embeds; void]`` -> B×Q×(C+1)."""
        classes = F.normalize(torch.cat([text_embeds.to(embeds.dtype), self.void_embedding], dim=0), dim=-1)
        return self.cls_temperature * F.normalize(embeds, dim=-1) @ classes.T

    def forward(self, images: Tensor, clip_layers: Sequence[Tensor], text_embeds: Tensor) -> dict:
        side = self.side(images, clip_layers)
        hires = side["hires"]
        up = F.interpolate(self.fuse(side["feat"]), size=hires.shape[-2:], mode="bilinear", align_corners=False)
        mask_features = self.mask_proj(hires + up)
        outs = [dict(pred_embeds=e, pred_logits=self.class_logits(e, text_embeds), pred_masks=m)
                for e, m in self.decoder(side["feat"], side["pos"], mask_features)]
        result = dict(outs[-1])
        result["aux_outputs"] = outs[:-1]
        return result


# ----------------------------------------------------------------------------------------------- head
class TwoStageHeadModule(nn.Module):
    """The two-stage baseline without mmseg: proposal network, its loss, and ensemble inference.

    Args:
        proposal: kwargs of :class:`MaskProposalNetwork`.
        matcher: kwargs of :class:`alignzeg.models.matcher.HungarianMatcher`.
        loss: kwargs of :class:`alignzeg.models.losses.MaskClassificationLoss` (besides the matcher).
        clip_ensemble: classify the proposals with CLIP at inference and ensemble (zsseg: True).
        clip_ensemble_weight: λ of :func:`geometric_ensemble` (zsseg: 0.8); 0 = CLIP scores alone.
        mask_thr, region_mode, expand_ratio: region extraction (:func:`masked_region_images`; 0.5,
            ``'crop'``, 1.0 in zsseg).
        clip_temperature: logit scale for the region scores (``None`` = CLIP's own).
        ignore_index: label value ignored by the losses.
    """

    def __init__(self, proposal: dict, matcher: dict | None = None, loss: dict | None = None,
                 clip_ensemble: bool = True, clip_ensemble_weight: float = 0.8, mask_thr: float = 0.5,
                 region_mode: str = "crop", expand_ratio: float = 1.0, clip_temperature: float | None = None,
                 ignore_index: int = 255) -> None:
        super().__init__()
        if not 0.0 <= clip_ensemble_weight <= 1.0:
            raise ValueError(f"TwoStageHeadModule: clip_ensemble_weight must be in [0, 1], got {clip_ensemble_weight}")
        if region_mode not in ("crop", "mask"):
            raise ValueError(f"TwoStageHeadModule: region_mode must be 'crop' or 'mask', got {region_mode!r}")
        self.proposal = MaskProposalNetwork(**proposal)
        self.criterion = MaskClassificationLoss(HungarianMatcher(**(matcher or {})), **(loss or {}))
        self.clip_ensemble = bool(clip_ensemble)
        self.clip_ensemble_weight = float(clip_ensemble_weight)
        self.mask_thr = float(mask_thr)
        self.region_mode = region_mode
        self.expand_ratio = float(expand_ratio)
        self.clip_temperature = clip_temperature
        self.ignore_index = int(ignore_index)

    def forward(self, feats: dict, text_embeds: Tensor) -> dict:
        for key in ("images", "layers"):
            if key not in feats:
                raise KeyError(f"two-stage head: inputs lack {key!r} (have {sorted(feats)})")
        return self.proposal(feats["images"], feats["layers"], text_embeds)

    def loss(self, feats: dict, text_embeds: Tensor, seg_labels: Tensor) -> dict:
        """Hungarian-matched mask-classification loss against semantic labels ``seg_labels`` (B×H×W, seen
        indices of the active vocabulary or ``ignore_index``)."""
        out = self.forward(feats, text_embeds)
        if seg_labels.dim() == 4:
            seg_labels = seg_labels.squeeze(1)
        targets = [sem_seg_to_mask_targets(s, self.ignore_index, num_classes=text_embeds.shape[0])
                   for s in seg_labels]
        return self.criterion(out, targets)

    def region_probs(self, clip_model: nn.Module, image: Tensor, masks: Tensor, text_embeds: Tensor) -> Tensor:
        """CLIP probabilities (Q×C) of the proposals of one image; 1 for proposals with an empty mask."""
        size = _clip_input_size(clip_model)
        regions, valid = masked_region_images(image, masks, size, mask_thr=self.mask_thr, mode=self.region_mode,
                                              expand_ratio=self.expand_ratio)
        probs, _ = classify_regions(clip_model, regions.to(image.dtype), text_embeds, self.clip_temperature)
        out = masks.new_ones((masks.shape[0], text_embeds.shape[0]))
        out[valid] = probs.to(out.dtype)
        return out

    @torch.no_grad()
    def predict(self, feats: dict, text_embeds: Tensor, size: Sequence[int], seen_mask: Tensor | None = None,
                clip_model: nn.Module | None = None) -> Tensor:
        """Semantic scores B×C×H×W at ``size``: ``Σ_q p_q(c) · sigmoid(m_q)``, with ``p_q`` the ensemble of the
        proposal classifier and CLIP's region classification (see the module docstring)."""
        out = self.forward(feats, text_embeds)
        masks = F.interpolate(out["pred_masks"], size=tuple(size), mode="bilinear", align_corners=False).sigmoid()
        p_cls = out["pred_logits"].softmax(-1)[..., :-1]
        if not self.clip_ensemble:
            return torch.einsum("bqc,bqhw->bchw", p_cls, masks)
        if clip_model is None:
            raise ValueError("two-stage head: clip_ensemble=True needs the CLIP model (inputs['clip_model'])")
        if seen_mask is None:
            seen_mask = torch.ones(text_embeds.shape[0], dtype=torch.bool)
        images = feats["images"]
        if tuple(images.shape[-2:]) != tuple(size):
            images = F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False)
        results = []
        for b in range(masks.shape[0]):
            p_clip = self.region_probs(clip_model, images[b], masks[b], text_embeds)
            if self.clip_ensemble_weight > 0:
                probs, m = geometric_ensemble(p_cls[b], p_clip, seen_mask, self.clip_ensemble_weight), masks[b]
            else:  # zsseg with weight 0: CLIP scores alone, on the non-empty proposals
                valid = (masks[b] > self.mask_thr).flatten(1).any(-1)
                probs, m = p_clip[valid], masks[b][valid]
            results.append(torch.einsum("qc,qhw->chw", probs, m))
        return torch.stack(results, dim=0)


def _clip_input_size(clip_model: nn.Module) -> tuple[int, int]:
    """The image size open_clip's visual tower was built for."""
    size = getattr(getattr(clip_model, "visual", None), "image_size", None)
    if size is None:
        raise AttributeError("two-stage head: clip_model.visual.image_size is missing; expected an open_clip CLIP")
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
