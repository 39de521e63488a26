"""The export safety net: a slimmed model that does not compute what the masked model computes is never written."""
import os

import numpy as np
import pytest
import torch
from torch import nn

from mmfisher.core import ChannelMasks, analyze, input_forward, random_alive
from mmfisher.hooks import export


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.bn(self.a(x))))


def _setup():
    torch.manual_seed(0)
    model = Net().eval()
    forward = input_forward(torch.randn(2, 3, 8, 8))
    graph = analyze(model, forward)
    alive = random_alive(graph, 0.5, 0)
    ChannelMasks(model, graph).set_alive(alive)
    return model, graph, alive, forward


def test_exact_export_is_written(tmp_path):
    model, graph, alive, forward = _setup()
    json_path, pth_path = export.export_pruned(model, graph, alive, str(tmp_path), '', {'x': 1}, forward=forward)
    assert os.path.isfile(json_path) and os.path.isfile(pth_path)
    state = torch.load(pth_path, weights_only=True)['state_dict']
    assert state['a.weight'].shape[0] == int(alive.sum())


def test_inexact_slimming_is_refused_and_nothing_written(tmp_path, monkeypatch):
    model, graph, alive, forward = _setup()
    real = export.slim_model

    def wrong_slim(m, g, a):  # a slimming that silently changes one weight
        cfg = real(m, g, a)
        with torch.no_grad():
            m.b.weight[0, 0] += 1.0
        return cfg

    monkeypatch.setattr(export, 'slim_model', wrong_slim)
    with pytest.raises(export.SlimmingMismatch, match='nothing was written'):
        export.export_pruned(model, graph, alive, str(tmp_path), '', {}, forward=forward)
    assert os.listdir(tmp_path) == []
