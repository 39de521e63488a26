"""Check that slimming is exact: mask a random share of every unit, slim a copy, compare outputs."""
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .copying import deepcopy_module
from .masks import ChannelMasks
from .outputs import output_tensors
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


def compare_masked_slimmed(model: nn.Module, graph: ChannelGraph, forward: Callable[[nn.Module], Any],
                           alive: np.ndarray, rtol: float = 1e-4,
                           make_forward: Optional[Callable[[nn.Module], Callable[[nn.Module], Any]]] = None
                           ) -> Dict[str, Any]:
    """Outputs of ``model`` masked to ``alive`` vs a slimmed deep copy, in eval mode without autograd.

    Returns max_abs_diff, scale (max |output|), ok (see :func:`outputs_agree`, which ``rtol`` and
    ``make_forward`` are passed to), the slimmed model and its channel config. ``model`` ends up masked (reader
    weights zeroed).
    """
    model.eval()
    slim = deepcopy_module(model)
    masks = ChannelMasks(model, graph)
    masks.set_alive(alive)
    cfg = slim_model(slim, graph, alive)
    slim.eval()
    result = outputs_agree(model, slim, forward, rtol, make_forward)
    return dict(result, slim=slim, config=cfg)


def max_output_diff(reference: nn.Module, candidate: nn.Module, forward: Callable[[nn.Module], Any]
                    ) -> Dict[str, float]:
    """Max abs difference between the outputs of two models on ``forward`` (both run in eval mode without
    autograd; their train/eval modes are restored), over the tensors :func:`~mmfisher.core.outputs.output_tensors`
    finds in their outputs. Returns ``{'max_abs_diff', 'scale'}``; raises RuntimeError
    if the outputs differ in number or shape."""
    modes = [(m, m.training) for m in list(reference.modules()) + list(candidate.modules())]
    try:
        reference.eval()
        candidate.eval()
        with torch.no_grad():
            ref = output_tensors(forward(reference))
            got = output_tensors(_naming_failure(candidate, forward))
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
            diff = max(diff, float((a.double() - b.double()).abs().max()))
            scale = max(scale, float(a.double().abs().max()))
    return {'max_abs_diff': diff, 'scale': scale}


def _naming_failure(model: nn.Module, forward: Callable[[nn.Module], Any]) -> Any:
    """``forward(model)``; an error it raises is re-raised as a RuntimeError that names the innermost module
    whose forward was running (where a slimmed layer met a tensor of another width: the ``skip`` to try)."""
    running: list = []

    def enter(name: str):
        def hook(module, args) -> None:
            running.append(name)
        return hook

    def leave(name: str):
        def hook(module, args, out) -> None:
            if running and running[-1] == name:
                running.pop()
        return hook

    handles = []
    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(enter(name)))
        handles.append(m.register_forward_hook(leave(name)))
    try:
        return forward(model)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
        where = running[-1] if running else ''
        kind = type(model.get_submodule(where)).__name__ if where else type(model).__name__
        raise RuntimeError(f'the slimmed model fails in {where or "the model"!r} ({kind}): '
                           f'{type(exc).__name__}: {exc}') from exc
    finally:
        for h in handles:
            h.remove()


def outputs_agree(reference: nn.Module, candidate: nn.Module, forward: Callable[[nn.Module], Any],
                  rtol: float = 1e-4, make_forward: Optional[Callable[[nn.Module], Callable[[nn.Module], Any]]] = None
                  ) -> Dict[str, Any]:
    """:func:`max_output_diff` plus ``ok`` (max abs diff <= ``rtol`` x output scale).

    If they disagree and ``make_forward(m)`` (a forward for model ``m``, inputs in ``m``'s dtype) is given, the
    comparison is repeated on float64 copies, and that decides ``ok``: a top-k or sort over near-equal scores
    (DINO's query selection picks 900 of thousands) can pick other elements after float32 rounding differences
    of 1e-7 between the masked and the slimmed model and change outputs by O(1); in float64 such flips vanish,
    while a wrongly slimmed model stays wrong. ``float64_max_abs_diff`` / ``float64_scale`` are then added.
    """
    res: Dict[str, Any] = dict(max_output_diff(reference, candidate, forward))
    res['ok'] = res['max_abs_diff'] <= rtol * max(res['scale'], 1e-12)
    if res['ok'] or make_forward is None:
        return res
    ref64, cand64 = deepcopy_module(reference).double(), deepcopy_module(candidate).double()
    r64 = max_output_diff(ref64, cand64, make_forward(ref64))
    del ref64, cand64
    res.update(float64_max_abs_diff=r64['max_abs_diff'], float64_scale=r64['scale'],
               ok=r64['max_abs_diff'] <= rtol * max(r64['scale'], 1e-12))
    return res


def inexact_units(model: nn.Module, graph: ChannelGraph, forward: Callable[[nn.Module], Any], ratio: float = 0.5,
                  seed: int = 0, rtol: float = 1e-4,
                  make_forward: Optional[Callable[[nn.Module], Callable[[nn.Module], Any]]] = None,
                  units: Optional[Sequence[int]] = None, alive: Optional[np.ndarray] = None) -> Dict[str, str]:
    """The units whose pruning the slimmed model does not reproduce: ``{unit name: what went wrong}``.

    A slimmed copy with ``ratio`` of every unit's atoms masked is compared with the masked model
    (:func:`compare_masked_slimmed`, on deep copies: ``model`` is not changed). When it runs and agrees (the usual
    case: one slimming, two forwards) nothing is returned; otherwise the units are split in halves and each half
    checked alone, down to the single units that fail (a half that fails only together with the other is kept
    whole). A slimming the tracer got wrong (a width a module reads from an attribute the trace could not tie to
    its channels) is then kept whole and named, instead of being found by the export check at the end.
    ``units``: the unit indices to check (default: every unit). ``alive``: check this structure instead of
    random masks (each unit's atoms as ``alive`` has them): which units make a given structure fail.
    """
    todo = list(range(len(graph.units))) if units is None else list(units)

    given = None if alive is None else np.asarray(alive, dtype=bool)

    def failure(subset: Sequence[int]) -> Optional[str]:
        rng = np.random.default_rng(seed)
        keep = np.ones(graph.num_atoms, dtype=bool)
        for i in subset:
            atoms = graph.units[i].atoms
            if given is not None:
                keep[atoms] = given[atoms]
                continue
            k = min(int(round(ratio * atoms.size)), atoms.size - 1)
            if k > 0:
                keep[rng.choice(atoms, size=k, replace=False)] = False
        if keep.all():
            return None
        try:
            res = compare_masked_slimmed(deepcopy_module(model), graph, forward, keep, rtol, make_forward)
        except RuntimeError as exc:
            return str(exc)
        if res['ok']:
            return None
        return (f'the slimmed model computes otherwise (max abs diff {res["max_abs_diff"]:.3g}, output scale '
                f'{res["scale"]:.3g})')

    def search(subset: List[int], why: str) -> Dict[int, str]:
        if len(subset) == 1:
            return {subset[0]: why}
        halves = (subset[:len(subset) // 2], subset[len(subset) // 2:])
        found: Dict[int, str] = {}
        for half in halves:
            w = failure(half)
            if w is not None:
                found.update(search(half, w))
        return found or {i: why for i in subset}

    why = failure(todo)
    if why is None:
        return {}
    return {graph.units[i].name: w for i, w in sorted(search(todo, why).items())}
