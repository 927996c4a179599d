"""MMSegmentation adapters of the baselines (registered in ``mmseg.registry.MODELS``).

Thin wrappers that connect the pure-PyTorch modules of :mod:`baselines.zegclip` and
:mod:`baselines.two_stage` to the segmentor/head contract of
:class:`alignzeg.mmseg_modules.segmentor.ZeroShotEncoderDecoder`:

- ``ZegCLIPPromptedBackbone``: a :class:`alignzeg.mmseg_modules.backbone.CLIPBackbone` whose feature
  extractor carries ZegCLIP's deep visual prompts (only the prompts train; gradients flow through the frozen
  CLIP to them).
- ``ZegCLIPHead``: relationship-descriptor queries, light attention decoder, focal + dice loss, seen-score
  calibration at inference.
- ``TwoStageHead``: mask proposals trained on seen classes, CLIP classification of masked regions and
  zsseg's seen/unseen geometric ensemble at inference.

Configs load this module with
``custom_imports = dict(imports=['alignzeg.mmseg_modules', 'baselines.mmseg_modules'], allow_failed_imports=False)``.
The MaskCLIP baseline is ``MaskCLIPHead`` in :mod:`alignzeg.mmseg_modules.heads`.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from alignzeg.mmseg_modules.backbone import CLIPBackbone
from baselines.two_stage import TwoStageHeadModule
from baselines.zegclip import PromptedCLIPVisualFeatures, ZegCLIPHeadModule

__all__ = ["ZegCLIPPromptedBackbone", "ZegCLIPHead", "TwoStageHead"]


def _stack_labels(batch_data_samples: Sequence) -> Tensor:
    """B×H×W long labels from the data samples' ``gt_sem_seg`` (all of one padded size)."""
    if not batch_data_samples:
        raise ValueError("baseline head: empty batch_data_samples")
    labels = []
    for i, ds in enumerate(batch_data_samples):
        if not hasattr(ds, "gt_sem_seg"):
            raise KeyError(f"baseline head: data sample {i} has no gt_sem_seg")
        data = ds.gt_sem_seg.data
        labels.append(data[0] if data.dim() == 3 else data)
    sizes = {tuple(t.shape) for t in labels}
    if len(sizes) != 1:
        raise ValueError(f"baseline head: label maps of different sizes {sorted(sizes)}; pad them in the "
                         "data preprocessor")
    return torch.stack(labels).long()


def _seen_mask(head: BaseModule) -> Tensor | None:
    info = getattr(head, "vocab_info", None)
    return None if not info else info.get("seen_mask")


@MODELS.register_module()
class ZegCLIPPromptedBackbone(CLIPBackbone):
    """Frozen CLIP with ZegCLIP's deep visual prompt tuning.

    Args:
        clip, out_layers, value_path, precision, checkpointing, init_cfg: as :class:`CLIPBackbone`.
        frozen: must be True (ZegCLIP never updates CLIP's weights; accepted so configs can inherit the
            ``CLIPBackbone`` defaults).
        num_tokens: prompt tokens per layer (ZegCLIP: 10 for VOC, 100 for COCO-Stuff; 0 = plain CLIP).
        deep: prompts in every layer (True, ZegCLIP) or only before the first (VPT-shallow).
        prompt_dropout: dropout on the prompt tokens (0.1).
        final_norm: learnable LayerNorm after the last block (ZegCLIP's ``prompt_norm``).

    ``forward`` returns the CLIPBackbone feature dict plus ``patch_embed`` (see
    :class:`baselines.zegclip.PromptedCLIPVisualFeatures`).
    """

    def __init__(self, clip: dict, out_layers: Sequence[int] | None = None, num_tokens: int = 10, deep: bool = True,
                 prompt_dropout: float = 0.1, final_norm: bool = True, value_path: str = "maskclip",
                 frozen: bool = True, precision: str = "fp32", checkpointing: bool = False, init_cfg=None) -> None:
        if not frozen:
            raise ValueError("ZegCLIPPromptedBackbone: frozen=False is not supported; ZegCLIP tunes only the "
                             "visual prompts (use CLIPBackbone for fine-tuning CLIP)")
        super().__init__(clip, out_layers=out_layers, frozen=True, value_path=value_path, precision=precision,
                         checkpointing=checkpointing, init_cfg=init_cfg)
        self.features = PromptedCLIPVisualFeatures(
            self.clip_model, out_layers=self.out_layers, value_path=value_path, num_tokens=num_tokens, deep=deep,
            prompt_dropout=prompt_dropout, final_norm=final_norm)
        self.features.checkpointing = self.checkpointing
        own = {id(t): name for name, t in self.clip_model.state_dict(keep_vars=True).items()}
        self._shared = {fname: own[id(t)] for fname, t in self.features.state_dict(keep_vars=True).items()
                        if id(t) in own}
        self.num_tokens = int(num_tokens)

    def train(self, mode: bool = True) -> "ZegCLIPPromptedBackbone":
        BaseModule.train(self, mode)
        self.clip_model.eval()
        self.features.train(mode)
        return self

    def forward(self, images: Tensor) -> dict:
        if self.num_tokens == 0:  # nothing to train: no graph through CLIP
            with torch.no_grad():
                return self._features(images)
        return self._features(images)


class _HeadAdapter(BaseModule):
    """Shared wiring of the baseline heads: the pure-torch module in ``self.head`` does the maths; this
    adapter turns data samples into label maps and passes the seen mask set by the segmentor."""

    def _setup(self, head: nn.Module, ignore_index: int, align_corners: bool) -> None:
        self.head = head
        self.align_corners = align_corners
        self.ignore_index = ignore_index
        self.vocab_info: dict | None = None

    def init_weights(self) -> None:
        """Weights are initialised at construction (as the original implementations do)."""

    def forward(self, inputs: dict, text_embeds: Tensor) -> dict:
        return self.head(inputs, text_embeds)

    def loss(self, inputs: dict, text_embeds: Tensor, batch_data_samples: Sequence, train_cfg=None) -> dict:
        return self.head.loss(inputs, text_embeds, _stack_labels(batch_data_samples))

    def _predict_extra(self, inputs: dict) -> dict:
        return {}

    def predict(self, inputs: dict, text_embeds: Tensor, batch_img_metas: List[dict], test_cfg=None) -> Tensor:
        size = inputs["images"].shape[-2:]
        return self.head.predict(inputs, text_embeds, size, seen_mask=_seen_mask(self), **self._predict_extra(inputs))


@MODELS.register_module()
class ZegCLIPHead(_HeadAdapter):
    """ZegCLIP decode head (see :class:`baselines.zegclip.ZegCLIPHeadModule` for the arguments).

    ``predict`` returns ``sigmoid`` class scores at the input size with ``seen_calibration`` subtracted from
    the seen classes (``vocab_info['seen_mask']`` set by the segmentor); 0.1 reproduces ZegCLIP's inductive
    evaluation, 0.0 its transductive one.
    """

    def __init__(self, decoder: dict, loss_focal_weight: float = 100.0, loss_dice_weight: float = 1.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, aux_loss: bool = False,
                 ignore_as_negative: bool = True, seen_calibration: float = 0.1, ignore_index: int = 255,
                 align_corners: bool = False, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self._setup(ZegCLIPHeadModule(
            decoder=decoder, loss_focal_weight=loss_focal_weight, loss_dice_weight=loss_dice_weight,
            focal_alpha=focal_alpha, focal_gamma=focal_gamma, aux_loss=aux_loss,
            ignore_as_negative=ignore_as_negative, seen_calibration=seen_calibration, ignore_index=ignore_index),
            ignore_index, align_corners)


@MODELS.register_module()
class TwoStageHead(_HeadAdapter):
    """Two-stage decoupled head (see :class:`baselines.two_stage.TwoStageHeadModule` for the arguments).

    ``loss`` trains the proposal network on the active (seen) vocabulary; ``predict`` classifies each proposal
    with the frozen CLIP (``inputs['clip_model']``) on its masked region and applies zsseg's geometric
    ensemble with ``vocab_info['seen_mask']``.
    """

    def __init__(self, proposal: dict, matcher: dict | None = None, loss: dict | None = None,
                 clip_ensemble: bool = True, clip_ensemble_weight: float = 0.8, mask_thr: float = 0.5,
                 region_mode: str = "crop", expand_ratio: float = 1.0, clip_temperature: float | None = None,
                 ignore_index: int = 255, align_corners: bool = False, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self._setup(TwoStageHeadModule(
            proposal=proposal, matcher=matcher, loss=loss, clip_ensemble=clip_ensemble,
            clip_ensemble_weight=clip_ensemble_weight, mask_thr=mask_thr, region_mode=region_mode,
            expand_ratio=expand_ratio, clip_temperature=clip_temperature, ignore_index=ignore_index),
            ignore_index, align_corners)

    def _predict_extra(self, inputs: dict) -> dict:
        return dict(clip_model=inputs.get("clip_model"))
