"""Rules 12-13: model outputs and ops the tracer cannot map keep their channels, with reasons naming them;
``x.sum() * 0`` graph-keeping does not."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import analyze, analyze_fast, input_forward


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.feat = nn.Conv2d(8, 6, 3, padding=1)
        self.cls = nn.Conv2d(6, 4, 1)
        self.reg = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        f = F.relu(self.feat(F.relu(self.conv(x))))
        n = x.shape[0]
        cls = self.cls(f).permute(0, 2, 3, 1).reshape(n, -1, 4)  # mmdet-style flattening of predictions
        return {'cls': cls, 'reg': [self.reg(f)]}


def test_output_layers_unprunable():
    g = analyze(TwoHeads(), input_forward(torch.randn(1, 3, 8, 8)))
    for name in ('cls', 'reg'):
        assert name in g.unprunable, g.unprunable
        assert g.unprunable[name] == 'reaches the model output'
        assert (g.out_atoms[name] == -1).all()
    assert 'conv' not in g.unprunable and 'feat' not in g.unprunable
    assert (g.out_atoms['feat'] >= 0).all() and (g.out_atoms['conv'] >= 0).all()
    s = g.summary()
    assert s['channels_total'] == 8 + 6 + 4 + 2 and s['channels_prunable'] == 14
    assert s['unprunable'] == g.unprunable


class FeatureOut(nn.Module):
    """Returns an intermediate feature too: its producer must keep its channels."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        f = F.relu(self.a(x))
        h = self.b(f)
        return h, self.c(F.relu(h))


def test_intermediate_output_unprunable(check_exact):
    g = analyze(FeatureOut(), input_forward(torch.randn(1, 3, 8, 8)))
    assert g.unprunable.get('b') == 'reaches the model output'
    assert g.unprunable.get('c') == 'reaches the model output'
    assert (g.out_atoms['a'] >= 0).all()
    check_exact(FeatureOut(), torch.randn(1, 3, 8, 8))


class MatmulAttn(nn.Module):
    """Non-local style attention: matmul over the channel dim mixes channels."""

    def __init__(self):
        super().__init__()
        self.q = nn.Conv2d(3, 6, 1)
        self.k = nn.Conv2d(3, 6, 1)
        self.v = nn.Conv2d(3, 6, 1)
        self.free = nn.Conv2d(3, 6, 1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        n, _, h, w = x.shape
        q = self.q(x).flatten(2)  # (n, 6, hw)
        k = self.k(x).flatten(2)
        attn = torch.matmul(q.transpose(1, 2), k).softmax(-1)  # (n, hw, hw): sums over the channels of q, k
        v = self.v(x).flatten(2)
        y = torch.bmm(v, attn.transpose(1, 2)).view(n, -1, h, w)
        return self.out(y + self.free(x))


def test_matmul_over_channels_unprunable():
    g = analyze(MatmulAttn(), input_forward(torch.randn(1, 3, 4, 4)))
    for name in ('q', 'k'):
        assert name in g.unprunable, g.unprunable
        assert 'matmul' in g.unprunable[name], g.unprunable[name]
        assert (g.out_atoms[name] == -1).all()
    # v and free: bmm with attention over spatial positions maps channel c of v to channel c of y, but the
    # tracer cannot see that; whatever it decides, the reason must name the op it stopped at
    for name in ('v', 'free'):
        if name in g.unprunable:
            assert 'bmm' in g.unprunable[name] or 'matmul' in g.unprunable[name], g.unprunable[name]


class SpatialAttention(nn.Module):
    """CBAM spatial attention: mean and max over channels, a conv, sigmoid, multiply."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.att = nn.Conv2d(2, 1, 3, padding=1)
        self.reader = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        f = F.relu(self.conv0(x))
        s = torch.cat([f.mean(1, keepdim=True), f.amax(dim=1, keepdim=True)], 1)
        return self.reader(f * torch.sigmoid(self.att(s)))


def test_reduction_over_channels_unprunable():
    g = analyze(SpatialAttention(), input_forward(torch.randn(1, 3, 8, 8)))
    assert 'conv0' in g.unprunable, g.unprunable
    reason = g.unprunable['conv0']
    assert 'mean' in reason or 'amax' in reason, reason
    assert (g.out_atoms['conv0'] == -1).all()


class NumpyFunc(torch.autograd.Function):
    """A custom op computed outside torch (as a compiled extension would): reverses the channel order."""

    @staticmethod
    def forward(ctx, x):
        return torch.from_numpy(np.ascontiguousarray(x.detach().numpy()[:, ::-1]))

    @staticmethod
    def backward(ctx, grad):
        return grad.flip(1)


class OpaqueFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 4, 1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        f = F.relu(self.conv0(x))
        return self.conv1(f) + self.conv2(NumpyFunc.apply(f))


def test_opaque_autograd_function_unprunable():
    g = analyze(OpaqueFunction(), input_forward(torch.randn(1, 3, 8, 8)))
    # conv0's channels flow into an op the tracer cannot see into: pruning them would feed the custom op a
    # different channel count (and reverse a different set), so they must be kept
    assert 'conv0' in g.unprunable, g.unprunable
    assert any(k in g.unprunable['conv0'] for k in ('NumpyFunc', 'apply', 'numpy')), g.unprunable['conv0']
    assert (g.out_atoms['conv0'] == -1).all()


class OpaqueModule(nn.Module):
    """A parameterised module whose forward leaves torch (compiled extension stand-in)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return NumpyFunc.apply(x) * 1.0


class OpaqueModuleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.op = OpaqueModule()
        self.conv1 = nn.Conv2d(8, 4, 1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        f = self.conv0(x)
        return self.conv1(self.op(f)) + self.conv2(f)


def test_opaque_module_unprunable():
    g = analyze(OpaqueModuleNet(), input_forward(torch.randn(1, 3, 8, 8)))
    assert 'conv0' in g.unprunable, g.unprunable
    assert (g.out_atoms['conv0'] == -1).all()


class GraphKeeping(nn.Module):
    """mmdet keeps unused branches in the autograd graph with ``x.sum() * 0``."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.unused = nn.Conv2d(8, 5, 1)
        self.conv1 = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        f = F.relu(self.conv0(x))
        u = self.unused(f)
        h = F.relu(self.conv1(f))
        out = self.head(h)
        keep = h.sum() * 0 + u.sum() * 0.0 + f.mean() * 0
        return out + keep, [u.sum() * 0]


def test_sum_times_zero_keeps_channels_prunable(check_exact):
    g = analyze(GraphKeeping(), input_forward(torch.randn(1, 3, 8, 8)))
    assert 'conv0' not in g.unprunable and 'conv1' not in g.unprunable, g.unprunable
    assert (g.out_atoms['conv0'] >= 0).all() and (g.out_atoms['conv1'] >= 0).all()
    assert g.unprunable.get('head') == 'reaches the model output'
    # `unused` is read by nobody (only summed and zeroed)
    assert 'unused' in g.unprunable and 'output' not in g.unprunable['unused']
    check_exact(GraphKeeping(), torch.randn(1, 3, 8, 8))


class SumUsed(nn.Module):
    """The same sum *not* multiplied by zero really mixes channels into the output."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        f = self.conv0(x)
        return self.conv1(f) + f.sum() * 0.5


def test_sum_used_for_real_is_unprunable():
    g = analyze(SumUsed(), input_forward(torch.randn(1, 3, 8, 8)))
    assert 'conv0' in g.unprunable and 'sum' in g.unprunable['conv0'], g.unprunable


class SingleChannelGate(nn.Module):
    """A 1-channel gate computed from the input (not from the gated channels) broadcast over 8 channels."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = nn.Conv2d(3, 1, 3, padding=1)
        self.reader = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.reader(F.relu(self.conv0(x)) * torch.sigmoid(self.gate(x)))


def test_broadcast_single_channel_gate_does_not_merge_channels(check_exact):
    """Broadcasting a size-1 channel dim is no channel coupling: channel c of the product is channel c of conv0,
    and the gate's one channel is read by all of them. conv0's channels must stay separate atoms; the gate's
    channel must never be removed together with one of them."""
    g = analyze(SingleChannelGate(), input_forward(torch.randn(1, 3, 8, 8)))
    c = g.out_atoms['conv0']
    assert (c >= 0).all() and len(set(c.tolist())) == 8, f'conv0 atoms {c}'
    assert not set(g.out_atoms['gate'].tolist()) & set(c.tolist())
    check_exact(SingleChannelGate(), torch.randn(1, 3, 8, 8))


class _CachesForwardTensor(nn.Module):
    """A head that caches a tensor computed in its forward (as YOLACT's and CondInst's heads do)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.cache = {}

    def forward(self, x):
        y = self.conv1(x)
        self.last = y.mean((2, 3))  # non-leaf, requires grad
        self.cache['seen'] = [y * 2]
        return self.conv2(y)


def test_models_caching_forward_tensors_copy_slim_and_verify():
    """deepcopy refuses non-leaf tensor attributes; the meta copy, the verification copy and the export copy
    detach them instead."""
    from mmfisher.core import compare_masked_slimmed, deepcopy_module, random_alive
    from mmfisher.core.copying import non_leaf_attributes
    model = _CachesForwardTensor()
    x = torch.randn(2, 3, 8, 8)
    model(x)
    assert len(non_leaf_attributes(model)) == 2
    with pytest.raises(RuntimeError):
        import copy
        copy.deepcopy(model)
    copied = deepcopy_module(model)
    assert copied.last.is_leaf and torch.equal(copied.last, model.last.detach())
    graph = analyze_fast(model, lambda m: input_forward(x.to(next(m.parameters()).device)))
    assert graph.device == 'meta' and graph.num_atoms == 8
    res = compare_masked_slimmed(model, graph, input_forward(x), random_alive(graph, 0.5, 0))
    assert res['max_abs_diff'] <= 1e-5
