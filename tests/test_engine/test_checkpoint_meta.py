"""Zero-shot split in checkpoint metadata: save, explicit load under torch >= 2.6, mismatch errors,
and a real mmengine Runner save -> resume round trip."""
import pickle
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from alignzeg.engine.checkpoint import (check_checkpoint_classes, load_checkpoint_file, restricted_load,
                                        zeroshot_meta)
from alignzeg.splits import Split

FULL = ["sky", "cat", "road", "dog", "tree"]
UNSEEN = ["cat", "dog"]
SEEN = ["sky", "road", "tree"]


def _metainfo(mode="seen", split_name="toy-3s2u", unseen=UNSEEN, classes=FULL):
    seen = [c for c in classes if c not in unseen]
    return {"classes": tuple(seen if mode == "seen" else classes), "palette": [],
            "seen_classes": tuple(seen), "unseen_classes": tuple(unseen), "split_name": split_name,
            "mode": mode}


class _FakeDataset:
    def __init__(self, metainfo, split=None):
        self.metainfo = metainfo
        if split is not None:
            self.split = split


def _fake_runner(dataset):
    return SimpleNamespace(train_dataloader=SimpleNamespace(dataset=dataset))


@pytest.fixture
def split_file(tmp_path):
    path = tmp_path / "toy-3s2u.json"
    Split(name="toy-3s2u", classes=tuple(FULL), unseen=tuple(UNSEEN)).save(path)
    return path


def test_zeroshot_meta_recovers_label_order_in_every_mode(split_file):
    want = {"classes": FULL, "unseen": UNSEEN}
    # "all" mode: metainfo classes already are the full list
    assert zeroshot_meta(_FakeDataset(_metainfo("all")))["classes"] == FULL
    # "seen" mode: from the dataset's Split object ...
    split = Split(name="toy-3s2u", classes=tuple(FULL), unseen=tuple(UNSEEN))
    meta = zeroshot_meta(_FakeDataset(_metainfo("seen"), split=split))
    assert {k: meta[k] for k in want} == want and meta["split_name"] == "toy-3s2u"
    # ... or from the split file named by split_name
    assert zeroshot_meta(_metainfo("seen", split_name=str(split_file)))["classes"] == FULL
    # ... and only as a last resort seen + unseen
    assert zeroshot_meta(_metainfo("seen", split_name="nowhere"))["classes"] == SEEN + UNSEEN
    with pytest.raises(ValueError, match="unseen_classes"):
        zeroshot_meta({"classes": ("a", "b")})


def _hook():
    from alignzeg.engine.hooks import ZeroShotMetaHook

    return ZeroShotMetaHook()


def _saved_checkpoint(tmp_path, dataset):
    from mmengine.runner.checkpoint import save_checkpoint

    ckpt = {"meta": {"iter": 2}, "state_dict": nn.Linear(2, 1).state_dict()}
    _hook().before_save_checkpoint(_fake_runner(dataset), ckpt)
    path = tmp_path / "iter_2.pth"
    save_checkpoint(ckpt, str(path))
    return path


def test_hook_saves_meta_and_explicit_loader_reads_it(tmp_path, split_file):
    dataset = _FakeDataset(_metainfo("seen", split_name=str(split_file)))
    path = _saved_checkpoint(tmp_path, dataset)
    ckpt = load_checkpoint_file(path)
    assert ckpt["meta"]["zeroshot"] == {"classes": FULL, "unseen": UNSEEN, "split_name": str(split_file)}
    assert check_checkpoint_classes(path, FULL, list(reversed(UNSEEN)))["classes"] == FULL
    # the checking hook accepts the same split in "all" mode (test time)
    _hook().after_load_checkpoint(_fake_runner(_FakeDataset(_metainfo("all"))), ckpt)


def test_mismatches_raise_naming_the_first_difference(tmp_path, split_file):
    path = _saved_checkpoint(tmp_path, _FakeDataset(_metainfo("all")))
    swapped = ["sky", "cat", "dog", "road", "tree"]
    with pytest.raises(ValueError, match=r"index 2: 'road' \(checkpoint\) vs 'dog' \(current\)"):
        check_checkpoint_classes(path, swapped, UNSEEN)
    with pytest.raises(ValueError, match=r"5 classes, current has 4.*index 4: 'tree'"):
        check_checkpoint_classes(path, FULL[:4], UNSEEN)
    with pytest.raises(ValueError, match=r"unseen only in the checkpoint \['dog'\], unseen only now "
                                         r"\['tree'\]"):
        check_checkpoint_classes(path, FULL, ["cat", "tree"])
    other = _fake_runner(_FakeDataset(_metainfo("all", unseen=["sky", "tree"])))
    with pytest.raises(ValueError, match="different unseen split"):
        _hook().after_load_checkpoint(other, load_checkpoint_file(path))
    with pytest.raises(ValueError, match="no meta"):
        check_checkpoint_classes({"meta": {}}, FULL, UNSEEN)


def test_loader_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint_file(tmp_path / "missing.pth")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="garbage.pth"):
        load_checkpoint_file(bad)


class _Custom:
    """A Python object outside mmengine's allowlist."""


def test_restricted_loader_refuses_foreign_objects_but_trusted_loader_reads_them(tmp_path):
    path = tmp_path / "custom.pth"
    torch.save({"meta": {"obj": _Custom()}, "state_dict": {}}, path)
    with pytest.raises(pickle.UnpicklingError, match="custom.pth"):
        restricted_load(path)
    assert isinstance(load_checkpoint_file(path)["meta"]["obj"], _Custom)


# -- a real mmengine Runner: save at iteration 2, resume, continue to 3 -------------------------------

class _ToyDataset(torch.utils.data.Dataset):
    def __init__(self, metainfo):
        self.metainfo = metainfo

    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(3, generator=g), "y": torch.randn(1, generator=g)}


def _toy_runner(work_dir, metainfo, max_iters, name, resume=False, load_from=None, extra_hooks=()):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, x, y, mode="loss"):
            return {"loss": ((self.lin(x) - y) ** 2).mean()}

    return Runner(
        model=Toy(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=_ToyDataset(metainfo), batch_size=2, num_workers=0,
                              sampler=dict(type="DefaultSampler", shuffle=False),
                              collate_fn=dict(type="default_collate")),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01, momentum=0.9)),
        param_scheduler=[dict(type="LinearLR", start_factor=0.5, by_epoch=False, begin=0, end=4)],
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False),
                           logger=dict(type="LoggerHook", interval=1)),
        custom_hooks=[_hook(), *extra_hooks], resume=resume, load_from=load_from,
        randomness=dict(seed=0), default_scope="mmseg", experiment_name=name)


def test_runner_saves_meta_and_resumes(tmp_path):
    from mmengine.hooks import Hook

    metainfo = _metainfo("all")
    runner = _toy_runner(tmp_path / "run", metainfo, max_iters=2, name="zs-meta-first")
    runner.train()
    ckpt_path = tmp_path / "run" / "iter_2.pth"
    ckpt = restricted_load(ckpt_path)  # what mmengine's loader now uses: weights_only=True
    assert ckpt["meta"]["zeroshot"] == {"classes": FULL, "unseen": UNSEEN, "split_name": "toy-3s2u"}
    assert ckpt["meta"]["iter"] == 2
    weights = {k: v.clone() for k, v in ckpt["state_dict"].items()}

    class Record(Hook):
        def before_train(self, runner):
            self.iter = runner.iter
            self.weight = runner.model.lin.weight.detach().clone()

    record = Record()
    resumed = _toy_runner(tmp_path / "run", metainfo, max_iters=3, name="zs-meta-resumed", resume=True,
                          extra_hooks=[record])
    resumed.train()
    assert record.iter == 2
    assert torch.equal(record.weight, weights["lin.weight"])
    assert resumed.iter == 3
    assert "zeroshot" in load_checkpoint_file(tmp_path / "run" / "iter_2.pth")["meta"]

    wrong = _metainfo("all", unseen=["sky", "tree"])
    clash = _toy_runner(tmp_path / "clash", wrong, max_iters=3, name="zs-meta-clash", resume=True,
                        load_from=str(ckpt_path))
    with pytest.raises(ValueError, match="different unseen split"):
        clash.train()


def test_real_dataset_seen_and_all_modes_give_the_same_label_ordered_meta(tmp_path):
    """COCO-Stuff's unseen classes are interleaved: seen + unseen would lose the label order."""
    from alignzeg.datasets import ZeroShotSegDataset
    from alignzeg.splits import load_split

    split = load_split("coco-stuff-156s15u")
    seen_mode = ZeroShotSegDataset(split=split.name, mode="seen", data_root=str(tmp_path), lazy_init=True)
    all_mode = ZeroShotSegDataset(split=split.name, mode="all", data_root=str(tmp_path), lazy_init=True)
    assert len(seen_mode.metainfo["classes"]) == 156
    meta = zeroshot_meta(seen_mode)
    assert meta == zeroshot_meta(all_mode)
    assert meta["classes"] == list(split.classes) and meta["unseen"] == list(split.unseen)
    assert meta["classes"] != list(split.seen) + list(split.unseen)
    check_checkpoint_classes({"meta": {"zeroshot": meta}}, list(split.classes), list(split.unseen))


def test_hook_registered_in_mmseg_hooks():
    from mmseg.registry import HOOKS

    from alignzeg.engine.hooks import ZeroShotMetaHook

    hook = HOOKS.build(dict(type="ZeroShotMetaHook", require_meta=True))
    assert isinstance(hook, ZeroShotMetaHook) and hook.require_meta
    with pytest.raises(ValueError, match="no meta"):
        hook.after_load_checkpoint(_fake_runner(_FakeDataset(_metainfo("all"))), {"meta": {}})
