"""Issue 11 rules, one test each comparing the masked and the slimmed model: norms over the channels (LayerNorm,
LayerNorm2d, RMSNorm, mmdet's L2Norm, mmpretrain's GRN) computed over the alive channels under masks; attention
(qkv Linear + reshape, scaled_dot_product_attention, einsum, nn.MultiheadAttention, mmcv's deformable attention,
Swin's window attention) pruned by whole heads; sums and softmaxes over channel splits (ResNeSt); parameter-derived
tensors (layer scale views, class token, gathered bias tables)."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import (ChannelMasks, FisherTaps, analyze, compare_masked_slimmed, find_rule, input_forward,
                           random_alive)
from mmfisher.core.layers import ALIVE_ATTR


def _rand_affine(model, seed=0):
    """Random affine parameters of every norm without running statistics (LN, RMSNorm, GRN, L2Norm), so masking
    a channel really changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                continue
            for name in ('weight', 'bias', 'gamma', 'beta'):
                t = m._parameters.get(name)
                if t is not None and t.dim() == 1 and find_rule(m) is not None and find_rule(m).is_norm:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.5 + (1.0 if name in ('weight', 'gamma') else 0))
    return model


def _masked_without_renormalizing(model, graph, alive, x):
    """The masked model's output if the norms kept their statistics over every channel (the old behaviour)."""
    m = copy.deepcopy(model)
    masks = ChannelMasks(m, graph)
    masks.set_alive(alive)
    for mod in m.modules():
        mod.__dict__.pop(ALIVE_ATTR, None)
    with torch.no_grad():
        return m.eval()(x)


# ---- norms over the channels ---------------------------------------------------------------------------------
class LNStream(nn.Module):
    """Conv stem, channels-last LayerNorm, MLP, residual: the ConvNeXt / transformer block pattern."""

    def __init__(self, norm):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.norm = norm
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(x.permute(0, 2, 3, 1))
        x = x + self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return self.head(x)


@pytest.mark.parametrize('norm', [lambda: nn.LayerNorm(8), lambda: nn.RMSNorm(8), lambda: nn.LayerNorm(8, bias=False)],
                         ids=['layernorm', 'rmsnorm', 'layernorm_nobias'])
def test_channel_norms_renormalize_over_alive_channels(check_exact, norm):
    model = _rand_affine(LNStream(norm()))
    g = analyze(model, input_forward(torch.randn(1, 3, 8, 8)))
    assert 'stem' not in g.unprunable, g.unprunable
    np.testing.assert_array_equal(g.out_atoms['norm'], g.out_atoms['stem'])
    out = check_exact(model, torch.randn(1, 3, 8, 8), ratio=0.4)
    slim = out['slim']
    assert slim.norm.normalized_shape[0] == slim.stem.out_channels < 8 and slim.norm.weight.numel() < 8
    assert ALIVE_ATTR not in vars(slim.norm)
    # the mechanism matters: with statistics over all channels the masked model would compute something else
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    old = _masked_without_renormalizing(out['original'], out['graph'], out['alive'], x)
    with torch.no_grad():
        assert (old - slim(x)).abs().max() > 1e-3


class LN2dNet(nn.Module):
    """mmpretrain's LayerNorm2d both ways: channel_first after a conv, channel_last inside a block."""

    def __init__(self):
        super().__init__()
        from mmpretrain.models.utils.norm import LayerNorm2d
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.ln_first = LayerNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.ln_last = LayerNorm2d(8)
        self.pw1 = nn.Linear(8, 16)
        self.pw2 = nn.Linear(16, 8)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.ln_first(self.stem(x))
        y = self.ln_last(self.dw(x).permute(0, 2, 3, 1), data_format='channel_last')
        y = self.pw2(F.gelu(self.pw1(y))).permute(0, 3, 1, 2)
        x = x + y.mul(self.gamma.view(1, -1, 1, 1))  # ConvNeXt's layer scale: a view of a parameter
        return self.head(x)


def test_layernorm2d_both_layouts_and_layer_scale_view(check_exact):
    model = _rand_affine(LN2dNet())
    g = analyze(model, input_forward(torch.randn(1, 3, 8, 8)))
    assert set(g.unprunable) == {'head'}, g.unprunable
    assert g.param_atoms['gamma'][0] == 0
    np.testing.assert_array_equal(g.param_atoms['gamma'][1], g.out_atoms['stem'])
    slim = check_exact(model, torch.randn(1, 3, 8, 8))['slim']
    assert slim.ln_first.normalized_shape == slim.ln_last.normalized_shape == (slim.stem.out_channels,)
    assert slim.gamma.numel() == slim.stem.out_channels == slim.ln_first.num_channels < 8


class L2NormNet(nn.Module):
    def __init__(self):
        super().__init__()
        from mmdet.models.necks.ssd_neck import L2Norm
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.l2 = L2Norm(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.l2(F.relu(self.conv(x))))


def test_ssd_l2norm_over_alive_channels(check_exact):
    model = _rand_affine(L2NormNet())
    g = analyze(model, input_forward(torch.randn(1, 3, 6, 6)))
    assert 'conv' not in g.unprunable, g.unprunable
    slim = check_exact(model, torch.randn(1, 3, 6, 6))['slim']
    assert slim.l2.weight.numel() == slim.l2.n_dims == slim.conv.out_channels < 8


class GRNNet(nn.Module):
    """ConvNeXt-V2's block core: Linear, GELU, GRN (channel_last), Linear."""

    def __init__(self):
        super().__init__()
        from mmpretrain.models.utils.norm import GRN
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.pw1 = nn.Linear(8, 16)
        self.grn = GRN(16)
        self.pw2 = nn.Linear(16, 2)

    def forward(self, x):
        y = F.gelu(self.pw1(self.stem(x).permute(0, 2, 3, 1)))
        return self.pw2(self.grn(y, data_format='channel_last'))


def test_grn_mean_over_alive_channels(check_exact):
    model = _rand_affine(GRNNet())
    g = analyze(model, input_forward(torch.randn(1, 3, 8, 8)))
    assert 'pw1' not in g.unprunable, g.unprunable
    slim = check_exact(model, torch.randn(1, 3, 8, 8))['slim']
    assert slim.grn.gamma.numel() == slim.grn.in_channels == slim.pw1.out_features < 16


def test_masks_trial_and_set_alive_keep_the_norm_hooks_in_step():
    model = _rand_affine(LNStream(nn.LayerNorm(8))).eval()
    x = torch.randn(2, 3, 8, 8)
    g = analyze(model, input_forward(x))
    masks = ChannelMasks(model, g)
    with torch.no_grad():
        before = model(x)
    alive = random_alive(g, 0.5)
    with masks.trial(alive):
        assert ALIVE_ATTR in vars(model.norm)
        with torch.no_grad():
            assert (model(x) - before).abs().max() > 1e-4
    assert ALIVE_ATTR not in vars(model.norm) and not model.norm._forward_hooks
    with torch.no_grad():
        assert torch.equal(model(x), before)
    masks.set_alive(alive)
    assert ALIVE_ATTR in vars(model.norm)
    masks.set_alive(np.ones(g.num_atoms, dtype=bool))
    assert ALIVE_ATTR not in vars(model.norm) and not model.norm._forward_hooks


# ---- attention -------------------------------------------------------------------------------------------------
class QKVAttention(nn.Module):
    """timm / mmpretrain style: qkv Linear, reshape to heads, q @ k^T (or sdpa / einsum), proj; plus a relative
    position bias gathered from a table (Swin), a class token and a position embedding (ViT)."""

    def __init__(self, dim=16, heads=4, mode='matmul', tokens=5):
        super().__init__()
        self.num_heads, self.head_dims, self.embed_dims, self.mode = heads, dim // heads, dim, mode
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn(7, heads))
        self.register_buffer('index', torch.randint(0, 7, (tokens * tokens,)))

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dims).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.mode == 'sdpa':
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            if self.mode == 'einsum':
                attn = torch.einsum('bhnd,bhmd->bhnm', q * self.head_dims ** -0.5, k)
            else:
                attn = (q * self.head_dims ** -0.5) @ k.transpose(-2, -1)
            bias = self.table[self.index].view(n, n, -1).permute(2, 0, 1).contiguous()
            attn = (attn + bias.unsqueeze(0)).softmax(-1)
            x = attn @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, self.embed_dims))


class TinyViT(nn.Module):
    def __init__(self, mode='matmul'):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 16))
        self.pos_embed = nn.Parameter(torch.randn(1, 5, 16))
        self.ln1 = nn.LayerNorm(16)
        self.attn = QKVAttention(mode=mode)
        self.ln2 = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        x = x + self.attn(self.ln1(x))
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(x[:, 0])


@pytest.mark.parametrize('mode', ['matmul', 'sdpa', 'einsum'])
def test_qkv_attention_prunes_whole_heads(check_exact, mode):
    model = _rand_affine(TinyViT(mode))
    x = torch.randn(1, 3, 8, 8)
    g = analyze(model, input_forward(x))
    assert set(g.unprunable) == {'head'}, g.unprunable
    heads = [u for u in g.units if u.producers == ['attn.qkv']]
    assert len(heads) == 1 and heads[0].atoms.size == 4  # one atom per head (its q, k and v rows)
    assert {'cls_token', 'pos_embed'} <= set(g.param_atoms) and g.param_atoms['cls_token'][0] == 2
    if mode != 'sdpa':
        assert g.param_atoms['attn.table'][0] == 1  # the bias table is sliced by heads
    assert 'attn.num_heads' in g.attr_atoms and 'attn.embed_dims' in g.attr_atoms
    out = check_exact(model, x, ratio=0.5)
    slim = out['slim']
    assert slim.attn.num_heads == 2 and slim.attn.qkv.out_features == 3 * 2 * 4
    assert slim.attn.embed_dims == slim.attn.proj.in_features == 8
    assert slim.cls_token.shape[-1] == slim.pos_embed.shape[-1] == slim.patch.out_channels < 16


class MHABlock(nn.Module):
    """DETR-like: stream, nn.MultiheadAttention (sequence first), FFN; cross-attention to a memory."""

    def __init__(self, batch_first=False):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.mem = nn.Linear(6, 16)
        self.self_attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.cross_attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.norm = nn.LayerNorm(16)
        self.ffn = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 16))
        self.head = nn.Linear(16, 2)
        self.batch_first = batch_first

    def forward(self, x):
        q, m = self.inp(x), self.mem(x.flip(1))
        if not self.batch_first:
            q, m = q.transpose(0, 1), m.transpose(0, 1)
        q = q + self.self_attn(query=q, key=q, value=q)[0]
        q = self.norm(q + self.cross_attn(q, m, m, need_weights=False)[0])
        return self.head(q + self.ffn(q))


@pytest.mark.parametrize('batch_first', [False, True])
def test_multihead_attention_heads_and_stream(check_exact, batch_first):
    model = _rand_affine(MHABlock(batch_first))
    x = torch.randn(2, 5, 6)
    g = analyze(model, input_forward(x))
    assert set(g.unprunable) == {'head'}, g.unprunable
    for name in ('self_attn', 'cross_attn'):
        units = [u for u in g.units if u.producers == [name]]
        assert len(units) == 1 and units[0].atoms.size == 4 and units[0].readers == [f'{name}.out_proj']
    stream = [u for u in g.units if 'inp' in u.producers][0]
    assert {'mem', 'self_attn.out_proj', 'cross_attn.out_proj', 'ffn.2'} <= set(stream.producers)
    slim = check_exact(model, x, x2=torch.randn(2, 5, 6), ratio=0.5)['slim']
    assert slim.self_attn.num_heads == 2 and slim.self_attn.in_proj_weight.shape == (24, 8)
    assert type(slim.self_attn).__name__ == 'MultiheadAttention' and 'forward' in vars(type(slim.self_attn))


def test_fisher_taps_see_heads_of_multihead_attention():
    model = MHABlock(False)
    x = torch.randn(2, 5, 6)
    g = analyze(model, input_forward(x))
    taps = FisherTaps(model, g)
    assert 'forward' in vars(model.self_attn)  # the plain-ops forward calls out_proj as a module
    model.train()
    model(x).pow(2).sum().backward()
    assert taps.accumulate()
    heads = [u for u in g.units if u.producers == ['self_attn']][0]
    stream = [u for u in g.units if 'inp' in u.producers][0]
    assert (taps.fisher[heads.atoms] > 0).all() and (taps.fisher[stream.atoms] > 0).all()
    taps.remove()
    assert 'forward' not in vars(model.self_attn)


class DeformAttnNet(nn.Module):
    """mmcv's MultiScaleDeformableAttention (its pytorch path on the CPU) in a residual stream."""

    def __init__(self):
        super().__init__()
        from mmcv.ops import MultiScaleDeformableAttention
        self.inp = nn.Linear(8, 32)
        self.attn = MultiScaleDeformableAttention(32, num_heads=4, num_levels=2, num_points=2, batch_first=True)
        self.out = nn.Linear(32, 3)
        self.register_buffer('shapes', torch.tensor([[4, 4], [2, 2]]))
        self.register_buffer('start', torch.tensor([0, 16]))
        self.register_buffer('ref', torch.rand(1, 20, 2, 2))

    def forward(self, x):
        x = self.inp(x)
        x = self.attn(x, value=x, reference_points=self.ref.expand(x.shape[0], -1, -1, -1),
                      spatial_shapes=self.shapes, level_start_index=self.start)
        return self.out(x)


def test_deformable_attention_prunes_whole_heads(check_exact):
    model = DeformAttnNet()
    with torch.no_grad():  # mmcv initialises the output projection and attention weights to zero
        for m in model.attn.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.3)
    x = torch.randn(1, 20, 8)
    g = analyze(model, input_forward(x))
    assert set(g.unprunable) == {'out'}, g.unprunable
    heads = [u for u in g.units if 'attn.value_proj' in u.producers][0]
    assert heads.atoms.size == 4
    assert {'attn.sampling_offsets', 'attn.attention_weights'} <= set(heads.producers)
    slim = check_exact(model, x, x2=torch.randn(1, 20, 8), ratio=0.5)['slim']
    assert slim.attn.num_heads == 2 and slim.attn.sampling_offsets.out_features == 2 * 2 * 2 * 2


def test_swin_window_attention_adapter(check_exact):
    """mmpretrain's WindowMSA reads its head width from the input's (C // num_heads): the slimmed module gets
    a forward that reads it from its layers, so heads and the stream prune independently."""
    from mmpretrain.models.utils.attention import WindowMSA

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(5, 16)
            self.attn = WindowMSA(16, (2, 2), 4)
            self.out = nn.Linear(16, 3)

        def forward(self, x):
            x = self.inp(x)
            return self.out(x + self.attn(x))

    model = Net()
    with torch.no_grad():
        model.attn.relative_position_bias_table.normal_()
    x = torch.randn(3, 4, 5)
    g = analyze(model, input_forward(x))
    assert set(g.unprunable) == {'out'}, g.unprunable
    slim = check_exact(model, x, x2=torch.randn(3, 4, 5), ratio=0.5)['slim']
    assert slim.attn.num_heads == 2 and slim.attn.relative_position_bias_table.shape[1] == 2
    assert slim.inp.out_features == 8 and slim.attn.qkv.out_features == 24


def test_attention_contracting_all_channels_stays_unprunable():
    """A product over the channels with no head dim (a non-local block's q^T k) cannot lose any: named."""

    class NonLocal(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1)
            self.out = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            n, _, h, w = x.shape
            attn = torch.matmul(self.q(x).flatten(2).transpose(1, 2), self.k(x).flatten(2)).softmax(-1)
            return self.out(torch.bmm(self.v(x).flatten(2), attn.transpose(1, 2)).view(n, -1, h, w))

    g = analyze(NonLocal(), input_forward(torch.randn(1, 3, 4, 4)))
    assert 'matmul' in g.unprunable['q'] and 'matmul' in g.unprunable['k']
    assert 'v' not in g.unprunable  # attention over positions maps channel c of v to channel c of the output


# ---- sums and softmaxes over channel splits (ResNeSt) ------------------------------------------------------------
class SplitAttention(nn.Module):
    """ResNeSt's split attention (radix 2): a grouped conv makes radix splits, their sum feeds an MLP whose
    softmax over the radix weighs the splits, and the weighted splits are summed."""

    def __init__(self, c=8, radix=2):
        super().__init__()
        self.radix = radix
        self.conv1 = nn.Conv2d(3, c, 1)
        self.conv = nn.Conv2d(c, c * radix, 3, padding=1, groups=radix)
        self.bn = nn.BatchNorm2d(c * radix)
        self.fc1 = nn.Conv2d(c, 4, 1)
        self.fc2 = nn.Conv2d(4, c * radix, 1)
        self.conv3 = nn.Conv2d(c, 5, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(F.relu(self.conv1(x)))))
        b = x.shape[0]
        splits = x.view(b, self.radix, -1, *x.shape[2:])
        gap = F.adaptive_avg_pool2d(splits.sum(dim=1), 1)
        atten = self.fc2(F.relu(self.fc1(gap)))
        atten = F.softmax(atten.view(b, 1, self.radix, -1).transpose(1, 2), dim=1).reshape(b, -1)
        attens = atten.view(b, self.radix, -1, 1, 1)
        return self.conv3(torch.sum(attens * splits, dim=1))


def test_split_attention_couples_the_splits(check_exact):
    g = analyze(SplitAttention(), input_forward(torch.randn(1, 3, 6, 6)))
    assert set(g.unprunable) == {'conv3'}, g.unprunable
    assert g.records['conv'].group_mode == 'column'
    unit = [u for u in g.units if 'conv' in u.producers][0]
    assert unit.atoms.size == 8 and 'fc2' in unit.producers  # channel c of every split, one atom each
    slim = check_exact(SplitAttention(), torch.randn(1, 3, 6, 6), ratio=0.5)['slim']
    assert slim.conv.groups == 2 and slim.conv.out_channels == 8 and slim.fc1.in_channels == 4


def test_plain_grouped_conv_still_loses_whole_groups():
    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.g, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(self.g(self.a(x)))

    g = analyze(G(), input_forward(torch.randn(1, 3, 5, 5)))
    assert g.records['g'].group_mode == 'whole'
    assert len(set(g.out_atoms['g'].tolist())) == 4


# ---- DETR-family details: positional encodings, query embeddings, sizes read off channels -----------------------
class DetrLike(nn.Module):
    """A conv feature, mmdet's sine positional encoding added to it, an encoder attention, a decoder whose first
    query is zeros shaped like a learned query embedding (DETR)."""

    def __init__(self):
        super().__init__()
        from mmdet.models.layers.positional_encoding import SinePositionalEncoding
        self.proj = nn.Conv2d(3, 16, 1)
        self.pos = SinePositionalEncoding(8, normalize=True)
        self.enc = nn.MultiheadAttention(16, 4, batch_first=True)
        self.query_embedding = nn.Embedding(3, 16)
        self.dec = nn.MultiheadAttention(16, 4, batch_first=True)
        self.cross = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        feat = self.proj(x)
        b, c = feat.shape[:2]
        pos = self.pos(None, input=feat).view(b, c, -1).permute(0, 2, 1)
        mem = feat.view(b, c, -1).permute(0, 2, 1)
        mem = mem + self.enc(mem + pos, mem + pos, mem)[0]
        query_pos = self.query_embedding.weight.unsqueeze(0).repeat(b, 1, 1)
        query = torch.zeros_like(query_pos)
        query = query + self.dec(query + query_pos, query + query_pos, query)[0]
        query = query + self.cross(query + query_pos, mem + pos, mem)[0]
        return self.head(query)


def test_positional_encoding_and_query_embedding_follow_the_stream(check_exact):
    model = DetrLike()
    x = torch.randn(1, 3, 4, 4)
    g = analyze(model, input_forward(x))
    assert set(g.unprunable) == {'head'}, g.unprunable
    stream = [u for u in g.units if 'proj' in u.producers][0]
    assert 'pos' in stream.layers and 'query_embedding.weight' in stream.layers
    slim = check_exact(model, x, x2=torch.randn(1, 3, 4, 4), ratio=0.5)['slim']
    assert slim.query_embedding.weight.shape[1] == slim.proj.out_channels == 8
    with torch.no_grad():
        assert slim.pos(None, input=torch.zeros(1, 8, 4, 4)).shape[1] == 8


class WidthFromInput(nn.Module):
    """timm-style attention output ``reshape(B, N, C)`` with ``C`` the input's width (no class adapter knows this
    class): the slimmed module infers those sizes from its tensors, so heads and the stream are pruned apart."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 16)
        self.num_heads = 4
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        x = self.inp(x)
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        return self.out(x + self.proj(y))


def test_a_size_read_off_other_channels_is_inferred_when_slimmed():
    # (until the timm sweep both were kept, "sizes them by the width of other channels")
    model = WidthFromInput().eval()
    g = analyze(model, input_forward(torch.randn(2, 3, 5)))
    assert not {'inp', 'qkv'} & set(g.unprunable), g.unprunable
    stream = next(u for u in g.units if 'inp' in u.producers)
    heads = next(u for u in g.units if 'qkv' in u.producers)
    alive = np.ones(g.num_atoms, dtype=bool)
    alive[stream.atoms[:5]] = False  # 11 of 16 stream channels, 2 of 4 heads: no longer one width
    alive[heads.atoms[:2]] = False
    res = compare_masked_slimmed(model, g, input_forward(torch.randn(2, 3, 5)), alive)
    assert res['ok'], (res['max_abs_diff'], res['scale'])
    assert res['slim'].inp.out_features == 11 and res['slim'].qkv.out_features == 24
    assert res['config']['forwards'] == {'': {'infer_sizes': [[3, 2], [5, 4]]}}
    # under torch.jit.trace (ONNX export, mmengine's FLOPs counter) the sizes are 0-dim tensors: inferred too
    # (they were left as given, and the slimmed model failed to trace: found on mmpretrain's Twins)
    x = torch.randn(2, 3, 5)
    with torch.no_grad():
        traced = torch.jit.trace(res['slim'], (x,), check_trace=False)
        assert torch.allclose(traced(x), res['slim'](x), atol=1e-6)
        x2 = torch.randn(1, 7, 5)  # the traced graph keeps the sizes it reads off the input
        assert torch.allclose(traced(x2), res['slim'](x2), atol=1e-6)


def test_split_of_a_parameter_by_a_stream_width_keeps_the_stream():
    """Deformable DETR: ``split(query_embed, c)`` with ``c`` read off the memory: the memory's width stays."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mem = nn.Linear(5, 8)
            self.emb = nn.Embedding(3, 16)
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            m = self.mem(x)
            pos, q = torch.split(self.emb.weight, m.shape[-1], dim=1)
            return self.out(m.mean(1, keepdim=True) + pos + q)

    g = analyze(Net(), input_forward(torch.randn(1, 3, 5)))
    assert 'mem' in g.unprunable, g.unprunable


def test_functional_layer_norm_and_linear_are_named():
    """Calls (not modules) cannot be renormalized or sliced: a functional layer_norm over the channels and a
    functional linear keep what they read, named; a functional layer_norm over other dims passes channels."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Linear(4, 4)
            self.c = nn.Conv2d(3, 8, 1)
            self.out = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            a = F.layer_norm(self.a(x).permute(0, 2, 3, 1), (8,)).permute(0, 3, 1, 2)  # over channels
            b = F.linear(self.b(x).permute(0, 2, 3, 1), torch.eye(8)).permute(0, 3, 1, 2)
            c = F.layer_norm(self.c(x), (4,))  # over W: channels pass
            return self.out(a + b + c)

    g = analyze(Net(), input_forward(torch.randn(1, 3, 4, 4)))
    assert 'functional norm over channels' in g.unprunable['a'] or 'functional' in g.unprunable['a']
    assert all(n in g.unprunable for n in ('a', 'b', 'c'))  # a + b + c: one unit, kept
    g2 = analyze(nn.Sequential(nn.Conv2d(3, 8, 1), nn.Identity(), nn.Conv2d(8, 2, 1)),
                 input_forward(torch.randn(1, 3, 4, 4)))
    assert '0' not in g2.unprunable


def test_functional_layer_norm_over_spatial_dims_passes(check_exact):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.out(F.layer_norm(self.c(x), (4,)))

    g = analyze(Net(), input_forward(torch.randn(1, 3, 4, 4)))
    assert 'c' not in g.unprunable, g.unprunable
    check_exact(Net(), torch.randn(1, 3, 4, 4))


def test_groupnorm_with_one_group_renormalizes(check_exact):
    """PoolFormer's norm: GroupNorm(1, C), a LayerNorm over (C, H, W). Its statistics run over every channel, so
    under masks over the alive ones; single channels are prunable (they crashed the slicing before)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.norm, self.fc = nn.Conv2d(3, 8, 1), nn.GroupNorm(1, 8), nn.Conv2d(8, 8, 1)
            self.out = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            x = self.stem(x)
            return self.out(x + self.fc(self.norm(x)))

    model = _rand_affine(Net())
    g = analyze(model, input_forward(torch.randn(1, 3, 4, 4)))
    assert set(g.unprunable) == {'out'}, g.unprunable
    assert len(set(g.out_atoms['norm'].tolist())) == 8
    slim = check_exact(model, torch.randn(1, 3, 4, 4), ratio=0.5)['slim']
    assert slim.norm.num_groups == 1 and slim.norm.num_channels == slim.stem.out_channels == 4


class LiteralWidthReshape(nn.Module):
    """mmpretrain VAN: ``x.reshape(-1, H, W, block.out_channels)``: the channel dim's size is a child's attribute,
    a literal to the running module, which pruning would not follow."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 1)
        self.block = nn.Conv2d(16, 16, 3, padding=1)
        self.block.out_channels_copy = 16  # not an attribute of the running module: unbound
        self.norm = nn.LayerNorm(16)
        self.inner = nn.Conv2d(16, 24, 1)
        self.out = nn.Conv2d(24, 2, 1)

    def forward(self, x):
        x = self.block(self.embed(x))
        h, w = x.shape[2:]
        x = self.norm(x.flatten(2).transpose(1, 2))
        x = x.reshape(-1, h, w, self.block.out_channels_copy).permute(0, 3, 1, 2)
        return self.out(F.relu(self.inner(x)))


def test_a_channel_size_given_as_an_unbound_literal_keeps_the_width_and_is_named(check_exact):
    model = LiteralWidthReshape().eval()
    x = torch.randn(2, 3, 4, 4)
    g = analyze(model, input_forward(x))
    assert g.unprunable['block'] == 'op reshape sizes them by a literal (16) that no attribute of the model holds'
    assert {u.name for u in g.units} == {'embed', 'inner'}  # the channels before and after the reshape still prune
    check_exact(model, x, x2=torch.randn(1, 3, 4, 4), ratio=0.5)  # and the slimmed model runs (it failed before)


class CoincidentBinding(LiteralWidthReshape):
    """VAN again, where the running module also holds the width by coincidence (``embed_dims[0] == 16``): the
    trace binds that attribute, slimming sets it, and the forward still reads the child's: the slimmed model
    cannot run. :func:`mmfisher.core.verify.inexact_units` finds the unit before anything is pruned."""

    def __init__(self):
        super().__init__()
        self.embed_dims = [16, 24]


def test_units_whose_slimming_fails_are_found_before_pruning_and_kept_whole():
    from mmfisher.core import PruningState
    from mmfisher.core.verify import inexact_units
    model = CoincidentBinding().eval()
    forward = input_forward(torch.randn(2, 3, 4, 4))
    g = analyze(model, forward)
    assert {u.name for u in g.units} == {'embed', 'block', 'inner'}  # the trace believes all three prune
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = inexact_units(model, g, forward)
    assert list(found) == ['block'], found
    # the batch's -1 absorbs the stale width, so it is the next layer that meets the wrong channel count
    assert found['block'].startswith("the slimmed model fails in 'inner' (Conv2d): RuntimeError: Given groups=1")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # checked on copies
    state = PruningState(model, g, inexact=found)
    block = next(i for i, u in enumerate(g.units) if u.name == 'block')
    assert not state.eligible[g.units[block].atoms].any() and state.eligible[g.units[0].atoms].any()
    assert any('kept, their slimming does not reproduce the masked model' in line for line in state.describe())
    assert inexact_units(LiteralWidthReshape().eval(), analyze(LiteralWidthReshape().eval(), forward), forward) == {}
