"""``alignzeg prepare {voc,coco-stuff,context,folder,synthetic} ...``: build the common prepared layout.

Each converter reads an official download, validates it, and writes (atomically)::

    OUT/images/{train,val}/<id>.jpg       original images
    OUT/annotations/{train,val}/<id>.png  uint8 labels in the full label space, 255 = ignore
    OUT/split.json                        the matching shipped split (class order = label order);
                                          ``folder`` writes it from --classes and --unseen
    OUT/meta.json                         dataset, image counts, source, label mapping

``synthetic`` hands its arguments to :mod:`alignzeg.data.synthetic` (imported only when chosen).
Input problems (:class:`~alignzeg.data.prepare.common.PrepareError`, always naming the offending
path) and an ``--out`` that cannot be written (:class:`~alignzeg.utils.OutputError`: read-only folder, full
disk) end the command with that message and exit status 1; an interruption (Ctrl-C) ends it with status
130. In every case ``--out`` is left as it was and no partial output remains.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# dataset -> (module, help)
CONVERTERS: dict[str, tuple[str, str]] = {
    "voc": ("alignzeg.data.prepare.voc", "PASCAL VOC 2012 (+ SBD aug) from VOCdevkit and SBD"),
    "coco-stuff": ("alignzeg.data.prepare.coco_stuff", "COCO-Stuff 164k from images + stuffthingmaps"),
    "context": ("alignzeg.data.prepare.context", "PASCAL Context-59 from trainval.tar.gz (.mat) + VOC2010 images"),
    "folder": ("alignzeg.data.prepare.folder", "any folder of images + label PNGs + a class-name file "
               "(writes split.json from --unseen)"),
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
    dataset = args.dataset
    module_name = CONVERTERS[dataset][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise SystemExit(f"alignzeg prepare {dataset}: module {module_name} is not available") from err
        raise
    if dataset == "synthetic":   # from here on ``args`` are the generator's own (no ``dataset``)
        parser = argparse.ArgumentParser(prog="alignzeg prepare synthetic", description=CONVERTERS["synthetic"][1])
        module.add_arguments(parser)
        args = parser.parse_args(args.rest)
    from alignzeg.data.prepare.common import PrepareError
    from alignzeg.utils import OutputError

    try:
        return int(module.run(args) or 0)
    except (PrepareError, OutputError) as err:   # bad input or unwritable --out: a message, not a traceback
        raise SystemExit(f"alignzeg prepare {dataset}: error: {err}") from err
    except KeyboardInterrupt as err:
        notes = " ".join(getattr(err, "__notes__", []))
        print(f"alignzeg prepare {dataset}: interrupted" + (f"; {notes}" if notes else ""), file=sys.stderr)
        raise SystemExit(130) from err
