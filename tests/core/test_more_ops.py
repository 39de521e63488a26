"""More op coverage: in-place ops, channels-last Linear blocks, LayerNorm, ConvTranspose, Conv1d, batch-dim cat,
per-channel buffers/constants, channel padding, determinism, iterated pruning."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import analyze, compare_masked_slimmed, input_forward, random_alive


class InplaceBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.relu(self.bn(self.stem(x)))
        y = self.c1(x)
        y += x
        y.mul_(0.5)
        F.relu_(y)
        y.clamp_(max=4.0)
        return self.c2(y)


def test_inplace_ops(check_exact):
    g = analyze(InplaceBlock(), input_forward(torch.randn(1, 3, 8, 8)))
    np.testing.assert_array_equal(g.out_atoms['c1'], g.out_atoms['stem'])
    np.testing.assert_array_equal(g.in_atoms['c2'], g.out_atoms['stem'])
    assert (g.out_atoms['stem'] >= 0).all()
    check_exact(InplaceBlock(), torch.randn(1, 3, 8, 8))


class ChannelsLastMLP(nn.Module):
    """ConvNeXt-like block: dw conv, permute to channels-last, Linear 4x expansion, GELU, Linear back, layer
    scale, permute back, residual."""

    def __init__(self, norm='bn'):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = nn.BatchNorm2d(8) if norm == 'bn' else nn.LayerNorm(8)
        self.use_ln = norm == 'ln'
        self.pw1 = nn.Linear(8, 32)
        self.pw2 = nn.Linear(32, 8)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x)
        if not self.use_ln:
            y = self.norm(y)
        y = y.permute(0, 2, 3, 1)
        if self.use_ln:
            y = self.norm(y)
        y = self.pw2(F.gelu(self.pw1(y))) * self.gamma
        x = x + y.permute(0, 3, 1, 2)
        return self.head(x)


def test_channels_last_linear_block(check_exact):
    g = analyze(ChannelsLastMLP('bn'), input_forward(torch.randn(1, 3, 8, 8)))
    h = g.out_atoms['pw1']
    assert (h >= 0).all() and len(set(h.tolist())) == 32
    np.testing.assert_array_equal(g.in_atoms['pw2'], h)
    s = g.out_atoms['stem']
    np.testing.assert_array_equal(g.out_atoms['pw2'], s)
    np.testing.assert_array_equal(g.in_atoms['pw1'], s)
    assert 'gamma' in g.param_atoms and g.param_atoms['gamma'][0] == 0
    np.testing.assert_array_equal(g.param_atoms['gamma'][1], s)
    out = check_exact(ChannelsLastMLP('bn'), torch.randn(1, 3, 8, 8))
    assert out['slim'].pw1.out_features < 32 and out['slim'].gamma.numel() == out['slim'].stem.out_channels < 8


def test_layernorm_over_channels_prunable(check_exact):
    """Issue 11: a LayerNorm over the channels computes its statistics over the alive channels while some are
    masked, so the stream it normalises is one prunable unit (it made them unprunable before)."""
    g = analyze(ChannelsLastMLP('ln'), input_forward(torch.randn(1, 3, 8, 8)))
    assert 'stem' not in g.unprunable, g.unprunable
    assert (g.out_atoms['pw1'] >= 0).all(), 'the MLP hidden channels are still prunable'
    np.testing.assert_array_equal(g.out_atoms['norm'], g.out_atoms['stem'])
    out = check_exact(ChannelsLastMLP('ln'), torch.randn(1, 3, 8, 8))
    assert out['slim'].norm.normalized_shape[0] == out['slim'].stem.out_channels < 8


def test_layernorm_positions_documented():
    """ChannelGraph documents ``out_atoms`` as norm layer -> (C_out,): one entry per channel position."""
    g = analyze(ChannelsLastMLP('ln'), input_forward(torch.randn(1, 3, 8, 8)))
    assert g.out_atoms['norm'].shape == (8,), g.out_atoms['norm']
    assert (g.out_atoms['norm'] >= 0).all()


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.bn = nn.BatchNorm2d(6)
        self.skip = nn.Conv2d(3, 6, 1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.out(F.relu(self.bn(self.up(F.relu(self.enc(x)))) + self.skip(x)))


def test_conv_transpose(check_exact):
    g = analyze(Decoder(), input_forward(torch.randn(1, 3, 8, 8)))
    np.testing.assert_array_equal(g.in_atoms['up'], g.out_atoms['enc'])
    np.testing.assert_array_equal(g.out_atoms['up'], g.out_atoms['skip'])
    assert (g.out_atoms['up'] >= 0).all() and (g.out_atoms['enc'] >= 0).all()
    out = check_exact(Decoder(), torch.randn(1, 3, 8, 8))
    assert out['slim'].up.in_channels < 8 and out['slim'].up.out_channels < 6
    assert out['slim'].up.weight.shape[:2] == (out['slim'].up.in_channels, out['slim'].up.out_channels)


class Seq1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.c3 = nn.Conv1d(8, 3, 1)

    def forward(self, x):
        return self.c3(F.relu(self.c2(F.relu(self.bn(self.c1(x))))))


def test_conv1d(check_exact):
    g = analyze(Seq1d(), input_forward(torch.randn(1, 4, 16)))
    assert (g.out_atoms['c1'] >= 0).all()
    assert len(set(g.out_atoms['c1'].tolist())) == 2  # groups=2 reader: whole groups
    check_exact(Seq1d(), torch.randn(1, 4, 16), ratio=0.5)


class BatchCat(nn.Module):
    """Two images' features concatenated along the batch dim and read by one conv (a shared reader)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.c(F.relu(torch.cat([self.a(x), self.b(x)], 0)))
        n = x.shape[0]
        return y[:n] + y[n:]


def test_cat_along_batch_couples_channels(check_exact):
    g = analyze(BatchCat(), input_forward(torch.randn(1, 3, 8, 8)))
    np.testing.assert_array_equal(g.out_atoms['a'], g.out_atoms['b'])
    assert (g.out_atoms['a'] >= 0).all()
    check_exact(BatchCat(), torch.randn(1, 3, 8, 8))


class BufferNorm(nn.Module):
    """Per-channel buffers/parameters used directly in elementwise ops are sliced with their channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.register_buffer('mean', torch.randn(1, 8, 1, 1))
        self.std = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(F.relu((self.conv(x) - self.mean) / self.std))


def test_per_channel_buffers_sliced(check_exact):
    g = analyze(BufferNorm(), input_forward(torch.randn(1, 3, 8, 8)))
    assert set(g.param_atoms) == {'mean', 'std'}
    for name in ('mean', 'std'):
        dim, atoms = g.param_atoms[name]
        assert dim == 1
        np.testing.assert_array_equal(atoms, g.out_atoms['conv'])
    out = check_exact(BufferNorm(), torch.randn(1, 3, 8, 8))
    k = out['slim'].conv.out_channels
    assert out['slim'].mean.shape == (1, k, 1, 1) and out['slim'].std.shape == (1, k, 1, 1)


class ForwardConstant(nn.Module):
    """A per-channel tensor built in forward (not a parameter) cannot be sliced: channels unprunable."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 5, 3, padding=1)
        self.conv = nn.Conv2d(5, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        w = torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1)
        return self.out(self.conv(x) * w)


def test_per_channel_forward_constant_unprunable(check_exact):
    g = analyze(ForwardConstant(), input_forward(torch.randn(1, 3, 8, 8)))
    assert 'conv' in g.unprunable and 'mul' in g.unprunable['conv'], g.unprunable
    assert (g.out_atoms['stem'] >= 0).all()
    check_exact(ForwardConstant(), torch.randn(1, 3, 8, 8))


class PadShortcut(nn.Module):
    """CIFAR ResNet option-A shortcut: zero-pad channels with literal counts."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = F.relu(self.conv0(x))
        short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))
        return self.head(F.relu(self.conv1(x) + short))


def test_channel_padding_unprunable():
    g = analyze(PadShortcut(), input_forward(torch.randn(1, 3, 8, 8)))
    for name in ('conv0', 'conv1'):
        assert name in g.unprunable, g.unprunable
        assert 'pad' in g.unprunable[name], g.unprunable[name]


def test_no_prunable_atoms_is_not_an_error():
    """A model with nothing to prune (num_atoms == 0): costs, channel config and slimming are no-ops."""
    from mmfisher.core import CostModel, channel_config, slim_model
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    g = analyze(model, input_forward(torch.randn(1, 3, 4, 4)))
    assert g.num_atoms == 0 and g.unprunable == {'0': 'reaches the model output'}
    alive = np.ones(0, dtype=bool)
    cm = CostModel(g)
    assert cm.totals(alive)['flops'] == pytest.approx(4 * 3 * 16)
    assert cm.deltas(alive)['flops'].shape == (0,)
    cfg = channel_config(model, g, alive)
    assert cfg['layers'] == {} and cfg['units'] == []
    slim_model(model, g, alive)
    assert model[0].out_channels == 4


def test_unread_channels_reason():
    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            self.a(x)
            return self.b(x)

    g = analyze(Dead(), input_forward(torch.randn(1, 3, 4, 4)))
    assert g.unprunable['a'] == 'never read by a layer'
    assert g.num_atoms == 0 and g.units == []


def test_deterministic_and_batch_independent():
    from torchvision.models import resnet18
    model = resnet18(weights=None, num_classes=10).eval()
    g1 = analyze(model, input_forward(torch.randn(1, 3, 32, 32)))
    g2 = analyze(model, input_forward(torch.randn(2, 3, 32, 32)), batch=2)
    assert g1.num_atoms == g2.num_atoms
    for k in g1.out_atoms:
        np.testing.assert_array_equal(g1.out_atoms[k], g2.out_atoms[k])
    for k in g1.in_atoms:
        np.testing.assert_array_equal(g1.in_atoms[k], g2.in_atoms[k])
    assert [u.name for u in g1.units] == [u.name for u in g2.units]
    assert [u.layers for u in g1.units] == [u.layers for u in g2.units]


def test_random_alive_keeps_one_atom_per_unit():
    from torchvision.models import mobilenet_v2
    g = analyze(mobilenet_v2(weights=None, num_classes=10).eval(), input_forward(torch.randn(1, 3, 32, 32)))
    for ratio in (0.0, 0.5, 1.0):
        alive = random_alive(g, ratio, seed=1)
        assert alive.shape == (g.num_atoms,)
        for u in g.units:
            assert alive[u.atoms].any()
            if ratio == 0.0:
                assert alive[u.atoms].all()
            if ratio == 1.0:
                assert alive[u.atoms].sum() == 1


def test_units_partition_atoms():
    from torchvision.models import densenet121
    g = analyze(densenet121(weights=None, num_classes=10).eval(), input_forward(torch.randn(1, 3, 32, 32)))
    seen = np.concatenate([u.atoms for u in g.units])
    assert sorted(seen.tolist()) == list(range(g.num_atoms))
    for u in g.units:
        assert u.name in u.layers and list(u.atoms) == sorted(u.atoms)
    counts = g.atom_channels()
    assert (counts >= 1).all()


def test_iterated_pruning_exact():
    """Prune, slim, trace the slimmed model again, prune and slim again: still exact."""
    from torchvision.models import resnet18
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    x2 = torch.randn(2, 3, 32, 32)
    g = analyze(model, input_forward(x))
    res = compare_masked_slimmed(model, g, input_forward(x2), random_alive(g, 0.3, 0))
    slim = res['slim']
    g2 = analyze(slim, input_forward(x))
    assert len(g2.units) == len(g.units) and g2.num_atoms < g.num_atoms
    res2 = compare_masked_slimmed(slim, g2, input_forward(x2), random_alive(g2, 0.3, 1))
    assert res2['max_abs_diff'] <= 1e-5 * res2['scale']
    assert sum(p.numel() for p in res2['slim'].parameters()) < sum(p.numel() for p in slim.parameters())


@pytest.mark.parametrize('ratio', [0.1, 0.9])
def test_extreme_ratios_exact(check_exact, ratio):
    from torchvision.models import shufflenet_v2_x0_5
    model = shufflenet_v2_x0_5(weights=None, num_classes=10)
    check_exact(model, torch.randn(1, 3, 32, 32), ratio=ratio, seed=4)


class ChannelPermute(nn.Module):
    """Data movement along channels whose index pattern is baked into the model (a roll by a literal, a fixed
    permutation buffer) does not follow pruning."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(32 if how == 'repeat' else 8, 4, 1)
        self.register_buffer('perm', torch.tensor([3, 6, 0, 7, 1, 5, 2, 4]))

    def forward(self, x):
        h = F.relu(self.a(x))
        if self.how == 'roll':
            h = torch.roll(h, 1, 1)
        elif self.how == 'getitem':
            h = h[:, self.perm]
        elif self.how == 'index_select':
            h = h.index_select(1, self.perm)
        elif self.how == 'flip':  # follows pruning: exact
            h = h.flip(1)
        elif self.how == 'repeat':  # follows pruning: exact
            h = torch.cat([h.repeat(1, 2, 1, 1), h.repeat_interleave(2, dim=1)], 1)
        return self.b(h)


@pytest.mark.parametrize('how', ['roll', 'getitem', 'index_select', 'flip', 'repeat'])
def test_channel_permutations_exact_or_unprunable(how):
    model = ChannelPermute(how)
    g = analyze(model, input_forward(torch.randn(1, 3, 4, 4)))
    if (g.out_atoms['a'] >= 0).any():
        alive = random_alive(g, 0.4, 0)
        assert not alive.all()
        res = compare_masked_slimmed(model, g, input_forward(torch.randn(2, 3, 4, 4)), alive)
        assert res['max_abs_diff'] <= 1e-5 * res['scale'], (how, res['max_abs_diff'], res['scale'])
    else:
        assert how in g.unprunable['a'] or 'roll' in g.unprunable['a'], g.unprunable


class ConvWS2d(nn.Conv2d):
    """Weight-standardised conv as in mmcv (``ConvWS2d``; ``ConvAWS2d``/``SAConv2d`` are alike): the weights are
    normalised over each output's inputs in forward, so zeroing or removing input weights changes the others."""

    def forward(self, x):
        w = self.weight
        flat = w.view(w.size(0), -1)
        w = (w - flat.mean(1).view(-1, 1, 1, 1)) / (flat.std(1).view(-1, 1, 1, 1) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class WSNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.ws = ConvWS2d(8, 6, 3, padding=1)
        self.gn = nn.GroupNorm(2, 6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(F.relu(self.gn(self.ws(F.relu(self.a(x))))))


def test_weight_standardized_conv_exact_or_unprunable():
    model = WSNet()
    g = analyze(model, input_forward(torch.randn(1, 3, 8, 8)))
    if (g.in_atoms.get('ws', np.array([-1])) >= 0).any():  # not a plain conv: it may have no rule at all
        alive = random_alive(g, 0.4, 0)
        res = compare_masked_slimmed(model, g, input_forward(torch.randn(2, 3, 8, 8)), alive)
        assert res['max_abs_diff'] <= 1e-5 * res['scale'], (res['max_abs_diff'], res['scale'])
    else:
        assert 'a' in g.unprunable


class CoordConv(nn.Module):
    """SOLO-style CoordConv: two constant coordinate channels concatenated to the features."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(10, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = F.relu(self.a(x))
        n, _, hh, ww = h.shape
        xs = torch.linspace(-1, 1, ww).view(1, 1, 1, ww).expand(n, 1, hh, ww)
        ys = torch.linspace(-1, 1, hh).view(1, 1, hh, 1).expand(n, 1, hh, ww)
        return self.c(F.relu(self.b(torch.cat([h, xs, ys], 1))))


def test_concat_with_constant_channels(check_exact):
    g = analyze(CoordConv(), input_forward(torch.randn(1, 3, 8, 8)))
    np.testing.assert_array_equal(g.in_atoms['b'][:8], g.out_atoms['a'])
    assert (g.in_atoms['b'][8:] == -1).all()
    out = check_exact(CoordConv(), torch.randn(1, 3, 8, 8))
    assert out['slim'].b.in_channels == out['slim'].a.out_channels + 2 < 10


class SetitemAssemble(nn.Module):
    """Features written into a preallocated tensor at literal channel offsets."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.a2 = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        h = F.relu(self.a(x))
        out = h.new_zeros(h.shape[0], 16, *h.shape[2:])
        out[:, :8] = h
        out[:, 8:] = self.a2(x)
        return self.b(out)


def test_setitem_at_literal_channel_offsets_exact_or_unprunable():
    model = SetitemAssemble()
    g = analyze(model, input_forward(torch.randn(1, 3, 4, 4)))
    if (g.out_atoms['a'] >= 0).any() or (g.out_atoms['a2'] >= 0).any():
        res = compare_masked_slimmed(model, g, input_forward(torch.randn(2, 3, 4, 4)), random_alive(g, 0.4, 0))
        assert res['max_abs_diff'] <= 1e-5 * res['scale']
    else:
        assert 'setitem' in g.unprunable['a'], g.unprunable
