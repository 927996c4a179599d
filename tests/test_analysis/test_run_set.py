"""The analysis reads exactly the runs params.yaml declares: missing and undeclared runs are errors."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import tables as T
from tests.test_analysis.conftest import hiou, metric_json, write_run

REPO = Path(__file__).resolve().parents[2]

PARAMS = {
    "base": {"seeds": [0, 1, 2], "dataset": "synthetic"},
    "train": {"methods": ["alignzeg", "san-parent", "zegclip", "two-stage"]},  # two-stage: trained, not evaluated
    "evaluate": {"methods": ["alignzeg", "san-parent", "zegclip"], "training_free": ["maskclip"]},
    "ablate": {"method": "alignzeg", "variants": ["add-fes", "drop-pbc"],
               "from_main": {"full": "alignzeg", "parent": "san-parent"}},
    "analyse": {"ours": "alignzeg", "metric": "hIoU",
                "methods": {"alignzeg": "AlignZeg", "san-parent": "SAN-style parent", "zegclip": "ZegCLIP",
                            "maskclip": "MaskCLIP"}},
}
# the runs PARAMS declares, written out by hand
DECLARED = ([("main", "alignzeg", s) for s in (0, 1, 2)] + [("main", "san-parent", s) for s in (0, 1, 2)]
            + [("main", "zegclip", s) for s in (0, 1, 2)] + [("main", "maskclip", 0)]
            + [("ablation", "add-fes", s) for s in (0, 1, 2)] + [("ablation", "drop-pbc", s) for s in (0, 1, 2)]
            + [("ablation", "full", s) for s in (0, 1, 2)] + [("ablation", "parent", s) for s in (0, 1, 2)])
SWITCHES = {"add-fes": (False, True, False, False), "drop-pbc": (True, True, True, False),
            "full": (True, True, True, True), "parent": (False, False, False, False)}


def _build(root: Path, runs=DECLARED) -> dict[tuple[str, str, int], tuple[float, float]]:
    """A results tree with one metric JSON per run (components.json per seed, as the pipeline writes
    them); returns the (S, U) written for each run."""
    written = {}
    for i, (group, method, seed) in enumerate(runs):
        s, u = 40.0 + (i % 5) + seed, 20.0 + 2 * (i % 7) - seed
        folder = (root / "ablation" if group == "ablation" else root) / method / f"seed{seed}"
        write_run(folder, metric_json(s, u, seed))
        if group == "ablation":
            comps = dict(zip(T.COMPONENTS, SWITCHES.get(method, (True, False, True, False))))
            (folder / "components.json").write_text(json.dumps(comps))
        written[(group, method, seed)] = (s, u)
    return written


def _params_file(tmp_path: Path, params: dict = PARAMS) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _analyse_cli(root: Path, out: Path, params: Path) -> int:
    from alignzeg.cli import main

    return main(["analyse", "--results", str(root), "--out", str(out), "--params", str(params), "--no-plots"])


def _error(root: Path, tmp_path: Path, params: dict = PARAMS) -> str:
    out = tmp_path / "analysis"
    with pytest.raises(SystemExit) as exc:
        _analyse_cli(root, out, _params_file(tmp_path, params))
    assert not out.exists()  # nothing half-written
    assert isinstance(exc.value.code, str)
    return exc.value.code


# --------------------------------------------------------------------------------------------- declared_runs
def test_declared_runs_from_params():
    runs = T.declared_runs(PARAMS)
    assert runs == DECLARED and len(runs) == 3 * 3 + 1 + 4 * 3
    assert not [r for r in runs if r[1] == "two-stage"]  # train.methods is not what is evaluated
    p = copy.deepcopy(PARAMS)
    p["base"]["seeds"] = [2, 5]
    p["evaluate"]["training_free"] = []
    del p["ablate"]
    assert T.declared_runs(p) == [("main", "alignzeg", 2), ("main", "alignzeg", 5), ("main", "san-parent", 2),
                                  ("main", "san-parent", 5), ("main", "zegclip", 2), ("main", "zegclip", 5)]


def test_declared_runs_of_the_repository_params():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    runs = T.declared_runs(params)
    seeds, ev, ab = params["base"]["seeds"], params["evaluate"], params["ablate"]
    main = [r for r in runs if r[0] == "main"]
    abl = [r for r in runs if r[0] == "ablation"]
    assert len(main) == len(ev["methods"]) * len(seeds) + len(ev["training_free"]) > 0
    assert len(abl) == (len(ab["variants"]) + len(ab["from_main"])) * len(seeds) > 0
    for m in ev["training_free"]:
        assert [r[2] for r in main if r[1] == m] == [0]
    assert {r[1] for r in abl} == set(ab["variants"]) | set(ab["from_main"])


@pytest.mark.parametrize("edit,field", [
    (lambda p: p["base"].pop("seeds"), "missing field base.seeds"),
    (lambda p: p["evaluate"].pop("methods"), "missing field evaluate.methods"),
    (lambda p: p["base"].update(seeds=["0"]), "base.seeds must be"),
    (lambda p: p["base"].update(seeds=[]), "base.seeds must be"),
    (lambda p: p["evaluate"].update(methods="alignzeg"), "evaluate.methods must be a list"),
    (lambda p: p["evaluate"].update(training_free=[1]), "evaluate.training_free must be a list"),
    (lambda p: p["ablate"].update(variants={"a": 1}), "ablate.variants must be a list"),
    (lambda p: p["ablate"].update(from_main=["full"]), "ablate.from_main must be a mapping"),
    (lambda p: p["evaluate"]["methods"].append("ablation"), "evaluate.methods names 'ablation'"),
])
def test_declared_runs_errors_name_the_field(edit, field):
    p = copy.deepcopy(PARAMS)
    edit(p)
    with pytest.raises(T.RunSetError, match=f"^my.yaml: {field}"):
        T.declared_runs(p, "my.yaml")


# --------------------------------------------------------------------------------------------- results tree
def test_exactly_the_declared_runs_are_analysed(tmp_path):
    root = tmp_path / "results"
    written = _build(root)
    (root / ".cache" / "junk").mkdir(parents=True)          # hidden folders are ignored
    (root / "alignzeg" / ".tmp").mkdir()
    (root / "notes.txt").write_text("files are not runs")
    out = tmp_path / "analysis"
    assert _analyse_cli(root, out, _params_file(tmp_path)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sorted((r["group"], r["method"], r["seed"]) for r in summary["runs"]) == sorted(DECLARED)
    assert summary["runs_declared_by"] == str(tmp_path / "params.yaml")
    table = pd.read_csv(out / "main_table.csv").set_index("method")
    assert list(table.index) == ["alignzeg", "san-parent", "zegclip", "maskclip"]  # analyse.methods order
    for m in table.index:
        h = [hiou(*v) for (g, mm, _), v in written.items() if g == "main" and mm == m]
        assert len(h) == (1 if m == "maskclip" else 3) == table.loc[m, "n_seeds"]
        assert table.loc[m, "hIoU_mean"] == pytest.approx(np.mean(h), abs=1e-12)
    abl = pd.read_csv(out / "ablation_table.csv").set_index("variant")
    assert sorted(abl.index) == ["add-fes", "drop-pbc", "full", "parent"]
    h_full = np.mean([hiou(*written[("ablation", "full", s)]) for s in (0, 1, 2)])
    h_parent = np.mean([hiou(*written[("ablation", "parent", s)]) for s in (0, 1, 2)])
    assert abl.loc["full", "delta_hIoU"] == pytest.approx(h_full - h_parent, abs=1e-12)


def test_a_missing_seed_is_an_error_naming_it(tmp_path):
    root = tmp_path / "results"
    _build(root)
    (root / "zegclip" / "seed1" / "zeroshot_metrics.json").unlink()
    shutil.rmtree(root / "ablation" / "drop-pbc" / "seed2")
    msg = _error(root, tmp_path)
    assert msg.startswith(f"--results {root}: the runs there are not the runs --params {tmp_path / 'params.yaml'} "
                          "declares")
    assert "2 declared run(s) without zeroshot_metrics.json:" in msg
    assert f"\n    {root / 'zegclip' / 'seed1' / 'zeroshot_metrics.json'}" in msg
    assert f"\n    {root / 'ablation' / 'drop-pbc' / 'seed2' / 'zeroshot_metrics.json'}" in msg
    assert "no declared run explains" not in msg


def test_an_extra_seed_folder_is_an_error_naming_it(tmp_path):
    root = tmp_path / "results"
    _build(root)
    write_run(root / "alignzeg" / "seed7", metric_json(50.0, 40.0, 7))
    write_run(root / "maskclip" / "seed1", metric_json(30.0, 10.0, 1))  # training-free: seed 0 only
    (root / "ablation" / "full" / "seed3").mkdir()
    msg = _error(root, tmp_path)
    assert "3 folder(s) no declared run explains" in msg
    for p in (root / "alignzeg" / "seed7", root / "maskclip" / "seed1", root / "ablation" / "full" / "seed3"):
        assert f"\n    {p}\n" in msg + "\n", p
    assert "without zeroshot_metrics.json" not in msg


def test_an_undeclared_method_or_variant_is_an_error_naming_it(tmp_path):
    root = tmp_path / "results"
    _build(root)
    write_run(root / "old-method" / "seed0", metric_json(50.0, 40.0, 0))
    write_run(root / "two-stage" / "seed0", metric_json(50.0, 40.0, 0))  # in train.methods, not evaluated
    _build(root, [("ablation", "add-xyz", 0)])
    (root / "zegclip" / "seed2" / "zeroshot_metrics.json").unlink()
    msg = _error(root, tmp_path)
    # every offending path in one message, the top folder of each only
    assert "1 declared run(s) without zeroshot_metrics.json:" in msg
    assert f"\n    {root / 'zegclip' / 'seed2' / 'zeroshot_metrics.json'}\n" in msg
    assert "3 folder(s) no declared run explains" in msg
    for p in (root / "old-method", root / "two-stage", root / "ablation" / "add-xyz"):
        assert f"\n    {p}\n" in msg + "\n", p
    assert str(root / "old-method" / "seed0") not in msg
    # library use without declared runs keeps reading whatever is there
    found = {r.method for r in T.discover_runs(root)}
    assert {"old-method", "two-stage", "add-xyz"} <= found


def test_ablation_folder_without_declared_ablation_is_an_error(tmp_path):
    root = tmp_path / "results"
    _build(root)
    p = copy.deepcopy(PARAMS)
    del p["ablate"]
    msg = _error(root, tmp_path, p)
    assert "1 folder(s) no declared run explains" in msg and f"\n    {root / 'ablation'}" in msg


def test_declared_variant_without_components_is_an_error(tmp_path):
    root = tmp_path / "results"
    _build(root)
    for seed_dir in (root / "ablation" / "add-fes").iterdir():
        (seed_dir / "components.json").unlink()
    with pytest.raises(T.RunSetError, match=r"ablation/add-fes: ablation variant declared by params has no "
                                            r"components\.json"):
        T.load_declared_runs(root, DECLARED)


def test_load_declared_runs_raises_a_value_error(tmp_path):
    root = tmp_path / "results"
    _build(root, DECLARED[:-1])
    with pytest.raises(ValueError, match=r"parent/seed2/zeroshot_metrics\.json"):
        T.load_declared_runs(root, DECLARED)
    runs = T.load_declared_runs(root, DECLARED[:-1])
    assert sorted((r.group, r.method, r.seed) for r in runs) == sorted(DECLARED[:-1])


def test_oracle_ceilings_are_read_and_tabled_not_taken_for_a_run(tmp_path):
    root = tmp_path / "results"
    _build(root)
    ceil = {"split": "test", "num_images": 5, "num_segments": 17, "gamma": 0.04,
            "recognition": {"mIoU_seen": 61.5, "mIoU_unseen": 20.25, "hIoU": 30.47},
            "proposal": {"mIoU_seen": 58.0, "mIoU_unseen": 41.0, "hIoU": 48.04, "mIoU_unseen_stuff": 70.0,
                         "mIoU_unseen_objects": 30.0}}
    (root / "oracle").mkdir()
    (root / "oracle" / "ceilings.json").write_text(json.dumps(ceil))
    out = tmp_path / "analysis"
    assert _analyse_cli(root, out, _params_file(tmp_path)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["oracle"]["proposal"]["hIoU"] == 48.04
    assert all(r["method"] != "oracle" for r in summary["runs"])
    md = (out / "main_table.md").read_text()
    assert "| ground-truth masks, classified by the CLIP (recognition ceiling) | 61.50 | 20.25 | 30.47 | – | – |" in md
    assert "best seen/unseen calibration γ = +0.04 (proposal ceiling) | 58.00 | 41.00 | 48.04 | 70.00 | 30.00 |" in md
    # an "oracle" folder without ceilings.json is an undeclared folder like any other
    (root / "oracle" / "ceilings.json").unlink()
    other = tmp_path / "second"
    other.mkdir()
    assert f"\n    {root / 'oracle'}" in _error(root, other)


def test_runs_that_use_unseen_locations_are_tabled_apart(tmp_path):
    root = tmp_path / "results"
    _build(root)
    for s in (0, 1, 2):   # zegclip's runs claim to have learned from where the unseen pixels lie
        (root / "zegclip" / f"seed{s}" / "protocol.json").write_text(json.dumps({"uses_unseen_locations": True}))
        (root / "alignzeg" / f"seed{s}" / "protocol.json").write_text(json.dumps({"uses_unseen_locations": False}))
    out = tmp_path / "analysis"
    assert _analyse_cli(root, out, _params_file(tmp_path)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["uses_unseen_locations"] == ["zegclip"]
    assert [r["method"] for r in summary["main_table"]] == ["alignzeg", "san-parent", "maskclip"]
    assert [r["method"] for r in summary["unseen_locations_table"]] == ["zegclip"]
    assert "zegclip" not in pd.read_csv(out / "main_table.csv")["method"].tolist()
    md = (out / "main_table.md").read_text()
    head, tail = md.split("Not strictly inductive")
    assert "ZegCLIP" not in head and "ZegCLIP" in tail
