"""CLIP layer: building open_clip models from local checkpoints, dense visual features, text embeddings.

Kept cheap to import: submodules (and torch / open_clip) load only when one of the names below is used.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build_clip": "model", "save_clip": "model", "clip_tokenizer": "model", "read_checkpoint": "model",
    "TINY_CLIP_CONFIG": "model", "CLIP_MEAN": "model", "CLIP_STD": "model",
    "CLIPVisualFeatures": "dense",
    "TEMPLATES": "text", "TextEncoder": "text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
