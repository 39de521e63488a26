"""The pruning state every method shares: which atoms are alive, in which order they were masked, which may be
masked, what the written structure costs, and a versioned checkpoint state (plain PyTorch + numpy).

A method (an iterative hook, a one-shot search) owns one :class:`PruningState` and asks it three things: the
atoms it may mask (:meth:`PruningState.candidates`), to mask some (:meth:`PruningState.prune`), and the
remaining cost ratios of the structure that would be written (:meth:`PruningState.ratios`, after divisor
rounding). Everything is computed from the alive vector, so every rank computes the same numbers.
"""
import difflib
import fnmatch
import hashlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from . import selection
from .cost import CostModel
from .masks import ChannelMasks
from .slim import model_fingerprint
from .units import ChannelGraph

__all__ = ['PruningState', 'NothingPrunable', 'StateMismatch', 'graph_digest', 'METRICS']

METRICS = ('flops', 'acts', 'params')


class NothingPrunable(ValueError):
    """The model has no atom the method may mask (the message lists why and the fix)."""


class StateMismatch(ValueError):
    """A saved pruning state that was made for another model, input shape or format."""


def graph_digest(graph: ChannelGraph) -> str:
    """32 hex chars over the atom count and every reader's atom map: two traces agree iff their digests do."""
    h = hashlib.sha256(str(graph.num_atoms).encode())
    for name in sorted(graph.in_atoms):
        h.update(name.encode())
        h.update(np.ascontiguousarray(graph.in_atoms[name], dtype=np.int64).tobytes())
    return h.hexdigest()[:32]


def _short(names: Sequence[str], n: int = 8) -> str:
    names = list(names)
    return ', '.join(names[:n]) + (f', ... {len(names) - n} more' if len(names) > n else '')


class PruningState:
    """Alive atoms, masking order, eligibility and costs of one model's channel graph.

    Args:
        model: the module that is pruned (its reader weights are zeroed by the masks).
        graph: its channel graph (``mmfisher.core.analyze``).
        skip: fnmatch patterns; a unit is never masked when its name, or the name of a layer producing its
            channels (a conv/linear/norm output), matches.
        prune_frozen: also allow atoms that receive no gradient (frozen stages).
        divisor: no unit keeps fewer than ``max(1, divisor)`` atoms; the written structure rounds every unit's
            kept count up to a multiple of ``divisor`` (see :func:`mmfisher.core.selection.round_up`).
        input_shape: the trace input's shape, stored in and checked against checkpoint states.
        owner: the name used in error messages (the driver, e.g. ``'FisherPruningHook'``).
        inexact: ``{unit name: reason}`` of units kept whole because their slimming does not reproduce the masked
            model (:func:`mmfisher.core.verify.inexact_units`); listed by :meth:`describe`.

    Raises:
        NothingPrunable: the graph has no atom, or none is eligible.
    """

    VERSION = 2

    def __init__(self, model: nn.Module, graph: ChannelGraph, skip: Sequence[str] = (), prune_frozen: bool = False,
                 divisor: int = 1, input_shape: Optional[Sequence[int]] = None, owner: str = 'mmfisher',
                 inexact: Optional[Dict[str, str]] = None) -> None:
        self.owner = owner
        self.skip = tuple(skip)
        self.prune_frozen = bool(prune_frozen)
        self.divisor = int(divisor)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        name = type(model).__name__
        if graph.num_atoms == 0:
            raise NothingPrunable(self._nothing_prunable(name, graph, 'the model has no prunable channels'))
        self.graph = graph
        self.fingerprint = model_fingerprint(model)
        self.digest = graph_digest(graph)
        self.unit_atoms = [u.atoms for u in graph.units]
        self.unit_of = selection.unit_index(graph.num_atoms, self.unit_atoms)
        self.skipped_units, self.unmatched_skip = self._match_skip(graph)
        eligible = np.ones(graph.num_atoms, dtype=bool)
        if not self.prune_frozen:
            eligible &= graph.trainable
        for i in self.skipped_units:
            eligible[self.unit_atoms[i]] = False
        self.inexact = dict(inexact or {})  # unit name -> why its slimming is not exact (verify.inexact_units)
        for i, u in enumerate(graph.units):
            if u.name in self.inexact:
                eligible[self.unit_atoms[i]] = False
        sizes = np.array([a.size for a in self.unit_atoms])
        eligible &= sizes[self.unit_of] > self.min_keep
        if not eligible.any():
            raise NothingPrunable(self._nothing_prunable(name, graph, 'no atom is eligible'))
        self.eligible = eligible
        self.masks = ChannelMasks(model, graph)
        self.costs = CostModel(graph)
        self.full = self.costs.totals(np.ones(graph.num_atoms, dtype=bool))
        self.order: List[int] = []        # atoms in the order they were masked
        self.step_sizes: List[int] = []   # atoms masked by each pruning step

    # ------------------------------------------------------------------ eligibility
    @property
    def min_keep(self) -> int:
        return max(1, self.divisor)

    def _match_skip(self, graph: ChannelGraph) -> Tuple[List[int], Dict[str, List[str]]]:
        """(indices of skipped units, {pattern that matched nothing: closest unit/layer names})."""
        if not self.skip:
            return [], {}
        used = set()
        producers: Dict[int, set] = {}
        for layer, atoms in graph.out_atoms.items():
            hits = [p for p in self.skip if fnmatch.fnmatchcase(layer, p)]
            if hits:
                used.update(hits)
                for a in np.unique(atoms[atoms >= 0]).tolist():
                    producers.setdefault(a, set()).add(layer)
        skipped = []
        for i, u in enumerate(graph.units):
            hits = [p for p in self.skip if fnmatch.fnmatchcase(u.name, p)]
            used.update(hits)
            if hits or any(int(a) in producers for a in u.atoms):
                skipped.append(i)
        names = {u.name for u in graph.units} | set(graph.out_atoms) | set(graph.records)
        unmatched = {}
        for p in self.skip:
            if p in used or any(fnmatch.fnmatchcase(n, p) for n in graph.records):
                continue
            stem = p.replace('*', '').replace('?', '').strip('.')
            depth = stem.count('.') + 1
            pool = sorted({'.'.join(n.split('.')[:depth]) for n in names if n})
            unmatched[p] = difflib.get_close_matches(stem, pool, n=3, cutoff=0.5)
        return skipped, unmatched

    def _nothing_prunable(self, name: str, graph: ChannelGraph, what: str) -> str:
        reasons = '; '.join(f'{k}: {v}' for k, v in list(graph.unprunable.items())[:6]) or 'none reported'
        return (f'{self.owner}: nothing to prune in {name} ({what}; {graph.num_atoms} atoms, '
                f'{int(graph.trainable.sum())} trainable, skip={self.skip}, prune_frozen={self.prune_frozen}, '
                f'divisor={self.divisor}). Unprunable layers: {reasons}. Fix: unfreeze stages or set '
                'prune_frozen=True, narrow `skip`, lower `divisor`, or check input_shape and that the model has '
                'conv/linear layers whose channels are read by other layers')

    # ------------------------------------------------------------------ alive atoms and costs
    @property
    def num_atoms(self) -> int:
        return self.graph.num_atoms

    @property
    def alive(self) -> np.ndarray:
        """(A,) bool copy of the current masks."""
        return self.masks.alive.numpy().copy()

    def candidates(self) -> np.ndarray:
        """(A,) bool: alive and eligible."""
        return self.alive & self.eligible

    def export_alive(self, alive: Optional[np.ndarray] = None, order: Optional[Sequence[int]] = None) -> np.ndarray:
        """The structure that is written: ``alive`` (default: the current masks) rounded up by ``divisor``."""
        alive = self.alive if alive is None else alive
        return selection.round_up(alive, self.unit_atoms, self.divisor, self.order if order is None else order)

    def ratios(self, alive: Optional[np.ndarray] = None, order: Optional[Sequence[int]] = None) -> Dict[str, float]:
        """Remaining flops/acts/params of the written structure relative to the unpruned model."""
        tot = self.costs.totals(self.export_alive(alive, order))
        return {k: (tot[k] / self.full[k] if self.full[k] else 1.0) for k in METRICS}

    def reaches(self, metric: str, target: float) -> Callable[[np.ndarray, List[int]], bool]:
        """``reached(alive_after, chosen)`` for :func:`mmfisher.core.selection.choose`: the written structure
        after also masking ``chosen`` has ``metric`` ratio <= ``target``."""
        return lambda alive, chosen: self.ratios(alive, self.order + list(chosen))[metric] <= target

    def choose(self, score: np.ndarray, k: int, reached: Optional[Callable] = None) -> List[int]:
        """Up to ``k`` eligible alive atoms, lowest ``score`` first (ties by index), never leaving a unit with
        fewer than ``min_keep`` atoms, stopping early once ``reached`` says so."""
        alive = self.alive
        ranked = selection.rank(score, alive & self.eligible)
        return selection.choose(ranked, alive, self.unit_of, self.min_keep, k, reached or (lambda a, c: False))

    def prune(self, atoms: Sequence[int]) -> None:
        """Mask ``atoms`` (one pruning step) and record their order."""
        atoms = [int(a) for a in atoms]
        if not atoms:
            return
        self.masks.prune(atoms)
        self.order.extend(atoms)
        self.step_sizes.append(len(atoms))

    def unit_names(self, atoms: Sequence[int]) -> List[str]:
        return sorted({self.graph.units[self.unit_of[a]].name for a in atoms})

    def describe(self) -> List[str]:
        """Log lines on what is kept and why: frozen units, skipped units, unmatched skip patterns,
        unprunable layers."""
        g = self.graph
        lines = []
        frozen = [u.name for u in g.units if not g.trainable[u.atoms].any()]
        if frozen and not self.prune_frozen:
            lines.append(f'  frozen, kept ({len(frozen)} units, their activations get no gradient): '
                         + _short(frozen))
        if self.skipped_units:
            lines.append(f'  skipped by skip={self.skip} ({len(self.skipped_units)} units): '
                         + _short([g.units[i].name for i in self.skipped_units]))
        if self.inexact:
            lines.append(f'  kept, their slimming does not reproduce the masked model (checked before pruning; '
                         f'please report the model) ({len(self.inexact)} units):')
            for unit, why in list(self.inexact.items())[:6]:
                lines.append(f'    {unit}: {why[:300]}')
            if len(self.inexact) > 6:
                lines.append(f'    ... {len(self.inexact) - 6} more')
        if g.unprunable:
            lines.append(f'  unprunable layers ({len(g.unprunable)}):')
            for layer, reason in list(g.unprunable.items())[:12]:
                lines.append(f'    {layer}: {reason}')
            if len(g.unprunable) > 12:
                lines.append(f'    ... {len(g.unprunable) - 12} more')
        return lines

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> Dict[str, Any]:
        """Tensors and python scalars only (``torch.load(weights_only=True)`` safe)."""
        return {'alive': self.masks.alive.clone(), 'order': list(self.order), 'step_sizes': list(self.step_sizes),
                'num_atoms': int(self.graph.num_atoms), 'fingerprint': self.fingerprint, 'digest': self.digest,
                'input_shape': list(self.input_shape) if self.input_shape is not None else None}

    def check_state(self, state: Dict[str, Any], where: str) -> None:
        """Raise :class:`StateMismatch` unless ``state`` (from :meth:`state_dict`) was made for this model."""
        fix = ('resume from a checkpoint of this pruning run, with the same model config and '
               f'{self.owner} input_shape, or start pruning afresh (no --resume / load_from)')
        if not isinstance(state, dict):
            raise StateMismatch(f'{where} is not a pruning state this mmfisher can read: {fix}')
        shape = tuple(state.get('input_shape') or ())
        if self.input_shape is not None and shape != self.input_shape:
            raise StateMismatch(f'checkpoint masks do not fit the model: they were traced at input_shape={shape}, '
                                f'this hook uses input_shape={self.input_shape}. Fix: set input_shape={shape} or '
                                'start pruning afresh')
        for key, mine in (('num_atoms', self.graph.num_atoms), ('fingerprint', self.fingerprint),
                          ('digest', self.digest)):
            if state.get(key) != mine:
                raise StateMismatch(f'checkpoint masks do not fit the model ({key}: checkpoint {state.get(key)!r}, '
                                    f'model {mine!r}): {fix}')
        alive = torch.as_tensor(state['alive'], dtype=torch.bool)
        if alive.shape != (self.graph.num_atoms,):
            raise StateMismatch(f'checkpoint masks do not fit the model (alive {tuple(alive.shape)}, model '
                                f'{self.graph.num_atoms} atoms): {fix}')

    def load_state_dict(self, state: Dict[str, Any], where: str = 'the pruning state') -> None:
        """Restore a state from :meth:`state_dict` (checked first) and re-apply the masks."""
        self.check_state(state, where)
        self.masks.set_alive(torch.as_tensor(state['alive'], dtype=torch.bool))
        self.order = [int(a) for a in state['order']]
        self.step_sizes = [int(k) for k in state.get('step_sizes', ())]
