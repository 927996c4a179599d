"""Tiny CLIP checkpoints on disk in the real formats: OpenAI TorchScript, open_clip state dict, safetensors."""
from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# OpenAI layout conventions: head width 64 in both towers (the text heads are inferred as width // 64).
OPENAI_TINY_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 3},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Give every tensor non-trivial values (open_clip leaves some zero / one at init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            scale = 0.02 if p.ndim > 1 else 0.1
            base = 1.0 if ("ln" in name and name.endswith("weight")) else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="session")
def openai_tiny(tmp_path_factory):
    """(path of an OpenAI-style TorchScript archive, fp32 reference model holding the same fp16-rounded weights).

    Built like OpenAI's release files: an open_clip CLIP with QuickGELU (whose key names are OpenAI's),
    the input_resolution entry OpenAI keeps, linear / attention / projection weights in float16
    (``open_clip.convert_weights_to_lp``), traced with ``torch.jit.trace_module`` and saved with ``torch.jit.save``.
    """
    import open_clip

    from alignzeg.clip.model import build_clip

    torch.manual_seed(0)
    model = build_clip(OPENAI_TINY_CFG)
    _randomise(model, 0)
    half = copy.deepcopy(model)
    open_clip.convert_weights_to_lp(half, dtype=torch.float16)
    half_keys = {k for k, v in half.state_dict().items() if v.dtype == torch.float16}
    reference = half.float().eval()

    model.register_buffer("input_resolution", torch.tensor(64))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(
            model, {"encode_image": (torch.zeros(1, 3, 64, 64),),
                    "encode_text": (torch.zeros(1, 16, dtype=torch.long),)}, check_trace=False)
        for name, p in traced.named_parameters():
            if name in half_keys:
                p.data = p.data.half()
        path = tmp_path_factory.mktemp("openai") / "ViT-T-8.pt"
        torch.jit.save(traced, str(path))
    return path, reference


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny open_clip CLIP (TINY_CLIP_CONFIG) with randomised weights, fp32, eval."""
    from alignzeg.clip.model import TINY_CLIP_CONFIG, build_clip

    model = build_clip(TINY_CLIP_CONFIG)
    _randomise(model, 1)
    return model.eval()


@pytest.fixture()
def images():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(2, 3, 64, 64, generator=gen)
