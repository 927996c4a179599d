"""experiments.sweep: the learning-rate grid on val, the selection rule, ties and collapsed runs."""
from __future__ import annotations

from pathlib import Path

import yaml

from experiments import sweep as S

REPO = Path(__file__).resolve().parents[1]


def _row(method, factor, h, collapsed=0.0):
    return {"method": method, "factor": factor, "base_lr": 1e-3, "lr": 1e-3 * factor, "seed": 0,
            "mIoU_seen": h, "mIoU_unseen": h, "hIoU": h, "collapsed": collapsed}


def test_choose_takes_the_best_val_hiou_and_never_a_collapsed_run():
    rows = [_row("a", 0.5, 10.0), _row("a", 1.0, 12.0), _row("a", 2.0, 30.0, collapsed=1.0),
            _row("z", 0.5, 0.0, collapsed=1.0), _row("z", 1.0, 0.0, collapsed=1.0)]
    best = S.choose(rows)
    assert best["a"]["factor"] == 1.0
    assert "z" not in best
    text = S.summary_markdown(rows, best)
    assert "No factor chosen (every run collapsed or, for a tied group, some member did): z." in text
    assert text.count("✓") == 1


def test_tied_methods_share_the_factor_with_the_best_mean():
    # alone, p would pick 0.5 (14.4) and f 1.0 (19.4); the shared choice is the best mean:
    # 0.5 -> (13.5 + 14.4) / 2 = 13.95, 1.0 -> (19.4 + 14.2) / 2 = 16.8
    rows = [_row("f", 0.5, 13.5), _row("f", 1.0, 19.4), _row("p", 0.5, 14.4), _row("p", 1.0, 14.2),
            _row("f", 2.0, 40.0), _row("p", 2.0, 1.0, collapsed=1.0)]
    assert S.choose(rows)["p"]["factor"] == 0.5
    best = S.choose(rows, [["f", "p"]])
    assert best["f"]["factor"] == best["p"]["factor"] == 1.0  # 2.0 is out: p collapsed there


def test_run_one_scales_the_config_lr_and_evaluates_on_val(monkeypatch, tmp_path):
    from experiments import pipeline as P

    params = P.load_params(REPO / "params.yaml")
    params["base"].update(runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"))
    calls = []
    monkeypatch.setattr(P, "train_run", lambda p, m, seed: calls.append(("train", p["base"]["runs_dir"], m, seed)))

    def fake_eval(p, m, seed, split="test"):
        calls.append(("evaluate", p["base"]["results_dir"], m, seed, split))
        return {"mIoU_seen": 1.0, "mIoU_unseen": 2.0, "hIoU": 4 / 3, "collapsed": 0.0}

    monkeypatch.setattr(P, "evaluate_run", fake_eval)
    row = S.run_one(params, "two-stage", 0.25, seed=3)
    cfg_file = tmp_path / "runs" / "lr-sweep" / "x0.25" / "configs" / "two-stage.py"
    base_lr = P.method_config(params, "two-stage").optim_wrapper.optimizer.lr
    from mmengine.config import Config

    assert Config.fromfile(str(cfg_file)).optim_wrapper.optimizer.lr == base_lr * 0.25
    assert row["lr"] == base_lr * 0.25 and row["hIoU"] == 4 / 3
    assert calls == [("train", str(tmp_path / "runs" / "lr-sweep" / "x0.25"), "two-stage", 3),
                     ("evaluate", str(tmp_path / "results" / "lr-sweep" / "x0.25"), "two-stage", 3, "val")]
    assert yaml.safe_load((REPO / "params.yaml").read_text())["base"]["runs_dir"] == "runs"  # untouched
