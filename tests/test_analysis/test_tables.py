"""Tables from metric JSON: means/stds against numpy, ablation deltas, winner margin, CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis import tables as T
from tests.test_analysis.conftest import (ABLATION, MAIN, MANY, MANY_NAMES, MANY_ORDER, NAMES, build_many,
                                       hiou, metric_json, write_run)

COL_OF = {"mIoU_seen": "S", "mIoU_unseen": "U", "hIoU": "hIoU"}


def _values(method: str, key: str) -> np.ndarray:
    seeds = MAIN[method]
    if key == "mIoU_seen":
        return np.array([s for s, _ in seeds.values()])
    if key == "mIoU_unseen":
        return np.array([u for _, u in seeds.values()])
    return np.array([hiou(s, u) for s, u in seeds.values()])


def _abl_h(variant: str) -> dict[int, float]:
    return {seed: hiou(s, u) for seed, (s, u) in ABLATION[variant][1].items()}


def test_discover_runs_finds_main_and_ablation(results_root):
    runs = T.discover_runs(results_root)
    main = [r for r in runs if r.group == "main"]
    abl = [r for r in runs if r.group == "ablation"]
    assert sorted({r.method for r in main}) == ["alignzeg", "zegclip"]
    assert len(main) == 6 and len(abl) == 20
    assert all(r.scores_path is not None for r in main)
    assert all(r.components is not None for r in abl)
    assert {r.seed for r in main} == {0, 1, 2}


def test_main_table_mean_and_sample_std_match_numpy(results_root):
    runs = T.discover_runs(results_root)
    table = T.main_table(T.tidy_runs(runs), NAMES, ["zegclip", "alignzeg"])
    assert list(table["method"]) == ["zegclip", "alignzeg"]  # order from the arguments
    assert list(table["display"]) == ["ZegCLIP", "AlignZeg"]
    for _, row in table.iterrows():
        assert row["n_seeds"] == 3
        for key, col in COL_OF.items():
            v = _values(row["method"], key)
            assert row[f"{col}_mean"] == pytest.approx(v.mean(), abs=1e-12)
            assert row[f"{col}_std"] == pytest.approx(np.std(v, ddof=1), abs=1e-12)
            # 95 % Student-t half-width, 3 seeds: t(0.975, 2) = 4.302653
            assert row[f"{col}_ci95"] == pytest.approx(4.302653 * np.std(v, ddof=1) / np.sqrt(3), abs=1e-5)
        # unseen_to_seen is 10 + seed in the fixture
        assert row["unseen→seen_mean"] == pytest.approx(11.0)
        assert row["unseen→seen_std"] == pytest.approx(1.0)
        assert row["aAcc_std"] == pytest.approx(0.0)


def test_main_markdown_formats_mean_pm_interval(results_root):
    runs = T.discover_runs(results_root)
    table = T.main_table(T.tidy_runs(runs), NAMES)
    md = T.main_table_markdown(table, decimals=2, ours="alignzeg")
    h = _values("alignzeg", "hIoU")
    half = 4.302653 * np.std(h, ddof=1) / np.sqrt(3)
    assert f"**{h.mean():.2f} ± {half:.2f}**" in md  # best hIoU in bold
    assert "AlignZeg (ours)" in md
    assert "45.00 ± 2.48" in md  # ZegCLIP seen mIoU: 45, 44, 46 (std 1, t 4.303 / sqrt 3)


def test_single_seed_std_is_nan_and_dash(results_no_scores):
    runs = T.discover_runs(results_no_scores)
    table = T.main_table(T.tidy_runs(runs))
    assert table.loc[0, "n_seeds"] == 1
    assert math.isnan(table.loc[0, "S_std"])
    md = T.main_table_markdown(table)
    assert "| 30.00 |" in md and "| 10.00 |" in md and "± –" not in md  # one seed: no interval shown


def test_ablation_table_paper_form_and_deltas(results_root):
    runs = T.discover_runs(results_root)
    abl = T.ablation_table(runs, T.tidy_runs(runs))
    assert list(abl["label"]) == ["parent (all off)", "+ MRPE", "+ FES", "+ BDS", "+ PBC",
                                  "full − MRPE", "full − FES", "full − BDS", "full − PBC", "full"]
    parent = _abl_h("parent")
    p_mean = np.mean(list(parent.values()))
    for _, row in abl.iterrows():
        h = _abl_h(row["variant"])
        assert row["hIoU_mean"] == pytest.approx(np.mean(list(h.values())))
        assert row["delta_hIoU"] == pytest.approx(np.mean(list(h.values())) - p_mean)
        if row["kind"] != "parent":
            d = [h[s] - parent[s] for s in sorted(h)]
            assert row["delta_hIoU_std"] == pytest.approx(np.std(d, ddof=1))
            if len(d) >= 2:
                from scipy import stats
                assert row["delta_hIoU_ci95"] == pytest.approx(
                    stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / np.sqrt(len(d)))
        assert tuple(bool(row[c]) for c in T.COMPONENTS) == ABLATION[row["variant"]][0]
    # hand check of one row: full = (41,30),(42,31); parent = (40,20),(41,22)
    full = abl[abl["kind"] == "full"].iloc[0]
    expected = (hiou(41, 30) + hiou(42, 31)) / 2 - (hiou(40, 20) + hiou(41, 22)) / 2
    assert full["delta_hIoU"] == pytest.approx(expected)
    md = T.ablation_markdown(abl)
    assert f"{expected:+.2f}" in md
    assert md.count("✓") == 4 + 12 + 4  # adds, removes, full


def test_ablation_rejects_duplicate_switches(results_root):
    vdir = results_root / "ablation" / "parent_again"
    vdir.mkdir()
    (vdir / "components.json").write_text(json.dumps({"mrpe": False, "fes": False, "bds": False, "pbc": False}))
    write_run(vdir / "seed0", metric_json(40, 20, 0))
    runs = T.discover_runs(results_root)
    with pytest.raises(ValueError, match="every switch off"):
        T.ablation_table(runs, T.tidy_runs(runs))


def test_components_json_errors_name_file_and_switch(results_root):
    path = results_root / "ablation" / "full" / "components.json"
    path.write_text(json.dumps({"mrpe": True, "fes": True, "bds": True}))
    with pytest.raises(ValueError, match=r"components\.json.*'pbc'"):
        T.discover_runs(results_root)


def test_winner_margin_and_paired_spread(results_root):
    tidy = T.tidy_runs(T.discover_runs(results_root))
    w = T.winner_summary(tidy, "hIoU", ours="alignzeg", names=NAMES)
    a, z = _values("alignzeg", "hIoU"), _values("zegclip", "hIoU")
    assert w["winner"] == "alignzeg" and w["runner_up"] == "zegclip"
    c = w["vs_runner_up"]
    assert c["margin"] == pytest.approx(a.mean() - z.mean())
    assert c["paired_std"] == pytest.approx(np.std(a - z, ddof=1))
    assert c["paired_wins"] == int(np.sum(a > z)) == 3
    assert c["unpaired_se"] == pytest.approx(math.sqrt(np.var(a, ddof=1) / 3 + np.var(z, ddof=1) / 3))
    assert w["ours_rank"] == 1
    u = w["ours_vs_best_other_unseen"]
    assert u["margin"] == pytest.approx(_values("alignzeg", "mIoU_unseen").mean() - 21.0)


def test_winner_when_ours_is_not_first(results_root):
    tidy = T.tidy_runs(T.discover_runs(results_root))
    w = T.winner_summary(tidy, "mIoU_seen", ours="alignzeg", names=NAMES)
    assert w["winner"] == "zegclip"
    assert w["ours_rank"] == 2
    assert w["ours_vs_best_other"]["margin"] == pytest.approx(41.0 - 45.0)


def _many_means(key: str) -> dict[str, float]:
    """Mean over seeds of MANY's metric ``key``, recomputed from the (S, U) pairs."""
    pick = {"hIoU": lambda s, u: hiou(s, u), "mIoU_seen": lambda s, u: s, "mIoU_unseen": lambda s, u: u}[key]
    return {m: float(np.mean([pick(s, u) for s, u in seeds.values()])) for m, seeds in MANY.items()}


@pytest.mark.parametrize("metric,best,ours_rank", [("hIoU", "two-stage", 1), ("mIoU_seen", "zegclip", 3)])
def test_best_other_is_the_strongest_by_mean_not_the_first_shown(tmp_path, metric, best, ours_rank):
    tidy = T.tidy_runs(T.discover_runs(build_many(tmp_path / "r")))
    w = T.winner_summary(tidy, metric, ours="alignzeg", names=MANY_NAMES, order=MANY_ORDER)
    means = _many_means(metric)
    others = [m for m in MANY_ORDER if m != "alignzeg"]
    # the fixture is built so that the strongest other is strictly best and neither first nor last shown
    assert best not in (others[0], others[-1])
    assert all(means[best] > means[m] for m in others if m != best)
    o = w["ours_vs_best_other"]
    assert o["b"] == best
    assert o["mean_b"] == pytest.approx(means[best], abs=1e-12)
    assert o["margin"] == pytest.approx(means["alignzeg"] - means[best], abs=1e-12)
    per_seed = {m: np.array([hiou(s, u) if metric == "hIoU" else s for s, u in MANY[m].values()])
                for m in ("alignzeg", best)}
    a, b = per_seed["alignzeg"], per_seed[best]
    assert o["paired_std"] == pytest.approx(np.std(a - b, ddof=1), abs=1e-12)
    assert w["ours_rank"] == ours_rank
    # unseen mIoU: san-parent (U 28, 29, 30) is the strongest other, ahead of two-stage (27, 26, 28)
    u = w["ours_vs_best_other_unseen"]
    assert u["b"] == "san-parent"
    assert u["margin"] == pytest.approx(np.mean([30.0, 33.0, 29.0]) - np.mean([28.0, 29.0, 30.0]), abs=1e-12)


def test_best_other_tie_goes_to_the_first_name(tmp_path):
    root = tmp_path / "r"
    for seed, (s, u) in {0: (40.0, 30.0), 1: (42.0, 32.0)}.items():
        write_run(root / "ours" / f"seed{seed}", metric_json(s, u, seed))
    for m in ("b-method", "a-method", "c-method"):
        for seed, (s, u) in {0: (44.0, 20.0), 1: (46.0, 22.0)}.items():
            write_run(root / m / f"seed{seed}", metric_json(s, u, seed))
    for seed, (s, u) in {0: (30.0, 10.0), 1: (31.0, 11.0)}.items():
        write_run(root / "d-weak" / f"seed{seed}", metric_json(s, u, seed))
    tidy = T.tidy_runs(T.discover_runs(root))
    for order in (["ours", "b-method", "c-method", "a-method", "d-weak"], ["d-weak", "c-method", "ours"]):
        w = T.winner_summary(tidy, "hIoU", ours="ours", order=order)
        assert w["ours_vs_best_other"]["b"] == "a-method"
        assert w["ours_vs_best_other"]["margin"] == pytest.approx(
            (hiou(40, 30) + hiou(42, 32)) / 2 - (hiou(44, 20) + hiou(46, 22)) / 2, abs=1e-12)
        assert w["ours_vs_best_other_unseen"]["b"] == "a-method"


def test_unpaired_seeds_have_no_paired_std(tmp_path):
    root = tmp_path / "r"
    write_run(root / "a" / "seed0", metric_json(40, 30, 0))
    write_run(root / "a" / "seed1", metric_json(42, 32, 1))
    write_run(root / "b" / "seed5", metric_json(40, 20, 5))
    write_run(root / "b" / "seed6", metric_json(40, 22, 6))
    tidy = T.tidy_runs(T.discover_runs(root))
    c = T.winner_summary(tidy)["vs_runner_up"]
    assert c["paired_seeds"] == [] and math.isnan(c["paired_std"])
    assert c["margin"] == pytest.approx((hiou(40, 30) + hiou(42, 32) - hiou(40, 20) - hiou(40, 22)) / 2)


def test_load_metrics_errors_name_file_and_field(tmp_path):
    bad = metric_json(40, 30, 0)
    del bad["hIoU"]
    write_run(tmp_path / "m" / "seed0", bad)
    with pytest.raises(ValueError, match=r"seed0/zeroshot_metrics\.json: missing field 'hIoU'"):
        T.discover_runs(tmp_path)
    (tmp_path / "m" / "seed0" / "zeroshot_metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        T.discover_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="no <method>/seed<k>"):
        T.discover_runs(tmp_path / "m" / "seed0")


def test_json_from_the_real_metric_with_nulls(tmp_path):
    """The metric module writes NaN as null (a class never present): analysis accepts it."""
    from alignzeg.evaluation.confusion import metrics_from_confusion, nan_to_none

    classes = ["sky", "road", "car", "cow", "giraffe"]
    m = np.array([[50, 2, 0, 0, 0], [3, 40, 0, 0, 0], [0, 0, 0, 0, 0], [6, 0, 0, 20, 4], [0, 5, 0, 5, 30]])
    metrics = nan_to_none(metrics_from_confusion(m, classes, ["cow", "giraffe"]))
    assert metrics["per_class"][2]["IoU"] is None
    write_run(tmp_path / "r" / "x" / "seed0", metrics)
    runs = T.discover_runs(tmp_path / "r")
    table = T.main_table(T.tidy_runs(runs))
    assert table.loc[0, "hIoU_mean"] == pytest.approx(metrics["hIoU"])
    shares = T.unseen_to_seen_shares(runs)["x"]
    # cow: 6 of 30 pixels -> sky; giraffe: 5 of 40 -> road
    assert shares["unseen"] == ["cow", "giraffe"] and shares["seen"] == ["sky", "road", "car"]
    np.testing.assert_allclose(shares["share"], [[20.0, 0, 0], [0, 12.5, 0]])
    # the per-row sum is the unseen_to_seen of a one-unseen-class metric
    assert shares["share"].sum() == pytest.approx(32.5)
    pm = T.per_class_mean(T.per_class_table(runs))
    assert math.isnan(pm.loc[pm["class"] == "car", "IoU_mean"].iloc[0])


def test_settings_from_params(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("base:\n  dataset: voc12aug\nanalyse:\n  methods:\n    zegclip: ZegCLIP\n    alignzeg: AlignZeg\n"
                 "  ours: alignzeg\n  top_k: 3\n")
    st = T.load_settings(p)
    assert st.names == {"zegclip": "ZegCLIP", "alignzeg": "AlignZeg"} and list(st.names) == ["zegclip", "alignzeg"]
    assert st.ours == "alignzeg" and st.dataset == "voc12aug" and st.setting == "inductive" and st.top_k == 3
    with pytest.raises(KeyError, match="no section 'nope'"):
        T.load_settings(p, "nope")
    p.write_text("analyse:\n  setting: semi\n")
    with pytest.raises(ValueError, match="analyse.setting"):
        T.load_settings(p)


def test_cli_analyse_writes_every_table(results_root, tmp_path):
    import shutil

    from alignzeg.cli import main

    for m in MAIN:  # the fixture's ablation has seeds 0 and 1: declare those, drop the main seed 2
        shutil.rmtree(results_root / m / "seed2")
    params = tmp_path / "params.yaml"
    params.write_text("base:\n  seeds: [0, 1]\nevaluate:\n  methods: [alignzeg, zegclip]\n"
                      f"ablate:\n  variants: [{', '.join(ABLATION)}]\n"
                      "analyse:\n  methods: {alignzeg: AlignZeg, zegclip: ZegCLIP}\n  ours: alignzeg\n"
                      "  dataset: synthetic\n")
    out = tmp_path / "analysis"
    assert main(["analyse", "--results", str(results_root), "--out", str(out), "--params", str(params),
                 "--no-plots"]) == 0
    for name in ("runs_long.csv", "per_class.csv", "per_class_mean.csv", "main_table.csv", "main_table.md",
                 "ablation_table.csv", "ablation_table.md", "unseen_to_seen_confusion.csv", "summary.json",
                 "figures.json"):
        assert (out / name).is_file(), name
    long = pd.read_csv(out / "runs_long.csv")
    assert set(long.columns) == {"group", "method", "seed", "metric", "value"}
    # S, U, hIoU, aAcc, unseen->seen, mIoU, the seen-unseen gap, collapsed; the main runs also carry a
    # gamma sweep: AUSUC and S, U, hIoU, γ at the val-chosen offset
    assert len(long) == (4 + 20) * 8 + 4 * 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["winner"]["winner"] == "alignzeg"
    assert summary["settings"]["dataset"] == "synthetic"
    assert summary["display"] == NAMES
    main_csv = pd.read_csv(out / "main_table.csv")
    a = _values("alignzeg", "hIoU")[:2]  # seeds 0 and 1
    assert main_csv.loc[main_csv["method"] == "alignzeg", "hIoU_mean"].iloc[0] == pytest.approx(a.mean())
    assert summary["runs_declared_by"] == str(params)


def test_components_per_seed_as_the_pipeline_writes_them(results_root):
    """The DVC ablate stage writes components.json into each seed folder: the same switches are read."""
    expected = {r.method: r.components for r in T.discover_runs(results_root) if r.group == "ablation"}
    for vdir in (results_root / "ablation").iterdir():
        top = vdir / "components.json"
        text = top.read_text()
        top.unlink()
        for seed_dir in vdir.glob("seed*"):
            (seed_dir / "components.json").write_text(text)
    got = {r.method: r.components for r in T.discover_runs(results_root) if r.group == "ablation"}
    assert got == expected and len(got) == len(ABLATION)


def test_components_disagreeing_between_seeds_is_an_error(results_root):
    vdir = next(p for p in sorted((results_root / "ablation").iterdir()))
    (vdir / "components.json").unlink()
    seeds = sorted(vdir.glob("seed*"))
    (seeds[0] / "components.json").write_text(json.dumps({"mrpe": True, "fes": True, "bds": True, "pbc": True}))
    (seeds[1] / "components.json").write_text(json.dumps({"mrpe": False, "fes": True, "bds": True, "pbc": True}))
    with pytest.raises(ValueError, match="differ from"):
        T.discover_runs(results_root)


def test_main_table_carries_ausuc_calibrated_hiou_and_a_calibrated_row(analysed):
    """AUSUC x 100 and hIoU at the val-chosen γ per method; 'ZegCLIP + γ from val' below ZegCLIP with that
    method's S, U, hIoU at the chosen γ (the fixture's curves: S - 10, U + 5 at γ = 1)."""
    from tests.test_analysis.conftest import MAIN, hiou

    table = pd.read_csv(analysed / "main_table.csv")
    assert list(table["method"]) == ["alignzeg", "zegclip", "zegclip+cal"]
    assert list(table["kind"]) == ["method", "method", "calibrated"]
    cal = table.set_index("method").loc["zegclip+cal"]
    su = np.array(list(MAIN["zegclip"].values()), dtype=float)
    assert cal["S_mean"] == pytest.approx((su[:, 0] - 10).mean())
    assert cal["U_mean"] == pytest.approx((su[:, 1] + 5).mean())
    assert cal["hIoU_mean"] == pytest.approx(np.mean([hiou(s - 10, u + 5) for s, u in su]))
    assert cal["gamma_mean"] == 1.0 and np.isnan(cal["aAcc_mean"])
    zeg = table.set_index("method").loc["zegclip"]
    assert zeg["hIoU cal._mean"] == pytest.approx(cal["hIoU_mean"])
    md = (analysed / "main_table.md").read_text()
    assert "| ZegCLIP + γ from val |" in md and "AUSUC (%)" in md and "hIoU cal. (%)" in md
    # bold marks the best method, never a calibrated row
    bold = [line for line in md.splitlines() if "**" in line]
    assert len(bold) == 1 and "+ γ from val" not in bold[0]


def test_paired_differences_of_ours_against_every_method_and_the_calibrated_row(analysed):
    from tests.test_analysis.conftest import MAIN, hiou

    t3 = 4.302652729911275
    paired = pd.read_csv(analysed / "paired_differences.csv")
    a = np.array([hiou(s, u) for s, u in MAIN["alignzeg"].values()])
    z = np.array([hiou(s, u) for s, u in MAIN["zegclip"].values()])
    zc = np.array([hiou(s - 10, u + 5) for s, u in MAIN["zegclip"].values()])
    for other, ref in (("zegclip", a - z), ("zegclip+cal", a - zc)):
        row = paired[(paired["other"] == other) & (paired["metric"] == "hIoU")].iloc[0]
        assert row["diff_mean"] == pytest.approx(ref.mean())
        assert row["diff_ci95"] == pytest.approx(t3 * ref.std(ddof=1) / np.sqrt(3))
        assert bool(row["significant"]) == (abs(ref.mean()) > t3 * ref.std(ddof=1) / np.sqrt(3))
    u = paired[(paired["other"] == "zegclip") & (paired["metric"] == "mIoU_unseen")].iloc[0]
    du = np.array([MAIN["alignzeg"][k][1] - MAIN["zegclip"][k][1] for k in range(3)])
    assert u["diff_mean"] == pytest.approx(du.mean())
    md = (analysed / "main_table.md").read_text()
    assert "| AlignZeg minus | Δ hIoU | Δ U | seeds |" in md
    assert f"| ZegCLIP + γ from val | {(a - zc).mean():+.2f} ± {t3 * (a - zc).std(ddof=1) / np.sqrt(3):.2f}" in md


def test_single_run_rows_show_their_bootstrap_interval(tmp_path):
    from analysis.tables import Settings, analyse
    from tests.test_analysis.conftest import metric_json, write_run

    root = tmp_path / "results"
    boot = {"samples": 1000, "hIoU": [12.5, 17.25], "mIoU_seen": [27.0, 33.0], "mIoU_unseen": [8.0, 12.5]}
    write_run(root / "maskclip" / "seed0", dict(metric_json(30.0, 10.0, 0), bootstrap=boot))
    analyse(root, tmp_path / "a", Settings(names={"maskclip": "MaskCLIP"}, plots=False))
    md = (tmp_path / "a" / "main_table.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| MaskCLIP"))
    # hIoU of (30, 10) = 15; the seed interval is undefined with one run, the bootstrap one is shown
    assert "| 30.00 [27.00, 33.00] | 10.00 [8.00, 12.50] | **15.00 [12.50, 17.25]** |" in row
    assert "per-image bootstrap interval" in md
