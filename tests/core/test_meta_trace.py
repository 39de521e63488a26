"""analyze_fast: the meta-device trace gives the same graph as the real trace, and falls back when values are
needed (data-dependent indices)."""
import numpy as np
import torch
import torchvision
from torch import nn

from mmfisher.core import analyze, analyze_fast, input_forward


def _same(a, b):
    assert a.num_atoms == b.num_atoms
    assert a.unprunable == b.unprunable
    for k in b.in_atoms:
        assert np.array_equal(a.in_atoms[k], b.in_atoms[k]), k
    for k in b.out_atoms:
        assert np.array_equal(a.out_atoms[k], b.out_atoms[k]), k
    assert np.array_equal(a.trainable, b.trainable)


def _forward(shape):
    def make(m):
        device = next(m.parameters()).device
        return input_forward(torch.randn(shape).to(device))
    return make


def test_meta_trace_matches_real_on_torchvision_models():
    for name in ('resnet18', 'mobilenet_v2', 'shufflenet_v2_x0_5', 'densenet121'):
        model = getattr(torchvision.models, name)(num_classes=10)
        fast = analyze_fast(model, _forward((1, 3, 64, 64)))
        assert fast.device == 'meta', name
        _same(fast, analyze(model, input_forward(torch.randn(1, 3, 64, 64))))
        assert next(model.parameters()).device.type == 'cpu'  # the model itself is untouched


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.a(x)
        rows = torch.nonzero(h[:, 0, 0, 0] > -1e9).flatten()  # value-dependent row selection
        return self.b(h[rows])


def test_meta_trace_falls_back_to_real_when_values_are_needed():
    model = DataDependent()
    graph = analyze_fast(model, _forward((2, 3, 4, 4)))
    assert graph.device == 'real'
    _same(graph, analyze(model, input_forward(torch.randn(2, 3, 4, 4))))
