"""Transductive self-training: the pseudo-labelling rule against hand-computed cases, and its wiring
into the segmentor, the dataset's transductive view and AlignZeg's class indicator."""
from __future__ import annotations

import pytest
import torch

from alignzeg.models.self_training import check_config, pseudo_label_share, pseudo_labels

# classes 0 "a" (seen), 1 "b" (unseen), 2 "c" (seen), 3 "d" (unseen)
UNSEEN_IDS = [1, 3]


def _scores() -> torch.Tensor:
    # 1×4×2×3: per pixel, the scores of a, b, c, d
    per_pixel = [
        [[0.9, 0.1, 0.0, 0.2], [0.1, 0.3, 0.9, 0.6], [0.2, 0.7, 0.1, 0.7]],
        [[0.5, 0.4, 0.3, 0.1], [0.0, 0.05, 0.99, 0.02], [0.3, 0.2, 0.1, 0.25]],
    ]
    return torch.tensor(per_pixel).permute(2, 0, 1)[None]


LABELS = torch.tensor([[[0, 254, 254],
                        [254, 254, 255]]])


def test_pseudo_labels_hand_computed_zegclip_rule():
    out = pseudo_labels(_scores(), LABELS, UNSEEN_IDS, unlabelled_index=254, ignore_index=255)
    # (0,0) seen label kept although "a" scores 0.9 there;
    # (0,1) unseen b 0.3 vs d 0.6 -> 3 (the seen c at 0.9 is never a candidate);
    # (0,2) tie b 0.7 = d 0.7 -> the first unseen id, 1;
    # (1,0) b 0.4 vs d 0.1 -> 1; (1,1) b 0.05 vs d 0.02 -> 1 (no threshold: kept though tiny);
    # (1,2) void (255) stays void although d would win there.
    assert out.tolist() == [[[0, 3, 1], [1, 1, 255]]]
    assert out.dtype == LABELS.dtype
    assert LABELS.tolist() == [[[0, 254, 254], [254, 254, 255]]]   # the input is not modified


def test_pseudo_labels_threshold_and_share():
    out = pseudo_labels(_scores(), LABELS, UNSEEN_IDS, unlabelled_index=254, ignore_index=255, threshold=0.5)
    # best unseen scores of the four unlabelled pixels: 0.6, 0.7, 0.4, 0.05 -> the last two are dropped
    assert out.tolist() == [[[0, 3, 1], [255, 255, 255]]]
    assert pseudo_label_share(LABELS, out, 254, 255) == pytest.approx(2 / 4)
    assert pseudo_label_share(LABELS, pseudo_labels(_scores(), LABELS, UNSEEN_IDS, 254, 255), 254, 255) == 1.0


def test_unlabelled_equal_to_ignore_labels_every_ignore_pixel():
    labels = torch.tensor([[[0, 255, 2], [255, 2, 255]]])[:, None]      # B×1×H×W is accepted too
    out = pseudo_labels(_scores(), labels, UNSEEN_IDS, unlabelled_index=255, ignore_index=255)
    # ignore pixels (0,1) -> d (0.6 > 0.3), (1,0) -> b, (1,2) -> d (0.25 > 0.2)
    assert out.shape == labels.shape
    assert out[:, 0].tolist() == [[[0, 3, 2], [1, 2, 3]]]


def test_pseudo_labels_bad_input_is_named():
    with pytest.raises(ValueError, match="no unseen classes"):
        pseudo_labels(_scores(), LABELS, [])
    with pytest.raises(ValueError, match="outside the 4 score channels"):
        pseudo_labels(_scores(), LABELS, [1, 4])
    with pytest.raises(ValueError, match="do not match"):
        pseudo_labels(_scores(), LABELS[:, :1], UNSEEN_IDS)
    with pytest.raises(ValueError, match="unknown keys"):
        check_config(dict(thresh=0.5))
    with pytest.raises(ValueError, match="unlabelled_index"):
        check_config(dict(unlabelled_index=300))
    with pytest.raises(ValueError, match="threshold"):
        check_config(dict(threshold="high"))
    assert check_config(None) is None
    assert check_config({}) == dict(unlabelled_index=255, threshold=None)


# ------------------------------------------------------------------------------------ the segmentor
mmseg_models = pytest.importorskip("mmseg.models", reason="mmseg.models needs mmcv with ops")


def test_segmentor_feeds_pseudo_labels_of_its_own_predictions_to_the_loss(tmp_path):
    from mmseg.registry import MODELS

    from tests.test_models.test_segmentor import CLASSES, UNSEEN, build_model, make_batch

    model = build_model(tmp_path, train_vocabulary="all")
    assert model.self_training is None   # off unless configured
    model.self_training = check_config(dict(unlabelled_index=254))
    unseen = CLASSES.index(UNSEEN[0])
    lab = torch.zeros(1, 64, 64, dtype=torch.long)
    lab[:, :32] = 254        # top half unlabelled (an unseen object), bottom half seen class 0
    lab[:, 40:44] = 255      # a void band
    batch = model.data_preprocessor(make_batch(num=1, labels=[lab]), True)
    seen_labels = []
    head = model.decode_head
    orig_loss = head.loss

    def spy(inputs, text, samples, train_cfg):
        seen_labels.append(samples[0].gt_sem_seg.data.clone())
        return orig_loss(inputs, text, samples, train_cfg)

    head.loss = spy
    losses = model(batch["inputs"], batch["data_samples"], mode="loss")
    got = seen_labels[0][0]
    # one unseen class in this split: every unlabelled pixel becomes it, seen and void pixels are kept
    assert torch.equal(got[:32], torch.full((32, 64), unseen))
    assert torch.equal(got[40:44], torch.full((4, 64), 255))
    assert torch.equal(got[32:40], torch.zeros(8, 64, dtype=torch.long))
    assert float(losses["pseudo_share"]) == 1.0
    # the head's predict ran first, on the full vocabulary, without gradient
    kinds = [c[0] for c in head.calls]
    assert kinds == ["predict", "loss"] and head.calls[0][1].shape[0] == len(CLASSES)
    assert MODELS.get("ZeroShotEncoderDecoder") is type(model)


def test_segmentor_pseudo_labels_pick_the_best_unseen_score(tmp_path):
    """Two unseen classes: the pseudo-label is the argmax of the head's own predict scores over them."""
    from tests.test_models.test_segmentor import build_model, make_batch, write_split

    classes = ["red circle", "blue square", "green triangle", "sky", "grass"]
    model = build_model(tmp_path, train_vocabulary="all")
    from alignzeg.splits import load_split

    model.split = load_split(write_split(tmp_path / "split2.json", classes, ["green triangle", "grass"]))
    model.clear_text_embeddings()
    model.self_training = check_config(dict(unlabelled_index=254))
    lab = torch.full((1, 64, 64), 254, dtype=torch.long)
    lab[:, :, :8] = 0
    batch = model.data_preprocessor(make_batch(num=1, labels=[lab]), True)
    text = model.text_embeddings("all")
    with torch.no_grad():
        feats = model.extract_feat(batch["inputs"])
        scores = model.decode_head.forward(feats, text)                       # what predict returns
    expected = torch.where(scores[0, 2] >= scores[0, 4], 2, 4)
    expected[:, :8] = 0
    captured = []
    orig = model.decode_head.loss
    model.decode_head.loss = lambda i, t, s, c: (captured.append(s[0].gt_sem_seg.data[0].clone()), orig(i, t, s, c))[1]
    model(batch["inputs"], batch["data_samples"], mode="loss")
    assert torch.equal(captured[0], expected)


def test_segmentor_self_training_needs_the_full_vocabulary(tmp_path):
    from mmseg.registry import MODELS

    from alignzeg.clip.model import TINY_CLIP_CONFIG
    from tests.test_models.test_segmentor import write_split

    cfg = dict(type="ZeroShotEncoderDecoder",
               backbone=dict(type="CLIPBackbone", clip=dict(model=TINY_CLIP_CONFIG, pretrained=None)),
               decode_head=dict(type="TrivialTestHead"), split=write_split(tmp_path / "split.json"),
               self_training=dict(), train_vocabulary="seen")
    with pytest.raises(ValueError, match="train_vocabulary='all'"):
        MODELS.build(cfg)
    cfg.update(train_vocabulary="all", self_training=dict(unlabeled_index=254))
    with pytest.raises(ValueError, match="unknown keys"):
        MODELS.build(cfg)


def test_alignzeg_indicator_labels_pseudo_labelled_unseen_proposals_as_unseen():
    from alignzeg.models.alignzeg_head import indicator_targets

    pred = torch.zeros(1, 4, 2, 2)
    targets = [dict(labels=torch.tensor([0, 1, 2]), ignore=torch.zeros(2, 2, dtype=torch.bool))]
    indices = [(torch.tensor([3, 0, 2]), torch.tensor([0, 1, 2]))]   # query 3 -> class 0, 0 -> 1, 2 -> 2
    labels, valid = indicator_targets(pred, indices, targets, "virtual", 0.5, 0.5)
    assert labels.tolist() == [[0.0, 0.0, 0.0, 0.0]] and valid.tolist() == [[True, False, True, True]]
    seen = torch.tensor([True, False, True])                           # class 1 unseen
    labels, valid = indicator_targets(pred, indices, targets, "virtual", 0.5, 0.5, seen)
    assert labels.tolist() == [[1.0, 0.0, 0.0, 0.0]] and valid.tolist() == [[True, False, True, True]]
