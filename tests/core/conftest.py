"""Shared helpers for the channel-grouping core tests (exposed as fixtures so no test imports this module)."""
import copy
from typing import Callable, Dict, Optional

import numpy as np
import pytest
import torch
from torch import nn

from mmfisher.core import analyze, compare_masked_slimmed, find_rule, input_forward, random_alive


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN running stats and affine params (and GN affine) so masking a channel really matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) or \
                    'FrozenBatchNorm' in type(m).__name__:
                for name in ('weight', 'bias', 'running_mean'):
                    t = getattr(m, name, None)
                    if isinstance(t, torch.Tensor):
                        t.copy_(torch.randn(t.shape, generator=g) * 0.5 + (1.0 if name == 'weight' else 0.0))
                t = getattr(m, 'running_var', None)
                if isinstance(t, torch.Tensor):
                    t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    return model


def _channels(module: nn.Module, side: str) -> int:
    rule = find_rule(module)
    return int(rule.in_channels(module) if side == 'in' else rule.out_channels(module))


def _check_exact(model: nn.Module, x: torch.Tensor, x2: Optional[torch.Tensor] = None, ratio: float = 0.4,
                 seed: int = 0, graph=None, forward: Optional[Callable] = None,
                 forward2: Optional[Callable] = None, tol: float = 1e-5) -> Dict:
    """Trace, mask ``ratio`` of every unit at random, slim a copy and check it computes what the masked model
    computes; also check every layer's channel counts in the slimmed model equal the alive positions and that
    something really got smaller. Returns the graph, alive vector and compare result."""
    torch.manual_seed(seed)
    _randomize(model, seed)
    model.eval()
    original = copy.deepcopy(model)
    if graph is None:
        graph = analyze(model, forward or input_forward(x))
    if x2 is None:
        x2 = torch.randn((2,) + tuple(x.shape[1:]), generator=torch.Generator().manual_seed(seed + 1))
    alive = random_alive(graph, ratio, seed)
    res = compare_masked_slimmed(model, graph, forward2 or input_forward(x2), alive)
    assert res['max_abs_diff'] <= tol * max(res['scale'], 1e-3), \
        f"slimmed != masked: diff {res['max_abs_diff']} at scale {res['scale']}"
    slim = res['slim']
    orig_mods, slim_mods = dict(original.named_modules()), dict(slim.named_modules())
    shrunk = 0
    for name, rule in graph.rules.items():
        if rule.is_passthrough:
            continue
        for side, atoms in (('out', graph.out_atoms.get(name)), ('in', graph.in_atoms.get(name))):
            if atoms is None or atoms.size == 0:  # layers with no tracked positions (LayerNorm)
                continue
            expect = int(((atoms < 0) | alive[np.clip(atoms, 0, None)]).sum())
            got = _channels(slim_mods[name], side)
            assert got == expect, f'{name} {side}: {got} channels after slimming, expected {expect}'
            if got < _channels(orig_mods[name], side):
                shrunk += 1
    if (~alive).any():
        assert shrunk > 0, 'atoms were removed but no layer got smaller'
    n_orig = sum(p.numel() for p in original.parameters())
    n_slim = sum(p.numel() for p in slim.parameters())
    if (~alive).any():
        assert n_slim < n_orig
    return {'graph': graph, 'alive': alive, 'res': res, 'slim': slim, 'original': original}


def _unit_of(graph, layer: str, side: str = 'out'):
    """The units holding the atoms of ``layer``'s output (or input) channels."""
    atoms = (graph.out_atoms if side == 'out' else graph.in_atoms)[layer]
    atoms = set(atoms[atoms >= 0].tolist())
    return [u for u in graph.units if atoms & set(u.atoms.tolist())]


def _fit_regression(make_net: Callable[[], nn.Module], shape, samples: int, batch: int, iters: int):
    """``make_net()`` (torch seeded 0) trained ``iters`` Adam steps on a fixed linear regression task of
    ``samples`` inputs of ``shape``: (net, the task's batches of ``batch`` as (x, y) pairs)."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    net = make_net()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, *shape, generator=g)
    y = x.flatten(1) @ (torch.randn(x[0].numel(), 4, generator=g) / 20)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    steps = samples // batch
    for it in range(iters):
        i = torch.arange(batch) + batch * (it % steps)
        loss = F.mse_loss(net(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in net.parameters():
        p.grad = None
    return net, [(x[i:i + batch], y[i:i + batch]) for i in range(0, samples, batch)]


@pytest.fixture(scope='session')
def fit_regression():
    return _fit_regression


@pytest.fixture
def randomize():
    return _randomize


@pytest.fixture
def check_exact():
    return _check_exact


@pytest.fixture
def unit_of():
    return _unit_of
