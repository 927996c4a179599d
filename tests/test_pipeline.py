"""The DVC pipeline end to end on a tiny profile, in a temporary git repository.

Runs the pipeline as ``make demo`` does (``python -m experiments.repro --jobs 2``: one ``dvc repro`` per
stage, two at a time) on a copy of the repository's tracked files with a ``params.yaml`` shrunk to seconds
per stage (2 seeds, 3 training iterations, 2 ablation variants), then checks that every declared
output exists and parses, that the analysis tables equal numbers recomputed here from the metric JSON,
that ``dvc status`` is clean and that a second ``dvc repro`` runs nothing.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pd = pytest.importorskip("pandas")


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    files = [f for f in out.decode().split("\0") if f]
    assert "dvc.yaml" in files and "params.yaml" in files, "run the tests from a git checkout of the repository"
    return files


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def _tiny_params(params: dict) -> dict:
    params["base"]["seeds"] = [0, 1]
    params["prepare"].update(num_train=64, num_val=8, num_test=8)
    params["pretrain_clip"].update(epochs=1, batch_size=16, num_scenes=64, num_heldout=16)
    params["train"].update(max_iters=3, warmup_iters=1, batch_size=4, log_interval=1)
    params["ablate"]["variants"] = ["add-fes", "drop-pbc"]
    params["self_train"].update(methods=["alignzeg", "zegclip"], max_iters=2, warmup_iters=1)
    params["bench"].update(repeats=1, iters=1, batch_size=2, metric_images=4)
    return params


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory) -> tuple[Path, dict, str]:
    root = tmp_path_factory.mktemp("pipeline") / "repo"
    for rel in _tracked_files():
        src = REPO / rel
        if src.is_file():
            dst = root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    params = _tiny_params(yaml.safe_load((root / "params.yaml").read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")
    dvc = str(Path(sys.executable).parent / "dvc")
    _run(["git", "init", "-q"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "tiny profile"], root, env)
    # what `make demo` runs: every stage through its own `dvc repro`, two at a time (experiments/repro.py);
    # the checks below (dvc status clean, a second `dvc repro` runs nothing) hold for its dvc.lock
    log = _run([sys.executable, "-m", "experiments.repro", "--jobs", "2", "--dvc", dvc], root, env)
    return root, env, log


def _stage_outputs(root: Path) -> list[Path]:
    """Every out / metrics path that `dvc.yaml` declares, resolved by DVC itself (matrix expanded)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    paths = []
    for stage in lock["stages"].values():
        paths += [root / o["path"] for o in stage.get("outs", [])]
    return paths


def _check_parses(path: Path) -> None:
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        assert files, f"{path} is an empty output folder"
        for p in files:
            _check_parses(p)
        return
    assert path.stat().st_size > 0, f"{path} is empty"
    suffix = path.suffix
    if suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".npz":
        with np.load(path) as data:
            assert set(data.files) >= {"top_seen", "top_unseen"}
    elif suffix == ".csv":
        assert len(pd.read_csv(path)) > 0, path
    elif suffix == ".png":
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    elif suffix == ".svg":
        import xml.etree.ElementTree as ET

        ET.parse(path)
    elif suffix == ".md":
        assert "|" in path.read_text(), path
    elif suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            assert len(list(fh.keys())) > 0
    elif suffix == ".py":
        compile(path.read_text(), str(path), "exec")
    elif suffix == ".txt":
        assert path.read_text().strip(), path
    elif suffix == ".pth":
        import torch

        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        assert "state_dict" in ckpt and "zeroshot" in ckpt["meta"], path


def test_every_declared_output_exists_and_parses(pipeline_repo):
    root, _, _ = pipeline_repo
    outs = _stage_outputs(root)
    # prepare, pretrain, text, 4 methods x 2 seeds x (train + 2 eval outs), maskclip, 2 x 2 ablation, ...
    assert len(outs) > 30
    for path in outs:
        assert path.exists(), f"declared output missing: {path}"
        _check_parses(path)


def test_status_clean_and_second_repro_does_nothing(pipeline_repo):
    root, env, _ = pipeline_repo
    dvc = str(Path(sys.executable).parent / "dvc")
    status = _run([dvc, "status"], root, env)
    assert "up to date" in status, status
    again = _run([dvc, "repro"], root, env)
    assert "Running stage" not in again, again


def _recomputed(results: Path, method: str, key: str) -> list[float]:
    values = []
    for path in sorted((results / method).glob("seed*/zeroshot_metrics.json")):
        m = json.loads(path.read_text())
        values.append(m[key])
    return values


def test_analysis_tables_equal_numbers_recomputed_from_metric_json(pipeline_repo):
    root, _, _ = pipeline_repo
    results = root / "results"
    table = pd.read_csv(root / "reports" / "analysis" / "main_table.csv").set_index("method")
    methods = ["alignzeg", "san-parent", "zegclip", "two-stage", "maskclip"]
    assert sorted(table[table["kind"] == "method"].index) == sorted(methods)
    # the parent at its val-chosen seen-score offset (analyse.calibrated), from each run's gamma sweep
    cal = [json.loads(p.read_text())["gamma_sweep"]["calibrated"]
           for p in sorted((results / "san-parent").glob("seed*/zeroshot_metrics.json"))]
    assert len(cal) == 2 and table.loc["san-parent+cal", "kind"] == "calibrated"
    for col in ("S", "U", "hIoU"):
        assert table.loc["san-parent+cal", f"{col}_mean"] == pytest.approx(np.mean([c[col] for c in cal]), abs=1e-9)
    for method in methods:
        for key, col in (("mIoU_seen", "S"), ("mIoU_unseen", "U"), ("hIoU", "hIoU")):
            vals = np.array(_recomputed(results, method, key), dtype=float)
            assert len(vals) == (1 if method == "maskclip" else 2)
            assert table.loc[method, f"{col}_mean"] == pytest.approx(vals.mean(), abs=1e-9)
            if len(vals) > 1:
                assert table.loc[method, f"{col}_std"] == pytest.approx(vals.std(ddof=1), abs=1e-9)
        for path in (results / method).glob("seed*/zeroshot_metrics.json"):
            m = json.loads(path.read_text())
            s, u = m["mIoU_seen"], m["mIoU_unseen"]
            h = 0.0 if s + u == 0 else 2 * s * u / (s + u)
            assert m["hIoU"] == pytest.approx(h, abs=1e-9)
            flat = json.loads((path.parent / "metrics.json").read_text())
            assert flat["hIoU"] == pytest.approx(m["hIoU"], abs=1e-12)
    # The winner reported in summary.json is the method with the highest recomputed mean hIoU.
    summary = json.loads((root / "reports" / "summary.json").read_text())
    means = {m: float(np.mean(_recomputed(results, m, "hIoU"))) for m in methods}
    best = max(means.values())
    assert means[summary["winner"]["winner"]] == pytest.approx(best, abs=1e-9)


def test_self_trained_runs_start_from_their_inductive_run_and_have_their_own_table(pipeline_repo):
    root, _, _ = pipeline_repo
    results = root / "results"
    trans = pd.read_csv(root / "reports" / "analysis" / "transductive_table.csv").set_index("method")
    main = pd.read_csv(root / "reports" / "analysis" / "main_table.csv").set_index("method")
    for method in ("alignzeg", "zegclip"):
        vals = [json.loads(p.read_text())["hIoU"]
                for p in sorted((results / "transductive" / method).glob("seed*/zeroshot_metrics.json"))]
        assert len(vals) == 2
        assert trans.loc[method, "hIoU_mean"] == pytest.approx(np.mean(vals), abs=1e-9)
        ind = [json.loads(p.read_text())["hIoU"] for p in sorted((results / method).glob("seed*/zeroshot_metrics.json"))]
        assert main.loc[method, "hIoU_mean"] == pytest.approx(np.mean(ind), abs=1e-9)   # inductive rows only
        protocol = json.loads((results / "transductive" / method / "seed0" / "protocol.json").read_text())
        assert protocol["setting"] == "transductive" and protocol["self_training"]["unlabelled_index"] == 255
        logs = "".join(p.read_text() for p in (root / "runs" / "transductive" / method / "seed0").glob("*/*.log"))
        assert f"started from runs/{method}/seed0/model.pth" in logs and "all equal" in logs
    assert "san-parent" not in trans.index   # self_train.methods of the tiny profile
    report = (root / "reports" / "report.md").read_text()
    assert "## Transductive setting (self-training)" in report


def test_ablation_rows_and_shared_rows(pipeline_repo):
    root, _, _ = pipeline_repo
    results = root / "results"
    abl = pd.read_csv(root / "reports" / "analysis" / "ablation_table.csv")
    assert len(abl) == 4  # parent, +FES, full - PBC, full
    # 'full' and 'parent' rows are the main AlignZeg and parent runs, copied, not re-trained.
    for variant, method in (("full", "alignzeg"), ("parent", "san-parent")):
        for seed in (0, 1):
            a = json.loads((results / "ablation" / variant / f"seed{seed}" / "zeroshot_metrics.json").read_text())
            b = json.loads((results / method / f"seed{seed}" / "zeroshot_metrics.json").read_text())
            assert a == b
    comps = json.loads((results / "ablation" / "drop-pbc" / "seed0" / "components.json").read_text())
    assert comps == {"mrpe": True, "fes": True, "bds": True, "pbc": False}


def test_report_and_metrics_commands(pipeline_repo):
    root, env, _ = pipeline_repo
    report = (root / "reports" / "report.md").read_text()
    assert "## Main results" in report and "AlignZeg" in report
    dvc = str(Path(sys.executable).parent / "dvc")
    shown = _run([dvc, "metrics", "show", "--json"], root, env)
    data = json.loads(shown[shown.index("{"):])
    flat = json.dumps(data)
    assert "mIoU_unseen" in flat and "unseen_to_seen" in flat
    out = _run([dvc, "plots", "show", "-o", str(root / "dvc_plots")], root, env)
    assert (root / "dvc_plots" / "index.html").is_file(), out
    _check_rendered_plots(root)
    exp = _run([dvc, "exp", "show", "--json"], root, env)
    assert "hIoU" in exp
    assert math.isfinite(float(data and 1))


def _check_rendered_plots(root: Path) -> None:
    """Every plot dvc.yaml declares is in the rendered page with its data: each image is written next to
    the page, and the main-table bar chart holds every row's method and hIoU (the CSV's own text) with
    the hIoU on the bar axis."""
    import csv

    html = (root / "dvc_plots" / "index.html").read_text()
    declared = yaml.safe_load((root / "dvc.yaml").read_text())["plots"]
    images = [p for p in declared if isinstance(p, str)]
    assert images
    for rel in images:
        name = Path(rel.replace("${base.reports_dir}", "reports")).name
        written = list((root / "dvc_plots").rglob(f"*{name}"))
        assert written and written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert name in html, name
    with (root / "reports" / "analysis" / "main_table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    for row in rows:
        assert f'"method": "{row["method"]}"' in html and f'"hIoU_mean": "{row["hIoU_mean"]}"' in html, row["method"]
    # the bar length is the hIoU (a number), the category the method; swapped, the hIoU would be "nominal"
    assert '"field": "hIoU_mean", "type": "quantitative"' in html
    assert '"field": "method", "type": "nominal"' in html


def test_paper_profile_builds_every_run_config():
    """experiments/profiles/voc12aug-vit-b16.yaml: every method and ablation variant resolves to a config."""
    from experiments import params as S
    from experiments import pipeline as P

    default = P.load_params(REPO / "params.yaml")
    params = S.apply_profile(default, yaml.safe_load((REPO / "experiments/profiles/voc12aug-vit-b16.yaml").read_text()),
                             "voc12aug-vit-b16.yaml")
    assert params["base"]["data_root"] != params["prepare"]["out"]          # never overwritten by `prepare`
    assert params["base"]["clip_checkpoint"] != params["pretrain_clip"]["out"]
    for method in params["train"]["methods"] + params["evaluate"]["training_free"]:
        cfg = P.method_config(params, method)
        assert cfg.model.backbone.clip.pretrained == "data/clip/ViT-B-16.safetensors"
        assert cfg.train_dataloader.dataset.data_root == "data/voc12aug"
        assert cfg.train_cfg.max_iters == 20000
        assert cfg.default_hooks.checkpoint.interval == 2000
    parent = P.method_config(params, "san-parent")
    assert [parent.model.decode_head[c] for c in P.COMPONENTS] == [False] * 4
    for variant in params["ablate"]["variants"]:
        comps = P.variant_components(variant)
        cfg = P.method_config(params, params["ablate"]["method"], comps)
        assert {c: cfg.model.decode_head[c] for c in P.COMPONENTS} == comps
    assert params["self_train"]["methods"] == params["train"]["methods"]   # the profile turns them on
    for method in params["self_train"]["methods"]:   # the transductive rows at paper scale
        cfg = P.method_config(params, method, section="self_train")
        assert cfg.model.self_training.unlabelled_index == 254 and cfg.train_cfg.max_iters == 10000
        assert cfg.train_dataloader.dataset.mode == "transductive"
        assert cfg.train_dataloader.dataset.data_root == "data/voc12aug"
        assert cfg.model.split == params["base"]["split"]


def test_every_stage_runs_the_workspace_code():
    """`python -m ...` resolves packages from the stage's working folder (a queued experiment's own copy),
    never through a console script bound to another checkout."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for part in stage["cmd"].split("&&"):
            words = part.split()
            assert words[:2] == ["python", "-m"] or words[0] == "cp", f"{name}: {part}"


def _status(root: Path, env: dict) -> set[str]:
    dvc = str(Path(sys.executable).parent / "dvc")
    out = _run([dvc, "status", "--json"], root, env)
    return set(json.loads(out[out.index("{"):]))


def _edit_params(root: Path, edit) -> str:
    path = root / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return original


@pytest.mark.parametrize("kind", ["seed", "label", "evaluation", "config", "code"])
def test_dependencies_are_complete_and_narrow(pipeline_repo, kind):
    """After each kind of edit, `dvc status` names exactly the stages that the edit changes."""
    root, env, _ = pipeline_repo
    path = root / "params.yaml"
    original = path.read_text()
    touched = None
    try:
        if kind == "seed":
            _edit_params(root, lambda p: p["base"].update(seeds=[0, 1, 2]))
        elif kind == "label":
            _edit_params(root, lambda p: p["analyse"]["methods"].update(alignzeg="AlignZeg (ours)"))
        elif kind == "evaluation":
            _edit_params(root, lambda p: p["evaluate"].update(score_samples=999))
        elif kind == "config":
            touched = root / "experiments/configs/zegclip/zegclip_tiny-vit_1xb16-2k_synthetic-default-64x64.py"
        else:
            touched = root / "baselines/zegclip.py"
        if touched is not None:
            backup = touched.read_text()
            touched.write_text(backup + "\n# an edit\n")
        changed = _status(root, env) - {"check_params"}
    finally:
        path.write_text(original)
        if touched is not None:
            touched.write_text(backup)
    methods, seeds = ["alignzeg", "san-parent", "zegclip", "two-stage"], [0, 1]
    st_runs = {f"self_train@{m}-{s}" for m in ("alignzeg", "zegclip") for s in seeds}
    if kind == "seed":
        # new stages for seed 2 have no lock entry yet; nothing of seeds 0/1 is touched
        assert not [s for s in changed if s.endswith(("-0", "-1", "@0", "@1"))], changed
        assert {f"train@{m}-2" for m in methods} <= changed and "analyse" in changed
        assert not [s for s in changed if s.startswith(("prepare", "pretrain", "text_embed", "configure"))]
    elif kind == "label":
        assert changed == {"analyse"}, changed
    elif kind == "evaluation":
        # runs are trained and evaluated in one stage; its run folder is finished (same fingerprint), so
        # the rerun re-evaluates without a training iteration (tests/test_resume.py)
        expected = ({f"train@{m}-{s}" for m in methods for s in seeds} | {"evaluate_training_free@maskclip"}
                    | {f"ablate_train@{v}-{s}" for v in ("add-fes", "drop-pbc") for s in seeds} | st_runs)
        assert changed == expected, changed ^ expected
    elif kind == "config":
        # every configure stage reads the config folder; only zegclip's resolved config changes, so
        # only it is re-configured here and nothing is retrained until its content differs
        # (and the cost benchmark, which times those configs)
        assert changed == {f"configure@{m}" for m in methods + ["maskclip"]} | {
            f"configure_ablation@{v}" for v in ("add-fes", "drop-pbc")} | {"bench"} | {
            f"configure_self_train@{m}" for m in ("alignzeg", "zegclip")}, changed
    else:
        # a package the runs import: every run retrains and re-evaluates, data and CLIP do not move
        runs = ({f"train@{m}-{s}" for m in methods for s in seeds}
                | {f"ablate_train@{v}-{s}" for v in ("add-fes", "drop-pbc") for s in seeds}
                | {"evaluate_training_free@maskclip", "bench"} | st_runs)
        assert changed == runs, changed ^ runs


def _exp_file(root: Path, env: dict, name: str, rel: str) -> str:
    refs = _run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], root, env).split()
    ref = [r for r in refs if r.endswith("/" + name)]
    assert len(ref) == 1, refs
    return _run(["git", "show", f"{ref[0]}:{rel}"], root, env)


def test_queued_experiment_matches_the_same_override_in_the_workspace(pipeline_repo):
    """`dvc exp run --queue` + `dvc queue start` runs in a copy of the workspace (its own code) and
    gives the numbers that the same override gives in the workspace. Runs last: it changes params.yaml."""
    import time

    root, env, _ = pipeline_repo
    dvc = str(Path(sys.executable).parent / "dvc")
    over = ["-S", "train.max_iters=4", "-S", "base.seeds=[0]"]
    before = (root / "dvc.lock").read_text()
    _run([dvc, "exp", "run", "--queue", "--name", "queued", *over], root, env)
    _run([dvc, "queue", "start", "-j", "1"], root, env)
    deadline = time.time() + 1200
    while True:
        status = _run([dvc, "queue", "status"], root, env)
        if "Queued" not in status and "Running" not in status:
            break
        assert time.time() < deadline, status
        time.sleep(5)
    _run([dvc, "queue", "stop"], root, env)
    assert "Success" in status, status + _run([dvc, "queue", "logs", "queued"], root, env)
    # In the workspace the fixture's seed-1 folders are left over from the earlier study: the analysis
    # refuses to read them as rows and names every one; removed, the same override runs through.
    proc = subprocess.run([dvc, "exp", "run", "--name", "workspace", *over], cwd=root, env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    leftovers = sorted(root.glob("results/**/seed1"))
    assert len(leftovers) == 8   # 4 methods, 2 ablation variants, 2 self-trained methods
    for path in leftovers:
        assert str(path.relative_to(root)) in proc.stdout + proc.stderr
        shutil.rmtree(path)
    _run([dvc, "exp", "run", "--name", "workspace", *over], root, env)
    files = ["results/alignzeg/seed0/metrics.json", "results/zegclip/seed0/metrics.json",
             "results/ablation/drop-pbc/seed0/metrics.json", "results/transductive/zegclip/seed0/metrics.json",
             "reports/summary.json"]
    for rel in files:
        queued = json.loads(_exp_file(root, env, "queued", rel))
        here = json.loads((root / rel).read_text())
        assert queued == here, rel
    # the models themselves are byte-identical (dvc.lock hashes), and differ from the 3-iteration ones
    md5 = {name: _model_md5(yaml.safe_load(text)) for name, text in (
        ("before", before), ("queued", _exp_file(root, env, "queued", "dvc.lock")),
        ("workspace", (root / "dvc.lock").read_text()))}
    assert md5["queued"] == md5["workspace"]
    assert set(md5["queued"]) == {"train@alignzeg-0", "train@zegclip-0", "ablate_train@drop-pbc-0"}
    for stage, value in md5["queued"].items():
        assert value != md5["before"][stage], stage


def _model_md5(lock: dict) -> dict:
    out = {}
    for stage in ("train@alignzeg-0", "train@zegclip-0", "ablate_train@drop-pbc-0"):
        outs = lock["stages"][stage]["outs"]
        out[stage] = next(o["md5"] for o in outs if o["path"].endswith("model.pth"))
    return out
