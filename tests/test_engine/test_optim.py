"""GroupedOptimWrapperConstructor: the same updates as mmengine's default constructor, in fewer groups."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("mmengine")
from mmengine.optim import DefaultOptimWrapperConstructor  # noqa: E402
from mmengine.optim.scheduler import LinearLR, PolyLR  # noqa: E402

from alignzeg.engine.optim import GroupedOptimWrapperConstructor, merge_param_groups  # noqa: E402


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 8)
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16))
        self.norm = nn.LayerNorm(16)
        self.proj = nn.Linear(16, 16)
        self.head = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 3))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.proj(self.norm(self.backbone(self.embed(idx).mean(1)))))


CFG = dict(type="OptimWrapper",
           optimizer=dict(type="AdamW", lr=3e-3, betas=(0.9, 0.999), weight_decay=0.05, foreach=True),
           paramwise_cfg=dict(custom_keys={"backbone": dict(lr_mult=0.1), "head": dict(lr_mult=10.0),
                                           "norm": dict(decay_mult=0.0), "embed": dict(decay_mult=0.0)},
                              bias_decay_mult=0.5))


def _train(constructor_cls, steps: int = 25):
    torch.manual_seed(0)
    net = Net()
    cfg = copy.deepcopy(CFG)
    wrapper = constructor_cls(cfg, cfg.pop("paramwise_cfg"))(net)
    opt = wrapper.optimizer
    scheds = [LinearLR(opt, start_factor=0.1, by_epoch=False, begin=0, end=5),
              PolyLR(opt, eta_min=0.0, power=0.9, by_epoch=False, begin=5, end=steps)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, 7, (4, 5), generator=gen)
        target = torch.randint(0, 3, (4,), generator=gen)
        loss = nn.functional.cross_entropy(net(idx), target)
        wrapper.update_params(loss)
        for s in scheds:
            s.step()
    return net, opt


def test_grouped_constructor_gives_bit_identical_weights_in_fewer_groups():
    ref_net, ref_opt = _train(DefaultOptimWrapperConstructor)
    net, opt = _train(GroupedOptimWrapperConstructor)
    n_params = len(list(ref_net.parameters()))
    assert len(ref_opt.param_groups) == n_params  # the default: one group per parameter
    # one custom key per parameter (mmengine: the longest matching key); bias_decay_mult only where no
    # key matches. Groups: embed + norm (lr x1, decay 0: equal options, one group), backbone (x0.1),
    # proj.weight (the defaults), proj.bias (bias decay x0.5), head (x10)
    assert len(opt.param_groups) == 5
    assert len({(g["initial_lr"], g["weight_decay"]) for g in ref_opt.param_groups}) == 5
    for (name, a), b in zip(ref_net.named_parameters(), net.parameters()):
        assert torch.equal(a, b), name
    lrs = sorted(g["initial_lr"] for g in opt.param_groups)
    ref_lrs = sorted({g["initial_lr"] for g in ref_opt.param_groups})
    assert sorted(set(lrs)) == ref_lrs


def test_merge_param_groups_keeps_order_and_options():
    a, b, c = (nn.Parameter(torch.zeros(1)) for _ in range(3))
    groups = [dict(params=[a], lr=1.0, weight_decay=0.0), dict(params=[b], lr=2.0, weight_decay=0.0),
              dict(params=[c], lr=1.0, weight_decay=0.0)]
    merged = merge_param_groups(groups)
    assert [len(g["params"]) for g in merged] == [2, 1]
    assert merged[0]["params"][0] is a and merged[0]["params"][1] is c
    assert merged[0]["lr"] == 1.0 and merged[1]["lr"] == 2.0
