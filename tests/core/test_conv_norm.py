"""Rules 5-8: depthwise and grouped convs, BatchNorm/SyncBatchNorm/FrozenBN, GroupNorm."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import analyze, input_forward


class InvertedResidual(nn.Module):
    """MobileNetV2: stem -> [expand 1x1 -> depthwise 3x3 -> project 1x1] + identity -> head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.expand = nn.Conv2d(8, 24, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(24)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False)
        self.dw_bn = nn.BatchNorm2d(24)
        self.project = nn.Conv2d(24, 8, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu6(self.stem_bn(self.stem(x)))
        h = F.relu6(self.expand_bn(self.expand(x)))
        h = F.relu6(self.dw_bn(self.dw(h)))
        x = x + self.project_bn(self.project(h))
        return self.head(x)


def test_depthwise_joins_producer_atom(check_exact, unit_of):
    g = analyze(InvertedResidual(), input_forward(torch.randn(1, 3, 8, 8)))
    e = g.out_atoms['expand']
    assert (e >= 0).all() and len(set(e.tolist())) == 24
    np.testing.assert_array_equal(g.in_atoms['dw'], e)
    np.testing.assert_array_equal(g.out_atoms['dw'], e)
    np.testing.assert_array_equal(g.out_atoms['dw_bn'], e)
    np.testing.assert_array_equal(g.in_atoms['project'], e)
    assert (g.atom_channels()[e] == 1).all()
    u = unit_of(g, 'expand')
    assert len(u) == 1 and {'expand', 'dw', 'project'} <= set(u[0].layers)
    assert unit_of(g, 'dw') == u
    np.testing.assert_array_equal(g.out_atoms['project'], g.out_atoms['stem'])
    np.testing.assert_array_equal(g.in_atoms['head'], g.out_atoms['stem'])
    out = check_exact(InvertedResidual(), torch.randn(1, 3, 8, 8))
    slim, alive = out['slim'], out['alive']
    kept = int(alive[e].sum())
    assert slim.dw.groups == slim.dw.in_channels == slim.dw.out_channels == kept < 24
    assert slim.dw.weight.shape == (kept, 1, 3, 3)
    assert slim.expand.out_channels == slim.project.in_channels == kept


class ResNeXtBlock(nn.Module):
    """conv1 1x1 -> grouped 3x3 (groups=4) -> conv3 1x1, identity shortcut."""

    def __init__(self, gout=16):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(12)
        self.conv1 = nn.Conv2d(12, 16, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.gconv = nn.Conv2d(16, gout, 3, padding=1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(gout)
        self.conv3 = nn.Conv2d(gout, 12, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(12)
        self.head = nn.Conv2d(12, 3, 1)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.gconv(h)))
        x = F.relu(x + self.bn3(self.conv3(h)))
        return self.head(x)


@pytest.mark.parametrize('gout', [16, 32])
def test_group_conv_atoms_are_whole_groups(check_exact, gout):
    g = analyze(ResNeXtBlock(gout), input_forward(torch.randn(1, 3, 8, 8)))
    gi, go = g.in_atoms['gconv'], g.out_atoms['gconv']
    assert (gi >= 0).all() and (go >= 0).all()
    ig, og = 16 // 4, gout // 4
    groups_in = [set(gi[k * ig:(k + 1) * ig].tolist()) for k in range(4)]
    groups_out = [set(go[k * og:(k + 1) * og].tolist()) for k in range(4)]
    for k in range(4):
        assert len(groups_in[k]) == 1, 'one atom per group'
        assert groups_in[k] == groups_out[k], 'a group couples its inputs and outputs'
    assert len(set().union(*groups_in)) == 4
    atoms = np.array(sorted(set().union(*groups_in)))
    np.testing.assert_array_equal(g.atom_channels()[atoms], np.full(4, ig))
    np.testing.assert_array_equal(g.out_atoms['conv1'], gi)
    np.testing.assert_array_equal(g.in_atoms['conv3'], go)
    out = check_exact(ResNeXtBlock(gout), torch.randn(1, 3, 8, 8))
    slim, alive = out['slim'], out['alive']
    kept = int(alive[atoms].sum())
    assert 0 < kept < 4
    assert slim.gconv.groups == kept
    assert slim.gconv.in_channels == kept * ig and slim.gconv.out_channels == kept * og
    assert slim.gconv.weight.shape == (kept * og, ig, 3, 3)
    assert slim.conv1.out_channels == kept * ig and slim.conv3.in_channels == kept * og


class ConvNorm(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.norm1 = norm(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.norm2 = norm(6)
        self.conv3 = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        return self.conv3(x)


def _check_norm_model(model, check_exact):
    g = analyze(model, input_forward(torch.randn(1, 3, 8, 8)))
    np.testing.assert_array_equal(g.out_atoms['norm1'], g.out_atoms['conv1'])
    np.testing.assert_array_equal(g.out_atoms['norm2'], g.out_atoms['conv2'])
    assert (g.out_atoms['norm1'] >= 0).all() and (g.out_atoms['norm2'] >= 0).all()
    assert g.num_atoms == 14
    out = check_exact(model, torch.randn(1, 3, 8, 8))
    slim, alive = out['slim'], out['alive']
    k1 = int(alive[g.out_atoms['conv1']].sum())
    assert k1 < 8
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
        assert getattr(slim.norm1, name).shape == (k1,), name
    return slim, k1


def test_batchnorm_sliced_with_conv(check_exact):
    slim, k1 = _check_norm_model(ConvNorm(nn.BatchNorm2d), check_exact)
    assert slim.norm1.num_features == k1


def test_syncbatchnorm_eval_cpu(check_exact):
    model = ConvNorm(nn.SyncBatchNorm).eval()
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, 8, 8))
    except Exception as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f'SyncBatchNorm cannot run on CPU here: {exc}')
    slim, k1 = _check_norm_model(model, check_exact)
    assert isinstance(slim.norm1, nn.SyncBatchNorm) and slim.norm1.num_features == k1


def test_frozen_batchnorm_sliced_with_conv(check_exact):
    torchvision = pytest.importorskip('torchvision')
    from torchvision.ops import FrozenBatchNorm2d
    slim, k1 = _check_norm_model(ConvNorm(FrozenBatchNorm2d), check_exact)
    assert isinstance(slim.norm1, torchvision.ops.FrozenBatchNorm2d)


class LinearBN1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.bn = nn.BatchNorm1d(10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


def test_batchnorm1d_after_linear(check_exact):
    g = analyze(LinearBN1d(), input_forward(torch.randn(1, 6)))
    np.testing.assert_array_equal(g.out_atoms['bn'], g.out_atoms['fc1'])
    np.testing.assert_array_equal(g.in_atoms['fc2'], g.out_atoms['fc1'])
    assert (g.out_atoms['fc1'] >= 0).all()
    out = check_exact(LinearBN1d(), torch.randn(1, 6))
    assert out['slim'].bn.num_features == out['slim'].fc1.out_features < 10


class ConvGN(nn.Module):
    def __init__(self, groups=4, channels=16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.gn = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, 8, 3, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(2, 8)
        self.conv3 = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = F.relu(self.gn(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        return self.conv3(x)


def test_groupnorm_whole_groups(check_exact):
    g = analyze(ConvGN(), input_forward(torch.randn(1, 3, 8, 8)))
    o = g.out_atoms['conv1']
    assert (o >= 0).all()
    np.testing.assert_array_equal(g.out_atoms['gn'], o)
    for k in range(4):
        assert len(set(o[4 * k:4 * k + 4].tolist())) == 1, 'a GN group is one atom'
    assert len(set(o.tolist())) == 4
    np.testing.assert_array_equal(g.atom_channels()[np.unique(o)], np.full(4, 4))
    o2 = g.out_atoms['conv2']
    assert len(set(o2.tolist())) == 2
    np.testing.assert_array_equal(g.atom_channels()[np.unique(o2)], np.full(2, 4))
    assert g.num_atoms == 6
    out = check_exact(ConvGN(), torch.randn(1, 3, 8, 8), ratio=0.5)
    slim, alive = out['slim'], out['alive']
    kept = int(alive[np.unique(o)].sum())
    assert slim.gn.num_groups == kept == 2
    assert slim.gn.num_channels == slim.conv1.out_channels == 4 * kept
    assert slim.gn.weight.shape == (4 * kept,)
    assert slim.gn2.num_groups == 1 and slim.conv3.in_channels == 4


def test_groupnorm_exact_many_seeds(check_exact):
    # GN renormalises over a group: exactness only holds when whole groups go; try several random masks
    for seed in range(4):
        check_exact(ConvGN(8, 16), torch.randn(1, 3, 6, 6), ratio=0.4, seed=seed)


class GNOverConcat(nn.Module):
    """A GN group straddling two concatenated producers couples channels of both into one atom."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 10, 1)
        self.gn = nn.GroupNorm(4, 16)
        self.c = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        return self.c(F.relu(self.gn(torch.cat([self.a(x), self.b(x)], 1))))


def test_groupnorm_group_across_concat(check_exact):
    g = analyze(GNOverConcat(), input_forward(torch.randn(1, 3, 8, 8)))
    gn = g.out_atoms['gn']
    assert (gn >= 0).all() and len(set(gn.tolist())) == 4
    np.testing.assert_array_equal(gn, np.concatenate([g.out_atoms['a'], g.out_atoms['b']]))
    assert g.out_atoms['a'][5] == g.out_atoms['b'][0] == g.out_atoms['b'][1]
    for seed in range(3):
        out = check_exact(GNOverConcat(), torch.randn(1, 3, 8, 8), ratio=0.5, seed=seed)
        kept = int(out['alive'][np.unique(gn)].sum())
        assert 0 < kept < 4 and out['slim'].gn.num_groups == kept
