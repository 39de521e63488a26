"""Rule 16: CostModel totals against a hand count, deltas against differences of totals."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import CostModel, analyze, input_forward


class TwoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)   # 16x16 -> 8x8
        self.conv2 = nn.Conv2d(8, 5, (3, 1), padding=(1, 0), bias=False)   # 8x8 -> 8x8

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))


@pytest.mark.parametrize('batch', [1, 3])
def test_totals_hand_count(batch):
    g = analyze(TwoConv(), input_forward(torch.randn(batch, 3, 16, 16)), batch=batch)
    cm = CostModel(g)
    alive = np.ones(g.num_atoms, dtype=bool)
    t = cm.totals(alive)
    macs = 8 * 3 * 9 * 64 + 5 * 8 * 3 * 64
    assert t['flops'] == pytest.approx(macs)
    assert t['acts'] == pytest.approx(8 * 64 + 5 * 64)
    assert t['params'] == pytest.approx(8 * 3 * 9 + 5 * 8 * 3)
    # remove 3 of conv1's channels
    alive[np.unique(g.out_atoms['conv1'])[:3]] = False
    t = cm.totals(alive)
    assert t['flops'] == pytest.approx(5 * 3 * 9 * 64 + 5 * 5 * 3 * 64)
    assert t['acts'] == pytest.approx(5 * 64 + 5 * 64)
    assert t['params'] == pytest.approx(5 * 3 * 9 + 5 * 5 * 3)


def test_totals_batch_independent():
    a = CostModel(analyze(TwoConv(), input_forward(torch.randn(1, 3, 16, 16)))).totals(np.ones(8, bool))
    g = analyze(TwoConv(), input_forward(torch.randn(4, 3, 16, 16)), batch=4)
    assert CostModel(g).totals(np.ones(g.num_atoms, bool)) == a


class Mixed(nn.Module):
    """Residual stream read and produced by the same conv (cross term), a grouped conv, a depthwise conv, a
    Linear after flatten and a conv shared over two scales."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.res = nn.Conv2d(8, 8, 3, padding=1)        # reads and produces the stream
        self.expand = nn.Conv2d(8, 12, 1)
        self.gconv = nn.Conv2d(12, 12, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.shared = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6 * 4 * 2, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        s = F.relu(self.stem(x))
        s = s + self.res(s)
        h = F.relu(self.dw(F.relu(self.gconv(F.relu(self.expand(s))))))
        a = F.adaptive_avg_pool2d(self.shared(h), 2)
        b = F.adaptive_avg_pool2d(self.shared(F.max_pool2d(h, 2)), 2)
        return self.out(F.relu(self.fc(torch.cat([a, b], 1).flatten(1))))


def _cross(g, a, spatial):
    """Hand computed cross term of removing atom ``a`` alone: layers reading and producing ``a``."""
    total = 0.0
    for name, s in spatial.items():
        rec = g.records[name]
        if rec.groups != 1:
            continue
        n_in = int((g.in_atoms[name] == a).sum())
        n_out = int((g.out_atoms[name] == a).sum())
        total += n_in * n_out * rec.kernel * s
    return total


def _spatial(g):
    out = {}
    for name, rec in g.records.items():
        if not g.rules[name].is_weighted or not rec.calls:
            continue
        s = 0.0
        for c in rec.calls:
            d = g.rules[name].out_dim(len(c.out_shape))
            s += float(np.prod(c.out_shape)) / c.out_shape[d] / g.batch
        out[name] = s
    return out


def _check_deltas(g, alive):
    cm = CostModel(g)
    base = cm.totals(alive)
    d = cm.deltas(alive)
    spatial = _spatial(g)
    for a in np.nonzero(alive)[0]:
        less = alive.copy()
        less[a] = False
        t = cm.totals(less)
        assert d['acts'][a] == pytest.approx(base['acts'] - t['acts']), a
        diff = base['flops'] - t['flops']
        cross = _cross(g, a, spatial)
        assert d['flops'][a] >= diff - 1e-6
        assert d['flops'][a] - diff == pytest.approx(cross, abs=1e-6), (a, d['flops'][a], diff, cross)


def test_deltas_match_total_differences():
    g = analyze(Mixed(), input_forward(torch.randn(1, 3, 8, 8)))
    assert g.num_atoms > 0
    stream = np.unique(g.out_atoms['stem'])
    assert (g.in_atoms['res'] >= 0).all() and set(g.out_atoms['res'].tolist()) == set(stream.tolist())
    alive = np.ones(g.num_atoms, dtype=bool)
    _check_deltas(g, alive)
    rng = np.random.default_rng(0)
    alive[rng.choice(g.num_atoms, size=g.num_atoms // 3, replace=False)] = False
    _check_deltas(g, alive)
    # the cross term really occurs for the residual stream (the conv `res` reads and produces it)
    spatial = _spatial(g)
    assert _cross(g, int(stream[0]), spatial) == pytest.approx(9 * 64)


def test_shared_conv_costs_count_every_call():
    g = analyze(Mixed(), input_forward(torch.randn(1, 3, 8, 8)))
    cm = CostModel(g)
    alive = np.ones(g.num_atoms, dtype=bool)
    layers = {name: (a_in, a_out, groups, k, s) for name, a_in, a_out, groups, k, s in cm.layers}
    assert layers['shared'][4] == pytest.approx(8 * 8 + 4 * 4)
    # hand count of the whole model
    macs = (8 * 3 * 9 * 64 + 8 * 8 * 9 * 64 + 12 * 8 * 64 + 12 * 3 * 9 * 64 + 12 * 1 * 9 * 64
            + 6 * 12 * (64 + 16) + 5 * 48 + 2 * 5)
    assert cm.totals(alive)['flops'] == pytest.approx(macs)
    acts = 8 * 64 + 8 * 64 + 12 * 64 + 12 * 64 + 12 * 64 + 6 * 80 + 5 + 2
    assert cm.totals(alive)['acts'] == pytest.approx(acts)
