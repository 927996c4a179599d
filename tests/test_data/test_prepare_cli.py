"""``alignzeg prepare``: subcommand table and lazy dispatch of ``synthetic``."""
from __future__ import annotations

import argparse
import sys
import types

import pytest

from alignzeg.data import prepare


def _parser():
    p = argparse.ArgumentParser(prog="alignzeg prepare")
    prepare.add_arguments(p)
    return p


def test_converter_options():
    args = _parser().parse_args(["context", "--src", "s", "--out", "o", "--images", "i", "--link", "symlink"])
    assert (args.dataset, args.src, args.out, args.images, args.link) == ("context", "s", "o", "i", "symlink")
    with pytest.raises(SystemExit):
        _parser().parse_args(["kitti", "--src", "s"])


def test_synthetic_dispatched_lazily(monkeypatch):
    """Options after ``synthetic`` go untouched to the generator's own parser."""
    fake = types.ModuleType("fake_synthetic")
    seen = {}

    def add_arguments(parser):
        parser.add_argument("--out", required=True)
        parser.add_argument("--seed", type=int, default=0)

    def run(args):
        seen.update(vars(args))
        return 0

    fake.add_arguments, fake.run = add_arguments, run
    monkeypatch.setitem(sys.modules, "fake_synthetic", fake)
    monkeypatch.setitem(prepare.CONVERTERS, "synthetic", ("fake_synthetic", "fake"))
    args = _parser().parse_args(["synthetic", "--out", "x", "--seed", "3"])
    assert args.rest == ["--out", "x", "--seed", "3"]
    assert prepare.run(args) == 0
    assert seen == {"out": "x", "seed": 3}


def test_missing_synthetic_module_is_named(monkeypatch):
    monkeypatch.setitem(prepare.CONVERTERS, "synthetic", ("alignzeg_no_such_module", "x"))
    args = _parser().parse_args(["synthetic"])
    with pytest.raises(SystemExit, match="alignzeg_no_such_module"):
        prepare.run(args)
