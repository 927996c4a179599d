"""The frozen CLIP's switches: activation checkpointing gives the same gradients (ZegCLIP's prompts
train through CLIP) and bf16 autocast runs a training step on CPU with float32 outputs close to fp32."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("mmseg.models", reason="mmseg.models needs mmcv with ops")


def _prompted(**kw):
    from alignzeg.clip.model import TINY_CLIP_CONFIG
    from baselines.mmseg_modules import ZegCLIPPromptedBackbone

    torch.manual_seed(0)
    return ZegCLIPPromptedBackbone(clip=dict(model=dict(TINY_CLIP_CONFIG), pretrained=None), num_tokens=4,
                                   prompt_dropout=0.0, **kw)


def _loss(out):
    return sum(t.float().pow(2).mean() for t in out["layers"]) + out["dense_embed"].float().pow(2).mean() \
        + out["patch_embed"].float().pow(2).mean()


def test_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for ckpt in (False, True):
        bb = _prompted(checkpointing=ckpt)
        bb.train()
        _loss(bb(x)).backward()
        grads.append({n: p.grad.clone() for n, p in bb.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("prompt" in n for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7)


def test_bf16_autocast_runs_a_step_on_cpu_with_float32_outputs():
    x = torch.randn(2, 3, 64, 64)
    ref, low = _prompted(), _prompted(precision="bf16", checkpointing=True)
    low.load_state_dict(ref.state_dict())
    ref.train(), low.train()
    a, b = ref(x), low(x)
    assert all(t.dtype == torch.float32 for t in b["layers"]) and b["dense_embed"].dtype == torch.float32
    rel = (a["dense_embed"] - b["dense_embed"]).norm() / a["dense_embed"].norm()
    assert 0 < rel < 0.05  # bf16 has an 8-bit mantissa: close, not equal
    loss = _loss(b)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in low.parameters() if p.grad is not None)
    assert low.features.prompts.prompt_embeddings.grad.abs().sum() > 0


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match=r"precision must be one of \['bf16', 'fp16', 'fp32'\], got 'fp8'"):
        _prompted(precision="fp8")
