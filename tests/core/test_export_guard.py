"""The export safety net: a slimmed model that does not compute what the masked model computes is never written."""
import os

import numpy as np
import pytest
import torch
from torch import nn

from mmfisher.core import ChannelMasks, analyze, input_forward, random_alive
from mmfisher.core import export


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


def _break_slimming(monkeypatch):
    """Make export's slimming silently change one weight of the slimmed copy."""
    real = export.slim_model

    def wrong_slim(m, g, a):
        cfg = real(m, g, a)
        with torch.no_grad():
            m.b.weight[0, 0] += 1.0
        return cfg

    monkeypatch.setattr(export, 'slim_model', wrong_slim)


def test_inexact_slimming_is_refused_and_nothing_written(tmp_path, monkeypatch):
    model, graph, alive, forward = _setup()
    _break_slimming(monkeypatch)
    with pytest.raises(export.SlimmingMismatch, match='nothing was written'):
        export.export_pruned(model, graph, alive, str(tmp_path), '', {}, forward=forward)
    assert os.listdir(tmp_path) == []


def test_a_slimmed_model_that_fails_to_run_names_the_module_and_nothing_is_written(tmp_path, monkeypatch):
    model, graph, alive, forward = _setup()
    real = export.slim_model

    def stale_slim(m, g, a):  # the reader keeps its unpruned width: the slimmed forward cannot run
        cfg = real(m, g, a)
        m.b = nn.Conv2d(8, 4, 1)
        return cfg

    from mmfisher.core import verify
    monkeypatch.setattr(export, 'slim_model', stale_slim)
    monkeypatch.setattr(verify, 'slim_model', stale_slim)  # the search for the culprits slims the same way
    with pytest.raises(export.SlimmingMismatch, match=r"the slimmed model does not run like the masked one \(the "
                       r"slimmed model fails in 'b' \(Conv2d\): RuntimeError: .*\); nothing was written\. The units "
                       r"whose slimming fails in this structure: \['a'\]\. Fix: add them to the hook's `skip` "
                       r"\(skip=\['a'\]\)"):
        export.export_pruned(model, graph, alive, str(tmp_path), '', {}, forward=forward)
    assert os.listdir(tmp_path) == []


def _float64_forward(m):
    """The trace forward for any copy of the model: inputs in the model's dtype."""
    dtype = next(m.parameters()).dtype
    return input_forward(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype))


def test_float64_recheck_does_not_excuse_a_wrong_slimming(tmp_path, monkeypatch):
    model, graph, alive, forward = _setup()
    _break_slimming(monkeypatch)
    with pytest.raises(export.SlimmingMismatch, match='nothing was written'):
        export.export_pruned(model, graph, alive, str(tmp_path), '', {}, forward=forward,
                             make_forward=_float64_forward)
    assert os.listdir(tmp_path) == []


class TopK(nn.Module):
    """Picks the 4 highest-scoring of 16 positions, like DINO's query selection, summing the score's terms in
    one of two orders: the same function, different float rounding (as masked vs slimmed convs)."""

    def __init__(self, order):
        super().__init__()
        self.order = order
        self.dummy = nn.Parameter(torch.zeros(()))  # carries the dtype

    def forward(self, x):
        x0, x1, x2 = x[:, 0], x[:, 1], x[:, 2]
        score = (x0 + x1) + x2 if self.order == 'a' else (x2 + x1) + x0
        idx = score.topk(4, dim=1).indices
        return torch.gather(x1, 1, idx) + self.dummy


def _near_ties(dtype):
    """Scores 0.3 + 1e-9 * i in exact arithmetic, hidden under terms of +-10..1e4 that cancel."""
    i = torch.arange(16, dtype=torch.float64)
    big = 10 ** (1 + 3 * torch.rand(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    return torch.stack([0.3 + 1e-9 * i, big, -big])[None].to(dtype)


def test_topk_flip_in_float32_is_rechecked_in_float64():
    """In float32 the two summation orders pick different positions (the outputs differ by ~1e3); in float64
    they pick the same ones, so the check passes; without make_forward it fails."""
    from mmfisher.core import outputs_agree
    ref, cand = TopK('a').eval(), TopK('b').eval()
    forward = input_forward(_near_ties(torch.float32))
    plain = outputs_agree(ref, cand, forward, rtol=1e-4)
    assert plain['ok'] is False and plain['max_abs_diff'] > 1.0
    res = outputs_agree(ref, cand, forward, rtol=1e-4,
                        make_forward=lambda m: input_forward(_near_ties(next(m.parameters()).dtype)))
    assert res['ok'] is True and res['float64_max_abs_diff'] == 0.0
    assert ref.dummy.dtype == torch.float32  # the float64 copies leave the models as they were
