"""Rules 3-4: concat keeps each input's unit at its channel offset; equal split/chunk and channel shuffle stay
exact; literal channel slices make channels unprunable."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import analyze, input_forward


class DenseLike(nn.Module):
    """DenseNet-style: every layer reads BN-ReLU of the concat of all previous features."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(6)
        self.conv1 = nn.Conv2d(6, 4, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(10)
        self.conv2 = nn.Conv2d(10, 4, 3, padding=1, bias=False)
        self.norm3 = nn.BatchNorm2d(14)
        self.trans = nn.Conv2d(14, 5, 1, bias=False)
        self.head = nn.Conv2d(5, 3, 1)

    def forward(self, x):
        x0 = self.conv0(x)
        y1 = self.conv1(F.relu(self.norm1(x0)))
        y2 = self.conv2(F.relu(self.norm2(torch.cat([x0, y1], 1))))
        z = self.trans(F.relu(self.norm3(torch.cat([x0, y1, y2], dim=1))))
        return self.head(F.avg_pool2d(F.relu(z), 2))


def test_dense_concat_offsets(check_exact, unit_of):
    g = analyze(DenseLike(), input_forward(torch.randn(1, 3, 8, 8)))
    o0, o1, o2 = g.out_atoms['conv0'], g.out_atoms['conv1'], g.out_atoms['conv2']
    for o in (o0, o1, o2):
        assert (o >= 0).all()
    assert len({*o0.tolist(), *o1.tolist(), *o2.tolist()}) == 14, 'each concat input keeps its own atoms'
    np.testing.assert_array_equal(g.in_atoms['conv1'], o0)
    np.testing.assert_array_equal(g.in_atoms['conv2'], np.concatenate([o0, o1]))
    np.testing.assert_array_equal(g.in_atoms['trans'], np.concatenate([o0, o1, o2]))
    np.testing.assert_array_equal(g.out_atoms['norm2'], np.concatenate([o0, o1]))
    np.testing.assert_array_equal(g.out_atoms['norm3'], np.concatenate([o0, o1, o2]))
    u0, u1, u2 = unit_of(g, 'conv0'), unit_of(g, 'conv1'), unit_of(g, 'conv2')
    assert len(u0) == len(u1) == len(u2) == 1
    assert u0[0] is not u1[0] and u1[0] is not u2[0] and u0[0] is not u2[0]
    assert {'conv0', 'norm1', 'conv1', 'norm2', 'conv2', 'norm3', 'trans'} <= set(u0[0].layers)
    assert 'conv1' not in u1[0].layers or u1[0].name == 'conv1'
    out = check_exact(DenseLike(), torch.randn(1, 3, 8, 8))
    slim, alive = out['slim'], out['alive']
    assert slim.trans.in_channels == int(alive[np.concatenate([o0, o1, o2])].sum()) < 14
    assert slim.norm3.num_features == slim.trans.in_channels


class CSPLike(nn.Module):
    """CSP block: two 1x1 branches from one stem, a residual bottleneck on one, concat, fuse conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(12)
        self.main = nn.Conv2d(12, 6, 1, bias=False)
        self.main_bn = nn.BatchNorm2d(6)
        self.short = nn.Conv2d(12, 5, 1, bias=False)
        self.short_bn = nn.BatchNorm2d(5)
        self.blk1 = nn.Conv2d(6, 4, 1, bias=False)
        self.blk1_bn = nn.BatchNorm2d(4)
        self.blk2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.blk2_bn = nn.BatchNorm2d(6)
        self.fuse = nn.Conv2d(11, 9, 1, bias=False)
        self.fuse_bn = nn.BatchNorm2d(9)
        self.head = nn.Conv2d(9, 2, 1)

    def forward(self, x):
        x = F.silu(self.stem_bn(self.stem(x)))
        m = F.silu(self.main_bn(self.main(x)))
        m = m + F.silu(self.blk2_bn(self.blk2(F.silu(self.blk1_bn(self.blk1(m))))))
        s = F.silu(self.short_bn(self.short(x)))
        y = F.silu(self.fuse_bn(self.fuse(torch.cat((m, s), dim=1))))
        return self.head(y)


def test_csp_concat_offsets(check_exact, unit_of):
    g = analyze(CSPLike(), input_forward(torch.randn(1, 3, 8, 8)))
    m, s = g.out_atoms['main'], g.out_atoms['short']
    assert (m >= 0).all() and (s >= 0).all()
    np.testing.assert_array_equal(g.out_atoms['blk2'], m)
    np.testing.assert_array_equal(g.in_atoms['fuse'][:6], m)
    np.testing.assert_array_equal(g.in_atoms['fuse'][6:], s)
    assert not set(m.tolist()) & set(s.tolist())
    assert unit_of(g, 'main')[0] is not unit_of(g, 'short')[0]
    assert len(unit_of(g, 'main')) == 1 and len(unit_of(g, 'short')) == 1
    np.testing.assert_array_equal(g.in_atoms['main'], g.out_atoms['stem'])
    np.testing.assert_array_equal(g.in_atoms['short'], g.out_atoms['stem'])
    out = check_exact(CSPLike(), torch.randn(1, 3, 8, 8), seed=2)
    assert out['slim'].fuse.in_channels < 11


def channel_shuffle(x, groups):
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


class ShuffleBlock(nn.Module):
    """ShuffleNetV2 stride-1 unit twice: chunk into halves, branch on one half, concat, channel shuffle."""

    def __init__(self, split='chunk'):
        super().__init__()
        self.split = split
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.units = nn.ModuleList()
        for _ in range(2):
            self.units.append(nn.Sequential(
                nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8),
                nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()))
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        for branch in self.units:
            if self.split == 'chunk':
                x1, x2 = x.chunk(2, dim=1)
            elif self.split == 'split':
                x1, x2 = torch.split(x, x.shape[1] // 2, dim=1)
            else:  # literal sizes, as in mmyolo's C2f: x.split((self.mid, self.mid), 1)
                x1, x2 = x.split((8, 8), 1)
            x = channel_shuffle(torch.cat((x1, branch(x2)), dim=1), 2)
        return self.head(x)


def test_chunk_and_channel_shuffle_exact(check_exact):
    for split in ('chunk', 'split'):
        g = analyze(ShuffleBlock(split), input_forward(torch.randn(1, 3, 8, 8)))
        assert not g.unprunable.keys() - {'head'}, g.unprunable
        stem = g.out_atoms['stem']
        assert (stem >= 0).all()
        # equal halves stay aligned: position i of each half is one atom
        np.testing.assert_array_equal(stem[:8], stem[8:])
        np.testing.assert_array_equal(g.in_atoms['units.0.0'], stem[8:])
        assert g.num_atoms > 0
        out = check_exact(ShuffleBlock(split), torch.randn(1, 3, 8, 8), ratio=0.4, seed=5)
        slim = out['slim']
        assert slim.stem.out_channels < 16 and slim.stem.out_channels % 2 == 0
        assert slim.head.in_channels < 16


class SliceReader(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(5, 4, 1)
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.conv3 = nn.Conv2d(8, 6, 1)
        self.conv4 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        h = F.relu(self.conv0(x))
        k = F.relu(self.conv3(x.new_zeros(1) + h))
        return self.conv1(h[:, :5]) + self.conv2(h) + self.conv4(k[:, :, 1:, :-1]).mean((2, 3), keepdim=True)


def test_literal_equal_split_sizes_keep_their_channels(check_exact):
    """``x.split((8, 8), 1)`` bakes the channel count into the model: a slimmed model would still split at 8, so
    every channel that reaches the split is kept (the stem's, and each branch output that the shuffle sends into the
    next split or the head); the branches' inner channels stay prunable, and pruning them is exact."""
    g = analyze(ShuffleBlock('literal'), input_forward(torch.randn(1, 3, 8, 8)))
    assert set(g.unprunable) == {'stem', 'units.0.5', 'units.1.5', 'head'}, g.unprunable
    for layer in ('stem', 'units.0.5', 'units.1.5'):
        assert 'split' in g.unprunable[layer] and 'literal' in g.unprunable[layer], g.unprunable
    for layer in ('stem', 'stem_bn', 'units.0.5', 'units.0.6', 'units.1.5', 'units.1.6'):
        assert (g.out_atoms[layer] == -1).all(), layer
    inner = [g.out_atoms[f'units.{i}.{j}'] for i in (0, 1) for j in (0, 1, 3, 4)]
    assert all((a >= 0).all() for a in inner)
    assert g.num_atoms == 16  # the 8 inner channels of each branch, nothing else
    out = check_exact(ShuffleBlock('literal'), torch.randn(1, 3, 8, 8), ratio=0.4, seed=5)
    slim = out['slim']
    assert slim.stem.out_channels == 16 and slim.head.in_channels == 16  # the split still gets (8, 8)
    assert all(slim.units[i][0].out_channels < 8 for i in (0, 1))


def test_literal_channel_slice_unprunable(check_exact):
    g = analyze(SliceReader(), input_forward(torch.randn(1, 3, 8, 8)))
    assert 'conv0' in g.unprunable
    assert 'getitem' in g.unprunable['conv0'], g.unprunable['conv0']
    assert (g.out_atoms['conv0'] == -1).all()
    assert (g.in_atoms['conv1'] == -1).all() and (g.in_atoms['conv2'] == -1).all()
    # a spatial crop is no channel selection: conv3's channels stay prunable
    assert 'conv3' not in g.unprunable
    assert (g.out_atoms['conv3'] >= 0).all()
    np.testing.assert_array_equal(g.in_atoms['conv4'], g.out_atoms['conv3'])
    check_exact(SliceReader(), torch.randn(1, 3, 8, 8))


class NarrowReader(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.conv0(x)
        a, b = torch.split(h, [3, 5], dim=1)
        return self.conv1(a) + self.conv2(h)


def test_unequal_split_unprunable():
    g = analyze(NarrowReader(), input_forward(torch.randn(1, 3, 8, 8)))
    assert 'conv0' in g.unprunable and 'split' in g.unprunable['conv0'], g.unprunable
