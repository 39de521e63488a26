"""Rules 9-10: Linear after global pooling / after flatten of (C, h, w) features; squeeze-excitation."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import analyze, input_forward


class PoolFC(nn.Module):
    def __init__(self, how='flatten'):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        if self.how == 'flatten':
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        elif self.how == 'mean':
            x = x.mean((2, 3))
        else:
            x = F.adaptive_max_pool2d(x, (1, 1)).view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


def test_linear_after_global_pool(check_exact):
    for how in ('flatten', 'mean', 'view'):
        g = analyze(PoolFC(how), input_forward(torch.randn(1, 3, 8, 8)))
        c = g.out_atoms['conv']
        assert (c >= 0).all()
        np.testing.assert_array_equal(g.in_atoms['fc1'], c)
        assert (g.out_atoms['fc1'] >= 0).all()
        np.testing.assert_array_equal(g.in_atoms['fc2'], g.out_atoms['fc1'])
        assert 'fc2' in g.unprunable
        out = check_exact(PoolFC(how), torch.randn(1, 3, 8, 8))
        slim = out['slim']
        assert slim.fc1.in_features == slim.conv.out_channels < 8
        assert slim.fc2.in_features == slim.fc1.out_features < 6


class RoIHead(nn.Module):
    """Conv features pooled to (C, 3, 3), flattened to C*9 and read by shared FCs (a Faster R-CNN bbox head)."""

    def __init__(self, how='flatten'):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 9, 10)
        self.fc2 = nn.Linear(10, 10)
        self.cls = nn.Linear(10, 3)

    def forward(self, x):
        f = F.relu(self.conv(x))
        f = F.adaptive_max_pool2d(f, 3)
        f = f.flatten(1) if self.how == 'flatten' else f.view(f.size(0), -1)
        f = F.relu(self.fc2(F.relu(self.fc1(f))))
        return self.cls(f)


def test_linear_after_flatten_roi_fc(check_exact):
    for how in ('flatten', 'view'):
        g = analyze(RoIHead(how), input_forward(torch.randn(1, 3, 9, 9)))
        c = g.out_atoms['conv']
        assert (c >= 0).all() and len(set(c.tolist())) == 4
        # position c*h*w + i of fc1's input belongs to channel c
        np.testing.assert_array_equal(g.in_atoms['fc1'], np.repeat(c, 9))
        out = check_exact(RoIHead(how), torch.randn(1, 3, 9, 9), seed=1)
        slim, alive = out['slim'], out['alive']
        k = int(alive[c].sum())
        assert 0 < k < 4
        assert slim.fc1.in_features == 9 * k and slim.fc1.weight.shape[1] == 9 * k
        assert slim.fc2.in_features < 10


class SEBlock(nn.Module):
    """conv0 -> SE (avgpool -> reduce conv -> relu -> expand conv -> sigmoid) -> multiply -> reader."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.se_reduce = nn.Conv2d(8, 3, 1)
        self.se_expand = nn.Conv2d(3, 8, 1)
        self.reader = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu(self.bn0(self.conv0(x)))
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(s))))
        return self.reader(x * s)


def test_se_block_couples_gate_with_gated(check_exact, unit_of):
    g = analyze(SEBlock(), input_forward(torch.randn(1, 3, 8, 8)))
    c = g.out_atoms['conv0']
    assert (c >= 0).all() and len(set(c.tolist())) == 8
    np.testing.assert_array_equal(g.out_atoms['se_expand'], c)
    np.testing.assert_array_equal(g.in_atoms['se_reduce'], c)
    np.testing.assert_array_equal(g.in_atoms['reader'], c)
    r = g.out_atoms['se_reduce']
    assert (r >= 0).all() and not set(r.tolist()) & set(c.tolist())
    np.testing.assert_array_equal(g.in_atoms['se_expand'], r)
    u = unit_of(g, 'conv0')
    assert len(u) == 1 and {'conv0', 'bn0', 'se_reduce', 'se_expand', 'reader'} <= set(u[0].layers)
    assert g.num_atoms == 11
    out = check_exact(SEBlock(), torch.randn(1, 3, 8, 8), ratio=0.4, seed=2)
    slim = out['slim']
    assert slim.se_expand.out_channels == slim.conv0.out_channels == slim.reader.in_channels < 8
    assert slim.se_reduce.out_channels == slim.se_expand.in_channels < 3
