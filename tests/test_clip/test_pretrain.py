"""Contrastive pre-training of the tiny CLIP (``alignzeg pretrain-clip``) on a tiny synthetic set."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alignzeg.clip import pretrain as P
from alignzeg.clip.model import build_clip, clip_tokenizer
from alignzeg.data import synthetic as S


def _args(data, out, **kw):
    parser = argparse.ArgumentParser()
    P.add_arguments(parser)
    argv = ["--data", str(data), "--out", str(out), "--epochs", "3", "--batch-size", "8",
            "--num-scenes", "18", "--num-heldout", "6", "--lr", "2e-3", "--threads", "2", "--no-progress"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "synthetic"
    S.generate(out, seed=0, num_train=1, num_val=0)  # only split.json and the generator settings are read
    return out


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "clip.safetensors"
    model, report = P.train_clip(_args(data, out))
    return out, model, report


def test_loss_equals_clip_loss_when_texts_are_distinct():
    gen = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(5, 8, generator=gen), dim=1)
    txt = F.normalize(torch.randn(5, 8, generator=gen), dim=1)
    scale = torch.tensor(7.0)
    logits = scale * img @ txt.t()
    target = torch.arange(5)
    clip = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    torch.testing.assert_close(P.contrastive_loss(img, txt, target, scale), clip)


def test_loss_with_shared_and_unused_texts_by_hand():
    """Images 0 and 1 share text 0, image 2 has text 1, text 2 is a negative only."""
    rng = np.random.default_rng(1)
    img = rng.normal(size=(3, 4))
    txt = rng.normal(size=(3, 4))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    s = 3.0
    L = s * img @ txt.T

    def log_softmax(v):
        return v - np.log(np.exp(v).sum())

    i2t = -np.mean([log_softmax(L[0])[0], log_softmax(L[1])[0], log_softmax(L[2])[1]])
    col0, col1 = log_softmax(L[:, 0]), log_softmax(L[:, 1])
    t2i = np.mean([-(0.5 * col0[0] + 0.5 * col0[1]), -col1[2]])
    got = P.contrastive_loss(torch.tensor(img), torch.tensor(txt), torch.tensor([0, 0, 1]), torch.tensor(s))
    assert got.item() == pytest.approx(0.5 * (i2t + t2i), rel=1e-9)


def test_find_regions_on_a_known_map():
    lab = np.zeros((64, 64), np.uint8)
    lab[32:] = 1                     # stuff 1 in the bottom half
    lab[10:20, 40:50] = 5            # a 10x10 object
    lab[60:63, 60:63] = 6            # 9 pixels: too small for a region
    regions = dict(P.find_regions(lab, stuff_ids={0, 1}))
    assert sorted(regions) == [0, 1, 5]
    assert regions[5] == pytest.approx((38.5, 8.5, 51.5, 21.5))   # 13 px square (15 % margin) around it
    assert regions[0] == (0.0, 0.0, 32.0, 32.0)                    # first pure 32 px window
    assert regions[1] == (0.0, 32.0, 32.0, 64.0)


def test_training_lowers_loss_and_writes_reloadable_checkpoint(trained, data):
    out, model, report = trained
    losses = [h["loss"] for h in report["history"]]
    assert len(losses) == 3 and report["steps"] == 6
    assert losses[-1] < losses[0] - 0.2, losses
    assert not (out.parent / (out.name + ".partial")).exists()
    loaded = build_clip(None, out)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens = clip_tokenizer(out)(["a photo of a red circle.", "a blue ring on grass."])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), loaded.encode_image(images))
        assert torch.equal(model.encode_text(tokens), loaded.encode_text(tokens))
    assert loaded.alignzeg_cfg["vision_cfg"]["image_size"] == 64


def test_report_numbers_are_consistent(trained):
    out, _, report = trained
    on_disk = json.loads((out.parent / (out.name + ".json")).read_text())
    assert on_disk["heldout"]["acc_seen"] == report["heldout"]["acc_seen"]
    h = report["heldout"]
    names = S.class_names()
    assert h["num_classes"] == len(names) and h["chance_acc"] == pytest.approx(100 / len(names))
    conf = np.asarray(h["confusion"])
    unseen = np.isin(np.arange(len(names)), [names.index(u) for u in S.DEFAULT_UNSEEN])
    n_seen, n_unseen = conf[~unseen].sum(), conf[unseen].sum()
    assert (n_seen, n_unseen) == (h["num_regions"]["seen"], h["num_regions"]["unseen"])
    assert n_seen + n_unseen == sum(c["n"] for c in h["per_class"]) > 0
    assert h["acc_seen"] == pytest.approx(100 * np.trace(conf * ~unseen[:, None]) / n_seen)
    if n_unseen:
        assert h["acc_unseen"] == pytest.approx(100 * np.diag(conf)[unseen].sum() / n_unseen)
    assert report["num_heldout_images"] == 6 and h["num_scenes"] == 6
    # the shape-only confusion counts every object crop once and its diagonal is the shape-only accuracy
    sc = np.asarray(h["shape_confusion"])
    assert h["shapes"] == list(S.SHAPES) and sc.shape == (5, 5)
    assert sc.sum() == sum(c["n"] for c in h["per_class"] if c["class"] not in S.STUFF)
    assert h["acc_shape_only"] == pytest.approx(100 * np.trace(sc) / sc.sum())
    cos = np.asarray(h["same_colour_prompt_cosine"], dtype=float)
    assert np.allclose(np.diag(cos), 1.0, atol=1e-5) and np.allclose(cos, cos.T)


def test_deterministic_and_resumable(trained, data, tmp_path, monkeypatch, capsys):
    """A second run, interrupted after its first epoch and resumed from FILE.partial, ends with
    bit-identical weights to the fixture's uninterrupted run (same seed, same machine)."""
    ref = trained[1].state_dict()
    # an interrupted run resumes from FILE.partial and ends with the same weights
    out = tmp_path / "b.safetensors"
    real_plan = P.epoch_plan

    def stop_at_second_epoch(seed, epoch, *a, **kw):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_plan(seed, epoch, *a, **kw)

    monkeypatch.setattr(P, "epoch_plan", stop_at_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        P.train_clip(_args(data, out))
    monkeypatch.setattr(P, "epoch_plan", real_plan)
    partial = tmp_path / "b.safetensors.partial"
    assert partial.exists() and not out.exists()
    with pytest.raises(ValueError, match=r"partial.*lr"):
        P.train_clip(_args(data, out, lr=1e-3))
    capsys.readouterr()
    assert P.run(_args(data, out)) == 0
    printed = capsys.readouterr().out
    assert "resuming" in printed and "seen" in printed and "unseen" in printed
    resumed = build_clip(None, out).state_dict()
    for k, v in resumed.items():
        assert torch.equal(v, ref[k]), k
    assert not partial.exists()


def test_bad_inputs_are_named(tmp_path, data):
    with pytest.raises(FileNotFoundError, match="split.json"):
        P.train_clip(_args(tmp_path, tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="--num-heldout"):
        P.train_clip(_args(data, tmp_path / "x.safetensors", num_heldout=-1))
    with pytest.raises(ValueError, match="--num-scenes"):
        P.train_clip(_args(data, tmp_path / "x.safetensors", num_scenes=0))
    meta = json.loads((data / "meta.json").read_text())
    old = tmp_path / "old"
    old.mkdir()
    (old / "split.json").write_bytes((data / "split.json").read_bytes())
    (old / "meta.json").write_text(json.dumps({**meta, "generator_version": 1}))
    with pytest.raises(ValueError, match=r"meta.json: written by generator version 1"):
        P.train_clip(_args(old, tmp_path / "x.safetensors"))


def test_nothing_held_out_gives_null_accuracies(data, tmp_path):
    out = tmp_path / "n.safetensors"
    _, report = P.train_clip(_args(data, out, num_heldout=0, epochs=1))
    h = json.loads((tmp_path / "n.safetensors.json").read_text())["heldout"]
    assert report["num_heldout_images"] == 0 and h["num_scenes"] == 0
    assert h["acc_seen"] is None and h["acc_unseen"] is None
    assert build_clip(None, out).visual.image_size == (64, 64)


def test_shape_contrast_groups_differ_only_in_shape():
    """Centred framing: each group is the 5 shapes of one colour, same background wherever no object is."""
    names = S.class_names()
    imgs, labels = P.shape_contrast_images(np.random.default_rng(3), 3, 64, names, "centred")
    assert imgs.shape == (15, 3, 64, 64) and imgs.dtype == torch.uint8
    for g in range(3):
        group = [names[k] for k in labels[g * 5:(g + 1) * 5]]
        colours = {n.split(" ", 1)[0] for n in group}
        assert len(colours) == 1 and [n.split(" ", 1)[1] for n in group] == list(S.SHAPES)
        # pixels outside every shape of the group are identical (same texture, jitter and noise)
        a = imgs[g * 5:(g + 1) * 5].numpy().astype(int)
        differs = (a != a[:1]).any(axis=(0, 1))
        assert 0 < differs.mean() < 0.5
    # the bad-name guard: classes not in the vocabulary are skipped
    none, _ = P.shape_contrast_images(np.random.default_rng(0), 2, 64, ["grass"])
    assert none.shape[0] == 0
    with pytest.raises(ValueError, match="framing"):
        P.shape_contrast_images(np.random.default_rng(0), 1, 64, names, "tight")


def test_frame_box_by_hand():
    """Box of a 10x6 rectangle at x 20..29, y 30..35: side 10 * 1.3 = 13 around centre (25, 33)."""
    mask = np.zeros((64, 64), bool)
    mask[30:36, 20:30] = True
    assert P.frame_box(mask, 1.0, (0.0, 0.0)) == pytest.approx((18.5, 26.5, 31.5, 39.5))
    # scale 1.2 -> side 15.6; shift 0.1 of the unscaled side (13) moves the centre by 1.3 in x
    assert P.frame_box(mask, 1.2, (0.1, -0.1)) == pytest.approx((25 + 1.3 - 7.8, 33 - 1.3 - 7.8,
                                                                 25 + 1.3 + 7.8, 33 - 1.3 + 7.8))
    # near the border the box is shifted inside, not cut: side stays 13
    edge = np.zeros((64, 64), bool)
    edge[0:4, 60:64] = True
    assert P.frame_box(edge, 1.0, (0.0, 0.0)) == pytest.approx((52.0, 0.0, 64.0, 12.0))   # 12-px minimum side


def test_shape_groups_crop_framing_frames_every_shape_alike():
    """Crop framing (default): each shape fills its crop as a region crop does, whatever its extent.

    The object extent in the crop is measured by cropping each shape's own mask with its box; at one
    radius an unrotated square spans 1.6 r and a circle 2 r, so in centred framing they differ by 20 %,
    while cut out by their own boxes they span the same share of the frame (1 / (1.3 * scale)).
    """
    names = S.class_names()
    imgs, labels = P.shape_contrast_images(np.random.default_rng(4), 3, 64, names)
    assert imgs.shape == (15, 3, 64, 64) and imgs.dtype == torch.uint8
    group = [names[k] for k in labels[:5]]
    assert [n.split(" ", 1)[1] for n in group] == list(S.SHAPES) and len({n.split()[0] for n in group}) == 1

    def extent(mask, box):
        m = torch.from_numpy(mask.astype(np.float32))[None, None]
        crop = P.crop_regions(m, torch.tensor([box], dtype=torch.float64), 64)[0, 0] > 0.5
        ys, xs = np.nonzero(crop.numpy())
        return max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / 64

    masks = {sh: S.shape_mask(sh, 32.0, 32.0, 12.0, 0.0, 64) for sh in ("circle", "square")}
    framed = {sh: extent(m, P.frame_box(m, 1.0, (0.0, 0.0))) for sh, m in masks.items()}
    assert framed["square"] == pytest.approx(1 / 1.3, abs=0.04)
    assert framed["circle"] == pytest.approx(1 / 1.3, abs=0.04)
    fixed = {sh: extent(m, (0.0, 0.0, 64.0, 64.0)) for sh, m in masks.items()}
    assert fixed["square"] / fixed["circle"] == pytest.approx(0.8, abs=0.05)


def test_sincos_position_embedding_by_hand():
    """Row-major patches; columns: sin x, cos x, sin y, cos y at frequencies 1 / 10000^(k / q)."""
    pe = P.sincos_position_embedding(3, 8)        # q = 2 frequencies: 1 and 1/100
    assert pe.shape == (9, 8) and pe.dtype == torch.float32
    for patch, (y, x) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]):
        want = [np.sin(x), np.sin(x / 100), np.cos(x), np.cos(x / 100),
                np.sin(y), np.sin(y / 100), np.cos(y), np.cos(y / 100)]
        np.testing.assert_allclose(pe[patch].numpy(), want, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        P.sincos_position_embedding(3, 6)


def test_init_position_embedding_sets_patches_and_zero_class_token():
    torch.manual_seed(0)
    from alignzeg.clip.model import TINY_CLIP_CONFIG

    model = build_clip(TINY_CLIP_CONFIG)
    P.init_position_embedding(model)
    pe = model.visual.positional_embedding.detach()
    grid = int(round((pe.shape[0] - 1) ** 0.5))
    assert torch.equal(pe[0], torch.zeros(pe.shape[1]))
    assert torch.equal(pe[1:], P.sincos_position_embedding(grid, pe.shape[1]))
    assert model.visual.positional_embedding.requires_grad   # still trained


def test_shape_confusion_by_hand():
    """Rows true shape, columns the chosen shape; stuff and 'no group' (-1) entries are skipped."""
    classes = ["grass", "red circle", "red square", "blue circle", "blue square"]
    gt = [1, 1, 2, 2, 2, 4, 0, 3]
    pred = [1, 2, 1, 1, 2, 3, 0, -1]
    assert P.shape_confusion(gt, pred, classes, ["circle", "square"]) == [[1, 1], [3, 1]]


def test_same_colour_prompt_cosine_by_hand():
    """Mean over colours of the cosine between the two shapes' prompts; a missing pair gives None."""
    classes = ["grass", "red circle", "red square", "blue circle", "blue square", "green circle"]
    s2 = 2 ** -0.5
    emb = np.array([[0, 0, 1], [1, 0, 0], [s2, s2, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=float)
    groups = P.same_colour_groups(classes, {0})
    assert 5 not in groups            # green has one shape only: no group
    cos = P.same_colour_prompt_cosine(emb, classes, groups, ["circle", "square", "ring"])
    assert cos[0][1] == pytest.approx((s2 + 1.0) / 2) and cos[1][0] == pytest.approx(cos[0][1])
    assert cos[0][0] == pytest.approx(1.0) and cos[1][1] == pytest.approx(1.0)
    assert cos[2] == [None, None, None] and cos[0][2] is None


def test_most_confused_shape_by_hand():
    h = {"shapes": ["circle", "square", "ring"],
         "shape_confusion": [[9, 1, 0], [6, 3, 1], [0, 0, 4]],
         "same_colour_prompt_cosine": [[1.0, 0.99, 0.2], [0.99, 1.0, 0.1], [0.2, 0.1, 1.0]]}
    assert P.most_confused_shape(h) == ("square", "circle", pytest.approx(60.0), 0.99)
    assert P.most_confused_shape({"shapes": [], "shape_confusion": []}) is None
