"""Loading mmengine checkpoints under torch >= 2.6, and comparing class lists.

Why this module exists: torch 2.6 changed ``torch.load``'s default to ``weights_only=True``, which only
unpickles tensors and a few containers. An mmengine checkpoint is more than weights: ``meta`` (config
text, seed, dataset metainfo, our zero-shot split) and ``message_hub`` (``HistoryBuffer`` objects holding
numpy arrays) are pickled Python objects. mmengine 0.10.7's local loader calls ``torch.load`` without
``weights_only`` and therefore fails on every checkpoint the Runner itself wrote (resume breaks).

Two ways in, from safest to most permissive:

* :func:`restricted_load` - ``weights_only=True`` with an allowlist of exactly the non-tensor types
  mmengine writes (:data:`MMENGINE_SAFE_GLOBALS`: ``HistoryBuffer``, numpy arrays/dtypes/scalars, and
  ``getattr``, which numpy uses to name dtype classes; the restricted unpickler still refuses to *call*
  anything that is not allowlisted). :func:`register_mmengine_loader` installs it as mmengine's loader
  for local paths, so ``Runner(resume=True)`` / ``load_from=`` work without opening arbitrary pickles.
* :func:`load_checkpoint_file` - for checkpoints this suite wrote itself (``work_dirs``): tries the
  restricted load and, if the file holds some other Python object, falls back to ``weights_only=False``,
  which executes pickle code and must therefore never be used on files from elsewhere.
"""
from __future__ import annotations

import builtins
import os
import pickle
from pathlib import Path
from typing import Any, Sequence


def _numpy_globals() -> list:
    import numpy as np

    found: list = [np.dtype, np.ndarray]
    for mod_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            import importlib

            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        found += [mod._reconstruct, mod.scalar]
        break
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return found


def mmengine_safe_globals() -> list:
    """The non-tensor globals an mmengine Runner checkpoint references (see the module docstring)."""
    from mmengine.logging.history_buffer import HistoryBuffer

    return [HistoryBuffer, builtins.getattr] + _numpy_globals()


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    return path


def restricted_load(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """``torch.load(weights_only=True)`` allowing only the extra types mmengine checkpoints contain."""
    import torch

    path = _check_file(path)
    try:
        with torch.serialization.safe_globals(mmengine_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "global" in ln.lower()] or [str(err)]
        raise pickle.UnpicklingError(
            f"{path}: refused by the restricted (weights_only) loader because it holds a Python object "
            f"outside the mmengine allowlist. If this suite wrote the file, load it with "
            f"alignzeg.engine.checkpoint.load_checkpoint_file. Detail: {lines[0]}") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise RuntimeError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint that **this suite wrote** (mmengine Runner output with our metadata).

    Tries :func:`restricted_load` first; if the file holds Python objects beyond mmengine's usual ones
    it is loaded with ``weights_only=False``. That executes pickled code: acceptable for our own
    ``work_dirs`` files, never for downloaded ones. Errors name the path. Returns the checkpoint dict.
    """
    import torch

    path = _check_file(path)
    try:
        ckpt = restricted_load(path, map_location)
    except pickle.UnpicklingError:
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:  # noqa: BLE001 - re-raised with the path
            raise RuntimeError(f"{path}: could not be loaded as a checkpoint ({type(err).__name__}: "
                               f"{err})") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, found {type(ckpt).__name__}")
    return ckpt


def load_from_local_restricted(filename: str, map_location: Any = None) -> dict:
    """mmengine ``CheckpointLoader`` scheme for local paths, using :func:`restricted_load`."""
    return restricted_load(filename, map_location=map_location)


def register_mmengine_loader() -> None:
    """Make mmengine load local checkpoints with :func:`restricted_load` (idempotent).

    Replaces mmengine's default local loader (``prefixes=''``), which fails on its own checkpoints under
    torch >= 2.6. Called when :mod:`alignzeg.engine.hooks` is imported (configs import it through
    ``custom_imports``); entry points may call it directly.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local_restricted, force=True)


def first_difference(a: Sequence[str], b: Sequence[str], name_a: str, name_b: str) -> str:
    """Describe where two class lists first differ, for error messages."""
    a, b = list(a), list(b)
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first difference at index {i}: {x!r} ({name_a}) vs {y!r} ({name_b})"
    if len(a) != len(b):
        i = min(len(a), len(b))
        x = a[i] if i < len(a) else "<end>"
        y = b[i] if i < len(b) else "<end>"
        return (f"{name_a} has {len(a)} classes, {name_b} has {len(b)}; first difference at index "
                f"{i}: {x!r} ({name_a}) vs {y!r} ({name_b})")
    return "no difference"


# -- zero-shot metadata -------------------------------------------------------------------------------

def _unwrap(dataset: Any) -> Any:
    """The innermost dataset of mmengine wrappers (RepeatDataset, ClassBalancedDataset, ConcatDataset)."""
    seen = 0
    while seen < 10:
        seen += 1
        if hasattr(dataset, "datasets") and dataset.datasets:
            dataset = dataset.datasets[0]
        elif hasattr(dataset, "dataset") and not isinstance(dataset, dict):
            dataset = dataset.dataset
        else:
            break
    return dataset


def zeroshot_meta(dataset: Any) -> dict:
    """``{"classes", "unseen", "split_name"}`` of a zero-shot dataset (or its ``metainfo`` dict).

    ``classes`` is always the FULL label space in label order, whatever the dataset's mode: in "seen"
    mode the metainfo ``classes`` hold only the seen names, so the full list is taken, in this order,
    from the dataset's ``split`` object (``alignzeg.splits.Split``), from ``classes`` when they already
    contain every seen and unseen name ("all"/"transductive" modes), from the shipped split named by
    ``split_name``, and only as a last resort as ``seen_classes + unseen_classes`` (label order lost).
    Raises ValueError when the metainfo names no unseen classes.
    """
    metainfo = dataset if isinstance(dataset, dict) else getattr(dataset, "metainfo", None)
    if not isinstance(metainfo, dict):
        raise ValueError(f"{type(dataset).__name__}: dataset has no 'metainfo' dict")
    if metainfo.get("unseen_classes") is None:
        raise ValueError(f"{type(dataset).__name__}: dataset metainfo has no 'unseen_classes'; "
                         f"zero-shot checkpoints need a ZeroShotSegDataset (keys: {sorted(metainfo)})")
    unseen = [str(c) for c in metainfo["unseen_classes"]]
    classes = [str(c) for c in (metainfo.get("classes") or [])]
    seen = metainfo.get("seen_classes")
    seen = [str(c) for c in seen] if seen is not None else [c for c in classes if c not in unseen]
    split_name = metainfo.get("split_name")
    split_name = str(split_name) if split_name is not None else None
    wanted = set(seen) | set(unseen)

    full = None
    split_obj = getattr(_unwrap(dataset), "split", None) if not isinstance(dataset, dict) else None
    if split_obj is not None and hasattr(split_obj, "classes") and set(split_obj.classes) == wanted:
        full = list(split_obj.classes)
    elif wanted <= set(classes) and len(classes) == len(wanted):
        full = classes
    elif split_name:
        try:
            from alignzeg.splits import load_split

            candidate = load_split(split_name)
            if set(candidate.classes) == wanted:
                full = list(candidate.classes)
        except (FileNotFoundError, ValueError):
            pass
    if full is None:
        full = seen + [u for u in unseen if u not in seen]
    return {"classes": full, "unseen": unseen, "split_name": split_name}


def check_checkpoint_classes(checkpoint_or_path: Any, classes: Sequence[str], unseen: Sequence[str],
                             split_name: str | None = None) -> dict:
    """Raise ValueError unless the checkpoint was trained on the same label space and unseen set.

    ``checkpoint_or_path`` is a loaded checkpoint dict or a path (loaded with
    :func:`load_checkpoint_file`). ``classes`` is the current full class list in label order,
    ``unseen`` the current unseen names. Class order matters (label ids); unseen order does not.
    A differing ``split_name`` alone is not an error (a renamed copy of the same split). Returns the
    checkpoint's ``meta['zeroshot']``.
    """
    if isinstance(checkpoint_or_path, (str, os.PathLike)):
        source = str(checkpoint_or_path)
        checkpoint = load_checkpoint_file(checkpoint_or_path)
    else:
        source = "checkpoint"
        checkpoint = checkpoint_or_path
    meta = (checkpoint.get("meta") or {}).get("zeroshot") if isinstance(checkpoint, dict) else None
    if not meta:
        raise ValueError(f"{source}: no meta['zeroshot'] (classes and unseen split); it was not "
                         f"written with ZeroShotMetaHook")
    ck_classes = list(meta.get("classes") or [])
    ck_unseen = list(meta.get("unseen") or [])
    ck_name = meta.get("split_name")
    classes, unseen = list(classes), list(unseen)
    label = f"{source} (split {ck_name!r})" if ck_name else source
    if ck_classes != classes:
        raise ValueError(
            f"{label} was trained on a different class list than the current dataset"
            f"{f' (split {split_name!r})' if split_name else ''}: "
            f"{first_difference(ck_classes, classes, 'checkpoint', 'current')}")
    if set(ck_unseen) != set(unseen):
        only_ck = [u for u in ck_unseen if u not in set(unseen)]
        only_now = [u for u in unseen if u not in set(ck_unseen)]
        raise ValueError(
            f"{label} has a different unseen split than the current dataset"
            f"{f' (split {split_name!r})' if split_name else ''}: unseen only in the checkpoint "
            f"{only_ck}, unseen only now {only_now}; "
            f"{first_difference(sorted(ck_unseen), sorted(unseen), 'checkpoint', 'current')} (sorted)")
    return meta
