"""Rules 1-2: residual adds and FPN top-down adds couple their producers into one unit."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import analyze, input_forward


class TwoConvAdd(nn.Module):
    """stem -> (conv_a + bn_a) + (conv_b + bn_b) -> relu -> reader."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(6)
        self.conv_a = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(6, 8, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(8)
        self.reader = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.stem_bn(self.stem(x)))
        y = F.relu(self.bn_a(self.conv_a(h)) + self.bn_b(self.conv_b(h)))
        return self.reader(y)


class IdentityResidual(nn.Module):
    """Two basic blocks with identity shortcuts (x + f(x)): the stream's producer and every block's last conv
    share channels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.b1c1 = nn.Conv2d(8, 5, 3, padding=1, bias=False)
        self.b1n1 = nn.BatchNorm2d(5)
        self.b1c2 = nn.Conv2d(5, 8, 3, padding=1, bias=False)
        self.b1n2 = nn.BatchNorm2d(8)
        self.b2c1 = nn.Conv2d(8, 5, 1, bias=False)
        self.b2n1 = nn.BatchNorm2d(5)
        self.b2c2 = nn.Conv2d(5, 8, 1, bias=False)
        self.b2n2 = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.b1n2(self.b1c2(F.relu(self.b1n1(self.b1c1(x))))))
        x = x + self.b2n2(self.b2c2(F.relu(self.b2n1(self.b2c1(x)))))  # noqa
        x = F.relu(x)
        return self.head(x)


def test_residual_add_couples_producers(check_exact, unit_of):
    model = TwoConvAdd()
    g = analyze(model, input_forward(torch.randn(1, 3, 8, 8)))
    a, b = g.out_atoms['conv_a'], g.out_atoms['conv_b']
    assert (a >= 0).all() and len(set(a.tolist())) == 8, 'every added channel is its own atom'
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, g.out_atoms['bn_a'])
    np.testing.assert_array_equal(a, g.out_atoms['bn_b'])
    np.testing.assert_array_equal(a, g.in_atoms['reader'])
    units = unit_of(g, 'conv_a')
    assert len(units) == 1
    assert {'conv_a', 'conv_b', 'bn_a', 'bn_b', 'reader'} <= set(units[0].layers)
    assert units[0] is unit_of(g, 'conv_b')[0]
    assert sorted(units[0].atoms.tolist()) == sorted(a.tolist())
    # the stem is read by both branch convs: its own unit, disjoint from the add's
    s = g.out_atoms['stem']
    np.testing.assert_array_equal(s, g.in_atoms['conv_a'])
    np.testing.assert_array_equal(s, g.in_atoms['conv_b'])
    assert not set(s.tolist()) & set(a.tolist())
    assert g.num_atoms == 14
    assert (g.in_atoms['stem'] == -1).all(), 'image channels are not prunable'
    assert (g.out_atoms['reader'] == -1).all()
    out = check_exact(TwoConvAdd(), torch.randn(1, 3, 8, 8))
    slim = out['slim']
    assert slim.conv_a.out_channels == slim.conv_b.out_channels == slim.reader.in_channels < 8
    assert slim.bn_a.num_features == slim.bn_a.running_mean.numel() == slim.conv_a.out_channels


def test_identity_residual_stream_is_one_unit(check_exact, unit_of):
    model = IdentityResidual()
    g = analyze(model, input_forward(torch.randn(1, 3, 8, 8)))
    stream = g.out_atoms['stem']
    for name in ('bn0', 'b1c2', 'b1n2', 'b2c2', 'b2n2'):
        np.testing.assert_array_equal(g.out_atoms[name], stream)
    for name in ('b1c1', 'b2c1', 'head'):
        np.testing.assert_array_equal(g.in_atoms[name], stream)
    # inner block channels are separate units
    assert not set(g.out_atoms['b1c1'].tolist()) & set(stream.tolist())
    assert not set(g.out_atoms['b1c1'].tolist()) & set(g.out_atoms['b2c1'].tolist())
    assert len(g.units) == 3
    assert g.num_atoms == 8 + 5 + 5
    check_exact(IdentityResidual(), torch.randn(1, 3, 8, 8), seed=3)


class TinyFPN(nn.Module):
    """Backbone C3/C4/C5, 1x1 laterals, top-down nearest/bilinear upsampling + add, 3x3 output convs, then a
    reader per level so the pyramid channels are not model outputs."""

    def __init__(self, mode='nearest'):
        super().__init__()
        self.mode = mode
        self.c3 = nn.Conv2d(3, 6, 3, padding=1)
        self.c4 = nn.Conv2d(6, 10, 3, stride=2, padding=1)
        self.c5 = nn.Conv2d(10, 14, 3, stride=2, padding=1)
        self.lat3 = nn.Conv2d(6, 8, 1)
        self.lat4 = nn.Conv2d(10, 8, 1)
        self.lat5 = nn.Conv2d(14, 8, 1)
        self.fpn3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fpn4 = nn.Conv2d(8, 8, 3, padding=1)
        self.fpn5 = nn.Conv2d(8, 8, 3, padding=1)
        self.out3 = nn.Conv2d(8, 2, 1)
        self.out4 = nn.Conv2d(8, 2, 1)
        self.out5 = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        c3 = F.relu(self.c3(x))
        c4 = F.relu(self.c4(c3))
        c5 = F.relu(self.c5(c4))
        p5 = self.lat5(c5)
        if self.mode == 'nearest':
            p4 = self.lat4(c4) + F.interpolate(p5, scale_factor=2, mode='nearest')
            p3 = self.lat3(c3) + F.interpolate(p4, size=c3.shape[2:], mode='nearest')
        else:
            p4 = self.lat4(c4) + F.interpolate(p5, size=c4.shape[2:], mode='bilinear', align_corners=False)
            p3 = self.lat3(c3) + F.interpolate(p4, scale_factor=2.0, mode='bilinear', align_corners=False)
        outs = [self.fpn3(p3), self.fpn4(p4), self.fpn5(p5)]
        return [o(F.relu(f)) for o, f in zip((self.out3, self.out4, self.out5), outs)]


def _check_fpn_grouping(g, unit_of):
    lat = g.out_atoms['lat3']
    assert (lat >= 0).all() and len(set(lat.tolist())) == 8
    for name in ('lat4', 'lat5'):
        np.testing.assert_array_equal(g.out_atoms[name], lat)
    for name in ('fpn3', 'fpn4', 'fpn5'):
        np.testing.assert_array_equal(g.in_atoms[name], lat)
    units = unit_of(g, 'lat3')
    assert len(units) == 1
    assert {'lat3', 'lat4', 'lat5', 'fpn3', 'fpn4', 'fpn5'} <= set(units[0].layers)
    # the fpn output convs are independent units (each read only by its own output conv)
    f3, f4 = set(g.out_atoms['fpn3'].tolist()), set(g.out_atoms['fpn4'].tolist())
    assert not f3 & f4 and not f3 & set(lat.tolist())
    # backbone levels are independent of the pyramid
    for c in ('c3', 'c4', 'c5'):
        assert not set(g.out_atoms[c].tolist()) & set(lat.tolist())
    for o in ('out3', 'out4', 'out5'):
        assert o in g.unprunable and 'output' in g.unprunable[o]


def test_fpn_laterals_one_unit_nearest(check_exact, unit_of):
    g = analyze(TinyFPN(), input_forward(torch.randn(1, 3, 16, 16)))
    _check_fpn_grouping(g, unit_of)
    out = check_exact(TinyFPN(), torch.randn(1, 3, 16, 16))
    slim = out['slim']
    assert slim.lat3.out_channels == slim.lat5.out_channels == slim.fpn4.in_channels < 8


def test_fpn_laterals_one_unit_bilinear(check_exact, unit_of):
    g = analyze(TinyFPN('bilinear'), input_forward(torch.randn(1, 3, 16, 16)))
    _check_fpn_grouping(g, unit_of)
    check_exact(TinyFPN('bilinear'), torch.randn(1, 3, 16, 16), seed=1)
