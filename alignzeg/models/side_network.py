"""Learnable lightweight image encoder fused with frozen CLIP features (a side adapter network).

Follows the idea of the Side Adapter Network (Xu et al., "Side Adapter Network for Open-Vocabulary
Semantic Segmentation", CVPR 2023, arXiv 2302.12242; github.com/MendelXu/SAN, MIT licence; also
MMSegmentation 1.x ``models/decode_heads/san_head.py``, Apache-2.0): a small vision transformer runs on
the normalised image at the stride of CLIP's patch grid, and projected intermediate CLIP feature maps
are added to its tokens before chosen blocks. Written from the paper and those descriptions; what
differs:

- The mask queries do not live inside the side encoder (SAN concatenates them to the image tokens);
  queries are refined in a separate decoder (see :mod:`alignzeg.models.alignzeg_head`), so that the
  query/feature interaction is an explicit, switchable part of the model (AlignZeg's MRPE).
- A two-convolution stem at stride 4 feeds the patch embedding and is kept as a high-resolution branch,
  so mask proposals are predicted at 1/4 of the input size instead of at the patch grid.
- CLIP maps are layer-normalised over channels and projected with a zero-initialised 1×1 convolution, so
  at initialisation the side encoder is not disturbed by the (differently scaled) CLIP activations.
- Position embeddings are learned for a reference grid and resized bicubically for other input sizes.

Pure PyTorch; no mmseg import.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerNorm2d", "SideNetwork"]


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channel dimension of a B×C×H×W map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def _conv_norm_act(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(1, cout), nn.GELU())


class SideNetwork(nn.Module):
    """Side encoder: stride-4 conv stem, patch embedding to CLIP's grid, ViT-lite blocks with CLIP fusion.

    Args:
        clip_channels: width W of the CLIP feature maps that are fused (``feats['layers']`` entries).
        embed_dims: width E of the side encoder (tokens, high-resolution features).
        patch_size: CLIP's patch size p; the side encoder's token grid is H/p × W/p. Must be a multiple of 4.
        num_layers: number of transformer blocks.
        num_heads, mlp_ratio: transformer block settings.
        fusion_index: for the k-th fused CLIP map, the number of side blocks run before it is added
            (0 = added to the patch embedding before the first block). Non-decreasing, each in
            ``0..num_layers``. Its length is the number of CLIP maps the forward pass expects.
        ref_grid: grid size the position embedding is learned for (resized otherwise).
        in_channels: image channels.

    ``forward(images, clip_layers)`` with ``images`` B×3×H×W (normalised) and ``clip_layers`` a sequence of
    ``len(fusion_index)`` maps B×W×h×w (h = H/p) returns ``dict(feat=B×E×h×w, pos=1×E×h×w,
    hires=B×E×(H/4)×(W/4))``: fused grid features after a final layer norm, their position embedding,
    and the stride-4 stem features.
    """

    def __init__(self, clip_channels: int, embed_dims: int = 64, patch_size: int = 16, num_layers: int = 2,
                 num_heads: int = 4, mlp_ratio: float = 2.0, fusion_index: Sequence[int] = (0, 1),
                 ref_grid: int | Sequence[int] = 32, in_channels: int = 3) -> None:
        super().__init__()
        if patch_size % 4 != 0:
            raise ValueError(f"SideNetwork: patch_size must be a multiple of 4 (stem stride), got {patch_size}")
        if embed_dims % num_heads != 0:
            raise ValueError(f"SideNetwork: embed_dims={embed_dims} is not divisible by num_heads={num_heads}")
        fusion_index = tuple(int(i) for i in fusion_index)
        if any(i < 0 or i > num_layers for i in fusion_index) or list(fusion_index) != sorted(fusion_index):
            raise ValueError(f"SideNetwork: fusion_index={fusion_index} must be non-decreasing values in "
                             f"0..num_layers={num_layers}")
        self.patch_size = patch_size
        self.embed_dims = embed_dims
        self.fusion_index = fusion_index
        self.ref_grid = (ref_grid, ref_grid) if isinstance(ref_grid, int) else tuple(ref_grid)
        half = max(embed_dims // 2, 8)
        self.stem = nn.Sequential(_conv_norm_act(in_channels, half, 2), _conv_norm_act(half, embed_dims, 2))
        merge = patch_size // 4
        self.patch_embed = nn.Conv2d(embed_dims, embed_dims, kernel_size=merge, stride=merge)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dims, *self.ref_grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(embed_dims, num_heads, int(embed_dims * mlp_ratio), dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(num_layers)])
        self.clip_proj = nn.ModuleList()
        for _ in fusion_index:
            proj = nn.Conv2d(clip_channels, embed_dims, kernel_size=1)
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)
            self.clip_proj.append(nn.Sequential(LayerNorm2d(clip_channels), proj))
        self.norm = nn.LayerNorm(embed_dims)

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """1×E×h×w position embedding for a token grid (bicubic resize of the learned one)."""
        if tuple(grid) == self.ref_grid:
            return self.pos_embed
        return F.interpolate(self.pos_embed, size=grid, mode="bicubic", align_corners=False)

    def _fuse(self, k: int, x: Tensor, clip_map: Tensor, grid: tuple[int, int]) -> Tensor:
        y = self.clip_proj[k](clip_map)
        if tuple(y.shape[-2:]) != tuple(grid):
            y = F.interpolate(y, size=grid, mode="bilinear", align_corners=False)
        return x + y.flatten(2).transpose(1, 2)

    def forward(self, images: Tensor, clip_layers: Sequence[Tensor]) -> dict:
        if len(clip_layers) != len(self.fusion_index):
            raise ValueError(f"SideNetwork: got {len(clip_layers)} CLIP maps for fusion_index={self.fusion_index}")
        b, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"SideNetwork: input {height}×{width} is not divisible by patch_size={self.patch_size}")
        hires = self.stem(images)
        x = self.patch_embed(hires)
        grid = (x.shape[-2], x.shape[-1])
        pos = self.position_embedding(grid)
        x = (x + pos).flatten(2).transpose(1, 2)  # B×L×E
        k = 0
        for n_done in range(len(self.blocks) + 1):
            while k < len(self.fusion_index) and self.fusion_index[k] == n_done:
                x = self._fuse(k, x, clip_layers[k], grid)
                k += 1
            if n_done < len(self.blocks):
                x = self.blocks[n_done](x)
        x = self.norm(x)
        feat = x.transpose(1, 2).reshape(b, self.embed_dims, *grid)
        return dict(feat=feat, pos=pos, hires=hires)
