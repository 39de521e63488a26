"""Rule 17: real architectures from torchvision: exact slimming and most channels prunable.

How long each takes is measured by benchmarks/trace_torchvision.py (benchmarks/results/trace_torchvision.json),
not asserted here: a wall-time limit depends on the machine and its load, not on the code under test.
"""
import numpy as np
import pytest
import torch

torchvision = pytest.importorskip('torchvision')

from mmfisher.core import analyze, compare_masked_slimmed, input_forward, random_alive  # noqa: E402

MODELS = ['resnet18', 'mobilenet_v2', 'densenet121', 'shufflenet_v2_x0_5', 'efficientnet_b0', 'regnet_x_400mf',
          'resnext50_32x4d']


def _randomize_norms(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._NormBase):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@pytest.mark.parametrize('arch', MODELS)
def test_torchvision_exact_and_prunable(arch):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10).eval()
    _randomize_norms(model, 0)
    g = analyze(model, input_forward(torch.randn(1, 3, 64, 64)))
    s = g.summary()
    frac = s['channels_prunable'] / s['channels_total']
    assert frac >= 0.8, f'{arch}: only {frac:.2%} prunable; unprunable: {g.unprunable}'
    assert not g.unknown_ops, f'{arch}: ops the tracer could not map: {g.unknown_ops}'
    # only the classifier keeps its outputs
    last = [n for n, r in g.rules.items() if r.role == 'weighted'][-1]
    assert g.unprunable == {last: 'reaches the model output'}, g.unprunable
    alive = random_alive(g, 0.3, seed=0)
    assert (~alive).sum() > 0.2 * g.num_atoms
    res = compare_masked_slimmed(model, g, input_forward(torch.randn(2, 3, 64, 64)), alive)
    assert res['max_abs_diff'] <= 1e-5 * res['scale'] + 1e-6, (arch, res['max_abs_diff'], res['scale'])
    slim = res['slim']
    n_full = sum(p.numel() for p in model.parameters())
    n_slim = sum(p.numel() for p in slim.parameters())
    assert n_slim < 0.9 * n_full, (arch, n_slim, n_full)
