"""Crash -> degrade (issue 11 item 7): a construct the engine does not understand keeps only the affected channels,
with a reason; it never crashes the trace or slimming. And a new layer type is one rule (issue 8 item 5)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import LayerRule, analyze, find_rule, input_forward, register_rule
from mmfisher.core import layers as core_layers
from mmfisher.core.layers import Role
from mmfisher.core.trace import dispatch


class WhereIndices(nn.Module):
    """A torchvision-detector-like eval path: scores -> ``torch.where(mask)`` (one argument: the indices of the
    true elements) -> the selected scores."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.cls = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        scores = self.cls(F.relu(self.stem(x))).sigmoid()
        keep = torch.where(scores > 0.5)
        return scores[keep], scores.flatten(1)


def test_one_argument_where_is_a_data_dependent_selection(check_exact):
    g = analyze(WhereIndices(), input_forward(torch.randn(1, 3, 6, 6)))  # raised a numpy broadcast error
    assert (g.out_atoms['stem'] >= 0).all(), g.unprunable
    assert 'cls' in g.unprunable
    assert g.unknown_ops.get('where') == 1, g.unknown_ops
    check_exact(WhereIndices(), torch.randn(1, 3, 6, 6))


def test_where_with_three_arguments_stays_pointwise():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            a, b = self.a(x), self.b(x)
            return self.head(torch.where(a > 0, a, b))

    g = analyze(Gate(), input_forward(torch.randn(1, 3, 4, 4)))
    np.testing.assert_array_equal(g.out_atoms['a'], g.out_atoms['b'])
    assert (g.out_atoms['a'] >= 0).all() and not g.unknown_ops


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.b(F.relu(self.a(x))))


def test_a_handler_failure_degrades_to_unprunable_channels(monkeypatch):
    """A defect in an op handler makes the channels the op read unprunable, naming the op and the failure."""
    def broken(state, call):
        raise ValueError('operands could not be broadcast together')

    monkeypatch.setattr(dispatch, 'op_pointwise', broken)
    g = analyze(Small(), input_forward(torch.randn(1, 3, 4, 4)))
    assert 'relu' in g.unprunable['a'] and 'the tracer failed on it (ValueError' in g.unprunable['a'], g.unprunable
    assert (g.out_atoms['b'] >= 0).all(), 'channels the broken op never read stay prunable'


def test_a_module_recording_failure_degrades(monkeypatch):
    rule = find_rule(nn.Conv2d(1, 1, 1))

    def broken(module):
        if module.in_channels == 8 and module.out_channels == 8:
            raise RuntimeError('no kernel size')
        return int(np.prod(module.kernel_size))

    monkeypatch.setattr(rule, 'kernel_numel', broken)
    g = analyze(Small(), input_forward(torch.randn(1, 3, 4, 4)))
    assert 'the tracer failed on it (RuntimeError: no kernel size)' in g.unprunable['a'], g.unprunable


class ConvNormAct(nn.Module):
    """timm's ConvNormAct: ``in_channels`` / ``out_channels`` are read-only properties over ``self.conv``."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    @property
    def in_channels(self):
        return self.conv.in_channels

    @property
    def out_channels(self):
        return self.conv.out_channels

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class TimmLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = ConvNormAct(3, 8)
        self.block = ConvNormAct(8, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


def test_read_only_size_properties_of_wrappers(check_exact):
    out = check_exact(TimmLike(), torch.randn(1, 3, 6, 6))  # raised "property 'in_channels' ... has no setter"
    slim = out['slim']
    assert slim.block.in_channels == slim.block.conv.in_channels == slim.stem.conv.out_channels < 8


class PlainWrapper(nn.Module):
    """mmcv's ConvModule: plain int attributes mirror the ``.conv`` child and must follow it."""

    def __init__(self, cin, cout):
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(x))


def test_plain_wrapper_attributes_still_follow(check_exact):
    model = nn.Sequential(PlainWrapper(3, 8), PlainWrapper(8, 8), nn.Conv2d(8, 2, 1))
    slim = check_exact(model, torch.randn(1, 3, 6, 6))['slim']
    assert slim[1].in_channels == slim[1].conv.in_channels == slim[0].out_channels == slim[0].conv.out_channels < 8


class RMSNorm(nn.Module):
    """A norm the core does not know: statistics over the last dim (like LayerNorm)."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class RMSNormRule(LayerRule):
    role = Role.NORM
    in_dim = -1
    keeps_input_layout = True

    def matches(self, module):
        return isinstance(module, RMSNorm)

    def in_channels(self, module):
        return module.weight.numel()

    out_channels = in_channels

    def normalized_dims(self, module, ndim):
        return (ndim - 1,)

    def slice(self, module, in_keep, out_keep):
        if in_keep is not None or out_keep is not None:
            raise ValueError('RMSNorm channels are not prunable')


class ChannelsLast(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.norm = RMSNorm(8)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        y = self.norm(self.stem(x).permute(0, 2, 3, 1))
        return self.fc2(F.relu(self.fc1(y)))


def test_a_new_norm_type_is_one_rule(check_exact):
    """Everything a layer type does differently is a rule attribute: a LayerNorm-like norm needs no tracer code."""
    rule = RMSNormRule()
    assert rule.is_norm and not rule.is_weighted and not rule.is_passthrough and rule.role == 'norm'
    assert rule.label == 'RMSNorm'
    register_rule(rule)
    try:
        g = analyze(ChannelsLast(), input_forward(torch.randn(1, 3, 4, 4)))
        assert g.unprunable['stem'] == 'norm (RMSNorm) normalises over channels', g.unprunable
        assert (g.out_atoms['fc1'] >= 0).all()
        check_exact(ChannelsLast(), torch.randn(1, 3, 4, 4))
    finally:
        core_layers._RULES.remove(rule)


@pytest.mark.parametrize('module, role', [
    (nn.Conv2d(2, 2, 1), Role.WEIGHTED), (nn.Linear(2, 2), Role.WEIGHTED), (nn.BatchNorm2d(2), Role.NORM),
    (nn.GroupNorm(1, 2), Role.NORM), (nn.LayerNorm(2), Role.NORM)])
def test_role_properties(module, role):
    rule = find_rule(module)
    assert rule.role == role
    assert (rule.is_weighted, rule.is_norm, rule.is_passthrough) == (role == 'weighted', role == 'norm', False)
