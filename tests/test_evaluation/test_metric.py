"""ZeroShotIoUMetric through mmengine's Evaluator, against hand counts and against mmseg's IoUMetric."""
import json
import math

import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator
from mmengine.structures import PixelData

from alignzeg.evaluation import ZeroShotIoUMetric
from alignzeg.splits import Split
from tests.test_evaluation.test_confusion import CLASSES, EXPECTED, UNSEEN, _maps


def _sample(pred, gt, path="img.png"):
    from mmseg.structures import SegDataSample

    s = SegDataSample(metainfo={"img_path": path})
    s.pred_sem_seg = PixelData(data=torch.as_tensor(pred).reshape(1, *np.shape(pred)[-2:]))
    s.gt_sem_seg = PixelData(data=torch.as_tensor(gt).reshape(1, *np.shape(gt)[-2:]))
    return s


META = {"classes": tuple(CLASSES), "unseen_classes": ("c", "d"), "seen_classes": ("a", "b"),
        "split_name": "toy", "mode": "all"}


def _evaluate(metric, samples, meta=META, batch=2):
    evaluator = Evaluator(metric)
    evaluator.dataset_meta = dict(meta)
    for i in range(0, len(samples), batch):
        evaluator.process(data_samples=samples[i:i + batch], data_batch=None)
    return evaluator.evaluate(len(samples))


def _split_into_images(n=3):
    pred, gt = _maps()
    return [_sample(p.reshape(1, -1), g.reshape(1, -1), f"im{i}.png")
            for i, (p, g) in enumerate(zip(np.array_split(pred[0], n), np.array_split(gt[0], n)))]


def test_evaluator_returns_hand_computed_flat_scalars_and_writes_json(tmp_path):
    metric = ZeroShotIoUMetric(output_dir=str(tmp_path / "out"))
    res = _evaluate(metric, _split_into_images())
    assert set(res) == {"mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "aAcc", "unseen_to_seen", "collapsed",
                        "mIoU_unseen_stuff", "mIoU_unseen_objects"}
    assert all(isinstance(v, float) for v in res.values())
    assert res["mIoU_seen"] == pytest.approx(50.0)
    assert res["mIoU_unseen"] == pytest.approx(37.5)
    assert res["hIoU"] == pytest.approx(2 * 50 * 37.5 / 87.5)
    assert res["aAcc"] == pytest.approx(62.5)
    assert res["unseen_to_seen"] == pytest.approx(300 / 7)
    data = json.loads((tmp_path / "out" / "zeroshot_metrics.json").read_text())
    assert data["confusion"] == {"classes": CLASSES, "matrix": EXPECTED.tolist()}
    assert [r["class"] for r in data["per_class"]] == CLASSES
    assert data["per_class"][3]["IoU"] == pytest.approx(25.0)
    assert data["hIoU"] == pytest.approx(res["hIoU"])
    # constant memory: one matrix per process, not one entry per image; cleared after evaluate
    assert metric.results == []


def test_nan_class_is_null_in_strict_json(tmp_path):
    pred, gt = np.array([[0, 1]]), np.array([[0, 1]])
    meta = {"classes": ("a", "b", "c"), "unseen_classes": ("b",)}
    res = _evaluate(ZeroShotIoUMetric(output_dir=str(tmp_path)), [_sample(pred, gt)], meta)
    assert res["mIoU"] == pytest.approx(100.0)  # c absent everywhere: NaN, excluded
    text = (tmp_path / "zeroshot_metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["per_class"][2]["IoU"] is None


def test_unseen_source_precedence_and_errors(tmp_path):
    samples = _split_into_images()
    meta = {k: v for k, v in META.items() if k != "unseen_classes"}
    with pytest.raises(ValueError, match="no unseen classes known"):
        _evaluate(ZeroShotIoUMetric(), samples, meta)
    res = _evaluate(ZeroShotIoUMetric(unseen_classes=["d"]), samples, meta)
    assert res["mIoU_unseen"] == pytest.approx(25.0)
    path = tmp_path / "toy.json"
    Split(name="toy", classes=tuple(CLASSES), unseen=("c", "d")).save(path)
    assert _evaluate(ZeroShotIoUMetric(split=str(path)), samples, meta)["mIoU_unseen"] == \
        pytest.approx(37.5)
    Split(name="other", classes=("a", "b", "d", "c"), unseen=("c",)).save(tmp_path / "o.json")
    with pytest.raises(ValueError, match=r"index 2: 'd' \(split\) vs 'c' \(dataset\)"):
        _evaluate(ZeroShotIoUMetric(split=str(tmp_path / "o.json")), samples, meta)
    with pytest.raises(ValueError, match=r"\['zebra'\]"):
        _evaluate(ZeroShotIoUMetric(unseen_classes=["zebra"]), samples, meta)


def test_bad_label_names_the_image():
    with pytest.raises(ValueError, match="bad.png.*label 7"):
        _evaluate(ZeroShotIoUMetric(), [_sample(np.array([[7]]), np.array([[0]]), "bad.png")])


def test_matches_mmseg_iou_metric_on_random_predictions():
    from mmseg.evaluation import IoUMetric

    rng = np.random.default_rng(3)
    classes = [f"k{i}" for i in range(6)]
    samples = []
    for i in range(5):
        gt = rng.integers(0, 6, size=(16, 16))
        gt[rng.random((16, 16)) < 0.1] = 255
        gt[gt == 5] = 4  # class k5 never in gt: IoU 0 where predicted
        pred = np.where(rng.random((16, 16)) < 0.6, gt, rng.integers(0, 6, size=(16, 16)))
        pred[pred == 255] = 0
        samples.append(_sample(pred, gt, f"r{i}.png"))
    meta = {"classes": tuple(classes), "unseen_classes": ("k1", "k4")}
    ours_metric = ZeroShotIoUMetric()
    ours = _evaluate(ours_metric, samples, meta)

    # mmseg's own per-image histograms and per-class IoU, unrounded
    parts = [IoUMetric.intersect_and_union(s.pred_sem_seg.data.squeeze(),
                                           s.gt_sem_seg.data.squeeze(), 6, 255) for s in samples]
    totals = [sum(p[k] for p in parts) for k in range(4)]
    ref = IoUMetric.total_area_to_metrics(*totals, metrics=["mIoU"])
    ref_iou = ref["IoU"] * 100
    ref_rounded = _evaluate(IoUMetric(), samples, meta)

    from alignzeg.evaluation.confusion import confusion_matrix, metrics_from_confusion

    m = sum(confusion_matrix(s.pred_sem_seg.data, s.gt_sem_seg.data, 6) for s in samples)
    per_class = metrics_from_confusion(m, classes, ["k1", "k4"])["per_class"]
    np.testing.assert_allclose([r["IoU"] for r in per_class], ref_iou, atol=1e-6, equal_nan=True)
    assert ours["mIoU"] == pytest.approx(float(np.nanmean(ref_iou)), abs=1e-6)
    # mmseg accumulates float32 histograms (torch.histc), so its aAcc carries float32 rounding
    assert ours["aAcc"] == pytest.approx(float(ref["aAcc"]) * 100, abs=1e-4)
    assert ours["aAcc"] == pytest.approx(100 * float(np.trace(m)) / float(m.sum()), abs=1e-9)
    assert ours["mIoU"] == pytest.approx(ref_rounded["mIoU"], abs=0.005)
    seen = [0, 2, 3, 5]
    assert ours["mIoU_seen"] == pytest.approx(float(np.nanmean(ref_iou[seen])), abs=1e-6)
    assert ours["mIoU_unseen"] == pytest.approx(float(np.nanmean(ref_iou[[1, 4]])), abs=1e-6)
    assert not math.isnan(ours["hIoU"])


def test_registered_in_mmseg_metrics():
    from mmseg.registry import METRICS

    metric = METRICS.build(dict(type="ZeroShotIoUMetric", unseen_classes=["c"]))
    assert isinstance(metric, ZeroShotIoUMetric)


def test_per_rank_matrices_sum_like_collect_results():
    """Each rank keeps one summed matrix; mmengine's collect_results concatenates the ranks' lists."""
    samples = _split_into_images(4)
    ranks = []
    for part in (samples[:2], samples[2:]):
        m = ZeroShotIoUMetric()
        m.dataset_meta = dict(META)
        for s in part:
            m.process(None, [s.to_dict()])
        assert len(m.results) == 1
        ranks.append(m)
    gathered = ranks[0].results + ranks[1].results
    res = ranks[0].compute_metrics(gathered)
    assert res["hIoU"] == pytest.approx(2 * 50 * 37.5 / 87.5)
    assert res["unseen_to_seen"] == pytest.approx(300 / 7)


def _scored(scores, gt, path="img.png"):
    s = _sample(scores.argmax(0, keepdim=True), gt, path)
    s.seg_logits = PixelData(data=scores)
    return s


def test_gamma_sweep_in_the_same_pass_equals_re_evaluating_at_each_gamma(tmp_path):
    """The S(γ), U(γ) curve of one evaluation equals a separate evaluation of argmax(scores - γ·seen)."""
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn(4, 5, 6, generator=gen) for _ in range(5)]
    gts = [torch.randint(0, 4, (5, 6), generator=gen) for _ in range(5)]
    seen = torch.tensor([c not in ("c", "d") for c in CLASSES])
    metric = ZeroShotIoUMetric(output_dir=str(tmp_path), gamma_sweep=dict(num=6, extra=[0.3], calibrated=0.3))
    res = _evaluate(metric, [_scored(s, g) for s, g in zip(scores, gts)])
    data = json.loads((tmp_path / "zeroshot_metrics.json").read_text())
    sweep = data["gamma_sweep"]
    gammas = [float(g) for g in sweep["gammas"]]
    assert gammas[0] == -math.inf and gammas[-1] == math.inf and 0.0 in gammas and 0.3 in gammas
    for i, g in enumerate(gammas):
        shift = 1e6 if g == math.inf else (-1e6 if g == -math.inf else g)
        again = _evaluate(ZeroShotIoUMetric(), [
            _sample((s.double() - shift * seen.double()[:, None, None]).argmax(0, keepdim=True), t)
            for s, t in zip(scores, gts)])
        for key, name in (("S", "mIoU_seen"), ("U", "mIoU_unseen"), ("hIoU", "hIoU")):
            assert sweep[key][i] == pytest.approx(again[name], abs=1e-9), (g, key)
    # γ = 0 is the plain evaluation; the calibrated γ is reported flat and in the JSON
    i0 = gammas.index(0.0)
    assert sweep["hIoU"][i0] == pytest.approx(res["hIoU"], abs=1e-9)
    i3 = gammas.index(0.3)
    assert res["hIoU_cal"] == pytest.approx(sweep["hIoU"][i3]) and res["gamma_cal"] == 0.3
    assert sweep["calibrated"] == {"gamma": 0.3, "S": sweep["S"][i3], "U": sweep["U"][i3], "hIoU": sweep["hIoU"][i3]}
    from alignzeg.evaluation.calibration import ausuc

    assert res["AUSUC"] == pytest.approx(ausuc(sweep["S"], sweep["U"])) and 0 < res["AUSUC"] <= 1
    assert len(metric.results) == 0


def test_gamma_sweep_refuses_unknown_keys_and_missing_scores():
    with pytest.raises(ValueError, match="gamma_sweep: unknown keys"):
        ZeroShotIoUMetric(gamma_sweep=dict(steps=3))
    with pytest.raises(KeyError, match="needs 'seg_logits'"):
        _evaluate(ZeroShotIoUMetric(gamma_sweep=dict(num=3)), _split_into_images())


def test_bootstrap_interval_resamples_images():
    """A hand-made case: resampling one image twice is a known matrix; the interval brackets the full
    estimate and, for identical images, collapses to it."""
    from alignzeg.evaluation.metric import bootstrap_interval

    same = np.stack([np.array([[3, 1, 0, 0], [1, 4, 0, 0], [1, 0, 2, 1], [0, 2, 0, 1]])] * 5)
    out = bootstrap_interval(same, CLASSES, UNSEEN, samples=50, seed=1)
    full = 2 * 50 * 37.5 / 87.5  # the hand-computed hIoU of that matrix (test_evaluator_returns_hand...)
    assert out["hIoU"] == [pytest.approx(full), pytest.approx(full)] and out["images"] == 5
    gen = np.random.default_rng(0)
    varied = gen.integers(0, 20, size=(40, 4, 4)) + np.eye(4, dtype=np.int64) * 30
    out = bootstrap_interval(varied, CLASSES, UNSEEN, samples=400, seed=0)
    from alignzeg.evaluation.confusion import metrics_from_confusion

    ref = metrics_from_confusion(varied.sum(0), CLASSES, UNSEEN)
    lo, hi = out["hIoU"]
    assert lo < ref["hIoU"] < hi and hi - lo < 20
    # brute force: the same seeded draws, one resample at a time
    rng = np.random.default_rng(0)
    draws = rng.integers(0, 40, size=(200, 40))
    vals = [metrics_from_confusion(varied[d].sum(0), CLASSES, UNSEEN)["hIoU"] for d in draws]
    vals += [metrics_from_confusion(varied[d].sum(0), CLASSES, UNSEEN)["hIoU"]
             for d in rng.integers(0, 40, size=(200, 40))]
    assert [lo, hi] == pytest.approx([np.percentile(vals, 2.5), np.percentile(vals, 97.5)])


def test_bootstrap_through_the_evaluator(tmp_path):
    metric = ZeroShotIoUMetric(output_dir=str(tmp_path), bootstrap=30)
    res = _evaluate(metric, _split_into_images(3))
    data = json.loads((tmp_path / "zeroshot_metrics.json").read_text())
    assert data["bootstrap"]["samples"] == 30 and data["bootstrap"]["images"] == 3
    # the same interval from the per-image matrices counted independently
    from alignzeg.evaluation.confusion import confusion_matrix
    from alignzeg.evaluation.metric import bootstrap_interval

    mats = np.stack([confusion_matrix(sm.pred_sem_seg.data, sm.gt_sem_seg.data, 4) for sm in _split_into_images(3)])
    assert mats.sum(0).tolist() == data["confusion"]["matrix"]
    ref = bootstrap_interval(mats, CLASSES, UNSEEN, 30, seed=0)
    assert data["bootstrap"]["hIoU"] == pytest.approx(ref["hIoU"])
    assert data["bootstrap"]["mIoU_seen"] == pytest.approx(ref["mIoU_seen"])
    assert res["hIoU"] == pytest.approx(data["hIoU"])
