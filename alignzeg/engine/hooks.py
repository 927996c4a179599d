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


__all__ = ["ZeroShotMetaHook", "check_checkpoint_classes", "load_checkpoint_file", "zeroshot_meta"]
