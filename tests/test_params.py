"""params.yaml is checked before any work: schema, ranges, cross-references, profiles."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments import params as S

REPO = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((REPO / "params.yaml").read_text())
PROFILES = sorted((REPO / "experiments" / "profiles").glob("*.yaml"))


def _bad(mutate) -> str:
    p = copy.deepcopy(DEFAULT)
    mutate(p)
    with pytest.raises(S.ParamsError) as err:
        S.validate(p, "params.yaml", root=REPO)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("params.yaml: ")
    return msg


def test_default_params_are_valid():
    assert S.validate(copy.deepcopy(DEFAULT), "params.yaml", root=REPO) == DEFAULT
    assert S.problems(DEFAULT, REPO) == []


def test_every_schema_key_is_in_params_yaml_and_back():
    """No hidden keys: what the code reads is what params.yaml declares."""
    assert set(DEFAULT) == set(S.SCHEMA)
    for section, keys in S.SCHEMA.items():
        assert set(DEFAULT[section]) == set(keys), section


def test_misspelled_key_names_the_key_and_the_closest_one():
    def typo(p):
        p["train"]["max_iter"] = p["train"].pop("max_iters")
    msg = _bad(typo)
    assert "unknown key train.max_iter (did you mean train.max_iters?)" in msg


def test_hidden_keys_of_earlier_versions_are_refused():
    assert "unknown key train.lr" in _bad(lambda p: p["train"].update(lr=1e-4))
    assert "unknown key train.overrides" in _bad(lambda p: p["train"].update(overrides={}))
    assert "unknown key bse" in _bad(lambda p: p.update(bse={}))


@pytest.mark.parametrize("section,key,value,expected", [
    ("train", "max_iters", 0, "train.max_iters: must be >= 1, got 0"),
    ("train", "max_iters", "250", "train.max_iters: expected an integer, got '250'"),
    ("train", "deterministic", "yes", "train.deterministic: expected true or false"),
    ("pretrain_clip", "num_heldout", 0, "pretrain_clip.num_heldout: must be >= 1, got 0"),
    ("pretrain_clip", "lr", 0, "pretrain_clip.lr: must be > 0.0, got 0"),
    ("pretrain_clip", "shape_loss", -1.0, "pretrain_clip.shape_loss: must be >= 0.0, got -1.0"),
    ("base", "seeds", [0, 0], "base.seeds: duplicate entries 0"),
    ("base", "seeds", [], "base.seeds: must not be empty"),
    ("base", "setting", "semi", "base.setting: must be one of ['inductive', 'transductive']"),
    ("analyse", "metric", "IoU", "analyse.metric: must be one of"),
])
def test_types_and_ranges(section, key, value, expected):
    assert expected in _bad(lambda p: p[section].update({key: value}))


def test_missing_key():
    assert "train.checkpoint_interval: missing key" in _bad(lambda p: p["train"].pop("checkpoint_interval"))


@pytest.mark.parametrize("mutate,expected", [
    (lambda p: p["evaluate"]["methods"].append("segformer"),
     "evaluate.methods: 'segformer' is not in train.methods"),
    (lambda p: p["train"]["methods"].append("segformer"),
     "train.methods: 'segformer' has no entry in train.configs"),
    (lambda p: p["train"]["configs"].update(alignzeg="experiments/configs/nope.py"),
     "train.configs.alignzeg: config file not found: experiments/configs/nope.py"),
    (lambda p: p["ablate"].update(method="maskclip"), "ablate.method: 'maskclip' is not in train.methods"),
    (lambda p: p["ablate"]["variants"].append("add-xyz"), "ablate.variants: unknown variant 'add-xyz'"),
    (lambda p: p["ablate"]["from_main"].update(full="zegformer"),
     "ablate.from_main.full: 'zegformer' is not in evaluate.methods"),
    (lambda p: p["analyse"].update(ours="alignzeg-v2"), "analyse.ours: 'alignzeg-v2' is not an evaluated method"),
    (lambda p: p["evaluate"]["score_softmax"].append("x"), "evaluate.score_softmax: 'x' is not an evaluated"),
    (lambda p: p["train"].update(warmup_iters=10 ** 6), "train.warmup_iters: 1000000 exceeds train.max_iters"),
    (lambda p: p["self_train"]["methods"].append("maskclip"),
     "self_train.methods: 'maskclip' is not in train.methods (self-training starts from its inductive run)"),
    (lambda p: (p["self_train"].update(methods=["zegclip"]), p["self_train"]["configs"].pop("zegclip")),
     "self_train.methods: 'zegclip' has no entry in self_train.configs"),
    (lambda p: p["self_train"]["configs"].update(zegclip="experiments/configs/nope.py"),
     "self_train.configs.zegclip: config file not found: experiments/configs/nope.py"),
    (lambda p: p["self_train"].update(warmup_iters=10 ** 6), "self_train.warmup_iters: 1000000 exceeds"),
    (lambda p: p["base"].update(reports_dir=p["base"]["results_dir"]),
     "runs_dir, results_dir and reports_dir must differ"),
])
def test_dangling_references(mutate, expected):
    assert expected in _bad(mutate)


def test_stage_command_prints_one_line_and_does_no_work(tmp_path):
    p = copy.deepcopy(DEFAULT)
    p["train"]["max_iter"] = p["train"].pop("max_iters")
    p["base"]["runs_dir"] = str(tmp_path / "runs")
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(p))
    proc = subprocess.run([sys.executable, "-m", "experiments.pipeline", "train", "--method", "alignzeg",
                           "--seed", "0", "--params", str(bad)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "train.max_iter" in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profiles_state_only_differences_and_validate(profile):
    overlay = yaml.safe_load(profile.read_text())
    merged = S.apply_profile(DEFAULT, overlay, str(profile))

    def leaves(d, where=""):
        for k, v in d.items():
            name = f"{where}.{k}" if where else k
            if isinstance(v, dict) and not name.startswith(S.FREE_KEYS):
                yield from leaves(v, name)
            else:
                yield name, v

    default_leaves = dict(leaves(DEFAULT))
    for name, value in leaves(overlay):
        assert default_leaves.get(name) != value, f"{profile.name}: {name} repeats the default {value!r}"
    # the -S arguments applied to the defaults give the same params as the merge
    applied = copy.deepcopy(DEFAULT)
    for arg in S.override_args(overlay):
        key, _, text = arg.partition("=")
        node = applied
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = yaml.safe_load(text)
    assert applied == merged


def test_profiles_never_share_output_folders():
    seen = {}
    for source, base in [("params.yaml", DEFAULT["base"])] + [
            (p.name, S.apply_profile(DEFAULT, yaml.safe_load(p.read_text()), p.name)["base"]) for p in PROFILES]:
        for key in ("runs_dir", "results_dir", "reports_dir"):
            assert base[key] not in seen, f"{source} and {seen.get(base[key])} both write to {base[key]}"
            seen[base[key]] = source
    assert len(seen) == 3 * (1 + len(PROFILES))


def test_a_profile_must_name_its_own_folders():
    with pytest.raises(S.ParamsError, match="base.reports_dir: a profile must set its own value"):
        S.apply_profile(DEFAULT, {"base": {"profile": "x", "runs_dir": "r", "results_dir": "s"}}, "x.yaml")
    with pytest.raises(S.ParamsError, match="base.runs_dir: 'runs' is the default profile's"):
        S.apply_profile(DEFAULT, {"base": {"profile": "x", "runs_dir": "runs", "results_dir": "s",
                                           "reports_dir": "t"}}, "x.yaml")
    with pytest.raises(S.ParamsError, match=r"x.yaml: unknown key train.max_iter \(did you mean"):
        S.apply_profile(DEFAULT, {"base": {"profile": "x", "runs_dir": "r", "results_dir": "s",
                                           "reports_dir": "t"}, "train": {"max_iter": 3}}, "x.yaml")
