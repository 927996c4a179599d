"""Shared fixtures of the baseline tests: one tiny CLIP (random weights) per test session."""
import pytest
import torch


@pytest.fixture(scope="session")
def tiny_clip():
    from alignzeg.clip.model import TINY_CLIP_CONFIG, build_clip

    torch.manual_seed(0)
    return build_clip(dict(TINY_CLIP_CONFIG))


@pytest.fixture()
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 64, 64, generator=g)
