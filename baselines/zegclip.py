"""ZegCLIP: one-stage zero-shot segmentation by adapting a frozen CLIP (pure PyTorch parts).

Follows Zhou et al., "ZegCLIP: Towards Adapting CLIP for Zero-shot Semantic Segmentation", CVPR 2023
(arXiv 2212.03588); official code github.com/ZiqinZhou66/ZegCLIP (MIT licence), read for
``models/backbone/img_encoder.py`` (``VPTCLIPVisionTransformer``), ``models/decode_heads/decode_seg.py``
(``ATMSingleHeadSeg``) and ``models/losses`` (``SegLossPlus`` / ``SegPlusCriterion``). Written anew from
the paper and that code's description; nothing is copied. The pieces:

- :class:`DeepVisualPrompts` + :func:`prompted_visual_forward`: deep visual prompt tuning (VPT-deep,
  Jia et al. ECCV 2022) of a frozen open_clip ViT: before every transformer block ``i`` the ``T`` prompt
  tokens of layer ``i`` (shared linear projection, dropout) are inserted between the [CLS] token and the
  patch tokens, replacing the previous layer's prompt outputs. After the last block a learnable
  LayerNorm (``final_norm``, ZegCLIP's ``prompt_norm``) precedes CLIP's own ``ln_post`` and ``proj``.
- :func:`relationship_descriptor`: the per-class query input ``r_c = [t_c ⊙ g, t_c]`` (``g`` the
  L2-normalised image [CLS] embedding, ``t_c`` the class text embedding), projected to the decoder width
  by a linear layer.
- :class:`ZegCLIPDecoder`: a light attention decoder (ZegCLIP's "ATM" decoder): ``num_layers`` layers of
  cross-attention from the class queries to the projected patch tokens followed by an FFN, both post-norm;
  the mask of class ``c`` is the head-averaged scaled attention logit ``q_c · k_j / sqrt(d)`` of the last
  layer over the patch tokens ``j``.
- :func:`zegclip_mask_loss`: sigmoid focal loss on every class map (weight 100 in the released configs)
  plus dice loss on the classes present in the image (weight 1), normalised by the number of present
  classes in the batch.
- :func:`calibrate_seen_scores`: inductive inference applies a sigmoid to the class maps and subtracts a
  constant (0.1 in ``ATMSingleHeadSeg.semantic_inference``) from the seen-class scores; transductive
  (self-training) evaluation subtracts nothing.

What differs from the official code:

- The backbone is open_clip's ViT run block by block here (no drop-path in the frozen CLIP; the official
  ViT has ``drop_path_rate=0.1`` in its frozen blocks). Position embeddings are resized as
  :mod:`alignzeg.clip.dense` does for the plain CLIP features, so that with no prompts the prompted
  backbone reproduces the plain features exactly.
- Prompts of all layers are one parameter ``L×T×W`` (the official code keeps layer 0's shallow prompt and
  layers 1..L-1's deep prompts in two parameters; same function). ``deep=False`` gives shallow VPT (one set
  of prompts before the first block, carried through all blocks).
- Without prompts (``num_tokens=0``) the final LayerNorm is dropped too, so the module equals plain CLIP.
- Decoder depth, heads, the focal/dice weights and the calibration constant are constructor parameters.
- Deep supervision of intermediate decoder layers is available (``aux_loss``) but off, as in the released
  code (its ``SegLossPlus`` receives only the last layer's masks).
- Pixels labelled ``ignore_index`` count as negatives of every class in the focal term, as in the official
  criterion (``ignore_as_negative=True``); ``False`` excludes them from the focal average.

No mmseg import; the mmseg adapters live in :mod:`baselines.mmseg_modules`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignzeg.clip.dense import CLIPVisualFeatures, run_block
from alignzeg.models.losses import dice_loss

__all__ = [
    "DeepVisualPrompts", "PromptedCLIPVisualFeatures", "relationship_descriptor", "CrossAttention", "ZegCLIPDecoderLayer", "ZegCLIPDecoder",
    "sigmoid_focal_loss", "zegclip_mask_loss", "calibrate_seen_scores", "ZegCLIPHeadModule",
]


# ----------------------------------------------------------------------------------------------- prompts
class DeepVisualPrompts(nn.Module):
    """Learnable visual prompt tokens for a ViT of ``num_layers`` blocks and width ``width``.

    Args:
        num_layers: blocks of the ViT.
        width: token width of the ViT.
        num_tokens: prompt tokens per layer (ZegCLIP: 10 on VOC, 100 on COCO-Stuff). 0 = no prompts.
        deep: one set of prompts per block, replacing the previous block's prompt outputs (VPT-deep, as
            ZegCLIP); ``False`` = one set before the first block only (VPT-shallow).
        patch_size: ViT patch size, only for the uniform (Xavier-style) initialisation range
            ``sqrt(6 / (3·p² + width))`` used by VPT and ZegCLIP.
        dropout: dropout on the projected prompt tokens (0.1).
        final_norm: a learnable LayerNorm (eps 1e-6) after the last block (ZegCLIP's ``prompt_norm``).

    ``tokens(layer, batch)`` returns the B×T×W prompt tokens to insert before block ``layer`` or ``None``.
    """

    def __init__(self, num_layers: int, width: int, num_tokens: int = 10, deep: bool = True,
                 patch_size: int = 16, dropout: float = 0.1, final_norm: bool = True) -> None:
        super().__init__()
        if num_tokens < 0:
            raise ValueError(f"DeepVisualPrompts: num_tokens must be >= 0, got {num_tokens}")
        if num_layers <= 0 or width <= 0:
            raise ValueError(f"DeepVisualPrompts: num_layers and width must be positive, got {num_layers}, {width}")
        self.num_layers = int(num_layers)
        self.width = int(width)
        self.num_tokens = int(num_tokens)
        self.deep = bool(deep)
        if self.num_tokens == 0:
            self.prompt_embeddings = None
            self.prompt_proj = None
            self.prompt_norm = None
            self.prompt_dropout = nn.Identity()
            return
        sets = self.num_layers if self.deep else 1
        bound = math.sqrt(6.0 / float(3 * patch_size * patch_size + width))
        self.prompt_embeddings = nn.Parameter(torch.empty(sets, self.num_tokens, self.width).uniform_(-bound, bound))
        self.prompt_proj = nn.Linear(self.width, self.width)
        nn.init.kaiming_normal_(self.prompt_proj.weight, a=0, mode="fan_out")
        nn.init.zeros_(self.prompt_proj.bias)
        self.prompt_dropout = nn.Dropout(dropout)
        self.prompt_norm = nn.LayerNorm(self.width, eps=1e-6) if final_norm else None

    @property
    def enabled(self) -> bool:
        return self.num_tokens > 0

    def tokens(self, layer: int, batch: int) -> Tensor | None:
        """Prompt tokens (B×T×W) inserted before block ``layer`` (0-based), or ``None``."""
        if not self.enabled:
            return None
        if not self.deep and layer > 0:
            return None
        p = self.prompt_proj(self.prompt_embeddings[layer if self.deep else 0])
        return self.prompt_dropout(p).unsqueeze(0).expand(batch, -1, -1)

    def finalize(self, x: Tensor) -> Tensor:
        """Apply the final prompt LayerNorm (identity when disabled)."""
        return self.prompt_norm(x) if self.enabled and self.prompt_norm is not None else x


class PromptedCLIPVisualFeatures(CLIPVisualFeatures):
    """:class:`alignzeg.clip.dense.CLIPVisualFeatures` with deep visual prompts; the CLIP stays frozen.

    Extra args are those of :class:`DeepVisualPrompts` (``num_tokens``, ``deep``, ``prompt_dropout``,
    ``final_norm``). ``forward(images)`` returns the same dict as the plain features (``layers``,
    ``cls_layers``, ``image_embed``, ``dense_embed``, ``grid``; patch tokens without the prompt positions)
    plus ``patch_embed`` (B×D×h×w: the last block's patch tokens through ``final_norm``, ``ln_post`` and
    ``proj``, the input of ZegCLIP's decoder). ``image_embed`` also passes ``final_norm``;
    ``dense_embed`` (MaskCLIP's value path of the last block, computed with the prompts in the sequence)
    does not. Only the prompt parameters require gradients; the CLIP tower stays in eval mode while the
    prompt dropout follows ``train()``. With ``num_tokens=0`` the output equals the plain features.
    """

    def __init__(self, clip_model: nn.Module, out_layers: Sequence[int] | None = None,
                 value_path: str = "maskclip", num_tokens: int = 10, deep: bool = True,
                 prompt_dropout: float = 0.1, final_norm: bool = True) -> None:
        super().__init__(clip_model, out_layers=out_layers, value_path=value_path)
        self.prompts = DeepVisualPrompts(self.num_layers, self.width, num_tokens=num_tokens, deep=deep,
                                         patch_size=self.patch_size[0], dropout=prompt_dropout,
                                         final_norm=final_norm)

    def train(self, mode: bool = True):  # noqa: D102 - CLIP always eval, prompts follow mode
        nn.Module.train(self, mode)
        self.visual.train(False)
        return self

    def forward(self, images: Tensor) -> dict:
        visual = self.visual
        if images.ndim != 4:
            raise ValueError(f"images must be B×3×H×W, got shape {tuple(images.shape)}")
        b, _, height, width = images.shape
        ph, pw = self.patch_size
        if height % ph or width % pw:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {ph}x{pw}")
        h, w = height // ph, width // pw
        hw = h * w
        dtype = visual.conv1.weight.dtype
        x = visual.conv1(images.to(dtype)).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(dtype).view(1, 1, -1).expand(b, 1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed((h, w)).to(dtype)
        x = visual.ln_pre(x)  # B×(1+hw)×W, batch first in this loop

        batch_first = getattr(visual.transformer, "batch_first", True)
        blocks = visual.transformer.resblocks
        taken: dict[int, Tensor] = {}
        last_in = x
        for i, block in enumerate(blocks):
            p = self.prompts.tokens(i, b)
            if p is not None:  # replace whatever sits between [CLS] and the patch tokens
                x = torch.cat([x[:, :1], p.to(x.dtype), x[:, -hw:]], dim=1)
            if i == len(blocks) - 1:
                last_in = x
            x = run_block(block, x, self.checkpointing) if batch_first else \
                run_block(block, x.transpose(0, 1), self.checkpointing).transpose(0, 1)
            if i in self.out_layers:
                taken[i] = x
        layers = [taken[i][:, -hw:].transpose(1, 2).reshape(b, -1, h, w) for i in self.out_layers]
        cls_layers = [taken[i][:, 0] for i in self.out_layers]
        if batch_first:
            dense = self._value_path(blocks[-1], last_in)
        else:
            dense = self._value_path(blocks[-1], last_in.transpose(0, 1)).transpose(0, 1)

        x = self.prompts.finalize(x)
        if getattr(visual, "final_ln_after_pool", False):
            pooled = visual.ln_post(x[:, 0])
        else:
            pooled = visual.ln_post(x)[:, 0]
        image_embed = pooled @ visual.proj
        patch = (visual.ln_post(x[:, -hw:]) @ visual.proj).transpose(1, 2).reshape(b, -1, h, w)
        dense = (visual.ln_post(dense[:, -hw:]) @ visual.proj).transpose(1, 2).reshape(b, -1, h, w)
        return {"layers": layers, "cls_layers": cls_layers, "image_embed": image_embed, "dense_embed": dense,
                "grid": (h, w), "patch_embed": patch}


# ----------------------------------------------------------------------------------------------- queries
def relationship_descriptor(text_embeds: Tensor, image_embed: Tensor) -> Tensor:
    """ZegCLIP's relationship descriptor ``r = [t ⊙ g, t]``.

    ``text_embeds`` C×D (L2-normalised class embeddings), ``image_embed`` B×D (the image [CLS] embedding,
    L2-normalised). Returns B×C×2D.
    """
    if text_embeds.dim() != 2 or image_embed.dim() != 2 or text_embeds.shape[1] != image_embed.shape[1]:
        raise ValueError(f"relationship_descriptor: expected text C×D and image B×D, got "
                         f"{tuple(text_embeds.shape)} and {tuple(image_embed.shape)}")
    t = text_embeds.unsqueeze(0).expand(image_embed.shape[0], -1, -1)
    return torch.cat([t * image_embed.unsqueeze(1), t], dim=-1)


# ----------------------------------------------------------------------------------------------- decoder
class CrossAttention(nn.Module):
    """Multi-head cross-attention that also returns the head-averaged scaled attention logits.

    ``forward(query B×Nq×C, memory B×Nk×C) -> (B×Nq×C output, B×Nq×Nk logits before the softmax)``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.1,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"CrossAttention: dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, query: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        b, nq, c = query.shape
        q, k, v = self._heads(self.q(query)), self._heads(self.k(memory)), self._heads(self.v(memory))
        logits = (q @ k.transpose(-2, -1)) * self.scale  # B×h×Nq×Nk
        attn = self.attn_drop(logits.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(b, nq, c)
        return self.proj_drop(self.proj(out)), logits.mean(dim=1)


class ZegCLIPDecoderLayer(nn.Module):
    """Cross-attention (queries -> patch tokens) and FFN, each with residual, dropout and post-LayerNorm."""

    def __init__(self, dim: int, num_heads: int = 8, ffn_ratio: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias=True, attn_drop=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim * ffn_ratio), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(dim * ffn_ratio, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, query: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        out, logits = self.cross_attn(query, memory)
        query = self.norm1(query + self.drop1(out))
        query = self.norm2(query + self.drop2(self.ffn(query)))
        return query, logits


class ZegCLIPDecoder(nn.Module):
    """Relationship-descriptor queries and the light attention decoder; per-class mask logits.

    Args:
        in_channels: width of the patch tokens given to ``forward`` (CLIP's joint-space dim ``D`` when the
            projected last-layer tokens are used, as ZegCLIP does).
        embed_dims: decoder width (ZegCLIP: = ``D`` = 512 for ViT-B/16, with ``use_proj=False``).
        text_dims: width of the text / image embeddings (``D``); defaults to ``embed_dims``.
        num_layers, num_heads: decoder depth and heads (ZegCLIP: 3 and 8).
        use_proj: project the patch tokens with Linear + LayerNorm (the official default for
            ``in_channels != embed_dims``; off in the released configs).
        dropout: dropout in the decoder layers (0.1, torch's TransformerDecoderLayer default).

    ``forward(patch_tokens B×Cin×h×w, image_embed B×D, text_embeds C×D)`` returns
    ``dict(pred_masks=B×C×h×w, aux_masks=[B×C×h×w per earlier layer], queries=B×C×E)``.
    """

    def __init__(self, in_channels: int, embed_dims: int, text_dims: int | None = None, num_layers: int = 3,
                 num_heads: int = 8, use_proj: bool = False, dropout: float = 0.1) -> None:
        super().__init__()
        text_dims = embed_dims if text_dims is None else text_dims
        if not use_proj and in_channels != embed_dims:
            raise ValueError(f"ZegCLIPDecoder: in_channels ({in_channels}) != embed_dims ({embed_dims}) "
                             "needs use_proj=True")
        if num_layers <= 0:
            raise ValueError(f"ZegCLIPDecoder: num_layers must be positive, got {num_layers}")
        self.input_proj = (nn.Sequential(nn.Linear(in_channels, embed_dims), nn.LayerNorm(embed_dims))
                           if use_proj else nn.Identity())
        self.q_proj = nn.Linear(2 * text_dims, embed_dims)
        self.layers = nn.ModuleList(ZegCLIPDecoderLayer(embed_dims, num_heads, dropout=dropout)
                                    for _ in range(num_layers))
        self.init_weights()

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, patch_tokens: Tensor, image_embed: Tensor, text_embeds: Tensor) -> dict:
        if patch_tokens.dim() != 4:
            raise ValueError(f"ZegCLIPDecoder: patch_tokens must be B×C×h×w, got {tuple(patch_tokens.shape)}")
        b, _, h, w = patch_tokens.shape
        memory = self.input_proj(patch_tokens.flatten(2).transpose(1, 2))  # B×hw×E
        query = self.q_proj(relationship_descriptor(text_embeds.to(image_embed.dtype), image_embed))
        masks = []
        for layer in self.layers:
            query, logits = layer(query, memory)
            masks.append(logits.reshape(b, -1, h, w))
        return dict(pred_masks=masks[-1], aux_masks=masks[:-1], queries=query)


# ----------------------------------------------------------------------------------------------- losses
def sigmoid_focal_loss(inputs: Tensor, targets: Tensor, num_masks: float, alpha: float = 0.25,
                       gamma: float = 2.0, valid: Tensor | None = None) -> Tensor:
    """RetinaNet focal loss of logits ``inputs`` (N×P) against binary ``targets`` (N×P), averaged over the
    points of each map (only ``valid`` points, N×P or P bool, if given), summed over maps, divided by
    ``num_masks``."""
    targets = targets.to(inputs.dtype)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p = inputs.sigmoid()
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if valid is None:
        per_map = loss.mean(1)
    else:
        valid = valid.to(loss.dtype).expand_as(loss)
        per_map = (loss * valid).sum(1) / valid.sum(1).clamp(min=1)
    return per_map.sum() / num_masks


def zegclip_mask_loss(mask_logits: Tensor, seg_labels: Tensor, ignore_index: int = 255,
                      focal_weight: float = 100.0, dice_weight: float = 1.0, focal_alpha: float = 0.25,
                      focal_gamma: float = 2.0, ignore_as_negative: bool = True) -> dict:
    """ZegCLIP's per-class mask loss.

    ``mask_logits`` B×C×h×w (class maps, resized bilinearly to the label size), ``seg_labels`` B×H×W class
    indices in ``0..C-1`` or ``ignore_index``. Focal loss over all ``B·C`` maps against one-hot targets,
    dice loss over the maps of the classes present in each image, both divided by the number of present
    (image, class) pairs (at least 1). Returns ``dict(loss_focal=..., loss_dice=...)`` (weighted).
    """
    if seg_labels.dim() == 4:
        seg_labels = seg_labels.squeeze(1)
    b, c = mask_logits.shape[:2]
    labels = seg_labels.long()
    if mask_logits.shape[-2:] != labels.shape[-2:]:
        mask_logits = F.interpolate(mask_logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    valid = labels != ignore_index
    bad = labels[valid]
    if bad.numel() and (int(bad.max()) >= c or int(bad.min()) < 0):
        raise ValueError(f"zegclip_mask_loss: labels {sorted(set(bad.unique().tolist()))} outside 0..{c - 1} "
                         f"(ignore_index={ignore_index}); is the dataset mode right for this vocabulary?")
    onehot = F.one_hot(torch.where(valid, labels, torch.zeros_like(labels)), c).permute(0, 3, 1, 2)
    onehot = onehot * valid.unsqueeze(1)  # B×C×H×W, ignored pixels all-zero
    present = onehot.flatten(2).any(-1)  # B×C
    num_masks = max(float(present.sum()), 1.0)
    logits = mask_logits.flatten(2)  # B×C×P
    targets = onehot.flatten(2)
    focal_valid = None if ignore_as_negative else valid.flatten(1).unsqueeze(1).expand(-1, c, -1).reshape(b * c, -1)
    loss_focal = sigmoid_focal_loss(logits.reshape(b * c, -1), targets.reshape(b * c, -1), num_masks,
                                    alpha=focal_alpha, gamma=focal_gamma, valid=focal_valid)
    if present.any():
        loss_dice = dice_loss(logits[present], targets[present], num_masks)
    else:
        loss_dice = mask_logits.sum() * 0.0
    return dict(loss_focal=focal_weight * loss_focal, loss_dice=dice_weight * loss_dice)


# ----------------------------------------------------------------------------------------------- inference
def calibrate_seen_scores(scores: Tensor, seen_mask: Tensor, value: float) -> Tensor:
    """Subtract ``value`` from the seen-class channels of ``scores`` (B×C×...); other channels unchanged.

    ZegCLIP applies this to the sigmoid class maps at inductive inference (value 0.1), so that unseen
    classes are not crowded out by the seen classes the decoder was trained on.
    """
    seen_mask = torch.as_tensor(seen_mask, dtype=torch.bool, device=scores.device)
    if seen_mask.dim() != 1 or seen_mask.numel() != scores.shape[1]:
        raise ValueError(f"calibrate_seen_scores: seen_mask of {seen_mask.numel()} entries for "
                         f"{scores.shape[1]} classes")
    shape = [1, -1] + [1] * (scores.dim() - 2)
    return scores - float(value) * seen_mask.to(scores.dtype).reshape(shape)


# ----------------------------------------------------------------------------------------------- head
class ZegCLIPHeadModule(nn.Module):
    """ZegCLIP's decode head without mmseg: decoder, loss and calibrated inference.

    Args:
        decoder: kwargs of :class:`ZegCLIPDecoder`.
        loss_focal_weight, loss_dice_weight: loss weights (ZegCLIP: 100 and 1).
        focal_alpha, focal_gamma: focal loss parameters (0.25, 2).
        aux_loss: also supervise the intermediate decoder layers (``d{i}.loss_*``); off in ZegCLIP's code.
        ignore_as_negative: see :func:`zegclip_mask_loss`.
        seen_calibration: constant subtracted from the seen-class scores at inference (ZegCLIP inductive:
            0.1; transductive / self-training: 0.0).

    Inputs are feature dicts with ``patch_embed`` (B×D×h×w, the last-layer patch tokens in CLIP's joint
    space, L2-normalised) and ``image_embed`` (B×D), as the prompted backbone writes them.
    """

    def __init__(self, decoder: dict, loss_focal_weight: float = 100.0, loss_dice_weight: float = 1.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, aux_loss: bool = False,
                 ignore_as_negative: bool = True, seen_calibration: float = 0.1, ignore_index: int = 255) -> None:
        super().__init__()
        self.decoder = ZegCLIPDecoder(**decoder)
        self.loss_focal_weight = float(loss_focal_weight)
        self.loss_dice_weight = float(loss_dice_weight)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.aux_loss = bool(aux_loss)
        self.ignore_as_negative = bool(ignore_as_negative)
        self.seen_calibration = float(seen_calibration)
        self.ignore_index = int(ignore_index)

    @staticmethod
    def _inputs(feats: dict) -> tuple[Tensor, Tensor]:
        for key in ("patch_embed", "image_embed"):
            if key not in feats:
                raise KeyError(f"ZegCLIP head: backbone features lack {key!r} (have {sorted(feats)}); use the "
                               "ZegCLIPPromptedBackbone (num_tokens=0 for plain CLIP)")
        patch = F.normalize(feats["patch_embed"], dim=1)
        image = F.normalize(feats["image_embed"], dim=-1)
        return patch, image

    def forward(self, feats: dict, text_embeds: Tensor) -> dict:
        patch, image = self._inputs(feats)
        return self.decoder(patch, image, text_embeds)

    def loss(self, feats: dict, text_embeds: Tensor, seg_labels: Tensor) -> dict:
        out = self.forward(feats, text_embeds)
        kw = dict(ignore_index=self.ignore_index, focal_weight=self.loss_focal_weight,
                  dice_weight=self.loss_dice_weight, focal_alpha=self.focal_alpha, focal_gamma=self.focal_gamma,
                  ignore_as_negative=self.ignore_as_negative)
        losses = zegclip_mask_loss(out["pred_masks"], seg_labels, **kw)
        if self.aux_loss:
            for i, aux in enumerate(out["aux_masks"]):
                for key, value in zegclip_mask_loss(aux, seg_labels, **kw).items():
                    losses[f"d{i}.{key}"] = value
        return losses

    def predict(self, feats: dict, text_embeds: Tensor, size: Sequence[int], seen_mask: Tensor | None = None,
                calibration: float | None = None) -> Tensor:
        """Class scores B×C×H×W at ``size``: ``sigmoid(mask logits)`` minus the calibration constant on the
        seen classes (``seen_mask`` C bool; no calibration when ``None``)."""
        out = self.forward(feats, text_embeds)
        masks = F.interpolate(out["pred_masks"], size=tuple(size), mode="bilinear", align_corners=False)
        scores = masks.sigmoid()
        value = self.seen_calibration if calibration is None else float(calibration)
        if seen_mask is not None and value != 0.0:
            scores = calibrate_seen_scores(scores, seen_mask, value)
        return scores
