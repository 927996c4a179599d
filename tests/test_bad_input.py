"""Bad input, tried: one test per row of the README table "Bad input: what the user sees".

Each test feeds one kind of bad input to the command or class a user would run, and checks two things:
the message names the culprit (file, class name, checkpoint, folder), and nothing written earlier was
overwritten or left half-written (previous outputs compared file by file, no temporary files left).
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alignzeg.cli import main as cli_main
from alignzeg.data import synthetic as S
from alignzeg.splits import Split, load_split
from tests.test_data._prepare_trees import leftovers, write_palette_png
from tests.test_data.test_prepare_voc import VOC_A, make_voc, run_voc

REPO = Path(__file__).resolve().parents[1]
PIPELINE = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]


# ------------------------------------------------------------------------------------------ helpers
def digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below ``root`` (hidden temporary files included)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def synthetic(out: Path, seed: int = 0, n: int = 2) -> Path:
    """A small prepared dataset in the common layout (40 classes, 32 px)."""
    S.generate(out, seed=seed, num_train=n, num_val=1, image_size=32)
    return out


def prepare_synthetic(out: Path, *extra: str) -> None:
    cli_main(["prepare", "synthetic", "--out", str(out), "--num-train", "3", "--num-val", "1",
              "--image-size", "32", "--no-progress", *extra])


def previous_voc(tmp_path: Path):
    """A VOC download and a successful earlier ``prepare voc`` into ``tmp_path/out``."""
    src, sbd = make_voc(tmp_path)
    out = tmp_path / "out"
    assert run_voc(src, out, sbd) == 0
    return src, sbd, out, digest(out)


def voc_fails(tmp_path, src, sbd, out, before, match):
    with pytest.raises(SystemExit, match=match) as excinfo:
        run_voc(src, out, sbd)
    assert str(excinfo.value).startswith("alignzeg prepare voc: error: ")
    assert digest(out) == before, "the previous output was changed"
    assert leftovers(tmp_path, "out") == ["out"], "a partial output was left"
    return str(excinfo.value)


def dataset(root: Path, mode: str = "all", cls: str = "SyntheticZSDataset", **kwargs):
    from mmengine.registry import init_default_scope

    import alignzeg.datasets as zsd

    init_default_scope("mmseg")
    return getattr(zsd, cls)(data_root=str(root), mode=mode, pipeline=PIPELINE, **kwargs)


def needs_mmseg():
    pytest.importorskip("mmcv.ops", reason="mmseg datasets need the compiled mmcv")


# ---------------------------------------------------------------------------------- image and mask
def test_corrupt_image(tmp_path):
    # prepare: the download holds a file that is not an image
    src, sbd, out, before = previous_voc(tmp_path)
    (src / "VOC2012" / "JPEGImages" / "d.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    msg = voc_fails(tmp_path, src, sbd, out, before, r"unreadable image .*JPEGImages/d\.jpg")
    assert "cannot identify image file" in msg
    # training / evaluation: a prepared image became garbage
    needs_mmseg()
    from alignzeg.datasets import BadSampleError

    root = synthetic(tmp_path / "data")
    bad = root / "images" / "train" / "train_000001.png"
    bad.write_bytes(b"garbage")
    ds = dataset(root, "seen")
    assert ds[0]["gt_seg_map"].shape == (32, 32)   # the good sample still loads
    with pytest.raises(BadSampleError, match=rf"SyntheticZSDataset: cannot load image {bad}: not a decodable image"):
        ds[1]
    assert "LoadImageFromFile" in repr(ds.pipeline)   # the wrapped transforms keep their repr
    label = root / "annotations" / "train" / "train_000000.png"
    label.write_bytes(b"garbage")   # Pillow alone would say "cannot identify image file <_io.BytesIO ...>"
    with pytest.raises(BadSampleError, match=rf"cannot load label file {label}: not a decodable image"):
        ds[0]


def test_truncated_png(tmp_path):
    # prepare: a SegmentationClass PNG and a JPEG cut short
    src, sbd, out, before = previous_voc(tmp_path)
    label = src / "VOC2012" / "SegmentationClass" / "a.png"
    whole = label.read_bytes()
    label.write_bytes(whole[: len(whole) // 2])
    voc_fails(tmp_path, src, sbd, out, before, r"unreadable label file .*SegmentationClass/a\.png: (?i:truncated)")
    label.write_bytes(whole)
    jpg = src / "VOC2012" / "JPEGImages" / "b.jpg"
    jpg.write_bytes(jpg.read_bytes()[:-40])
    voc_fails(tmp_path, src, sbd, out, before, r"unreadable image .*JPEGImages/b\.jpg: (?i:.*truncated)")
    # training / evaluation: a prepared label PNG, then an image PNG, cut short
    needs_mmseg()
    from alignzeg.datasets import BadSampleError

    root = synthetic(tmp_path / "data")
    for path in (root / "annotations" / "train" / "train_000000.png", root / "images" / "train" / "train_000001.png"):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    ds = dataset(root, "seen")
    # mmseg's LoadAnnotations decodes with Pillow, LoadImageFromFile with OpenCV: each names the file here
    with pytest.raises(BadSampleError, match=r"cannot load label file .*annotations/train/train_000000\.png: "
                                             r"OSError: image file is truncated"):
        ds[0]
    with pytest.raises(BadSampleError, match=r"cannot load image .*images/train/train_000001\.png: not a decodable "
                                             r"image \(corrupt, truncated or not an image\)"):
        ds[1]


def test_wrong_size_mask(tmp_path):
    src, sbd, out, before = previous_voc(tmp_path)
    write_palette_png(src / "VOC2012" / "SegmentationClass" / "c.png", np.zeros((5, 4)))
    voc_fails(tmp_path, src, sbd, out, before,
              r"label file .*SegmentationClass/c\.png: size 4x5 \(WxH\) differs from its image .*JPEGImages/c\.jpg "
              r"\(4x3\)")
    needs_mmseg()
    from alignzeg.datasets import BadSampleError

    root = synthetic(tmp_path / "data")
    lab = root / "annotations" / "val" / "val_000000.png"
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(lab)
    ds = dataset(root, "all", test_mode=True)
    with pytest.raises(BadSampleError, match=rf"label file {lab} is 32x30 \(WxH\) but its image "
                                             rf".*images/val/val_000000\.png is 32x32"):
        ds[0]
    # a colour mask (3 channels) of the right size is named too, not read as three label maps
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(lab)
    with pytest.raises(BadSampleError, match=rf"label file {lab} has 3 channels"):
        ds[0]


def test_label_out_of_range(tmp_path):
    src, sbd, out, before = previous_voc(tmp_path)
    bad = VOC_A.copy()
    bad[0, 0] = 21   # VOC has 0..20 and 255
    write_palette_png(src / "VOC2012" / "SegmentationClass" / "a.png", bad)
    voc_fails(tmp_path, src, sbd, out, before,
              r"label file .*SegmentationClass/a\.png: values outside the valid range: 21$")
    needs_mmseg()
    from alignzeg.datasets import BadSampleError

    root = synthetic(tmp_path / "data")
    lab = root / "annotations" / "train" / "train_000001.png"
    labels = np.array(Image.open(lab))
    labels[0, :3] = (40, 200, 255)   # 40 classes: 0..39, 255 = ignore
    Image.fromarray(labels).save(lab)
    for mode in ("seen", "all", "transductive"):   # the seen view maps ids, but 40 and 200 stay out of range
        ds = dataset(root, mode)
        ds[0]
        with pytest.raises(BadSampleError, match=rf"label file {lab} holds values \[40, 200\] outside the label "
                                                 rf"range 0\.\.39 \(40 classes\) and 255 \(ignore\)"):
            ds[1]
    assert 200 in dataset(root, "seen", check_samples=False)[1]["gt_seg_map"]   # the check can be turned off


# ------------------------------------------------------------------------------------- class names
def test_split_naming_a_class_absent_from_the_dataset(tmp_path):
    # a split file whose unseen list names a class its label space lacks
    path = tmp_path / "toy.json"
    path.write_text(json.dumps({"name": "toy", "classes": ["sky", "cat", "dog"], "unseen": ["unicorn"]}))
    with pytest.raises(ValueError, match=rf"{path}: split 'toy': unseen classes \['unicorn'\] are not in its "
                                         r"'classes'"):
        load_split(path)
    # prepare synthetic --unseen with a name the generator does not have; the earlier output stays
    out = tmp_path / "syn"
    prepare_synthetic(out)
    before = digest(out)
    with pytest.raises(SystemExit, match=r"alignzeg prepare synthetic: error: --unseen: unknown class names "
                                         r"\['unicorn'\]"):
        prepare_synthetic(out, "--unseen", "sand", "unicorn")
    assert digest(out) == before and leftovers(tmp_path, "syn") == ["syn"]
    needs_mmseg()
    import alignzeg.datasets as zsd

    # a dataset with a fixed class list (VOC) given a split over other classes
    voc = load_split("voc12-15s5u")
    other = tmp_path / "voc-unicorn.json"
    Split(name="voc-unicorn", classes=voc.classes[:-1] + ("unicorn",), unseen=("unicorn",)).save(other)
    with pytest.raises(ValueError, match=r"VOCZSDataset: split 'voc-unicorn' has a class list that differs from "
                                         r"the dataset's .*not in the dataset: \['unicorn'\]; missing from the "
                                         r"split: \['tvmonitor'\]"):
        zsd.VOCZSDataset(split=str(other), data_root=str(tmp_path), lazy_init=True)
    # a prepared folder whose split.json names an unseen class that is not in its classes
    root = synthetic(tmp_path / "data")
    meta = json.loads((root / "split.json").read_text())
    meta["unseen"].append("pink circle")
    (root / "split.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"split\.json.*unseen classes \['pink circle'\] are not in its 'classes'"):
        dataset(root)
    # a folder dataset whose unseen names are not in its classes file
    (tmp_path / "classes.txt").write_text("sky\ncat\ndog\n")
    with pytest.raises(ValueError, match=r"classes_file .*classes\.txt: .*unseen classes \['unicorn'\]"):
        zsd.FolderZSDataset("classes.txt", unseen=["unicorn"], data_root=str(tmp_path), lazy_init=True)


def test_duplicate_class_name(tmp_path):
    path = tmp_path / "toy.json"
    path.write_text(json.dumps({"name": "toy", "classes": ["sky", "cat", "dog", "cat"], "unseen": ["dog"]}))
    with pytest.raises(ValueError, match=rf"{path}: split 'toy': duplicate class names \['cat'\]"):
        load_split(path)
    path.write_text(json.dumps({"name": "toy", "classes": ["sky", "cat", "dog"], "unseen": ["dog", "dog"]}))
    with pytest.raises(ValueError, match=rf"{path}: split 'toy': duplicate names in 'unseen': \['dog'\]"):
        load_split(path)
    out = tmp_path / "syn"
    prepare_synthetic(out)
    before = digest(out)
    with pytest.raises(SystemExit, match=r"--unseen: class names given more than once: \['red circle'\]"):
        prepare_synthetic(out, "--unseen", "red circle", "sand", "red circle")
    assert digest(out) == before and leftovers(tmp_path, "syn") == ["syn"]
    needs_mmseg()
    import alignzeg.datasets as zsd

    (tmp_path / "classes.txt").write_text("sky\ncat\ndog\ncat\n")
    with pytest.raises(ValueError, match=r"classes_file .*classes\.txt: duplicate class names \['cat'\]"):
        zsd.FolderZSDataset("classes.txt", data_root=str(tmp_path), lazy_init=True)
    with pytest.raises(ValueError, match=r"classes_file .*classes\.txt: duplicate class names \['cat'\]"):
        zsd.FolderZSDataset("classes.txt", split=str(tmp_path / "toy.json"), data_root=str(tmp_path), lazy_init=True)


# ------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_trained_on_another_class_list(tmp_path, monkeypatch):
    """``alignzeg test`` with a checkpoint whose saved class list differs: refused before evaluating."""
    pytest.importorskip("mmseg.models", reason="mmseg.models needs mmcv with ops")
    import torch

    from tests.test_entrypoints import CLASSES, UNSEEN, make_dataset, write_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))
    data = make_dataset(tmp_path / "data", n_train=1, n_val=1)
    cfg = write_config(tmp_path / "toy.py", data, max_iters=1, ckpt_interval=1)
    swapped = [CLASSES[1], CLASSES[0], *CLASSES[2:]]   # same names, another label order
    ckpt = tmp_path / "other_classes.pth"
    torch.save({"meta": {"zeroshot": {"classes": swapped, "unseen": UNSEEN, "split_name": "other"}},
                "state_dict": {}}, ckpt)
    out_json = tmp_path / "metrics.json"
    out_json.write_text('{"hIoU": 50.0}\n')
    work = tmp_path / "work"
    # The hook sees the loaded dict, not its path: the message names the checkpoint by its split name.
    with pytest.raises(ValueError, match=rf"(?:{ckpt}|checkpoint) \(split 'other'\) was trained on a different class list than "
                                         r"the current dataset.*index 0: 'blue square' \(checkpoint\) vs "
                                         r"'red circle' \(current\)"):
        cli_main(["test", str(cfg), str(ckpt), "--work-dir", str(work), "--out-json", str(out_json)])
    assert out_json.read_text() == '{"hIoU": 50.0}\n'
    assert not (work / "zeroshot_metrics.json").exists()


def _tiny_clip(cfg: dict):
    from alignzeg.clip.model import build_clip

    return build_clip(cfg)


def test_clip_checkpoint_that_does_not_fit_its_architecture(tmp_path):
    import torch

    from alignzeg.clip.model import CONFIG_DIR, TINY_CLIP_CONFIG, build_clip, save_clip
    from tests.test_clip.conftest import OPENAI_TINY_CFG

    # convert-clip --model tiny-vit-b8-64.json with the weights of another (smaller) architecture
    other = tmp_path / "other.pt"
    torch.save(_tiny_clip(OPENAI_TINY_CFG).state_dict(), other)
    out = tmp_path / "clip.safetensors"
    save_clip(_tiny_clip(TINY_CLIP_CONFIG), TINY_CLIP_CONFIG, out)
    before = out.read_bytes()
    with pytest.raises(ValueError, match=rf"CLIP checkpoint {other} does not fit architecture 'tiny-vit-b8-64': "
                                         r"3 shape mismatches: positional_embedding: checkpoint \(16, 128\) vs "
                                         r"model \(32, 128\);.* \| 36 missing keys: visual\.transformer\.resblocks\.3\."):
        cli_main(["convert-clip", "--src", str(other), "--out", str(out),
                  "--model", str(CONFIG_DIR / "tiny-vit-b8-64.json")])
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["clip.safetensors", "other.pt"]
    # a safetensors file whose metadata config does not describe its tensors
    lying = tmp_path / "lying.safetensors"
    save_clip(_tiny_clip(OPENAI_TINY_CFG), TINY_CLIP_CONFIG, lying)
    with pytest.raises(ValueError, match=rf"CLIP checkpoint {lying} does not fit architecture 'lying': "
                                         r"3 shape mismatches: .* \| 36 missing keys"):
        build_clip(None, lying)


# ------------------------------------------------------------------------------------------ outputs
def test_read_only_output_folder(tmp_path):
    # a regular file where a folder is expected (refused for root too)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=rf"cannot write output folder {tmp_path}/notes\.txt/data: "
                                         rf"{tmp_path}/notes\.txt is a file, not a folder; nothing was written"):
        prepare_synthetic(tmp_path / "notes.txt" / "data")
    with pytest.raises(SystemExit, match=rf"cannot write output folder {tmp_path}/notes\.txt: it exists and is "
                                         r"not a folder"):
        prepare_synthetic(tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    from alignzeg.utils import OutputError, atomic_write_json

    with pytest.raises(OutputError, match=rf"cannot write file {tmp_path}/notes\.txt/m\.json: .*is a file, "
                                          r"not a folder"):
        atomic_write_json(tmp_path / "notes.txt" / "m.json", {})


@pytest.mark.skipif(os.geteuid() == 0, reason="permission bits do not stop root (test_read_only_output_folder "
                                              "covers a destination root cannot write either)")
def test_read_only_output_folder_permission_bits(tmp_path):
    from alignzeg.utils import OutputError, atomic_write_json

    ro = tmp_path / "ro"
    synthetic(ro / "data")
    before = digest(ro)
    ro.chmod(0o555)
    try:
        with pytest.raises(SystemExit, match=rf"cannot write output folder {ro}/data: Permission denied: .*; "
                                             rf"{ro}/data is unchanged"):
            prepare_synthetic(ro / "data")
        with pytest.raises(OutputError, match=rf"cannot write file {ro}/m\.json: Permission denied"):
            atomic_write_json(ro / "m.json", {})
    finally:
        ro.chmod(0o755)
    assert digest(ro) == before


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # write() then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _run_limited(args: list[str], limit: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, *args], preexec_fn=_limit_file_size(limit), capture_output=True,
                          text=True, env=env, timeout=120)


def test_disk_full_mid_write(tmp_path):
    """RLIMIT_FSIZE makes a write fail part-way, as a full disk would (EFBIG instead of ENOSPC)."""
    out = synthetic(tmp_path / "data", seed=1)
    before = digest(out)
    # 60 images of 32 px (a few kB each) fit under 8 kB per file; the captions file written after them does not
    res = _run_limited(["-m", "alignzeg.cli", "prepare", "synthetic", "--out", str(out), "--num-train", "60",
                        "--num-val", "1", "--image-size", "32", "--no-progress"], 8192)
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"alignzeg prepare synthetic: error: cannot write output folder {out}: File too large; "
        f"the partial output was removed and {out} is unchanged")
    assert digest(out) == before and leftovers(tmp_path, "data") == ["data"]
    # one file (metric JSON, CLIP weights, ...): the earlier file stays whole, no temporary file is left
    target = out / "meta.json"
    code = f"from alignzeg.utils import atomic_write_json; atomic_write_json({str(target)!r}, ['x' * 100] * 200)"
    res = _run_limited(["-c", code], 8192)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        f"alignzeg.utils.OutputError: cannot write file {target}: File too large; {target} is unchanged")
    assert digest(out) == before and leftovers(out, "meta.json") == ["meta.json"]


def test_interrupted_prepare(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the middle of ``prepare``: exit status 130, the earlier output as it was, no partial folder."""
    out = tmp_path / "syn"
    prepare_synthetic(out)
    before = digest(out)
    real = S.make_example
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(S, "make_example", interrupted)
    with pytest.raises(SystemExit) as excinfo:
        prepare_synthetic(out, "--seed", "7")
    assert excinfo.value.code == 130 and len(calls) == 3
    err = capsys.readouterr().err
    assert f"alignzeg prepare synthetic: interrupted; the partial output was removed and {out} is unchanged" in err
    assert digest(out) == before and leftovers(tmp_path, "syn") == ["syn"]
    monkeypatch.undo()

    # a converter, interrupted after it has written some label files
    from alignzeg.data.prepare import common

    src, sbd, vout, vbefore = previous_voc(tmp_path)
    written = []
    real_write = common.write_label_png

    def write_then_stop(labels, path):
        real_write(labels, path)
        written.append(path)
        if len(written) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(common, "write_label_png", write_then_stop)
    with pytest.raises(SystemExit) as excinfo:
        run_voc(src, vout, sbd)
    assert excinfo.value.code == 130 and len(written) == 2
    assert f"the partial output was removed and {vout} is unchanged" in capsys.readouterr().err
    assert digest(vout) == vbefore and leftovers(tmp_path, "out") == ["out"]
