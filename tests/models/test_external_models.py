"""Models from outside the mm zoos through the core (issue 11, item 7): timm and torchvision models trace, slim
exactly (masked == slimmed after a random 30% mask of every unit) and what the engine does not understand is
named, never a crash; and the constructs the timm sweep found, on hand-written modules.
``benchmarks/prunable_share.py --suite timm torchvision`` measures the whole sweep."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher import model_sweep as ms
from mmfisher.core import analyze, compare_masked_slimmed, input_forward, random_alive


def _exact(model, shape=(3, 8, 8), ratio=0.5):
    graph = analyze(model, input_forward(torch.randn(1, *shape)))
    res = compare_masked_slimmed(model, graph, input_forward(torch.randn(2, *shape)),
                                 random_alive(graph, ratio, seed=0))
    assert res['ok'], (res['max_abs_diff'], res['scale'])
    assert res['scale'] > 1e-3
    return graph, res


class _FunctionalConv(nn.Conv2d):
    """A conv subclass whose forward the engine does not know (it calls F.conv2d itself)."""

    def forward(self, x):
        return F.conv2d(x, self.weight * 1.0, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _GatedAfterUnknown(nn.Module):
    """timm's tf_efficientnetv2 block: an unknown conv, a norm, then a squeeze-excite gate times its output."""

    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1)
        self.dw = _FunctionalConv(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.reduce, self.expand = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.pwl = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.bn(self.dw(self.pw(x)))
        gate = self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))).sigmoid()
        return self.pwl(x * gate)


def test_channels_combined_with_unmapped_ones_are_kept():
    model = _GatedAfterUnknown().eval()
    graph, _ = _exact(model)
    # before: the gate's channels were prunable and the slimmed model failed with a size mismatch
    assert 'expand' in graph.unprunable and 'cannot map' in graph.unprunable['expand']
    assert 'dw' in graph.unprunable and '_FunctionalConv' in graph.unprunable['dw']
    assert graph.summary()['channels_total'] == 8 + 8 + 2 + 8 + 4  # the unknown conv is counted too
    assert any('reduce' in u.layers for u in graph.units)  # the squeeze width is still prunable


class _LiteralSplit(nn.Module):
    """A split whose size is a literal nothing holds: it cannot follow pruning."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.a, self.b = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        xa, xb = torch.split(self.stem(x), 4, 1)
        return self.head(self.a(xa) + self.b(xb))


class _AttributeSplit(_LiteralSplit):
    """timm's SelectiveKernel / CSP stages: the size computed from an attribute holding all parts' width."""

    def __init__(self):
        super().__init__()
        self.in_channels, self.out_channels, self.num_paths = 8, 8, 2

    def forward(self, x):
        xa, xb = torch.split(self.stem(x), self.in_channels // self.num_paths, 1)
        return self.head(self.a(xa) + self.b(xb))


class _ShapeSplit(_LiteralSplit):
    def forward(self, x):
        x = self.stem(x)
        xa, xb = torch.split(x, x.shape[1] // 2, 1)  # a size read off the tensor follows pruning
        return self.head(self.a(xa) + self.b(xb))


def test_split_by_a_literal_size_is_kept_by_a_traced_or_held_size_pruned():
    graph, _ = _exact(_LiteralSplit().eval())
    assert 'literal positions' in graph.unprunable.get('stem', '')
    assert any('a' in u.layers for u in graph.units)
    graph, res = _exact(_ShapeSplit().eval())
    assert 'stem' not in graph.unprunable
    assert res['slim'].stem.out_channels < 8 and res['slim'].stem.out_channels % 2 == 0
    graph, res = _exact(_AttributeSplit().eval())
    assert 'stem' not in graph.unprunable
    kept = res['slim'].stem.out_channels
    assert kept < 8 and kept % 2 == 0 and res['slim'].in_channels == kept and res['slim'].out_channels == 8


class _ShapedScale(nn.Module):
    """timm's metaformer ``Scale``: ``x * self.scale.view(self.shape)`` with ``shape = (dim, 1, 1)``."""

    def __init__(self, dim):
        super().__init__()
        self.shape = (dim, 1, 1)
        self.scale = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        return x * self.scale.view(self.shape)


class _ScaledBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.scale, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), _ShapedScale(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv2(self.scale(self.conv1(x)))


def test_parameter_viewed_to_a_literal_shape_follows_its_attribute():
    graph, res = _exact(_ScaledBlock().eval())
    assert 'conv1' not in graph.unprunable
    kept = res['slim'].conv1.out_channels
    assert kept < 8 and res['slim'].scale.shape == (kept, 1, 1) and res['slim'].scale.scale.numel() == kept
    assert res['config']['attrs'] == {'scale.shape[0]': kept}


class _UnboundScale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        return x * self.scale.view(8, 1, 1)  # a literal no attribute holds: the width cannot change


def test_parameter_viewed_to_an_unbound_literal_is_kept():
    model = _ScaledBlock()
    model.scale = _UnboundScale(8)
    graph, _ = _exact(model.eval())
    assert 'literal width' in graph.unprunable.get('conv1', '')


# -- real models -------------------------------------------------------------------------------------------------
timm = pytest.importorskip('timm')  # pinned in requirements/tests.txt: present in every set-up .venv

# timm model -> the least share of conv/linear output channels prunable (measured: benchmarks/results/
# prunable_share.json, less a margin), or the reason that must name what is kept where most channels are
TIMM_CASES = {
    'tf_efficientnetv2_b0': 0.95,   # Conv2dSame + SE: slimmed to a size mismatch before
    'convnextv2_atto': 0.95,        # timm's GlobalResponseNorm: 37% prunable before
    'poolformer_s12': 0.95,         # Scale.view(self.shape): a crash in the slimmed forward before
    'poolformerv2_s12': 0.95,       # LayerNorm2dNoBias: 84% before
    'vit_tiny_patch16_224': 0.95,
    'resnet18': 0.95,
    'skresnet18': 0.95,             # split(x, self.in_channels // self.num_paths): crashed before
    'cspresnet50': 0.95,            # split(x, self.expand_chs // 2): crashed before
    'mixnet_s': 0.95,               # split(x, self.splits): 12% before
    'dpn68': 0.95,                  # x[:, :self.num_1x1_c]: 74% before
    'gmlp_ti16_224': 0.95,          # Linear over tokens, channels passing through: 14% before
    'cait_xxs24_224': 0.95,         # reshape(B, N, C) after attention, inferred when slimmed: 44% before
    'caformer_s18': 0.95,           # the same and LayerNorm2dNoBias: 50% before
    'davit_tiny': 0.85,             # the same after channel attention (a kept tensor): 35% before
    'nf_resnet26': 'ScaledStdConv2d: a conv/linear-like layer whose forward the engine does not know',
}


@pytest.mark.parametrize('name', list(TIMM_CASES))
def test_timm_model_slims_exactly(name):
    shape = ms.TIMM[name]
    model = ms.build('timm', name, shape)
    r = ms.check(model, 'timm', shape, name=name)
    expect = TIMM_CASES[name]
    reasons = dict(r['top_reasons'])
    if isinstance(expect, float):
        assert r['share'] >= expect, (r['share'], r['top_reasons'])
    else:
        assert any(expect in why for why in reasons), r["top_reasons"]
    if r['channels_prunable']:
        assert r['ok'], (r['max_abs_diff'], r['output_scale'], r['float64_max_abs_diff'])
        assert r['output_scale'] > 1e-3 and r['params_ratio'] < 0.95


@pytest.mark.parametrize('name', ['fcos_resnet50_fpn', 'fasterrcnn_mobilenet_v3_large_fpn',
                                  'ssdlite320_mobilenet_v3_large'])
def test_torchvision_detector_in_eval_mode(name):
    """Eval-mode post-processing (one-argument ``torch.where``, NMS) used to crash the tracer."""
    shape = ms.TORCHVISION[name]
    model = ms.build('torchvision', name, shape)
    r = ms.check(model, 'torchvision', shape, name=name)
    assert r['share'] >= 0.95, r['top_reasons']
    assert r['ok'], (r['max_abs_diff'], r['output_scale'], r['float64_max_abs_diff'])
    assert r['params_ratio'] < 0.95


class _StreamWidthAttention(nn.Module):
    """Attention that reshapes by the stream's width read off its input (CaiT, PVT, XCiT, MaxViT, CoaT, ...):
    ``reshape(B, N, 3, heads, C // heads)`` and, after the heads, ``reshape(B, N, C)``."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.num_heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class _StreamWidthBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.norm = nn.Linear(6, 16), nn.LayerNorm(16)
        self.attn, self.head = _StreamWidthAttention(), nn.Linear(16, 3)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(self.norm(x))
        return self.head(x.mean(1))


def test_sizes_read_off_the_stream_are_inferred_by_the_slimmed_forward():
    import copy

    import numpy as np
    from mmfisher.core import apply_channel_config
    torch.manual_seed(0)
    model = _StreamWidthBlock().eval()
    graph = analyze(model, input_forward(torch.randn(1, 5, 6)))
    # before: both the heads and the residual stream were kept ("sizes them by the width of other channels")
    assert not graph.unprunable.keys() - {'head'}, graph.unprunable
    stream = next(u for u in graph.units if 'embed' in u.layers)
    heads = next(u for u in graph.units if 'attn.qkv' in u.producers)
    alive = np.ones(graph.num_atoms, dtype=bool)
    alive[stream.atoms[:6]] = False  # 10 of 16 stream channels
    alive[heads.atoms[0]] = False    # 3 of 4 heads
    res = compare_masked_slimmed(model, graph, input_forward(torch.randn(2, 5, 6)), alive)
    assert res['ok'], (res['max_abs_diff'], res['scale'])
    slim = res['slim']
    assert slim.embed.out_features == 10 and slim.attn.num_heads == 3 and slim.attn.qkv.out_features == 36
    assert res['config']['forwards'] == {'attn': {'infer_sizes': [[3, 2], [5, 4]]}}
    # the channel config alone rebuilds it (a fresh unpruned model, no trace): the same outputs
    fresh = apply_channel_config(copy.deepcopy(_StreamWidthBlock().eval()), res['config'])
    fresh.load_state_dict(slim.state_dict())
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), slim(x))
