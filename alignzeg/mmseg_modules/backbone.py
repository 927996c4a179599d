"""MMSegmentation backbone adapter around a (frozen) open_clip CLIP.

Thin wrapper: :func:`alignzeg.clip.model.build_clip` builds the CLIP, :class:`alignzeg.clip.dense.
CLIPVisualFeatures` extracts the dense features. The whole CLIP (both towers) is kept as ``clip_model`` so
the segmentor can embed class names with the same model. Checkpoints hold each CLIP tensor once: the
feature extractor shares its parameters with ``clip_model.visual``, and those duplicate entries are
dropped from the state dict on save and restored from the ``clip_model`` entries on load.
"""
from __future__ import annotations

from typing import Sequence

import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import nn

from alignzeg.clip.dense import CLIPVisualFeatures
from alignzeg.clip.model import build_clip, clip_tokenizer


@MODELS.register_module()
class CLIPBackbone(BaseModule):
    """Frozen CLIP visual features for zero-shot segmentation.

    Args:
        clip: keyword arguments of :func:`alignzeg.clip.model.build_clip`: ``model`` (open_clip architecture
            name, config dict or JSON path; None when ``pretrained`` is a self-describing safetensors file),
            ``pretrained`` (local checkpoint path or None for random weights), optional ``image_size`` and
            ``quick_gelu``.
        out_layers: 0-based vision blocks whose patch tokens are returned (None: four evenly spaced blocks).
        frozen: True (default) keeps every CLIP parameter fixed, runs the tower without autograd and in
            eval mode. False makes the visual tower trainable (full fine-tuning; the text tower stays fixed).
        value_path: dense value path of :class:`CLIPVisualFeatures` ('maskclip' or 'value').
        precision: 'fp32' (default), 'fp16' or 'bf16': the CLIP forward runs under ``torch.autocast`` in
            that type (weights stay float32) and its outputs are returned in float32, so the heads and the
            losses are unchanged. 'fp16' needs a GPU; 'bf16' also runs on CPU.
        checkpointing: activation checkpointing of every CLIP block (recomputed in the backward pass). It
            saves memory only where gradients cross CLIP (ZegCLIP's visual prompts, ``frozen=False``); a
            frozen tower runs without autograd and stores nothing anyway.

    ``forward(images)`` returns the feature dict of :class:`CLIPVisualFeatures` (``layers``,
    ``cls_layers``, ``image_embed``, ``dense_embed``, ``grid``). Attributes: ``clip_model`` (open_clip CLIP),
    ``tokenizer`` (built on first use), ``patch_size`` ((h, w)), ``embed_dim``, ``width``.
    """

    def __init__(self, clip: dict, out_layers: Sequence[int] | None = None, frozen: bool = True,
                 value_path: str = "maskclip", precision: str = "fp32", checkpointing: bool = False,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if precision not in PRECISIONS:
            raise ValueError(f"CLIPBackbone: precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.checkpointing = bool(checkpointing)
        if not isinstance(clip, dict) or ("model" not in clip and "pretrained" not in clip):
            raise ValueError(f"CLIPBackbone: 'clip' must be a dict with 'model' and/or 'pretrained', got {clip!r}")
        clip = dict(clip)
        model = clip.pop("model", None)
        pretrained = clip.pop("pretrained", None)
        unknown = set(clip) - {"image_size", "quick_gelu"}
        if unknown:
            raise ValueError(f"CLIPBackbone: unknown 'clip' keys {sorted(unknown)} "
                             f"(allowed: model, pretrained, image_size, quick_gelu)")
        self.clip_model = build_clip(model, pretrained, **clip)
        self._tokenizer = None
        self.features = CLIPVisualFeatures(self.clip_model, out_layers=out_layers, value_path=value_path)
        self.features.checkpointing = self.checkpointing
        self.frozen = bool(frozen)
        self.patch_size = tuple(self.features.patch_size)
        self.embed_dim = int(self.features.embed_dim)
        self.width = int(self.features.width)
        self.out_layers = tuple(self.features.out_layers)
        for p in self.clip_model.parameters():
            p.requires_grad_(False)
        if not self.frozen:
            for p in self.clip_model.visual.parameters():
                p.requires_grad_(True)
        self.clip_model.eval()
        # Entries of features.* that are the same tensors as clip_model.* entries: saved once.
        own = {id(t): name for name, t in self.clip_model.state_dict(keep_vars=True).items()}
        self._shared = {fname: own[id(t)] for fname, t in self.features.state_dict(keep_vars=True).items()
                        if id(t) in own}
        self._register_state_dict_hook(CLIPBackbone._drop_shared_entries)
        self._register_load_state_dict_pre_hook(self._restore_shared_entries)

    @property
    def tokenizer(self):
        """The open_clip tokenizer of ``clip_model``, built on first use: loading its BPE vocabulary takes
        ~0.3 s, and a run whose text embeddings are all cached never tokenizes."""
        if self._tokenizer is None:
            self._tokenizer = clip_tokenizer(self.clip_model)
        return self._tokenizer

    # -- checkpoint de-duplication --------------------------------------------------------------------
    @staticmethod
    def _drop_shared_entries(module: "CLIPBackbone", state_dict, prefix, local_metadata):
        for fname in module._shared:
            state_dict.pop(f"{prefix}features.{fname}", None)
        return state_dict

    def _restore_shared_entries(self, state_dict, prefix, local_metadata, strict, missing_keys,
                                unexpected_keys, error_msgs):
        for fname, cname in self._shared.items():
            src = f"{prefix}clip_model.{cname}"
            if src in state_dict and f"{prefix}features.{fname}" not in state_dict:
                state_dict[f"{prefix}features.{fname}"] = state_dict[src]

    # -- modes ----------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Nothing to initialise: the CLIP weights come from ``clip.pretrained``."""

    def train(self, mode: bool = True) -> "CLIPBackbone":
        super().train(mode)
        if self.frozen:
            self.clip_model.eval()
        self.features.train(False)
        return self

    def forward(self, images: torch.Tensor) -> dict:
        if self.frozen:
            with torch.no_grad():
                return self._features(images)
        return self._features(images)

    def _features(self, images: torch.Tensor) -> dict:
        """``self.features(images)`` under the precision switch (checkpointing is the features' own flag)."""
        if self.precision == "fp32":
            return self.features(images)
        with torch.autocast(device_type=images.device.type, dtype=PRECISIONS[self.precision]):
            out = self.features(images)
        return {k: _to_float32(v) for k, v in out.items()}


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _to_float32(v):
    if isinstance(v, torch.Tensor):
        return v.float() if v.is_floating_point() else v
    if isinstance(v, (list, tuple)):
        return type(v)(_to_float32(t) for t in v)
    return v


def clip_of(module: nn.Module) -> nn.Module:
    """The open_clip model of a backbone (``clip_model`` attribute), with a clear error otherwise."""
    clip_model = getattr(module, "clip_model", None)
    if clip_model is None:
        raise TypeError(f"{type(module).__name__} has no 'clip_model'; the zero-shot segmentor needs a "
                        f"CLIPBackbone (or subclass) as 'backbone'")
    return clip_model
