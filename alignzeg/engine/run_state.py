"""Run fingerprints and exact resume: the state that makes a result the result of a fresh run.

A training run's *fingerprint* is the hash of everything its outcome depends on: the resolved config
(every key after inheritance and overrides, minus the work folder and run name), the seed, the code of
the packages the run imports (``alignzeg``, ``baselines`` and the ``experiments`` modules), the content of its inputs
(data root, split file, CLIP checkpoint, text-embedding cache) and the versions of the libraries that do
the arithmetic (torch, mmengine, mmseg, mmcv, open_clip, numpy). :func:`run_fingerprint` computes it;
:class:`alignzeg.engine.hooks.RunStateHook` writes it into every checkpoint and refuses to resume from a checkpoint whose
fingerprint differs, so a changed param, config, code or input can never continue an old run.

Exact resume (an interrupted run ends bit-identical to an uninterrupted one on a deterministic CPU):
mmengine restores the model, optimizer, schedulers and message hub and replays the sampler to the saved
iteration, but not the random number generators. ``RunStateHook`` stores the torch, numpy and
Python RNG states in each checkpoint and restores them right before the first iteration after resuming,
i.e. after mmengine has skipped the data already trained on. The data pipeline of ``num_workers > 0``
loaders runs in worker processes that mmengine seeds from the run seed, so replaying the sampler replays
their random augmentations as well; with ``num_workers=0`` the restored main-process states take over
after the skipped batches.

Big inputs: a folder whose files add up to more than :data:`CONTENT_HASH_LIMIT` bytes is fingerprinted
by relative path and size of every file instead of content (hashing a 20 GB COCO-Stuff tree at every
run start would cost minutes); DVC still tracks such folders by content.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

CONTENT_HASH_LIMIT = 1 << 30  # 1 GiB
FINGERPRINT_FILE = "fingerprint.json"
# The code a run imports: whole packages, and the top-level modules of ``experiments`` (its configs
# enter through the resolved config, its profiles not at all).
CODE_PATHS = ("alignzeg", "baselines", "experiments/*.py")
_CODE_SUFFIXES = (".py", ".json", ".yaml", ".sh")
# Config keys that name the run rather than determine it.
_VOLATILE_KEYS = ("work_dir", "experiment_name", "launcher", "resume", "load_from")
_LIBRARIES = ("torch", "mmengine", "mmsegmentation", "mmcv", "open_clip_torch", "numpy")


def _sha256_file(path: Path, h: Optional["hashlib._Hash"] = None) -> str:
    h = h or hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path, suffixes: Optional[tuple[str, ...]] = None) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith(".pyc"):
                continue
            if suffixes is None or name.endswith(suffixes):
                out.append(Path(dirpath) / name)
    return out


def path_digest(path: str | os.PathLike, suffixes: Optional[tuple[str, ...]] = None) -> dict:
    """``{"mode", "sha256", "files"}`` of a file or folder (content, or path+size beyond the limit).

    Raises FileNotFoundError naming the path when it does not exist.
    """
    path = Path(path)
    if path.is_file():
        return {"mode": "content", "sha256": _sha256_file(path), "files": 1}
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: input of the run not found")
    files = _files(path, suffixes)
    total = sum(f.stat().st_size for f in files)
    mode = "content" if total <= CONTENT_HASH_LIMIT else "path+size"
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(path).as_posix()
        h.update(rel.encode() + b"\0")
        if mode == "content":
            h.update(bytes.fromhex(_sha256_file(f)))
        else:
            h.update(str(f.stat().st_size).encode())
        h.update(b"\n")
    return {"mode": mode, "sha256": h.hexdigest(), "files": len(files)}


def code_digest(root: str | os.PathLike | None = None, paths: Iterable[str] = CODE_PATHS) -> str:
    """One sha256 over the source files of ``paths`` (folders or globs under ``root``, default: the
    repository this module belongs to)."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for rel in paths:
        if any(ch in rel for ch in "*?["):
            files = sorted(p for p in root.glob(rel) if p.is_file())
        else:
            base = root / rel
            if not base.is_dir():
                raise FileNotFoundError(f"{base}: code package of the run not found")
            files = _files(base, _CODE_SUFFIXES)
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0")
            h.update(bytes.fromhex(_sha256_file(f)))
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _strip(cfg: Mapping) -> dict:
    return {k: v for k, v in cfg.items() if k not in _VOLATILE_KEYS}


def config_digest(cfg: Any, ignore: Iterable[str] = ()) -> str:
    """sha256 of a resolved mmengine Config (or dict) without the keys that only name the run.

    ``ignore`` lists dotted keys to drop as well (for example the per-run text-cache folder).
    """
    data = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    data = _strip(data)
    for dotted in ignore:
        node = data
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(last, None)
    text = json.dumps(data, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def run_fingerprint(cfg: Any, seed: int, inputs: Mapping[str, str | os.PathLike],
                    code_root: str | os.PathLike | None = None,
                    ignore: Iterable[str] = (), processes: int = 1) -> dict:
    """The fingerprint of one training run (see the module docstring).

    ``inputs`` maps a role ("data_root", "split", "clip", "text_cache") to a path whose content is hashed;
    ``processes`` is the number of DDP processes (the effective batch is the config's batch times it, and
    the sampler's order depends on it). The returned dict has the parts and their combined ``digest``.
    """
    parts = {
        "config": config_digest(cfg, ignore),
        "seed": int(seed),
        "code": code_digest(code_root),
        "inputs": {role: path_digest(p) for role, p in sorted(inputs.items())},
        "libraries": library_versions(),
        "processes": int(processes),
    }
    parts["digest"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return parts


def fingerprint_difference(old: Mapping | None, new: Mapping) -> str:
    """Which parts of two fingerprints differ, for messages ("" when they are equal)."""
    if not old:
        return "no fingerprint recorded"
    if old.get("digest") == new.get("digest"):
        return ""
    diffs = []
    for key in ("config", "seed", "code", "libraries", "processes"):
        if old.get(key) != new.get(key):
            diffs.append(key)
    old_in, new_in = old.get("inputs") or {}, new.get("inputs") or {}
    for role in sorted(set(old_in) | set(new_in)):
        if old_in.get(role) != new_in.get(role):
            diffs.append(f"input {role}")
    return ", ".join(diffs) or "digest"


# -- random number generator state -------------------------------------------------------------------

def rng_state() -> dict:
    import numpy as np
    import torch

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: Mapping) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(tuple(state["numpy"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def stripped_checkpoint(checkpoint: Mapping) -> dict:
    """A checkpoint with only what evaluation needs: weights and the stable metadata.

    mmengine's checkpoints also hold the optimizer, schedulers, the message hub (with timings) and a
    time stamp, so two identical trainings never write identical files. The stripped form is what the
    pipeline publishes as ``model.pth``: bit-identical for identical runs.
    """
    meta = checkpoint.get("meta") or {}
    keep = {k: meta[k] for k in ("zeroshot", "fingerprint", "seed", "iter", "dataset_meta") if k in meta}
    return {"meta": keep, "state_dict": checkpoint["state_dict"]}


__all__ = ["run_fingerprint", "fingerprint_difference", "path_digest", "code_digest", "config_digest",
           "rng_state", "set_rng_state", "stripped_checkpoint", "FINGERPRINT_FILE", "CONTENT_HASH_LIMIT", "CODE_PATHS"]
