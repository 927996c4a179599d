"""The schema of ``params.yaml``: every key, its type and range, and the cross-references between keys.

``validate(params, path)`` raises ``ParamsError`` (a ``SystemExit``) with one line naming the file and
the key: an unknown or misspelled key (with the closest allowed name), a missing key, a value of the
wrong type or out of range, or a dangling reference (``evaluate.methods`` not in ``train.methods``, a
config file that does not exist, ...). Every pipeline stage validates before doing any work, and the
``check_params`` stage runs it first in ``dvc repro``.

Profiles (``experiments/profiles/*.yaml``) hold only the keys that differ from ``params.yaml``;
:func:`apply_profile` merges one over the defaults and validates the result.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Callable, Mapping

COMPONENTS = ("mrpe", "fes", "bds", "pbc")
METRICS = ("hIoU", "mIoU", "mIoU_seen", "mIoU_unseen", "aAcc")


class ParamsError(SystemExit):
    """A bad ``params.yaml``: the message names the file and the key."""


# -- value checks ----------------------------------------------------------------------------------
def _int(lo: int | None = None, hi: int | None = None) -> Callable[[Any], str | None]:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"expected an integer, got {v!r}"
        if lo is not None and v < lo:
            return f"must be >= {lo}, got {v}"
        if hi is not None and v > hi:
            return f"must be <= {hi}, got {v}"
        return None
    return check


def _float(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Callable[[Any], str | None]:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"expected a number, got {v!r}"
        if lo is not None and (v < lo or (lo_open and v == lo)):
            return f"must be {'>' if lo_open else '>='} {lo}, got {v}"
        if hi is not None and (v > hi or (hi_open and v == hi)):
            return f"must be {'<' if hi_open else '<='} {hi}, got {v}"
        return None
    return check


def _str(choices: tuple[str, ...] | None = None) -> Callable[[Any], str | None]:
    def check(v):
        if not isinstance(v, str) or not v:
            return f"expected a non-empty string, got {v!r}"
        if choices is not None and v not in choices:
            return f"must be one of {list(choices)}, got {v!r}"
        return None
    return check


def _bool(v):
    return None if isinstance(v, bool) else f"expected true or false, got {v!r}"


def _list(item: Callable[[Any], str | None], nonempty: bool = True, unique: bool = True):
    def check(v):
        if not isinstance(v, list):
            return f"expected a list, got {v!r}"
        if nonempty and not v:
            return "must not be empty"
        for i, x in enumerate(v):
            err = item(x)
            if err:
                return f"item {i}: {err}"
        if unique and len(set(map(repr, v))) != len(v):
            dup = sorted({repr(x) for x in v if v.count(x) > 1})
            return f"duplicate entries {', '.join(dup)}"
        return None
    return check


def _mapping(value: Callable[[Any], str | None], nonempty: bool = True):
    def check(v):
        if not isinstance(v, dict):
            return f"expected a mapping, got {v!r}"
        if nonempty and not v:
            return "must not be empty"
        for k, x in v.items():
            if not isinstance(k, str):
                return f"key {k!r}: expected a string"
            err = value(x)
            if err:
                return f"entry {k!r}: {err}"
        return None
    return check


PATH = _str()
# Mappings whose keys are names (methods, variants), not schema keys.
FREE_KEYS = ("train.configs", "self_train.configs", "ablate.from_main", "analyse.methods")
SCHEMA: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "base": {
        "profile": _str(),
        "dataset": _str(),
        "setting": _str(("inductive", "transductive")),
        "seeds": _list(_int(0)),
        "data_root": PATH,
        "split": PATH,
        "clip_checkpoint": PATH,
        "text_cache": PATH,
        "runs_dir": PATH,
        "results_dir": PATH,
        "reports_dir": PATH,
        "num_threads": _int(0, 256),
        "launcher": _str(("none", "pytorch", "slurm")),
        "gpus": _int(1, 4096),
    },
    "prepare": {
        "out": PATH,
        "seed": _int(0),
        "num_train": _int(1),
        "num_val": _int(1),
        "num_test": _int(1),
        "image_size": _int(16, 4096),
    },
    "pretrain_clip": {
        "out": PATH,
        "seed": _int(0),
        "epochs": _int(1),
        "batch_size": _int(1),
        "crops_per_image": _int(1),
        "region_weight": _float(0.0, 1.0),
        "shape_groups": _int(0),
        "shape_framing": _str(("crop", "centred")),
        "shape_loss": _float(0.0),
        "text_lr_scale": _float(0.0),
        "lr": _float(0.0, 1.0, lo_open=True),
        "num_scenes": _int(1),
        "num_heldout": _int(1),
        "threads": _int(0, 256),
    },
    "text_embed": {
        "templates": _str(),
    },
    "train": {
        "methods": _list(_str()),
        "configs": _mapping(PATH),
        "max_iters": _int(1),
        "warmup_iters": _int(0),
        "batch_size": _int(1),
        "log_interval": _int(1),
        "checkpoint_interval": _int(1),
        "deterministic": _bool,
    },
    "self_train": {
        "methods": _list(_str(), nonempty=False),
        "configs": _mapping(PATH, nonempty=False),
        "max_iters": _int(1),
        "warmup_iters": _int(0),
    },
    "evaluate": {
        "methods": _list(_str()),
        "training_free": _list(_str(), nonempty=False),
        "score_softmax": _list(_str(), nonempty=False),
        "score_samples": _int(1),
        "gamma_points": _int(0, 1000),
        "bootstrap": _int(0, 100000),
        "qualitative": _int(0, 64),
    },
    "ablate": {
        "method": _str(),
        "variants": _list(_str(), nonempty=False),
        "from_main": _mapping(_str(), nonempty=False),
    },
    "analyse": {
        "ours": _str(),
        "metric": _str(METRICS),
        "top_k": _int(1),
        "decimals": _int(0, 6),
        "methods": _mapping(_str()),
        "calibrated": _list(_str(), nonempty=False),
    },
    "bench": {
        "size": _str(("tiny", "full")),
        "repeats": _int(1),
        "iters": _int(1),
        "batch_size": _int(1),
        "metric_images": _int(1),
    },
}


def _unknown(where: str, key: str, allowed) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f" (did you mean {where + '.' if where else ''}{close[0]}?)" if close else ""
    return f"unknown key {where + '.' if where else ''}{key}{hint}"


def variant_components(variant: str) -> dict[str, bool] | None:
    """Components of an ablation variant name, or None when the name is not one."""
    if variant == "parent":
        return {c: False for c in COMPONENTS}
    if variant == "full":
        return {c: True for c in COMPONENTS}
    kind, _, comp = variant.partition("-")
    if kind not in ("add", "drop") or comp not in COMPONENTS:
        return None
    return {c: (c == comp) if kind == "add" else (c != comp) for c in COMPONENTS}


def problems(params: Any, root: str | os.PathLike = ".") -> list[str]:
    """Every problem of a params mapping, as ``key: message`` lines (empty when it is valid).

    ``root`` is the folder relative to which config paths are checked.
    """
    if not isinstance(params, dict):
        return [f"expected a mapping of sections, got {type(params).__name__}"]
    out: list[str] = []
    for section in params:
        if section not in SCHEMA:
            out.append(_unknown("", str(section), SCHEMA))
    for section, keys in SCHEMA.items():
        if section not in params:
            out.append(f"{section}: missing section")
            continue
        values = params[section]
        if not isinstance(values, dict):
            out.append(f"{section}: expected a mapping, got {values!r}")
            continue
        for key in values:
            if key not in keys:
                out.append(_unknown(section, str(key), keys))
        for key, check in keys.items():
            if key not in values:
                out.append(f"{section}.{key}: missing key")
                continue
            err = check(values[key])
            if err:
                out.append(f"{section}.{key}: {err}")
    if out:
        return out
    # Cross-references (only once every key is well-typed).
    base, train, ev, ab, an = (params[s] for s in ("base", "train", "evaluate", "ablate", "analyse"))
    configs = train["configs"]
    if base["gpus"] > 1 and base["launcher"] == "none":
        out.append(f"base.gpus: {base['gpus']} processes need base.launcher 'pytorch' (torchrun) or 'slurm' (srun)")
    for m in train["methods"]:
        if m not in configs:
            out.append(f"train.methods: {m!r} has no entry in train.configs")
    for m in ev["methods"]:
        if m not in train["methods"]:
            out.append(f"evaluate.methods: {m!r} is not in train.methods")
    for m in train["methods"]:  # the train stages evaluate every run they train
        if m not in ev["methods"]:
            out.append(f"train.methods: {m!r} is not in evaluate.methods (every trained method is evaluated)")
    for m in ev["training_free"]:
        if m not in configs:
            out.append(f"evaluate.training_free: {m!r} has no entry in train.configs")
        if m in train["methods"]:
            out.append(f"evaluate.training_free: {m!r} is also in train.methods")
    every = set(ev["methods"]) | set(ev["training_free"])
    for m in ev["score_softmax"]:
        if m not in every:
            out.append(f"evaluate.score_softmax: {m!r} is not an evaluated method")
    for name, rel in configs.items():
        if not (Path(root) / rel).is_file():
            out.append(f"train.configs.{name}: config file not found: {rel}")
    if ab["variants"] or ab["from_main"]:
        if ab["method"] not in train["methods"]:
            out.append(f"ablate.method: {ab['method']!r} is not in train.methods")
    for v in ab["variants"]:
        if variant_components(v) is None:
            out.append(f"ablate.variants: unknown variant {v!r} (use add-<c> or drop-<c> with c in "
                       f"{list(COMPONENTS)}, or list parent/full under ablate.from_main)")
        if v in ab["from_main"]:
            out.append(f"ablate.variants: {v!r} is also in ablate.from_main")
    for v, m in ab["from_main"].items():
        if v not in ("full", "parent"):
            out.append(f"ablate.from_main: key {v!r} must be 'full' or 'parent'")
        if m not in ev["methods"]:
            out.append(f"ablate.from_main.{v}: {m!r} is not in evaluate.methods")
    if an["ours"] not in every:
        out.append(f"analyse.ours: {an['ours']!r} is not an evaluated method")
    for m in an["calibrated"]:
        if m not in every:
            out.append(f"analyse.calibrated: {m!r} is not an evaluated method")
    for m in an["methods"]:
        if m not in every:
            out.append(f"analyse.methods: {m!r} is not an evaluated method")
    st = params["self_train"]
    for m in st["methods"]:
        if m not in train["methods"]:
            out.append(f"self_train.methods: {m!r} is not in train.methods (self-training starts from its "
                       f"inductive run)")
        if m not in st["configs"]:
            out.append(f"self_train.methods: {m!r} has no entry in self_train.configs")
    for name, rel in st["configs"].items():
        if not (Path(root) / rel).is_file():
            out.append(f"self_train.configs.{name}: config file not found: {rel}")
    if st["warmup_iters"] > st["max_iters"]:
        out.append(f"self_train.warmup_iters: {st['warmup_iters']} exceeds self_train.max_iters "
                   f"{st['max_iters']}")
    if train["warmup_iters"] > train["max_iters"]:
        out.append(f"train.warmup_iters: {train['warmup_iters']} exceeds train.max_iters "
                   f"{train['max_iters']}")
    outs = {"base.runs_dir": base["runs_dir"], "base.results_dir": base["results_dir"],
            "base.reports_dir": base["reports_dir"]}
    norm = {k: os.path.normpath(v) for k, v in outs.items()}
    if len(set(norm.values())) != len(norm):
        out.append(f"base: runs_dir, results_dir and reports_dir must differ, got {outs}")
    return out


def validate(params: Any, path: str | os.PathLike = "params.yaml", root: str | os.PathLike | None = None) -> dict:
    """Raise :class:`ParamsError` naming ``path`` and the first bad key; return ``params`` when valid.

    Config paths are checked relative to ``root`` (default: the working folder, where stages run).
    """
    root = Path(".") if root is None else Path(root)
    found = problems(params, root)
    if found:
        extra = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ParamsError(f"{path}: {found[0]}{extra}")
    return params


def read_yaml(path: str | os.PathLike) -> Any:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        with path.open(encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from err


def load(path: str | os.PathLike = "params.yaml") -> dict:
    """Read and validate a params file."""
    return validate(read_yaml(path), path)


def merge(base: Mapping, overlay: Mapping, where: str = "") -> dict:
    """Deep-merge ``overlay`` into a copy of ``base``; an overlay key absent from ``base`` is an error.

    Mappings merge key by key (as ``dvc exp run -S a.b=v`` does), everything else (lists included) is
    replaced.
    """
    out = dict(base)
    for key, value in overlay.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in base:
            if where not in FREE_KEYS:
                raise ParamsError(f"{_unknown(where, str(key), base)} in profile")
            out[key] = value
        elif isinstance(value, dict) and isinstance(base[key], dict):
            out[key] = merge(base[key], value, name)
        else:
            out[key] = value
    return out


def apply_profile(defaults: Mapping, profile: Mapping, profile_path: str = "profile") -> dict:
    """The params of a profile: ``defaults`` with the profile's differences merged in, validated.

    A profile must name itself (``base.profile``) and set its own ``base.runs_dir``,
    ``base.results_dir`` and ``base.reports_dir``, so two profiles never write to the same paths.
    """
    if not isinstance(profile, dict):
        raise ParamsError(f"{profile_path}: expected a mapping of sections")
    own = (profile.get("base") or {})
    for key in ("profile", "runs_dir", "results_dir", "reports_dir"):
        if key not in own:
            raise ParamsError(f"{profile_path}: base.{key}: a profile must set its own value")
        if own[key] == (defaults.get("base") or {}).get(key):
            raise ParamsError(f"{profile_path}: base.{key}: {own[key]!r} is the default profile's; "
                              f"choose a path of this profile's own")
    try:
        merged = merge(defaults, profile)
    except ParamsError as err:
        raise ParamsError(f"{profile_path}: {err}") from None
    return validate(merged, profile_path, root=".")


def override_args(profile: Mapping, where: str = "") -> list[str]:
    """``dvc exp run -S key=value`` arguments that turn the default params into the profile's.

    Values are compact JSON (which DVC reads as YAML) without white space, so that
    ``dvc exp run $(python -m experiments.pipeline profile FILE --dvc-args)`` splits them correctly.
    """
    import json

    args = []
    for key, value in profile.items():
        name = f"{where}.{key}" if where else str(key)
        if isinstance(value, dict) and value:
            args += override_args(value, name)
        else:
            text = json.dumps(value, separators=(",", ":"))
            if any(ch.isspace() for ch in text):
                raise ParamsError(f"profile: {name}: values with white space cannot be passed as "
                                  f"`-S` arguments; write the merged params with --write instead")
            args.append(f"{name}={text}")
    return args
