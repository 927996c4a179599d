"""The one command-line interface: ``alignzeg SUBCOMMAND ...``.

Subcommands live in their own modules and are imported only when chosen, so ``alignzeg --help``
stays fast. Each module exposes ``add_arguments(parser)`` and ``run(args) -> int | None``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Order is the order shown by --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("alignzeg.data.prepare", "convert official dataset downloads (or generate the synthetic benchmark)"),
    "pretrain-clip": ("alignzeg.clip.pretrain", "pre-train the tiny CLIP on captioned synthetic scenes"),
    "convert-clip": ("alignzeg.clip.convert", "turn an OpenAI TorchScript CLIP into a safetensors state dict"),
    "text-embed": ("alignzeg.clip.text", "compute and cache class text embeddings for a vocabulary"),
    "train": ("experiments.train", "train a segmenter from a config with mmengine's Runner"),
    "test": ("experiments.test", "evaluate a checkpoint with the zero-shot metric"),
    "analyse": ("analysis.tables", "tables and figures of seen/unseen/hIoU and misalignment measures from metric JSON"),
    "report": ("analysis.report", "report.md (tables, figures, published numbers) from the analysis folder"),
    "bench": ("alignzeg.bench", "cost of every method as ratios measured in one run (inference, training, metric, text)"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<14} {help_}" for name, (_, help_) in SUBCOMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="alignzeg", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="AlignZeg and zero-shot segmentation baselines: data, CLIP, training, evaluation, analysis.",
        epilog=f"subcommands:\n{lines}\n\nRun 'alignzeg SUBCOMMAND --help' for its options.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("command", nargs="?", choices=list(SUBCOMMANDS), metavar="SUBCOMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    # Split at the first subcommand name: everything after it belongs to the subcommand.
    idx = next((i for i, a in enumerate(argv) if a in SUBCOMMANDS), None)
    head, rest = (argv, []) if idx is None else (argv[: idx + 1], argv[idx + 1:])
    ns = top.parse_args(head)
    if ns.version:
        from alignzeg import __version__

        print(__version__)
        return 0
    if ns.command is None:
        top.print_help()
        return 2
    module_name, help_ = SUBCOMMANDS[ns.command]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"alignzeg {ns.command}", description=help_)
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    result = module.run(args)
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
