"""Importance criteria: how much each atom matters (plain PyTorch + numpy; lower scores are masked first).

One small interface serves every pruning method (an iterative hook, a one-shot search):

1. ``attach(model, graph, masks)`` once, on the module that is pruned;
2. per training iteration on every rank: ``accumulate(scale)`` after the backward (criteria that read
   gradients), then ``collect()`` gives this rank's sums since the last call as one float64 vector, which the
   driver adds over ranks (``all_reduce``) and hands back with ``add(summed)``;
3. ``scores(alive, costs)`` once ``ready()``: (A,) float64, identical on every rank, lower = less important;
4. ``reset()`` after a pruning step, ``detach()`` when done; ``state_dict()`` / ``load_state_dict()`` for resume.

Criteria: :class:`GroupFisher` (Liu et al. 2021, the default), :class:`Taylor` (first order), :class:`L1Norm`
(Li et al. 2017), :class:`BNScale` (Liu et al. 2017, network slimming), :class:`RandomImportance`. Any of them is
normalised by what removing an atom saves (``delta``): ``'acts'``, ``'flops'`` or ``'none'``.
"""
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from . import selection
from .cost import CostModel
from .masks import ChannelMasks, FisherTaps
from .units import ChannelGraph

__all__ = ['Importance', 'GradientImportance', 'GroupFisher', 'Taylor', 'L1Norm', 'GroupMagnitude', 'BNScale',
           'RandomImportance',
           'DELTAS']

DELTAS = ('acts', 'flops', 'none')


class Importance:
    """Base criterion (see module docstring). Subclasses implement :meth:`raw_scores`.

    Args:
        delta: divide the raw score by what removing the atom saves now (``'acts'``: output activations of its
            producers; ``'flops'``: FLOPs saved in producers and readers; ``'none'``), scaled to max 1. An atom
            whose removal saves nothing scores ``inf`` under ``'acts'`` / ``'flops'``.
    """

    uses_gradients = False

    def __init__(self, delta: str = 'none') -> None:
        if delta not in DELTAS:
            raise ValueError(f'delta={delta!r} is unknown: use one of {DELTAS} (acts = memory-normalised, '
                             'the paper default)')
        self.delta = delta
        self.model: Optional[nn.Module] = None
        self.graph: Optional[ChannelGraph] = None
        self.masks: Optional[ChannelMasks] = None

    def __repr__(self) -> str:
        return f'{type(self).__name__}(delta={self.delta!r})'

    # ------------------------------------------------------------------ life cycle
    def attach(self, model: nn.Module, graph: ChannelGraph, masks: Optional[ChannelMasks] = None) -> None:
        self.model, self.graph, self.masks = model, graph, masks

    def detach(self) -> None:
        """Remove anything attached to the model (idempotent)."""

    @property
    def collecting(self) -> bool:
        return False

    @collecting.setter
    def collecting(self, value: bool) -> None:
        pass

    def accumulate(self, scale: float = 1.0) -> bool:
        """Fold in the last backward on this rank (``scale``: an AMP loss scale). False if nothing finite."""
        return True

    def collect(self) -> torch.Tensor:
        """This rank's sums since the last call (float64 vector; empty when nothing is accumulated)."""
        return torch.zeros(0, dtype=torch.float64)

    def add(self, summed: torch.Tensor) -> None:
        """Add the ranks' summed :meth:`collect` vectors."""

    def ready(self) -> bool:
        """Whether :meth:`scores` has information to work with."""
        return True

    def reset(self) -> None:
        """Forget what was accumulated (after a pruning step)."""

    # ------------------------------------------------------------------ scores
    def raw_scores(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def scores(self, alive: np.ndarray, costs: CostModel) -> np.ndarray:
        """(A,) float64, lower = masked first: :meth:`raw_scores` normalised by ``delta``."""
        raw = self.raw_scores()
        if self.delta == 'none':
            return selection.scores(raw, np.ones(raw.shape[0]))
        return selection.scores(raw, costs.deltas(alive)[self.delta])

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


class GradientImportance(Importance):
    """A criterion computed from per-sample mask gradients (``FisherTaps``), summed over ranks and iterations.

    ``collect()`` returns ``[sums (A,), samples]``; subclasses choose the sums (:attr:`source`).
    """

    uses_gradients = True
    source = 'fisher'  # FisherTaps attribute holding this rank's sums

    def __init__(self, delta: str = 'none') -> None:
        super().__init__(delta)
        self.taps: Optional[FisherTaps] = None
        self.sums: Optional[torch.Tensor] = None   # (A,) float64, summed over ranks, same on every rank
        self.samples = 0

    def attach(self, model, graph, masks=None) -> None:
        super().attach(model, graph, masks)
        self.taps = FisherTaps(model, graph, masks)
        self.sums = torch.zeros(graph.num_atoms, dtype=torch.float64)
        self.samples = 0

    def detach(self) -> None:
        if self.taps is not None:
            self.taps.remove()
            self.taps.enabled = False

    @property
    def collecting(self) -> bool:
        return self.taps is not None and self.taps.enabled

    @collecting.setter
    def collecting(self, value: bool) -> None:
        if self.taps is not None:
            self.taps.enabled = bool(value)

    def accumulate(self, scale: float = 1.0) -> bool:
        return self.taps.accumulate(scale)

    def collect(self) -> torch.Tensor:
        local = torch.cat([getattr(self.taps, self.source),
                           torch.tensor([float(self.taps.samples)], dtype=torch.float64)])
        self.taps.reset()
        return local

    def add(self, summed: torch.Tensor) -> None:
        self.sums += summed[:-1]
        self.samples += int(round(float(summed[-1])))

    def ready(self) -> bool:
        return self.samples > 0

    def reset(self) -> None:
        self.sums.zero_()
        self.samples = 0

    def state_dict(self) -> Dict[str, Any]:
        return {'sums': self.sums.clone(), 'samples': int(self.samples)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        sums = torch.as_tensor(state['sums'], dtype=torch.float64)
        if sums.shape != self.sums.shape:
            raise ValueError(f'checkpoint importance sums have shape {tuple(sums.shape)}, the model has '
                             f'{self.sums.shape[0]} atoms: resume from a checkpoint of this pruning run')
        self.sums = sums.clone()
        self.samples = int(state['samples'])


class GroupFisher(GradientImportance):
    """Group Fisher information ``F[a] = sum_n (dL_n/dm_a)^2`` (Liu et al., ICML 2021), the mask gradients of
    every reader and every call of a shared reader summed before squaring; ``delta='acts'`` by default (the
    paper's memory-normalised variant)."""

    source = 'fisher'

    def __init__(self, delta: str = 'acts') -> None:
        super().__init__(delta)

    @property
    def fisher(self) -> torch.Tensor:
        return self.sums

    def raw_scores(self) -> np.ndarray:
        return self.sums.numpy()


class Taylor(GradientImportance):
    """First-order Taylor: ``|sum_n dL_n/dm_a|``, the loss change of removing the atom to first order
    (Molchanov et al., 2017/2019), summed over ranks and the iterations since the last step."""

    source = 'grad_sum'

    def raw_scores(self) -> np.ndarray:
        return np.abs(self.sums.numpy())


def _slice_sums(w: torch.Tensor, dim: int, p: float = 1.0) -> np.ndarray:
    """(w.shape[dim],) float64: ``sum |w|^p`` over each slice of ``w`` along ``dim``."""
    return w.detach().abs().double().movedim(dim, 0).reshape(w.shape[dim], -1).pow(p).sum(1).cpu().numpy()


def _weight_out_dim(rule: Any, module: nn.Module) -> int:
    """The weight dimension that indexes output channels (1 for transposed convs, else 0)."""
    dim = getattr(rule, 'weight_out_dim', None)
    if dim is not None:
        return int(dim)
    return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0


class L1Norm(Importance):
    """L1 norm of the producers' filters (Li et al., ICLR 2017), summed over every producer of the atom.

    Args:
        layerwise: rank atoms within their unit (score = fractional rank in ``(0, 1]``, ties by norm and
            index), so a global lowest-k takes the same share of every unit: Li et al.'s layer-wise pruning.
            ``False``: the raw norms, ranked globally. Defaults to True.
        delta: as :class:`Importance`. Defaults to ``'none'``.
    """

    def __init__(self, layerwise: bool = True, delta: str = 'none') -> None:
        super().__init__(delta)
        if not isinstance(layerwise, bool):
            raise TypeError(f'layerwise={layerwise!r} must be True or False')
        self.layerwise = layerwise

    def __repr__(self) -> str:
        return f'L1Norm(layerwise={self.layerwise}, delta={self.delta!r})'

    def norms(self) -> np.ndarray:
        """(A,) float64: the producers' filter L1 norms summed per atom."""
        modules = dict(self.model.named_modules())
        score = np.zeros(self.graph.num_atoms)
        for name, atoms in self.graph.out_atoms.items():
            rule = self.graph.rules[name]
            if not rule.is_weighted:
                continue
            w = modules[name].weight.detach()
            dim = _weight_out_dim(rule, modules[name])
            per = w.abs().movedim(dim, 0).reshape(w.shape[dim], -1).sum(1).double().cpu().numpy()
            valid = atoms >= 0
            np.add.at(score, atoms[valid], per[valid])
        return score

    def raw_scores(self) -> np.ndarray:
        norms = self.norms()
        if not self.layerwise:
            return norms
        out = np.zeros_like(norms)
        for unit in self.graph.units:
            atoms = np.asarray(unit.atoms, dtype=np.int64)
            order = atoms[np.lexsort((atoms, norms[atoms]))]
            out[order] = np.arange(1, atoms.size + 1) / atoms.size
        return out


class GroupMagnitude(Importance):
    """The group magnitude of Torch-Pruning's ``MagnitudeImportance`` (Fang et al., CVPR 2023, DepGraph): per atom,
    ``sum |w|^p`` over every weight slice the atom owns: its producers' filters (output slices), its consumers'
    input slices (a plain conv / linear whose weight has one input column per atom; grouped and depthwise readers
    are left out) and its norms' scales, averaged over the slices found. Raw scores (no normalisation): rank within
    units (BalancedPruning) or compare units of similar scale.

    Args:
        p: the norm's power. Defaults to 2.
        delta: as :class:`Importance`. Defaults to ``'none'``.
    """

    def __init__(self, p: float = 2, delta: str = 'none') -> None:
        super().__init__(delta)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or p <= 0:
            raise ValueError(f'p={p!r} must be a number > 0, e.g. 2')
        self.p = float(p)

    def __repr__(self) -> str:
        return f'GroupMagnitude(p={self.p:g}, delta={self.delta!r})'

    def raw_scores(self) -> np.ndarray:
        modules = dict(self.model.named_modules())
        score = np.zeros(self.graph.num_atoms)
        count = np.zeros(self.graph.num_atoms)

        def add(atoms: np.ndarray, per: np.ndarray) -> None:
            valid = atoms >= 0
            np.add.at(score, atoms[valid], per[valid])
            np.add.at(count, atoms[valid], 1)

        for name, atoms in self.graph.out_atoms.items():
            rule = self.graph.rules[name]
            w = getattr(modules[name], 'weight', None)
            if not isinstance(w, torch.Tensor):
                continue
            if rule.is_norm and w.numel() == atoms.size:
                add(atoms, _slice_sums(w.reshape(-1), 0, self.p))
            elif rule.is_weighted:
                dim = _weight_out_dim(rule, modules[name])
                if w.shape[dim] == atoms.size:
                    add(atoms, _slice_sums(w, dim, self.p))
        for name, atoms in self.graph.in_atoms.items():
            w = getattr(modules[name], 'weight', None)
            if not isinstance(w, torch.Tensor) or w.dim() < 2:
                continue
            in_dim = 1 - _weight_out_dim(self.graph.rules[name], modules[name])
            if w.shape[in_dim] != atoms.size or getattr(modules[name], 'groups', 1) != 1:
                continue  # grouped / depthwise or flattened readers: no one input column per atom
            add(atoms, _slice_sums(w, in_dim, self.p))
        return score / np.maximum(count, 1)


class BNScale(Importance):
    """``|gamma|`` of the norm layers over the atom's channels (Liu et al., ICCV 2017, network slimming), summed
    over every norm layer producing the atom; atoms with no affine norm score ``inf`` (kept)."""

    def raw_scores(self) -> np.ndarray:
        modules = dict(self.model.named_modules())
        score = np.zeros(self.graph.num_atoms)
        seen = np.zeros(self.graph.num_atoms, dtype=bool)
        for name, atoms in self.graph.out_atoms.items():
            if not self.graph.rules[name].is_norm:
                continue
            weight = getattr(modules[name], 'weight', None)
            if not isinstance(weight, torch.Tensor) or weight.numel() != atoms.size:
                continue
            per = weight.detach().abs().double().cpu().numpy()
            valid = atoms >= 0
            np.add.at(score, atoms[valid], per[valid])
            seen[atoms[valid]] = True
        score[~seen] = np.inf
        return score


class RandomImportance(Importance):
    """Uniformly random scores, identical on every rank: a new draw per :meth:`scores` call from
    ``numpy.random.default_rng([seed, call])`` (the call count is part of the checkpoint state)."""

    def __init__(self, seed: int = 0, delta: str = 'none') -> None:
        super().__init__(delta)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f'seed={seed!r} must be an int >= 0')
        self.seed = seed
        self.calls = 0

    def __repr__(self) -> str:
        return f'RandomImportance(seed={self.seed}, delta={self.delta!r})'

    def raw_scores(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.calls])
        self.calls += 1
        return rng.random(self.graph.num_atoms)

    def state_dict(self) -> Dict[str, Any]:
        return {'calls': int(self.calls)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.calls = int(state.get('calls', 0))
