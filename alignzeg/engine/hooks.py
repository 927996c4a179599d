"""mmengine hook that stores the zero-shot split in checkpoints and checks it when they are loaded.

Protocol (DESIGN.md section 2): splits are stored by class name and saved into checkpoint metadata;
loading asserts them, so a model is never evaluated on a split whose "unseen" classes it was trained
on, nor with a class order that differs from its training label space (the near-zero-score trap).

Importing this module also installs :func:`alignzeg.engine.checkpoint.register_mmengine_loader`, so
that ``Runner(resume=True)`` and ``load_from=`` can read mmengine's own checkpoints under torch >= 2.6.
"""
from __future__ import annotations

from typing import Any, Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log

from mmseg.registry import HOOKS

from alignzeg.engine.checkpoint import (check_checkpoint_classes, load_checkpoint_file,
                                        register_mmengine_loader, zeroshot_meta)

register_mmengine_loader()


def _current_dataset(runner: Any, train_first: bool = True) -> Optional[Any]:
    """The dataset the runner works on now, without building loops that are still configs.

    mmengine's ``runner.train_dataloader`` builds the train loop on first access (a side effect in a
    test-only run), so for a real Runner only already built loops are looked at: train, then test,
    then val. Duck-typed runners (tests) expose ``train_dataloader`` etc. directly.
    """
    from mmengine.runner import BaseLoop, Runner

    names = ("train", "test", "val") if train_first else ("test", "val", "train")
    if isinstance(runner, Runner):
        for name in names:
            loop = getattr(runner, f"_{name}_loop", None)
            if isinstance(loop, BaseLoop):
                return loop.dataloader.dataset
        return None
    for name in names:
        loader = getattr(runner, f"{name}_dataloader", None)
        if loader is not None and hasattr(loader, "dataset"):
            return loader.dataset
    return None


@HOOKS.register_module()
class ZeroShotMetaHook(Hook):
    """Save ``checkpoint['meta']['zeroshot'] = {"classes", "unseen", "split_name"}``; check it on load.

    Args:
        check_on_load: compare a loaded checkpoint's split with the current dataset's and raise
            ValueError (naming the first difference) when they differ.
        require_meta: also raise when a loaded checkpoint has no zero-shot metadata. Off by default so
            that ``load_from`` can start from checkpoints written elsewhere (a warning is logged).
    """

    priority = "NORMAL"

    def __init__(self, check_on_load: bool = True, require_meta: bool = False) -> None:
        self.check_on_load = check_on_load
        self.require_meta = require_meta

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        dataset = runner.train_dataloader.dataset
        meta = checkpoint.setdefault("meta", {})
        meta["zeroshot"] = zeroshot_meta(dataset)

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        if not self.check_on_load:
            return
        if not (checkpoint.get("meta") or {}).get("zeroshot"):
            if self.require_meta:
                raise ValueError("loaded checkpoint has no meta['zeroshot']; it was not written with "
                                 "ZeroShotMetaHook (set require_meta=False to allow this)")
            print_log("ZeroShotMetaHook: loaded checkpoint has no zero-shot metadata; split not checked",
                      logger="current", level=30)
            return
        dataset = _current_dataset(runner)
        if dataset is None:
            print_log("ZeroShotMetaHook: no built dataset to compare the checkpoint's split with",
                      logger="current", level=30)
            return
        current = zeroshot_meta(dataset)
        check_checkpoint_classes(checkpoint, current["classes"], current["unseen"],
                                 split_name=current["split_name"])


__all__ = ["ZeroShotMetaHook", "RunStateHook", "check_checkpoint_classes", "load_checkpoint_file", "zeroshot_meta"]


@HOOKS.register_module()
class RunStateHook(Hook):
    """Fingerprint and RNG state in every checkpoint; resume only from the same fingerprint.

    See :mod:`alignzeg.engine.run_state` for what the fingerprint covers and why the RNG states are
    restored before the first iteration after resuming (after mmengine has skipped the trained data).

    Args:
        fingerprint: the current run's fingerprint (``run_fingerprint``), or None to skip the check.
        require_match: resuming from a checkpoint with another (or no) fingerprint raises ValueError
            naming the work dir and what differs.
    """

    priority = "VERY_HIGH"

    def __init__(self, fingerprint: Optional[dict] = None, require_match: bool = True) -> None:
        import json

        # plain JSON types: built from a config, it arrives as a ConfigDict, which checkpoints must not hold
        self.fingerprint = json.loads(json.dumps(fingerprint)) if fingerprint is not None else None
        self.require_match = require_match
        self._pending_rng: Optional[dict] = None

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        from alignzeg.engine.run_state import rng_state

        meta = checkpoint.setdefault("meta", {})
        meta["rng_state"] = rng_state()
        if self.fingerprint is not None:
            meta["fingerprint"] = self.fingerprint

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        from alignzeg.engine.run_state import fingerprint_difference

        if not getattr(runner, "_resume", False):
            return  # load_from for fine-tuning or evaluation: nothing is continued
        meta = checkpoint.get("meta") or {}
        if self.fingerprint is not None and self.require_match:
            diff = fingerprint_difference(meta.get("fingerprint"), self.fingerprint)
            if diff:
                raise ValueError(
                    f"refusing to resume in {runner.work_dir}: its last checkpoint was written by a "
                    f"different run ({diff} changed); start in an empty work dir or remove the old "
                    f"checkpoints")
        self._pending_rng = meta.get("rng_state")

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        from alignzeg.engine.run_state import set_rng_state

        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None


@HOOKS.register_module()
class InitCheckpointHook(Hook):
    """Check, before the first iteration, that the model holds every weight of ``checkpoint``.

    mmengine's ``load_from`` loads non-strictly: a key missing from the file, or a parameter of another
    shape, leaves that part at its random initialisation and training goes on. A run that must start
    from another run's weights (transductive self-training starts from the inductive checkpoint, as
    ZegCLIP does) adds this hook: at ``before_train`` of a run that starts at iteration 0, every
    parameter and persistent buffer of the model must be present in the file and equal to it, else a
    ValueError names the file and the first differing keys. A resumed run (iteration > 0) is not
    checked: its weights come from its own last checkpoint.
    """

    priority = "LOW"

    def __init__(self, checkpoint: str) -> None:
        self.checkpoint = str(checkpoint)

    def before_train(self, runner) -> None:
        import torch
        from mmengine.model import is_model_wrapper

        if runner.iter > 0:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        state = load_checkpoint_file(self.checkpoint).get("state_dict")
        if not isinstance(state, dict):
            raise ValueError(f"{self.checkpoint}: no state_dict to start from")
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        differ = sorted(k for k in own if k in state and (state[k].shape != own[k].shape
                                                          or not torch.equal(state[k].to(own[k].device), own[k])))
        if missing or differ:
            raise ValueError(f"{self.checkpoint}: the model does not start from this checkpoint: "
                             f"{len(missing)} keys missing from the file {missing[:5]}, {len(differ)} loaded keys "
                             f"differ {differ[:5]} (another method or config?)")
        print_log(f"started from {self.checkpoint} ({len(own)} keys, all equal)", logger="current")
