"""``alignzeg convert-clip``: OpenAI TorchScript CLIP -> safetensors state dict with its config in the metadata.

OpenAI's ``.pt`` files (e.g. ``ViT-B-16.pt``) are TorchScript archives: ``torch.load(weights_only=True)``
refuses them and ``torch.jit.load`` is slow and deprecated. This reads one once (through
:func:`alignzeg.clip.model.build_clip`, which infers the architecture from the tensor shapes as
``open_clip.model.build_model_from_openai_state_dict`` does and switches QuickGELU on), checks that every
tensor fits, and writes float32 weights plus the open_clip model config (``quick_gelu: true``) as safetensors,
so later stages run ``build_clip(None, OUT)``. A plain state dict (no TorchScript) needs ``--model``, since
head counts cannot be read from tensor shapes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["convert_clip", "add_arguments", "run"]


def convert_clip(src: str | Path, out: str | Path, *, model=None) -> dict:
    """Convert ``src`` to safetensors at ``out``; returns the model config written to the metadata."""
    from alignzeg.clip.model import build_clip, file_sha256, save_clip

    src, out = Path(src), Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out} must end in .safetensors")
    net = build_clip(model, src)
    cfg = dict(net.alignzeg_cfg)
    save_clip(net, cfg, out, extra_metadata={"source_file": src.name, "source_sha256": file_sha256(src)})
    return cfg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, help="OpenAI CLIP checkpoint (TorchScript .pt) or state dict")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--model", default=None,
                        help="architecture name or config JSON; default: inferred from the tensor shapes")


def run(args) -> int:
    cfg = convert_clip(args.src, args.out, model=args.model)
    vis, txt = cfg["vision_cfg"], cfg["text_cfg"]
    print(f"wrote {args.out}: embed_dim {cfg['embed_dim']}, vision {vis.get('layers')}x{vis.get('width')} "
          f"patch {vis.get('patch_size')} @ {vis.get('image_size')}px, text {txt['layers']}x{txt['width']}, "
          f"quick_gelu {cfg['quick_gelu']}")
    return 0
