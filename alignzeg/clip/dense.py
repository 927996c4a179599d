"""Frozen dense features from an open_clip ViT: intermediate patch tokens, class tokens, the image embedding
and MaskCLIP's value-path features in the joint image-text space.

The value path follows MaskCLIP (Zhou, Loy, Dai, "Extract Free Dense Labels from CLIP", ECCV 2022;
https://github.com/chongzhou96/MaskCLIP, Apache-2.0). Their ViT backbone (``return_qkv`` on the last layer,
``final_norm=True``, then the head's 1x1 ``proj``) computes, for the input ``x`` of the last residual block::

    v = out_proj(W_v · ln_1(x) + b_v)        # value projection and attention output projection, no q·k attention
    v = x + v                                 # the block's attention residual is kept
    v = v + mlp(ln_2(v))                      # and so is its MLP with residual
    dense = ln_post(v) @ proj                 # the visual tower's final norm and projection into the joint space

That is what ``value_path="maskclip"`` (default) implements; open_clip's layer-scale modules ``ls_1/ls_2``
(identity for OpenAI / LAION ViTs) are applied where the block applies them. ``value_path="value"`` is the
stricter reading of the paper's text (``ln_post(out_proj(v_proj(ln_1(x)))) @ proj``, no residual, no MLP),
offered for ablations. The class-token position of the dense output is dropped.

Positional embeddings are resized on the fly for any input whose sides are multiples of the patch size, with
the interpolation open_clip uses when it loads a checkpoint at another size (``resize_pos_embed``: bicubic,
antialias, align_corners=False), so a model built at 224 and run at 512 matches one built at 512.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CLIPVisualFeatures", "interpolate_pos_embed", "default_out_layers"]


def interpolate_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                          num_prefix_tokens: int = 1) -> torch.Tensor:
    """Resize a ``(prefix + gh*gw) × C`` ViT position embedding to ``new_grid`` (identity when equal).

    Same resampling as ``open_clip.model.resize_pos_embed`` (bicubic, antialias=True, align_corners=False).
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return pos_embed
    prefix, grid = pos_embed[:num_prefix_tokens], pos_embed[num_prefix_tokens:]
    if grid.shape[0] != old_grid[0] * old_grid[1]:
        raise ValueError(f"pos_embed has {grid.shape[0]} grid tokens, not {old_grid[0]}x{old_grid[1]}")
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=0)


def default_out_layers(num_layers: int) -> tuple[int, ...]:
    """Four evenly spaced block outputs ending at the last block, e.g. (2, 5, 8, 11) for 12 blocks."""
    picks = sorted({max(0, round(num_layers * k / 4) - 1) for k in (1, 2, 3, 4)})
    return tuple(picks)


def run_block(block: nn.Module, x: torch.Tensor, checkpointing: bool = False) -> torch.Tensor:
    """``block(x, attn_mask=None)``, with activation checkpointing (torch.utils.checkpoint, non-reentrant)
    when ``checkpointing`` and autograd records: the block's activations are recomputed in the backward
    pass instead of stored, which matters where gradients cross the frozen CLIP (ZegCLIP's visual
    prompts, a fine-tuned tower); without autograd there is nothing to store and it runs as is."""
    if checkpointing and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(lambda t: block(t, attn_mask=None), x, use_reentrant=False)
    return block(x, attn_mask=None)


class CLIPVisualFeatures(nn.Module):
    """Frozen feature extractor around ``clip_model.visual`` (an open_clip ``VisionTransformer``).

    Args:
        clip_model: an open_clip CLIP (or its ``.visual``) with a ViT tower, class-token pooling and no
            attentional pooler (ViT-B/16 style).
        out_layers: 0-based indices of the blocks whose outputs are returned (negative counts from the end);
            default :func:`default_out_layers`.
        value_path: ``"maskclip"`` (default, MaskCLIP's code) or ``"value"`` (no residual / MLP); see module doc.

    ``forward(images)`` takes normalised ``B×3×H×W`` images (H, W multiples of the patch size) and returns
    ``dict(layers=[B×W×h×w], cls_layers=[B×W], image_embed=B×D, dense_embed=B×D×h×w, grid=(h, w))``.
    The parameters are shared with ``clip_model`` and set to ``requires_grad=False``; the module stays in eval
    mode under ``train()``.
    """

    checkpointing = False  # activation checkpointing of every block (set by CLIPBackbone)


    def __init__(self, clip_model: nn.Module, out_layers: Sequence[int] | None = None,
                 value_path: str = "maskclip"):
        super().__init__()
        visual = getattr(clip_model, "visual", clip_model)
        for attr in ("conv1", "class_embedding", "positional_embedding", "transformer", "ln_post", "proj"):
            if not hasattr(visual, attr):
                raise TypeError(f"CLIPVisualFeatures needs an open_clip ViT visual tower; "
                                f"{type(visual).__name__} has no {attr!r}")
        if getattr(visual, "attn_pool", None) is not None:
            raise NotImplementedError("CLIPVisualFeatures: visual towers with an attentional pooler are not supported")
        if getattr(visual, "pool_type", "tok") != "tok":
            raise NotImplementedError(f"CLIPVisualFeatures: pool_type {visual.pool_type!r} (only 'tok')")
        if visual.proj is None:
            raise NotImplementedError("CLIPVisualFeatures: visual tower without a projection (proj is None)")
        last = visual.transformer.resblocks[-1]
        if not isinstance(getattr(last, "attn", None), nn.MultiheadAttention) or last.attn.in_proj_weight is None:
            raise NotImplementedError(
                f"CLIPVisualFeatures: value path needs nn.MultiheadAttention with a packed in_proj; "
                f"last block is {type(last).__name__}")
        if value_path not in ("maskclip", "value"):
            raise ValueError(f"value_path must be 'maskclip' or 'value', got {value_path!r}")
        self.visual = visual
        self.value_path = value_path
        self.num_layers = len(visual.transformer.resblocks)
        layers = default_out_layers(self.num_layers) if out_layers is None else tuple(out_layers)
        resolved = []
        for idx in layers:
            if not -self.num_layers <= int(idx) < self.num_layers:
                raise ValueError(f"out_layers entry {idx} out of range for {self.num_layers} blocks")
            resolved.append(int(idx) % self.num_layers)
        self.out_layers = tuple(resolved)
        self.patch_size = tuple(visual.patch_size) if isinstance(visual.patch_size, (tuple, list)) \
            else (visual.patch_size, visual.patch_size)
        self.native_grid = tuple(visual.grid_size)
        self.width = int(visual.conv1.out_channels)
        self.embed_dim = int(visual.proj.shape[1])
        for p in self.visual.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):  # noqa: D102 - frozen: always eval
        return super().train(False)

    def pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position embedding (class token first) for a ``grid`` of patches."""
        return interpolate_pos_embed(self.visual.positional_embedding, self.native_grid, grid)

    def _value_path(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        attn: nn.MultiheadAttention = block.attn
        width = x.shape[-1]
        w_v = attn.in_proj_weight[2 * width:]
        b_v = attn.in_proj_bias[2 * width:] if attn.in_proj_bias is not None else None
        v = attn.out_proj(F.linear(block.ln_1(x), w_v, b_v))
        if self.value_path == "maskclip":
            v = x + block.ls_1(v)
            v = v + block.ls_2(block.mlp(block.ln_2(v)))
        return v

    def forward(self, images: torch.Tensor) -> dict:
        visual = self.visual
        if images.ndim != 4:
            raise ValueError(f"images must be B×3×H×W, got shape {tuple(images.shape)}")
        B, _, H, W = images.shape
        ph, pw = self.patch_size
        if H % ph or W % pw:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {ph}x{pw}")
        h, w = H // ph, W // pw
        dtype = visual.conv1.weight.dtype
        x = visual.conv1(images.to(dtype)).flatten(2).transpose(1, 2)  # B × hw × width
        cls = visual.class_embedding.to(dtype).view(1, 1, -1).expand(B, 1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed((h, w)).to(dtype)
        x = visual.ln_pre(x)

        batch_first = getattr(visual.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        taken: dict[int, torch.Tensor] = {}
        blocks = visual.transformer.resblocks
        last_in = x
        for i, block in enumerate(blocks):
            if i == len(blocks) - 1:
                last_in = x
            x = run_block(block, x, self.checkpointing)
            if i in self.out_layers:
                taken[i] = x if batch_first else x.transpose(0, 1)
        layers = [taken[i][:, 1:].transpose(1, 2).reshape(B, -1, h, w) for i in self.out_layers]
        cls_layers = [taken[i][:, 0] for i in self.out_layers]
        dense = self._value_path(blocks[-1], last_in)
        if not batch_first:
            x, dense = x.transpose(0, 1), dense.transpose(0, 1)

        pooled = visual.ln_post(x[:, 0]) if getattr(visual, "final_ln_after_pool", False) else visual.ln_post(x)[:, 0]
        image_embed = pooled @ visual.proj
        dense = visual.ln_post(dense[:, 1:]) @ visual.proj  # B × hw × D
        dense = dense.transpose(1, 2).reshape(B, -1, h, w)
        return {"layers": layers, "cls_layers": cls_layers, "image_embed": image_embed,
                "dense_embed": dense, "grid": (h, w)}
