"""Check that slimming is exact: mask a random share of every unit, slim a copy, compare outputs."""
from typing import Any, Callable, Dict, List

import numpy as np
import torch
from torch import nn

from .copying import deepcopy_module
from .masks import ChannelMasks
from .slim import slim_model
from .units import ChannelGraph


def random_alive(graph: ChannelGraph, ratio: float, seed: int = 0) -> np.ndarray:
    """Mask ``ratio`` of the atoms of every unit (at least one atom is kept per unit)."""
    rng = np.random.default_rng(seed)
    alive = np.ones(graph.num_atoms, dtype=bool)
    for unit in graph.units:
        n = unit.atoms.size
        k = min(int(round(ratio * n)), n - 1)
        if k > 0:
            alive[rng.choice(unit.atoms, size=k, replace=False)] = False
    return alive


def _tensors(obj: Any) -> List[torch.Tensor]:
    out: List[torch.Tensor] = []
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            out += _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out += _tensors(v)
    return out


def compare_masked_slimmed(model: nn.Module, graph: ChannelGraph, forward: Callable[[nn.Module], Any],
                           alive: np.ndarray) -> Dict[str, Any]:
    """Outputs of ``model`` masked to ``alive`` vs a slimmed deep copy, in eval mode without autograd.

    Returns max_abs_diff, scale (max |output|), the slimmed model and its channel config. ``model`` ends up
    masked (reader weights zeroed).
    """
    model.eval()
    slim = deepcopy_module(model)
    masks = ChannelMasks(model, graph)
    masks.set_alive(alive)
    cfg = slim_model(slim, graph, alive)
    slim.eval()
    result = max_output_diff(model, slim, forward)
    return dict(result, slim=slim, config=cfg)


def max_output_diff(reference: nn.Module, candidate: nn.Module, forward: Callable[[nn.Module], Any]
                    ) -> Dict[str, float]:
    """Max abs difference between the outputs of two models on ``forward`` (both run in eval mode without
    autograd; their train/eval modes are restored). Returns ``{'max_abs_diff', 'scale'}``; raises RuntimeError
    if the outputs differ in number or shape."""
    modes = [(m, m.training) for m in list(reference.modules()) + list(candidate.modules())]
    try:
        reference.eval()
        candidate.eval()
        with torch.no_grad():
            ref = _tensors(forward(reference))
            got = _tensors(forward(candidate))
    finally:
        for m, mode in modes:
            m.training = mode
    if len(ref) != len(got):
        raise RuntimeError(f'slimmed model returned {len(got)} tensors, masked model {len(ref)}')
    diff, scale = 0.0, 0.0
    for a, b in zip(ref, got):
        if a.shape != b.shape:
            raise RuntimeError(f'slimmed output shape {tuple(b.shape)} != masked {tuple(a.shape)}')
        if a.numel():
            diff = max(diff, float((a.float() - b.float()).abs().max()))
            scale = max(scale, float(a.float().abs().max()))
    return {'max_abs_diff': diff, 'scale': scale}
