"""Rule 14: frozen parameters and mode/flag restoration by the tracer."""
import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import FisherTaps, analyze, input_forward


class Staged(nn.Module):
    """stem (frozen) -> stage1 (frozen) -> stage2 -> stage3 -> head, with BN everywhere."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(6)
        self.stage1 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.stage1_bn = nn.BatchNorm2d(8)
        self.stage2 = nn.Conv2d(8, 10, 3, padding=1, bias=False)
        self.stage2_bn = nn.BatchNorm2d(10)
        self.stage3 = nn.Conv2d(10, 12, 3, padding=1, bias=False)
        self.head = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.relu(self.stage1_bn(self.stage1(x)))
        x = F.relu(self.stage2_bn(self.stage2(x)))
        return self.head(F.relu(self.stage3(x)))


def _freeze(model):
    for m in (model.stem, model.stem_bn, model.stage1, model.stage1_bn):
        for p in m.parameters():
            p.requires_grad_(False)
        m.eval()  # mmdet's frozen_stages also keeps the frozen BN in eval mode
    return model


def test_frozen_atoms_not_trainable(check_exact):
    model = _freeze(Staged())
    g = analyze(model, input_forward(torch.randn(1, 3, 8, 8)))
    assert g.trainable.shape == (g.num_atoms,) and g.trainable.dtype == bool
    # the stem's channels are read by the frozen stage1, whose input carries no gradient
    stem, s1, s2, s3 = (np.unique(g.out_atoms[n]) for n in ('stem', 'stage1', 'stage2', 'stage3'))
    assert stem.size == 6 and s1.size == 8 and s2.size == 10 and s3.size == 12
    assert not g.trainable[stem].any()
    # stage1's channels are read by stage2, whose input comes from frozen layers only: no gradient either
    assert not g.trainable[s1].any()
    # stage2 has trainable weights: its output (read by stage3) carries a gradient
    assert g.trainable[s2].all() and g.trainable[s3].all()
    # frozen atoms are still in the graph (pruning them is the user's choice) and slimming stays exact
    check_exact(_freeze(Staged()), torch.randn(1, 3, 8, 8))


def test_unfrozen_all_trainable():
    g = analyze(Staged(), input_forward(torch.randn(1, 3, 8, 8)))
    assert g.trainable.all()


def test_trace_restores_modes_and_flags():
    model = _freeze(Staged())
    model.train()
    model.stem_bn.eval()
    model.stage2.eval()  # an arbitrary mix
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    state = copy.deepcopy(model.state_dict())
    analyze(model, input_forward(torch.randn(2, 3, 8, 8)))
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for k, v in model.state_dict().items():  # no BN statistics were updated by the trace
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_trace_restores_on_error():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.conv.weight.requires_grad_(False)

        def forward(self, x):
            self.conv(x)
            raise RuntimeError('boom')

    model = Boom().train()
    try:
        analyze(model, input_forward(torch.randn(1, 3, 4, 4)))
    except RuntimeError:
        pass
    assert model.training and model.conv.training
    assert model.conv.weight.requires_grad is False and model.conv.bias.requires_grad is True
    assert not model.conv._forward_hooks and not model.conv._forward_pre_hooks
    y = model.conv(torch.randn(1, 3, 4, 4))  # no stray tracer mode left active
    assert y.shape == (1, 4, 4, 4)


def test_fisher_taps_with_frozen_stages():
    model = _freeze(Staged())
    g = analyze(model, input_forward(torch.randn(1, 3, 8, 8)))
    taps = FisherTaps(model, g)
    model.eval()
    out = model(torch.randn(2, 3, 8, 8))
    out.pow(2).sum().backward()
    assert taps.accumulate()
    taps.remove()
    assert (taps.fisher[~torch.from_numpy(g.trainable)] == 0).all()
    assert (taps.fisher[torch.from_numpy(g.trainable)] > 0).any()
