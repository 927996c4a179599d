"""Training-free MaskCLIP head.

MaskCLIP (Zhou, Loy, Dai, "Extract Free Dense Labels from CLIP", ECCV 2022;
https://github.com/chongzhou96/MaskCLIP, Apache-2.0): per-pixel logits are CLIP's logit scale times the
cosine similarity between the dense value-path embeddings of the last ViT block (computed by
:class:`alignzeg.clip.dense.CLIPVisualFeatures` as ``dense_embed``) and the class text embeddings, then
bilinearly upsampled to the input size. What differs: no key smoothing or prompt denoising (MaskCLIP's
optional refinements), and the logit scale is CLIP's own ``exp(logit_scale)`` unless given.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor


@MODELS.register_module()
class MaskCLIPHead(BaseModule):
    """Zero trainable parameters: ``logits = s · cos(dense_embed, text)``, upsampled to the input size.

    Args:
        logit_scale: the scale ``s``; None (default) uses the CLIP model's ``logit_scale.exp()``.
        align_corners: for the bilinear upsampling.
    """

    def __init__(self, logit_scale: Optional[float] = None, align_corners: bool = False, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if logit_scale is not None and not logit_scale > 0:
            raise ValueError(f"MaskCLIPHead: logit_scale must be positive, got {logit_scale}")
        self.logit_scale = logit_scale
        self.align_corners = align_corners
        self.vocab_info: dict = {}

    def _scale(self, inputs: dict) -> float:
        if self.logit_scale is not None:
            return float(self.logit_scale)
        clip_model = inputs.get("clip_model")
        if clip_model is None or getattr(clip_model, "logit_scale", None) is None:
            raise KeyError("MaskCLIPHead: inputs lack 'clip_model' with a logit_scale; pass logit_scale=")
        return float(clip_model.logit_scale.detach().exp())

    def forward(self, inputs: dict, text_embeds: Tensor) -> Tensor:
        """B×C×h×w scaled cosine logits on the feature grid."""
        if "dense_embed" not in inputs:
            raise KeyError(f"MaskCLIPHead: backbone features lack 'dense_embed' (have {sorted(inputs)})")
        dense = F.normalize(inputs["dense_embed"].float(), dim=1)
        text = F.normalize(text_embeds.float(), dim=-1)
        if dense.shape[1] != text.shape[1]:
            raise ValueError(f"MaskCLIPHead: dense_embed has {dense.shape[1]} channels, text embeddings "
                             f"{text.shape[1]}")
        return self._scale(inputs) * torch.einsum("bdhw,cd->bchw", dense, text)

    def predict(self, inputs: dict, text_embeds: Tensor, batch_img_metas: List[dict], test_cfg=None) -> Tensor:
        logits = self.forward(inputs, text_embeds)
        size = inputs["images"].shape[-2:] if "images" in inputs else batch_img_metas[0]["img_shape"]
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=self.align_corners)

    def loss(self, inputs, text_embeds, batch_data_samples, train_cfg=None):
        raise RuntimeError("MaskCLIPHead is training-free (no trainable parameters): evaluate it with "
                           "'alignzeg test CONFIG --no-checkpoint' instead of training it")
