"""MMSegmentation adapter of the AlignZeg head (registered in ``MODELS`` as ``AlignZegHead``).

Thin wrapper around :class:`alignzeg.models.alignzeg_head.AlignZeg` (paper: Ge et al., "AlignZeg:
Mitigating Objective Misalignment for Zero-shot Semantic Segmentation", ECCV 2024, arXiv 2404.05667; a
reconstruction, see that module). It follows the segmentor/head contract of
:class:`alignzeg.mmseg_modules.segmentor.ZeroShotEncoderDecoder`: ``loss(inputs, text_embeds,
batch_data_samples, train_cfg)`` turns each ``gt_sem_seg`` into per-class mask targets (ignore pixels
inside the un-padded image are kept as the ignore map the class indicator's labels may use) and returns
the head's ``loss_*`` dict; ``predict(inputs, text_embeds, batch_img_metas, test_cfg)`` returns
B×C×H×W MaskFormer-style semantic scores at the input (padded crop) size, with the seen-class mask of
``self.vocab_info`` (set by the segmentor) for predictive bias correction.

Unlike mmseg's ``SideAdapterCLIPHead`` / ``Mask2FormerHead`` (1.2.2), the number of classes is never
fixed at construction (the text embeddings passed in are the classifier) and there is no ``conv_seg``.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor

from alignzeg.models.alignzeg_head import AlignZeg
from alignzeg.models.losses import sem_seg_to_mask_targets

__all__ = ["AlignZegHead"]


@MODELS.register_module()
class AlignZegHead(BaseModule):
    """AlignZeg decode head. Every keyword argument other than ``ignore_index``, ``align_corners`` and
    ``init_cfg`` goes to :class:`~alignzeg.models.alignzeg_head.AlignZeg` (``clip_channels``,
    ``embed_dim``, ``patch_size``, ``num_queries``, ``embed_dims``, ``num_decoder_layers``, ``num_heads``,
    ``side_cfg``, ``loss``, switches ``mrpe``/``fes``/``bds``/``pbc`` and ``fes_cfg``/``bds_cfg``/``pbc_cfg``).
    With all four switches off this is the structural parent (SAN-style side adapter, one background
    embedding).
    """

    def __init__(self, ignore_index: int = 255, align_corners: bool = False, init_cfg=None, **kwargs) -> None:
        super().__init__(init_cfg=init_cfg)
        self.model = AlignZeg(**kwargs)
        self.ignore_index = int(ignore_index)
        self.align_corners = bool(align_corners)
        self.vocab_info: dict = {}

    def forward(self, inputs: dict, text_embeds: Tensor) -> dict:
        """Raw outputs: ``pred_logits`` B×N×(C+1), ``pred_masks`` B×N×(H/4)×(W/4), ``embeds``, ``aux_outputs``."""
        return self.model(inputs, text_embeds)

    def _targets(self, data_sample, num_classes: int) -> dict:
        sem = data_sample.gt_sem_seg.data
        sem = sem[0] if sem.dim() == 3 else sem
        target = sem_seg_to_mask_targets(sem, ignore_index=self.ignore_index, num_classes=num_classes)
        ignore = sem == self.ignore_index
        img_shape = data_sample.metainfo.get("img_shape")
        if img_shape is not None:  # padding added by the data preprocessor is not an "unlabelled object"
            h, w = int(img_shape[0]), int(img_shape[1])
            ignore[h:, :] = False
            ignore[:, w:] = False
        target["ignore"] = ignore
        return target

    def loss(self, inputs: dict, text_embeds: Tensor, batch_data_samples, train_cfg=None) -> dict:
        targets = [self._targets(ds, text_embeds.shape[0]) for ds in batch_data_samples]
        return self.model.loss(inputs, text_embeds, targets, seen_mask=(self.vocab_info or {}).get("seen_mask"))

    @property
    def last_aux(self) -> dict:
        """Per-proposal outputs of the latest ``predict`` (class-indicator probabilities and mask logits when
        PBC is on), read by ``UnseenScoreSamplerHook``; with sliding windows, the last window's."""
        return getattr(self.model, "last_aux", {})

    def predict(self, inputs: dict, text_embeds: Tensor, batch_img_metas: List[dict],
                test_cfg: Optional[dict] = None) -> Tensor:
        seen_mask = (self.vocab_info or {}).get("seen_mask")
        if seen_mask is None:
            seen_mask = torch.ones(text_embeds.shape[0], dtype=torch.bool, device=text_embeds.device)
        return self.model.predict(inputs, text_embeds, seen_mask=seen_mask, size=tuple(inputs["images"].shape[-2:]))
