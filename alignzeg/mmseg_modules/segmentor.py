"""Zero-shot encoder-decoder: frozen CLIP backbone, class-name text embeddings, a vocabulary-agnostic head.

Mirrors the structure of MMSegmentation 1.x ``EncoderDecoder`` (``mmseg/models/segmentors/
encoder_decoder.py``, Apache-2.0): ``loss`` / ``predict`` / ``_forward`` / ``encode_decode`` /
whole and slide inference / ``postprocess_result``. What differs:

- The classifier is the text embedding of the *active vocabulary*, not a fixed layer: ``loss`` (hence
  ``train_step``) uses ``train_vocabulary`` ('seen' names for inductive training, 'all' for transductive),
  ``predict`` (hence ``val_step`` / ``test_step``) always the full vocabulary. Tensor mode follows
  ``self.training``. ``set_vocabulary`` overrides all three (hooks, analysis).
- Text embeddings are computed lazily on first use with the backbone's CLIP and
  :class:`alignzeg.clip.text.TextEncoder`, kept as non-persistent buffers (never in checkpoints) and
  dropped whenever a state dict is loaded.
- Unlike mmseg's ``MultimodalEncoderDecoder`` (1.2.2): tensor mode works, the vocabulary is not cached by
  dataset name, and slide inference does not mutate the caller's image metas.
- Inputs whose sides are not multiples of the CLIP patch size are padded (bottom/right) before the head
  and the logits cropped back.
- ``self_training=dict(...)`` (transductive; :mod:`alignzeg.models.self_training`, ZegCLIP's rule):
  ``loss`` first scores the training crop with the head's ``predict`` on the same features (no
  gradient) and gives every unlabelled pixel its best unseen class before the head's loss.
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.registry import MODELS
from mmseg.utils import ConfigType, OptConfigType, OptMultiConfig, OptSampleList, SampleList
from torch import Tensor

from alignzeg.mmseg_modules.backbone import clip_of
from alignzeg.models.self_training import check_config as check_self_training
from alignzeg.models.self_training import pseudo_label_share, pseudo_labels
from alignzeg.splits import Split, load_split

VOCABULARIES = ("seen", "all")


@MODELS.register_module()
class ZeroShotEncoderDecoder(BaseSegmentor):
    """Segmentor for zero-shot semantic segmentation with a CLIP backbone and text-embedding classifiers.

    Args:
        backbone: config of a :class:`CLIPBackbone` (or subclass exposing ``clip_model``/``tokenizer``).
        decode_head: config of a head with ``loss(inputs, text_embeds, batch_data_samples, train_cfg)``
            and ``predict(inputs, text_embeds, batch_img_metas, test_cfg)`` (see the segmentor/head contract).
        split: shipped split name (``voc12-15s5u``) or path to a split JSON: the full vocabulary (label order)
            and which names are unseen.
        text: keyword arguments of ``TextEncoder`` besides the model: ``templates`` ('vild' | 'single' | list),
            ``cache_dir``, ``cache_key``.
        train_vocabulary: 'seen' (inductive; training labels in seen-index space) or 'all' (transductive;
            labels in the full space with unseen pixels ignored).
        self_training: None (no pseudo-labels) or ``dict(unlabelled_index=255, threshold=None)``: the
            transductive self-training of :mod:`alignzeg.models.self_training`; needs
            ``train_vocabulary='all'`` and a training dataset in mode 'transductive' whose unseen pixels
            carry ``unlabelled_index``.
        train_cfg, test_cfg: passed to the head; ``test_cfg.mode`` 'whole' or 'slide' (with ``crop_size``
            and ``stride`` as (h, w)).
    """

    def __init__(self, backbone: ConfigType, decode_head: ConfigType, split: str,
                 text: Optional[dict] = None, train_vocabulary: str = "seen",
                 self_training: Optional[dict] = None,
                 train_cfg: OptConfigType = None, test_cfg: OptConfigType = None,
                 data_preprocessor: OptConfigType = None, init_cfg: OptMultiConfig = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if train_vocabulary not in VOCABULARIES:
            raise ValueError(f"ZeroShotEncoderDecoder: train_vocabulary must be one of {VOCABULARIES}, "
                             f"got {train_vocabulary!r}")
        if split is None or (isinstance(split, str) and not split.strip()):
            raise ValueError("ZeroShotEncoderDecoder: model.split is not set; give a shipped split name "
                             "(e.g. 'voc12-15s5u') or the path of a split.json (`alignzeg prepare folder` writes "
                             "one; `alignzeg train/test --data-root DIR` takes DIR/split.json)")
        self.split: Split = load_split(split)
        if not self.split.seen:
            raise ValueError(f"split {self.split.name!r}: no seen classes to train on")
        self.train_vocabulary = train_vocabulary
        self.self_training = check_self_training(self_training, "ZeroShotEncoderDecoder: self_training")
        if self.self_training is not None:
            if train_vocabulary != "all":
                raise ValueError("ZeroShotEncoderDecoder: self_training needs train_vocabulary='all' (the unseen "
                                 f"names must be in the training vocabulary), got {train_vocabulary!r}")
            if not self.split.unseen:
                raise ValueError(f"ZeroShotEncoderDecoder: self_training with split {self.split.name!r}, "
                                 f"which has no unseen classes")
        self.text_cfg = dict(templates="vild", cache_dir=None, cache_key="")
        if text:
            unknown = set(text) - set(self.text_cfg)
            if unknown:
                raise ValueError(f"ZeroShotEncoderDecoder: unknown 'text' keys {sorted(unknown)} "
                                 f"(allowed: {sorted(self.text_cfg)})")
            self.text_cfg.update(text)
        self.backbone = MODELS.build(backbone)
        clip_of(self.backbone)
        self.decode_head = MODELS.build(decode_head)
        for method in ("loss", "predict"):
            if not callable(getattr(self.decode_head, method, None)):
                raise TypeError(f"decode_head {type(self.decode_head).__name__} lacks {method}(); see the "
                                f"segmentor/head contract")
        self.align_corners = bool(getattr(self.decode_head, "align_corners", False))
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg if test_cfg is not None else dict(mode="whole")
        self.num_classes = self.split.num_classes
        self.out_channels = self.num_classes
        self._vocab_override: Optional[str] = None
        self._text_encoder = None
        # Lazily filled; never saved (persistent=False).
        self.register_buffer("text_embeds_seen", None, persistent=False)
        self.register_buffer("text_embeds_all", None, persistent=False)

    # ------------------------------------------------------------------------------------------ vocabulary
    def vocabulary_names(self, which: str) -> tuple[str, ...]:
        """Class names of the 'seen' or 'all' vocabulary, in label order."""
        if which == "seen":
            return self.split.seen
        if which == "all":
            return self.split.classes
        raise ValueError(f"vocabulary must be one of {VOCABULARIES}, got {which!r}")

    def set_vocabulary(self, which: Optional[str]) -> None:
        """Force the vocabulary of loss/predict/tensor mode ('seen' | 'all'); None restores the default
        (loss: ``train_vocabulary``, predict: 'all', tensor mode: by ``self.training``)."""
        if which is not None and which not in VOCABULARIES:
            raise ValueError(f"set_vocabulary: expected one of {VOCABULARIES} or None, got {which!r}")
        self._vocab_override = which

    def _active(self, default: str) -> str:
        return self._vocab_override or default

    def check_dataset_meta(self, metainfo: dict, which: str) -> None:
        """Raise ValueError if ``metainfo['classes']`` (a dataset's label order) is not the ``which``
        vocabulary of this model's split, naming the first difference (the class-order trap)."""
        names = list(self.vocabulary_names(which))
        classes = list((metainfo or {}).get("classes") or [])
        if classes == names:
            return
        where = next((i for i, (a, b) in enumerate(zip(names, classes)) if a != b), min(len(names), len(classes)))
        got = classes[where] if where < len(classes) else "<end>"
        want = names[where] if where < len(names) else "<end>"
        raise ValueError(
            f"dataset classes do not match the model's {which!r} vocabulary of split {self.split.name!r} "
            f"(model.split): {len(classes)} vs {len(names)} names, first difference at index {where}: "
            f"dataset {got!r}, model {want!r}. Check the dataset's split/data_root and mode "
            f"({'seen' if which == 'seen' else 'all/transductive'!r} expected).")

    def _get_text_encoder(self):
        if self._text_encoder is None:
            from alignzeg.clip.text import TextEncoder

            self._text_encoder = TextEncoder(clip_of(self.backbone), self._tokenize, **self.text_cfg)
        return self._text_encoder

    def _tokenize(self, texts: List[str]) -> Tensor:
        # Reads ``backbone.tokenizer`` only when a prompt is encoded: a cache hit never builds the tokenizer.
        return self.backbone.tokenizer(texts)

    def text_embeddings(self, which: str) -> Tensor:
        """C×D L2-normalised text embeddings of a vocabulary (computed once, then kept as a buffer)."""
        names = self.vocabulary_names(which)
        attr = f"text_embeds_{which}"
        cached = getattr(self, attr)
        if cached is None:
            clip_model = clip_of(self.backbone)
            device = next(clip_model.parameters()).device
            with torch.no_grad():
                emb = self._get_text_encoder().embed(list(names))
            emb = torch.as_tensor(emb).detach().to(device=device, dtype=torch.float32)
            if emb.shape[0] != len(names):
                raise RuntimeError(f"TextEncoder returned {emb.shape[0]} embeddings for {len(names)} names")
            setattr(self, attr, emb)
            cached = emb
        return cached

    def vocab_info(self, which: str) -> dict:
        """``dict(seen_mask=BoolTensor[C])`` of the vocabulary, True for seen classes."""
        names = self.vocabulary_names(which)
        seen = set(self.split.seen)
        device = next(clip_of(self.backbone).parameters()).device
        return dict(seen_mask=torch.tensor([n in seen for n in names], dtype=torch.bool, device=device))

    def clear_text_embeddings(self) -> None:
        """Drop the cached text embeddings (they are recomputed on next use)."""
        self.text_embeds_seen = None
        self.text_embeds_all = None
        self._text_encoder = None

    def _load_from_state_dict(self, *args, **kwargs):
        # New CLIP weights invalidate the text embeddings computed from the old ones.
        self.clear_text_embeddings()
        super()._load_from_state_dict(*args, **kwargs)

    def parse_losses(self, losses: dict) -> tuple:
        """mmengine's loss reduction, then a stop on the first non-finite term (before the update).

        A NaN or infinite loss would be back-propagated into the weights and saved in the next
        checkpoint; raising here leaves the last good checkpoint as it is and names the iteration and
        every non-finite term.
        """
        parsed, log_vars = super().parse_losses(losses)
        if not torch.isfinite(parsed.detach()).all():
            import math

            from mmengine.logging import MessageHub

            terms = {k: float(v) for k, v in log_vars.items() if "loss" in k}
            bad = {k: v for k, v in terms.items() if not math.isfinite(v)} or terms

            hub = MessageHub.get_current_instance()
            it = hub.get_info("iter")
            where = f"iteration {int(it) + 1}" if it is not None else "an iteration"
            terms = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
            raise FloatingPointError(f"non-finite loss at {where}: {terms}")
        return parsed, log_vars

    def _prepare_head(self, which: str) -> Tensor:
        text = self.text_embeddings(which)
        self.decode_head.vocab_info = self.vocab_info(which)
        return text

    # ------------------------------------------------------------------------------------------ features
    def extract_feat(self, inputs: Tensor) -> dict:
        """Backbone feature dict plus ``images`` (the normalised input) and ``clip_model``."""
        feats = dict(self.backbone(inputs))
        feats["images"] = inputs
        feats["clip_model"] = clip_of(self.backbone)
        return feats

    def _pad_to_patch(self, inputs: Tensor) -> tuple[Tensor, tuple[int, int]]:
        ph, pw = getattr(self.backbone, "patch_size", (1, 1))
        h, w = inputs.shape[-2:]
        pad_h, pad_w = (-h) % ph, (-w) % pw
        if pad_h or pad_w:
            inputs = F.pad(inputs, (0, pad_w, 0, pad_h))
        return inputs, (h, w)

    def encode_decode(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        """B×C×H×W logits of the active vocabulary at the input size."""
        which = self._active("all")
        return self._encode_decode(inputs, batch_img_metas, which)

    def _encode_decode(self, inputs: Tensor, batch_img_metas: List[dict], which: str) -> Tensor:
        text = self._prepare_head(which)
        padded, (h, w) = self._pad_to_patch(inputs)
        feats = self.extract_feat(padded)
        logits = self.decode_head.predict(feats, text, batch_img_metas, self.test_cfg)
        if logits.shape[-2:] != padded.shape[-2:]:
            logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear",
                                   align_corners=self.align_corners)
        if logits.shape[1] != text.shape[0]:
            raise RuntimeError(f"{type(self.decode_head).__name__}.predict returned {logits.shape[1]} channels "
                               f"for a vocabulary of {text.shape[0]} classes")
        return logits[..., :h, :w]

    # ------------------------------------------------------------------------------------------ modes
    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        which = self._active(self.train_vocabulary)
        text = self._prepare_head(which)
        num = text.shape[0]
        unlabelled = self.self_training["unlabelled_index"] if self.self_training is not None else 255
        for ds in data_samples:
            labels = ds.gt_sem_seg.data
            bad = labels[(labels != 255) & (labels != unlabelled) & ((labels < 0) | (labels >= num))]
            if bad.numel():
                raise ValueError(
                    f"training labels {sorted(set(bad.unique().tolist()))[:5]} are outside the {which!r} "
                    f"vocabulary of {num} classes (split {self.split.name!r}); the training dataset must use "
                    f"mode {'seen' if which == 'seen' else 'transductive'!r}")
        padded, _ = self._pad_to_patch(inputs)
        if padded.shape[-2:] != inputs.shape[-2:]:
            raise ValueError(f"training crop {tuple(inputs.shape[-2:])} is not a multiple of the CLIP patch "
                             f"size {self.backbone.patch_size}; set the data preprocessor's size/size_divisor")
        feats = self.extract_feat(inputs)
        share = self._pseudo_label(feats, text, data_samples) if self.self_training is not None else None
        losses = self.decode_head.loss(feats, text, data_samples, self.train_cfg)
        out = {f"decode.{k}": v for k, v in losses.items()}
        if share is not None:   # logged, not a loss term
            out["pseudo_share"] = torch.tensor(share, device=inputs.device)
        return out

    def _pseudo_label(self, feats: dict, text: Tensor, data_samples: SampleList) -> float:
        """Replace each sample's unlabelled pixels by pseudo-labels (in place); the share labelled."""
        st = self.self_training
        images = feats["images"]
        metas = [ds.metainfo for ds in data_samples]
        with torch.no_grad():
            scores = self.decode_head.predict(feats, text, metas, self.test_cfg)
            if scores.shape[-2:] != images.shape[-2:]:
                scores = F.interpolate(scores, size=images.shape[-2:], mode="bilinear",
                                       align_corners=self.align_corners)
        before = torch.stack([ds.gt_sem_seg.data for ds in data_samples])           # B×1×H×W
        # the 'all' vocabulary is the split's label order, so its unseen channels are the split's unseen ids
        after = pseudo_labels(scores.float(), before.to(scores.device), self.split.unseen_ids,
                              st["unlabelled_index"], 255,
                              st["threshold"]).to(before.device, before.dtype)
        for b, ds in enumerate(data_samples):
            ds.gt_sem_seg.data = after[b]
        return pseudo_label_share(before, after, st["unlabelled_index"], 255)

    def predict(self, inputs: Tensor, data_samples: OptSampleList = None) -> SampleList:
        if data_samples is not None:
            batch_img_metas = [ds.metainfo for ds in data_samples]
        else:
            batch_img_metas = [dict(ori_shape=inputs.shape[2:], img_shape=inputs.shape[2:],
                                    pad_shape=inputs.shape[2:], padding_size=[0, 0, 0, 0])] * inputs.shape[0]
        seg_logits = self.inference(inputs, batch_img_metas, self._active("all"))
        return self.postprocess_result(seg_logits, data_samples)

    def postprocess_result(self, seg_logits: Tensor, data_samples: OptSampleList = None) -> SampleList:
        """mmseg's ``postprocess_result`` (``seg_logits`` and the argmax ``pred_sem_seg`` per sample), without
        its bilinear resize where that resize is the identity: every sample unpadded, unflipped and with
        ``ori_shape`` equal to the logits' size, as in the synthetic benchmark's evaluation. Same values
        (a same-size bilinear resize copies); it skips one interpolation per image (~1.5 ms at 64×64 on CPU,
        a tenth of a run's evaluation). Anything else goes through mmseg's."""
        from mmengine.structures import PixelData

        size = tuple(seg_logits.shape[-2:])
        if (data_samples is None or seg_logits.shape[1] < 2
                or not all(_at_original_size(ds.metainfo, size) for ds in data_samples)):
            return super().postprocess_result(seg_logits, data_samples)
        for i, ds in enumerate(data_samples):
            logits = seg_logits[i]
            ds.set_data({"seg_logits": PixelData(data=logits),
                         "pred_sem_seg": PixelData(data=logits.argmax(dim=0, keepdim=True))})
        return data_samples

    def _forward(self, inputs: Tensor, data_samples: OptSampleList = None) -> Tensor:
        """Tensor mode: B×C×H×W logits (vocabulary by ``self.training`` unless overridden)."""
        which = self._active(self.train_vocabulary if self.training else "all")
        metas = [ds.metainfo for ds in data_samples] if data_samples is not None else \
            [dict(ori_shape=inputs.shape[2:], img_shape=inputs.shape[2:], pad_shape=inputs.shape[2:])] * len(inputs)
        return self._encode_decode(inputs, metas, which)

    # ------------------------------------------------------------------------------------------ inference
    def inference(self, inputs: Tensor, batch_img_metas: List[dict], which: Optional[str] = None) -> Tensor:
        which = which or self._active("all")
        mode = self.test_cfg.get("mode", "whole")
        if mode not in ("whole", "slide"):
            raise ValueError(f"test_cfg.mode must be 'whole' or 'slide', got {mode!r}")
        ori = batch_img_metas[0].get("ori_shape")
        if not all(m.get("ori_shape") == ori for m in batch_img_metas):
            print_log("Image shapes are different in the batch.", logger="current", level=logging.WARN)
        if mode == "slide":
            return self.slide_inference(inputs, batch_img_metas, which)
        return self._encode_decode(inputs, batch_img_metas, which)

    def whole_inference(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        return self._encode_decode(inputs, batch_img_metas, self._active("all"))

    def slide_inference(self, inputs: Tensor, batch_img_metas: List[dict], which: Optional[str] = None) -> Tensor:
        """Overlapping crops of ``test_cfg.crop_size`` every ``test_cfg.stride``, logits averaged."""
        which = which or self._active("all")
        for key in ("crop_size", "stride"):
            if key not in self.test_cfg:
                raise KeyError(f"test_cfg.mode='slide' needs test_cfg.{key} (h, w)")
        h_stride, w_stride = _pair(self.test_cfg["stride"])
        h_crop, w_crop = _pair(self.test_cfg["crop_size"])
        batch, _, h_img, w_img = inputs.shape
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        preds = None
        count = inputs.new_zeros((batch, 1, h_img, w_img))
        for hi in range(h_grids):
            for wi in range(w_grids):
                y1, x1 = hi * h_stride, wi * w_stride
                y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                crop = inputs[:, :, y1:y2, x1:x2]
                metas = [dict(m, img_shape=tuple(crop.shape[2:])) for m in batch_img_metas]
                logits = self._encode_decode(crop, metas, which)
                if preds is None:
                    preds = inputs.new_zeros((batch, logits.shape[1], h_img, w_img))
                preds[:, :, y1:y2, x1:x2] += logits
                count[:, :, y1:y2, x1:x2] += 1
        if (count == 0).any():
            raise RuntimeError("slide inference left pixels uncovered; check test_cfg crop_size/stride")
        return preds / count


def _at_original_size(meta: dict, size: tuple[int, int]) -> bool:
    """Whether mmseg's post-processing of logits of ``size`` would neither crop, flip nor resize them."""
    padding = meta.get("img_padding_size", meta.get("padding_size", [0] * 4))
    ori = meta.get("ori_shape")
    return (ori is not None and tuple(ori[:2]) == tuple(size) and not meta.get("flip")
            and all(int(p) == 0 for p in padding))


def _pair(value: Sequence[int] | int) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"expected (h, w), got {value!r}")
    return value
