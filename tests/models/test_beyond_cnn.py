"""Issue 11 on zoo models: exact slimming and at least 80% of the conv/linear output channels prunable on
ConvNeXt-T, Swin-T, ViT-B/16, ResNeSt-50 (mmpretrain) and DETR, Deformable DETR, DINO, Mask R-CNN Swin-T (mmdet),
at small inputs. ``benchmarks/prunable_share.py`` measures the same models (and writes the shares)."""
import numpy as np
import pytest
import torch

from mmfisher import model_sweep as ms
from mmfisher.model_sweep import MM_FAMILIES

FAMILIES = {name: (spec, shape, overrides) for name, (_, spec, shape, overrides) in MM_FAMILIES.items()}


# measured shares (benchmarks/results/prunable_share.json) less a margin: a regression shows here first
MIN_SHARE = {'convnext': 0.95, 'swin': 0.95, 'vit': 0.97, 'resnest': 0.95, 'detr': 0.97, 'deformable_detr': 0.83,
             'dino': 0.97, 'mask_rcnn_swin': 0.97}


def build(name):
    spec, shape, overrides = FAMILIES[name]
    return ms.build('mm', spec, shape, overrides), shape


@pytest.mark.parametrize('name', list(FAMILIES))
def test_family_slims_exactly_and_mostly_prunable(name):
    from mmfisher.core import analyze_fast, compare_masked_slimmed, random_alive
    from mmfisher.zoo import tensor_forward
    torch.manual_seed(0)
    model, shape = build(name)
    graph = analyze_fast(model, lambda m: tensor_forward(m, shape))
    summary = graph.summary()
    share = summary['channels_prunable'] / summary['channels_total']
    assert share >= 0.8, (share, graph.unprunable)
    assert share >= MIN_SHARE[name], (share, graph.unprunable)
    alive = random_alive(graph, 0.3, seed=0)
    res = compare_masked_slimmed(model, graph, tensor_forward(model, shape), alive,
                                 make_forward=lambda m: tensor_forward(m, shape))
    assert res['ok'], (res['max_abs_diff'], res['scale'], res.get('float64_max_abs_diff'))
    assert res['scale'] > 1e-3, 'outputs are (nearly) constant: the comparison would be vacuous'
    n_before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in res['slim'].parameters()) < 0.9 * n_before
    if name in ('vit', 'swin', 'detr', 'dino', 'deformable_detr', 'mask_rcnn_swin'):
        # attention heads are pruned whole: some head count went down
        heads = [(n, m.num_heads) for n, m in res['slim'].named_modules() if isinstance(getattr(m, 'num_heads', None),
                                                                                       int)]
        orig = dict((n, m.num_heads) for n, m in model.named_modules() if isinstance(getattr(m, 'num_heads', None),
                                                                                     int))
        assert any(h < orig[n] for n, h in heads), heads
    if name in ('convnext', 'swin', 'vit', 'mask_rcnn_swin'):
        # the LayerNorm-normalised residual stream is pruned
        lns = [m for m in res['slim'].modules() if isinstance(m, torch.nn.LayerNorm)]
        orig_ln = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
        assert any(a.normalized_shape[0] < b.normalized_shape[0] for a, b in zip(lns, orig_ln))


def test_vit_units_are_stream_heads_and_mlp():
    """ViT-B/16: one unit for the residual stream (patch embedding, every block's proj and fc2, the class token
    and position embedding), one per block for its 12 heads, one per block for its MLP hidden width."""
    from mmfisher.core import analyze_fast
    from mmfisher.zoo import tensor_forward
    model, shape = build('vit')
    graph = analyze_fast(model, lambda m: tensor_forward(m, shape))
    stream = [u for u in graph.units if 'backbone.patch_embed.projection' in u.producers]
    assert len(stream) == 1 and stream[0].atoms.size == 768
    assert {f'backbone.layers.{i}.attn.proj' for i in range(12)} <= set(stream[0].producers)
    for i in range(12):
        heads = [u for u in graph.units if u.producers == [f'backbone.layers.{i}.attn.qkv']]
        assert len(heads) == 1 and heads[0].atoms.size == 12
        mlp = [u for u in graph.units if u.producers == [f'backbone.layers.{i}.ffn.layers.0.0']]
        assert len(mlp) == 1 and mlp[0].atoms.size == 3072
    assert {'backbone.cls_token', 'backbone.pos_embed'} <= set(graph.param_atoms)
    assert np.all(graph.param_atoms['backbone.cls_token'][1] >= 0)
