"""``alignzeg prepare {voc,coco-stuff,context,synthetic} ...``: build the common prepared layout.

Each converter reads an official download, validates it, and writes (atomically)::

    OUT/images/{train,val}/<id>.jpg       original images
    OUT/annotations/{train,val}/<id>.png  uint8 labels in the full label space, 255 = ignore
    OUT/split.json                        the matching shipped split (class order = label order)
    OUT/meta.json                         dataset, image counts, source, label mapping

``synthetic`` hands its arguments to :mod:`alignzeg.data.synthetic` (imported only when chosen).
Input problems (:class:`~alignzeg.data.prepare.common.PrepareError`, always naming the offending
path) end the command with that message and exit status 1; nothing is left in ``--out``.
"""
from __future__ import annotations

import argparse
import importlib

# dataset -> (module, help)
CONVERTERS: dict[str, tuple[str, str]] = {
    "voc": ("alignzeg.data.prepare.voc", "PASCAL VOC 2012 (+ SBD aug) from VOCdevkit and SBD"),
    "coco-stuff": ("alignzeg.data.prepare.coco_stuff", "COCO-Stuff 164k from images + stuffthingmaps"),
    "context": ("alignzeg.data.prepare.context", "PASCAL Context-59 from trainval.tar.gz (.mat) + VOC2010 images"),
    "synthetic": ("alignzeg.data.synthetic", "generate the embedded synthetic zero-shot benchmark"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name, (module_name, help_) in CONVERTERS.items():
        if name == "synthetic":
            # Parsed later by the generator's own parser, so its module loads only when chosen.
            p = sub.add_parser(name, help=help_, add_help=False, prefix_chars="\0")
            p.add_argument("rest", nargs=argparse.REMAINDER)
            continue
        p = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(module_name).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    module_name = CONVERTERS[args.dataset][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise SystemExit(f"alignzeg prepare {args.dataset}: module {module_name} is not available") from err
        raise
    if args.dataset == "synthetic":
        parser = argparse.ArgumentParser(prog="alignzeg prepare synthetic", description=CONVERTERS["synthetic"][1])
        module.add_arguments(parser)
        args = parser.parse_args(args.rest)
    from alignzeg.data.prepare.common import PrepareError

    try:
        return int(module.run(args) or 0)
    except PrepareError as err:   # a problem with the user's input: a message, not a traceback
        raise SystemExit(f"alignzeg prepare {args.dataset}: error: {err}") from err
