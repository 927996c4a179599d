"""The transductive (self-trained) runs in the analysis and the report: their own table, never mixed with
the inductive rows, the per-seed self-training effect against hand-computed differences, and the published
transductive numbers matched to them."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.test_analysis.conftest import MAIN, NAMES, build_results, hiou, metric_json, write_run

# self-trained runs of both methods: per seed (S, U)
ST = {"alignzeg": {0: (38.0, 36.0), 1: (39.0, 40.0), 2: (37.0, 35.0)},
      "zegclip": {0: (44.0, 25.0), 1: (43.0, 27.0), 2: (45.0, 24.0)}}
T3 = 4.302652729911275   # t(0.975, 2)


@pytest.fixture(scope="module")
def analysed_st(tmp_path_factory):
    from analysis.tables import Settings, analyse

    base = tmp_path_factory.mktemp("st")
    root = build_results(base / "results")
    for m, seeds in ST.items():
        for seed, (s, u) in seeds.items():
            write_run(root / "transductive" / m / f"seed{seed}", metric_json(s, u, seed))
    summary = analyse(root, base / "analysis", Settings(names=dict(NAMES), ours="alignzeg", dataset="voc12aug"))
    return base, summary


def test_transductive_rows_have_their_own_table(analysed_st):
    base, summary = analysed_st
    main = pd.read_csv(base / "analysis" / "main_table.csv")
    trans = pd.read_csv(base / "analysis" / "transductive_table.csv")
    for m in ST:
        row = trans[trans["method"] == m].iloc[0]
        assert row["S_mean"] == pytest.approx(np.mean([s for s, _ in ST[m].values()]))
        assert row["hIoU_mean"] == pytest.approx(np.mean([hiou(s, u) for s, u in ST[m].values()]))
        # the inductive table is unchanged by the self-trained runs
        ind = main[main["method"] == m].iloc[0]
        assert ind["S_mean"] == pytest.approx(np.mean([s for s, _ in MAIN[m].values()]))
    assert summary["transductive_methods"] == ["alignzeg", "zegclip"]
    assert {r["group"] for r in summary["runs"]} == {"main", "ablation", "transductive"}


def test_self_training_effect_is_the_paired_per_seed_difference(analysed_st):
    base, _ = analysed_st
    eff = pd.read_csv(base / "analysis" / "self_training_effect.csv")
    for m in ST:
        d = np.array([hiou(*ST[m][k]) - hiou(*MAIN[m][k]) for k in range(3)])
        row = eff[(eff["method"] == m) & (eff["metric"] == "hIoU")].iloc[0]
        assert row["diff_mean"] == pytest.approx(d.mean())
        assert row["diff_ci95"] == pytest.approx(T3 * d.std(ddof=1) / np.sqrt(3))
        assert bool(row["significant"]) == (abs(d.mean()) > T3 * d.std(ddof=1) / np.sqrt(3))
        du = np.array([ST[m][k][1] - MAIN[m][k][1] for k in range(3)])
        assert eff[(eff["method"] == m) & (eff["metric"] == "mIoU_unseen")].iloc[0]["diff_mean"] == \
            pytest.approx(du.mean())
    md = (base / "analysis" / "transductive_table.md").read_text()
    assert "| Self-trained minus inductive | Δ S | Δ U | Δ hIoU | seeds |" in md
    d = np.array([hiou(*ST["alignzeg"][k]) - hiou(*MAIN["alignzeg"][k]) for k in range(3)])
    assert f"{d.mean():+.2f} ± {T3 * d.std(ddof=1) / np.sqrt(3):.2f}" in md


def test_report_keeps_the_settings_apart_and_matches_published_transductive_rows(analysed_st, tmp_path):
    from analysis.report import build_report

    base, _ = analysed_st
    text = build_report(base / "analysis", tmp_path / "report.md")
    assert "## Transductive setting (self-training)" in text
    head, rest = text.split("## Transductive setting (self-training)", 1)
    st_mean = np.mean([hiou(s, u) for s, u in ST["alignzeg"].values()])
    assert f"{st_mean:.2f}" not in head.split("## Main results", 1)[1].split("##", 1)[0]   # not in the main table
    assert f"{st_mean:.2f}" in rest.split("##", 1)[0]
    # ZegCLIP's published VOC transductive row is compared with the self-trained ZegCLIP runs
    row = next(r for r in text.splitlines() if r.startswith("| ZegCLIP |") and "| transductive |" in r
               and "VOC" in r)
    z = np.mean([hiou(s, u) for s, u in ST["zegclip"].values()])
    assert f"{z - 91.1:+.2f}" in row


def test_declared_runs_include_self_train_methods():
    from analysis.tables import RunSetError, declared_runs

    params = {"base": {"seeds": [0, 1]}, "evaluate": {"methods": ["a", "b"]},
              "self_train": {"methods": ["a"]}}
    runs = declared_runs(params)
    assert [r for r in runs if r[0] == "transductive"] == [("transductive", "a", 0), ("transductive", "a", 1)]
    with pytest.raises(RunSetError, match="reserved for self-trained"):
        declared_runs({"base": {"seeds": [0]}, "evaluate": {"methods": ["transductive"]}})
