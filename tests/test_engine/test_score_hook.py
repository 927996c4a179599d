"""UnseenScoreSamplerHook: top seen/unseen scores on unseen pixels and per-proposal indicator labels."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from alignzeg.engine.score_hook import UnseenScoreSamplerHook, proposal_indicator_labels


def _sample(scores: torch.Tensor, gt: torch.Tensor):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    s = SegDataSample()
    s.seg_logits = PixelData(data=scores)
    s.gt_sem_seg = PixelData(data=gt[None])
    return s


class _Dataset(list):
    metainfo: dict = {}


def _runner(classes, unseen, head=None, size=100, batch_size=1):
    dataset = _Dataset(range(size))
    dataset.metainfo = dict(classes=classes, unseen_classes=unseen)
    model = SimpleNamespace(decode_head=head)
    return SimpleNamespace(test_dataloader=SimpleNamespace(dataset=dataset, batch_size=batch_size), model=model,
                           logger=SimpleNamespace(info=lambda *a, **k: None))


def test_two_ranks_write_the_one_process_file(tmp_path, monkeypatch):
    """Images keyed by dataset position: two ranks' images (rank 1's padded duplicate skipped), gathered,
    give the file one process writes, pixel draws included."""
    import mmengine.dist as D

    classes, unseen = ["a", "b", "c"], ["c"]
    gen = torch.Generator().manual_seed(0)
    samples = [_sample(torch.rand(3, 6, 6, generator=gen), torch.randint(0, 3, (6, 6), generator=gen))
               for _ in range(5)]

    def run(rank, world, mine):
        monkeypatch.setattr(D, "get_dist_info", lambda: (rank, world))
        hook = UnseenScoreSamplerHook(str(tmp_path / f"r{rank}w{world}.npz"), max_samples=50, per_image=7, seed=3)
        runner = _runner(classes, unseen, size=5, batch_size=2)
        hook.before_test(runner)
        for b in range(0, len(mine), 2):
            hook.after_test_iter(runner, b // 2, None, mine[b:b + 2])
        return hook, runner

    one, runner = run(0, 1, samples)
    one.after_test(runner)
    ranks = [run(0, 2, samples[0::2])[0], run(1, 2, samples[1::2] + samples[:1])[0]]  # position 5: padding
    assert sorted(ranks[0]._images) == [0, 2, 4] and sorted(ranks[1]._images) == [1, 3]
    monkeypatch.setattr(D, "get_world_size", lambda: 2)
    monkeypatch.setattr(D, "is_main_process", lambda: True)
    monkeypatch.setattr(D, "all_gather_object", lambda obj: [(h._images, h._indicator) for h in ranks])
    ranks[0].out_file = str(tmp_path / "two.npz")
    ranks[0].after_test(runner)
    a, b = np.load(tmp_path / "r0w1.npz"), np.load(tmp_path / "two.npz")
    assert a["top_seen"].size > 7 and sorted(a.files) == sorted(b.files)
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key


def test_top_scores_on_unseen_pixels_only(tmp_path):
    classes, unseen = ["a", "b", "c"], ["c"]  # c is unseen
    gt = torch.tensor([[0, 2], [2, 255]])
    scores = torch.zeros(3, 2, 2)
    scores[:, 0, 1] = torch.tensor([0.7, 0.1, 0.2])   # unseen pixel: seen max 0.7, unseen 0.2
    scores[:, 1, 0] = torch.tensor([0.1, 0.3, 0.6])   # unseen pixel: seen max 0.3, unseen 0.6
    scores[:, 0, 0] = torch.tensor([0.9, 0.9, 0.9])   # seen pixel: not sampled
    out = tmp_path / "scores.npz"
    hook = UnseenScoreSamplerHook(str(out), max_samples=10, per_image=10)
    runner = _runner(classes, unseen)
    hook.before_test(runner)
    hook.after_test_iter(runner, 0, None, [_sample(scores, gt)])
    hook.after_test(runner)
    data = np.load(out)
    order = np.argsort(data["top_unseen"])
    np.testing.assert_allclose(data["top_seen"][order], [0.7, 0.3], rtol=0, atol=1e-7)
    np.testing.assert_allclose(data["top_unseen"][order], [0.2, 0.6], rtol=0, atol=1e-7)
    assert "indicator_prob" not in data.files


def test_softmax_applied_for_logit_heads(tmp_path):
    gt = torch.tensor([[1]])
    logits = torch.tensor([2.0, 0.0]).view(2, 1, 1)
    hook = UnseenScoreSamplerHook(str(tmp_path / "s.npz"), apply_softmax=True)
    runner = _runner(["a", "b"], ["b"])
    hook.before_test(runner)
    hook.after_test_iter(runner, 0, None, [_sample(logits, gt)])
    hook.after_test(runner)
    data = np.load(tmp_path / "s.npz")
    e = np.exp(2.0)
    np.testing.assert_allclose(data["top_seen"], [e / (e + 1)], atol=1e-6)
    np.testing.assert_allclose(data["top_unseen"], [1 / (e + 1)], atol=1e-6)


def test_proposal_labels_by_majority_gt_class():
    gt = torch.full((4, 4), 255)
    gt[:2, :] = 0       # seen class 0 on the top half
    gt[2:, :2] = 1      # unseen class 1 bottom-left
    masks = torch.full((1, 3, 4, 4), -10.0)
    masks[0, 0, :2, :] = 10.0          # proposal 0 on class 0 (8 px)
    masks[0, 1, 2:, :] = 10.0          # proposal 1: 4 px of class 1, 4 ignored px -> unseen
    masks[0, 2, 3, 3] = 10.0           # proposal 2 on one ignored px -> dropped
    prob = torch.tensor([[0.1, 0.8, 0.5]])
    p, u = proposal_indicator_labels(prob, masks, [gt], torch.tensor([False, True]), min_pixels=1)
    np.testing.assert_allclose(p, [0.1, 0.8])
    assert u.tolist() == [False, True]


def test_indicator_arrays_written_when_head_exposes_them(tmp_path):
    gt = torch.zeros(2, 2, dtype=torch.long)
    gt[1, :] = 1
    head = SimpleNamespace(last_aux=dict(indicator_prob=torch.tensor([[0.2, 0.9]]),
                                         mask_logits=torch.tensor([[[[9.0, 9.0], [-9.0, -9.0]],
                                                                    [[-9.0, -9.0], [9.0, 9.0]]]])))
    hook = UnseenScoreSamplerHook(str(tmp_path / "s.npz"), min_proposal_pixels=1)
    runner = _runner(["a", "b"], ["b"], head)
    hook.before_test(runner)
    hook.after_test_iter(runner, 0, None, [_sample(torch.rand(2, 2, 2), gt)])
    hook.after_test(runner)
    data = np.load(tmp_path / "s.npz")
    np.testing.assert_allclose(data["indicator_prob"], [0.2, 0.9])
    assert data["indicator_is_unseen"].tolist() == [False, True]
