"""Balanced one-shot filter pruning (seed 003; Li et al., ACCV 2020, arXiv 2010.06821), in plain PyTorch + numpy.

A trained model is pruned in one pass over a few calibration batches, without training; one fine-tune follows.

1. **Rank.** Every unit (a group of coupled channels: a residual stream, the FPN levels with the shared head
   reading them, ... : the paper's "layer group", so channels stay aligned across short connections) ranks its
   eligible atoms by an importance criterion, lowest first: Group Fisher from the calibration batches' gradients by
   default (``GroupFisher(delta='none')``), or any :mod:`mmfisher.core.importance` criterion (``L1Norm``,
   ``BNScale``, ...).
2. **Curves.** For each unit *alone*, the loss variation ``V_u(k) = L(mask the unit's k lowest atoms) - L`` is
   measured on the calibration batches (real forwards of the training loss, the model in training mode with its
   stochastic layers and stored norm statistics frozen: :func:`loss_mode`, ``model_mode='train'``; the masks undone
   exactly after each: :meth:`ChannelMasks.trial`; the batch norms that train normalise with each batch's own statistics, as once
   re-estimated for the candidate: ``norm_stats='batch'``, :mod:`mmfisher.core.norm_stats`) for ``k`` on a grid of
   shares ``r`` of the unit's atoms (``grid``, plus the most the unit may lose). The curve is made monotone (running
   maximum, from ``V(0) = 0``) and read at every ``k`` by linear interpolation between measured points. The unit's
   rate at a threshold ``tau`` is the largest ``k`` with ``V_u(k) <= tau`` (``allocation='variation'``, the
   seed's rule), or with ``max_{j<=k} V_u(j) / C_u(j) <= tau`` (``allocation='variation_per_cost'``: ``C_u(k)``
   is the share of the target metric the unit's ``k`` atoms free alone, so every unit stops at the same loss
   rise per FLOP saved, the condition for the least total rise at the target). The points are measured one at a time
   (each unit's lowest share first; next, the open unit's point with the lowest second-order estimate); after each,
   ``tau_up``, the largest threshold the search reads on the curves as they are (the gap filling's scan included),
   bounds the final ``tau``, and a unit whose curve already rose above it is not measured further (its rows up to
   ``tau_up`` are fixed): the same structure as the whole grid gives, at a fraction of the forwards
   (``full_curves=True`` measures everything). ``mode='estimated'`` replaces the measured curves with the
   second-order estimate from the Fisher sums, ``V_u(k) = 0.5 * sum_{first k atoms} F / N`` (``N`` calibration
   samples): no forward per grid point, every ``k`` exact, but the cross terms between atoms and everything beyond
   second order are ignored. The structure the estimate chose is then checked with one forward per batch; when its
   real loss rise exceeds the estimates ``ESTIMATE_TRUST`` times, the *repair rounds* (``repair_rounds``) measure
   every unit alone at its rate, raise its curve to the measurement (:func:`_corrected`: never below the
   estimate) and search again, until every chosen rate's measurement agrees with its curve.
3. **Search.** The remaining ``metric`` ratio (flops / acts / params of the written structure, after the
   divisor's rounding: :meth:`PruningState.ratios`) falls monotonically as ``tau`` grows. ``tau`` is found by
   bisection over the sorted breakpoints of the cached curves (the values at which some unit's rate changes), so
   it converges exactly in ``ceil(log2(breakpoints))`` steps (10-15 for real models), each step costing one
   numpy cost evaluation and no forward. Ties at the final ``tau`` are split in the order of the units' shares
   (evenly over the tied units), so the target is met to one atom; when that atom is coarse (a stream channel can free
   several % of the FLOPs) and overshoots by more than half the tolerance, it is skipped (with its unit's later
   atoms) and the next atoms in threshold order fill the gap, so the structure lands close below the target (the
   fill stops at the first structure within half the tolerance, or after ``FILL_SCAN`` atoms).
4. **Prune** every unit at its rate at once (only atoms the written structure really removes are masked, so the
   masks equal the structure even with a divisor), re-estimate the trained batch norms' stored statistics for
   it (``recalibrate_norms``), then measure the combined structure's real calibration loss
   and report it beside the sum of the units' variations (the method's additivity assumption; with
   ``norm_stats='batch'`` the re-estimation's own forwards give it, no pass of its own).

Which mode fits: ``measured`` costs at most ``units x grid points x batches`` forwards (no backward except the
Fisher pass), each only from its unit's first changed layer on (``replay_mb``: the module calls before it, and the
``invariant`` methods such as a detector head's target assignment, are answered from records of their unchanged
calls made in earlier points: :mod:`mmfisher.core.replay`; the same curves bit for bit), and sees every
nonlinearity: use it whenever that fits the time (all tiny and ImageNet/COCO-size models on a GPU, small ones on
a CPU). ``estimated`` costs one forward + backward per batch (the Fisher pass)
whatever the model: use it when the measured curves are too slow (a large detector on a CPU, many units); its
tau is in the estimate's units. The estimate holds near the trained weights only: on a well-trained model a
unit's Fisher sums can be near zero while removing most of it is costly (measured on the tiny RetinaNet trained
6x its schedule: it cut the classification branch to one channel, 0.000 mAP right after pruning, where the
measured curves gave 0.819): the repair rounds catch that at the cost of about one point per unit and round
(``units x batches`` forwards, a grid's fraction of the measured mode), and the run warns when the combined
structure's real loss rise still exceeds the units' curves ``ESTIMATE_TRUST`` times; ``max_share < 1`` bounds
the damage. The measured mode warns when many of its
points lowered the loss (``NOISE_SHARE``): a model not at a minimum of the calibration loss, or one whose loss on
the batches is near 0 (a classifier that fits them exactly), where the variations are noise.

Label-free: the loss is whatever ``loss_fn(batch)`` returns, e.g. a distillation loss against a frozen copy of
the unpruned model (the label-free distiller's), or a task loss. Distributed: pass ``reduce`` (a sum over ranks);
every rank then sees the same sums and chooses the same structure. Nothing here imports OpenMMLab.
"""
import contextlib
import math
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .importance import GradientImportance, GroupFisher, Importance
from .norm_stats import batch_statistics, recalibrate, trained_norms
from .replay import ActivationReplay
from .state import METRICS, PruningState

__all__ = ['BalancedPruning', 'BalancedResult', 'UnitCurve', 'TargetUnreachable', 'NonFiniteLoss',
           'NoCalibrationData', 'DEFAULT_GRID', 'MODES']

DEFAULT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MODES = ('measured', 'estimated')
NORM_STATS = ('running', 'batch')
ALLOCATIONS = ('variation', 'variation_per_cost')
MODEL_MODES = ('train', 'eval')
# estimated mode: warn when the combined structure's real loss rise exceeds the units' estimates this many times
ESTIMATE_TRUST = 10.0
# measured mode: warn when at least this share of the measured points (and NOISE_POINTS of them) lowered the
# calibration loss: the variations are then at the loss's noise floor (measured on the tiny ResNet trained 36x
# its schedule, training loss 5e-7: 38-41% of the points below the base, the combined rise 25-270x the units'
# sum; on the tiny RetinaNet, loss 0.02: 1 point in 100, 0.8x)
NOISE_SHARE = 0.2
NOISE_POINTS = 5
# estimated mode, repair rounds: a unit's measured variation at its rate agrees with its curve when it is at most
# REPAIR_SLACK times the curve's value there (plus REPAIR_FLOOR times the unpruned loss, the calibration noise)
REPAIR_SLACK = 2.0
REPAIR_FLOOR = 0.01


class TargetUnreachable(ValueError):
    """No threshold reaches the target (the message gives the best reachable ratio and the fix)."""


class NonFiniteLoss(ValueError):
    """The calibration loss of the unpruned model is NaN or infinite."""


class NoCalibrationData(ValueError):
    """There are no calibration batches."""


def _sum_ranks(t: torch.Tensor) -> torch.Tensor:
    return t


# modules whose training forward draws at random, by class name (timm's / mmcv's DropPath, torchvision's
# StochasticDepth, DropBlock): lower-cased, underscores dropped
_STOCHASTIC_NAMES = ('droppath', 'stochasticdepth', 'dropblock')


def _stochastic(m: nn.Module) -> bool:
    """Dropout of any kind (``nn.Dropout*``, ``AlphaDropout``), attention dropout (``nn.MultiheadAttention``),
    drop-path / stochastic depth / DropBlock."""
    if isinstance(m, (nn.modules.dropout._DropoutNd, nn.MultiheadAttention)):
        return True
    name = type(m).__name__.lower().replace('_', '')
    return any(k in name for k in _STOCHASTIC_NAMES)


@contextlib.contextmanager
def _flags_restored(module: nn.Module) -> Iterator[None]:
    """Every submodule's train flag restored after the block."""
    flags = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode for the block (``model_mode='eval'``: a loss of the model's inference
    outputs), each one's flag restored after."""
    with _flags_restored(module):
        module.eval()
        yield


@contextlib.contextmanager
def loss_mode(module: nn.Module) -> Iterator[None]:
    """The model as its training loop runs it, made deterministic, for the block; every flag restored after.

    ``module.train()`` first, so what branches on ``self.training`` gives its training outputs and loss (VFNet's
    head returns its refined boxes only in training, GoogLeNet its auxiliary logits; a backbone's own ``train()``
    keeps its frozen stages and ``norm_eval`` norms in eval mode, a distiller its teacher); then every norm with
    stored statistics (stored statistics used, never updated; :func:`~.norm_stats.batch_statistics` makes the
    trained ones normalise with the batch's own) and every stochastic layer (dropout, attention dropout,
    drop-path) in eval mode, so the same batch gives the same loss at every measurement."""
    with _flags_restored(module):
        module.train()
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) or _stochastic(m):
                m.eval()
        yield


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's RNG seeded for the block (a stochastic loss, e.g. an RoI sampler, draws the same for every
    measurement of a batch) and restored after, so the caller's random stream is untouched."""
    devices = [device] if device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed(seed)
        yield


def _second_order(c: 'UnitCurve', fisher: np.ndarray, samples: int) -> np.ndarray:
    """The estimate ``V(k) = 0.5 * sum_{first k ranked atoms} F / N`` for ``k = 1..k_max`` (``fisher``: the sums
    over ``N = samples`` calibration samples)."""
    return 0.5 * np.cumsum(fisher[c.ranked[:c.k_max]]) / max(samples, 1)


def _corrected(estimate: np.ndarray, checks: Dict[int, float]) -> np.ndarray:
    """A unit's estimated curve (``V(k)``, ``k = 1..k_max``) raised to its measured points ``checks`` (``k`` ->
    measured variation): up to the last measured ``k`` the larger of the estimate and the measured points' linear
    interpolation (from ``V(0) = 0``); beyond it the estimate scaled by the last point's measured / estimated ratio
    (never below 1) and at least that point's value. Never below the estimate; monotone after
    :meth:`UnitCurve.set_points`."""
    if not checks:
        return estimate
    k = np.arange(1, estimate.size + 1)
    out = estimate.astype(np.float64).copy()
    bad = [kk for kk, m in checks.items() if not math.isfinite(m)]
    if bad:  # a NaN / inf loss there: that share and every larger one are out of reach, as in measured curves
        out[k >= min(bad)] = np.inf
    ks = np.array(sorted(kk for kk, m in checks.items() if math.isfinite(m)), dtype=np.int64)
    if ks.size:
        ms = np.maximum(np.array([checks[int(kk)] for kk in ks], dtype=np.float64), 0.0)
        inside = k <= ks[-1]
        out[inside] = np.maximum(out[inside], np.interp(k[inside], np.concatenate([[0], ks]),
                                                        np.concatenate([[0.0], ms])))
        last = float(estimate[ks[-1] - 1])
        ratio = max(1.0, ms[-1] / last) if last > 0 else 1.0
        out[~inside] = np.maximum(out[~inside] * ratio, ms[-1])
    return np.where(np.isnan(out), np.inf, out)


def _as_float(loss: Any) -> float:
    if isinstance(loss, torch.Tensor):
        return float(loss.detach().float().sum())
    return float(loss)


class UnitCurve:
    """One unit's loss-variation curve over ``k`` = atoms masked (its ``ranked`` atoms, lowest first).

    ``ks`` / ``variation``: the points (measured, or the estimate at the grid); ``monotone``: their running
    maximum (NaN and inf stay inf). ``dense`` (optional): the estimate at every ``k = 1..k_max``.
    """

    def __init__(self, unit: int, name: str, size: int, ranked: np.ndarray, k_max: int) -> None:
        self.unit, self.name, self.size = unit, name, int(size)
        self.ranked = np.asarray(ranked, dtype=np.int64)
        self.k_max = int(k_max)
        self.ks = np.zeros(0, dtype=np.int64)
        self.variation = np.zeros(0)
        self.monotone = np.zeros(0)
        self.dense: Optional[np.ndarray] = None
        self.grid_ks = np.zeros(0, dtype=np.int64)  # every grid point (measured or not: see BalancedPruning)
        self.chosen = 0
        # allocation='variation_per_cost': the target metric's share (of the unpruned model's) freed by masking
        # the first k atoms alone, k = 1..k_max; None: the threshold is on the variation itself
        self.freed: Optional[np.ndarray] = None
        # estimated mode: the second-order estimate (k = 1..k_max) and the variations measured at some k by the
        # repair rounds (k -> variation); the curve is the estimate raised to them (see _corrected)
        self.estimate: Optional[np.ndarray] = None
        self.checks: Dict[int, float] = {}

    def set_points(self, ks: np.ndarray, variation: np.ndarray, dense: Optional[np.ndarray] = None) -> None:
        self.ks = np.asarray(ks, dtype=np.int64)
        self.variation = np.asarray(variation, dtype=np.float64)
        v = np.where(np.isfinite(self.variation), self.variation, np.inf)
        self.monotone = np.maximum.accumulate(np.maximum(v, 0.0)) if v.size else v
        self.dense = None if dense is None else np.maximum.accumulate(
            np.maximum(np.where(np.isfinite(dense), dense, np.inf), 0.0))

    def values(self) -> np.ndarray:
        """``V(k)`` for ``k = 1..k_max`` (monotone; inf past the last finite point)."""
        if self.dense is not None:
            return self.dense
        k = np.arange(1, self.k_max + 1)
        out = np.full(k.shape, np.inf)
        finite = np.isfinite(self.monotone)
        if not finite.any():
            return out
        last = int(np.nonzero(finite)[0].max())
        xs = np.concatenate([[0], self.ks[:last + 1]])
        ys = np.concatenate([[0.0], self.monotone[:last + 1]])
        ok = k <= xs[-1]
        out[ok] = np.interp(k[ok], xs, ys)
        return out

    def keys(self) -> np.ndarray:
        """What the threshold compares, for ``k = 1..k_max``, monotone: ``V(k)``, or with ``freed`` set the
        running maximum of ``V(k) / freed(k)`` (loss variation per share of the target metric freed)."""
        v = self.values()
        if self.freed is None:
            return v
        with np.errstate(divide='ignore', invalid='ignore'):
            per = np.where(self.freed > 0, v / self.freed, np.inf)
        return np.maximum.accumulate(np.where(np.isnan(per), np.inf, per))

    def rate(self, tau: float) -> int:
        """The largest ``k`` whose key (:meth:`keys`) is ``<= tau``."""
        return int(np.searchsorted(self.keys(), tau, side='right'))

    def closed_above(self, tau: float) -> bool:
        """Whether the key at the last measured point already exceeds ``tau`` (no point beyond can matter)."""
        if not self.ks.size:
            return False
        return not self.keys()[int(self.ks[-1]) - 1] <= tau

    def at(self, k: int) -> float:
        return 0.0 if k <= 0 else float(self.values()[k - 1])

    def to_json(self) -> Dict[str, Any]:
        def num(x: float) -> Optional[float]:
            return float(x) if math.isfinite(x) else None
        return {'unit': self.unit, 'name': self.name, 'atoms': self.size, 'max_prunable': self.k_max,
                'k': self.ks.tolist(), 'share': [round(k / self.size, 6) for k in self.ks.tolist()],
                'variation': [num(v) for v in self.variation], 'monotone': [num(v) for v in self.monotone],
                'grid_k': self.grid_ks.tolist(),
                'unmeasured_k': [k for k in self.grid_ks.tolist() if k > (self.ks[-1] if self.ks.size else 0)],
                'chosen_k': int(self.chosen), 'chosen_share': self.chosen / self.size,
                'variation_at_rate': num(self.at(self.chosen)),
                **({'checked_k': sorted(self.checks), 'checked_variation': [num(self.checks[k])
                                                                          for k in sorted(self.checks)]}
                   if self.checks else {}),
                **({} if self.freed is None else {'freed_at_rate': float(self.freed[self.chosen - 1])
                                                  if self.chosen else 0.0,
                                                  'freed_per_atom': float(self.freed[-1] / self.k_max)})}


class BalancedResult:
    """What :meth:`BalancedPruning.run` found (see :meth:`to_json` for the fields)."""

    def __init__(self) -> None:
        self.mode = 'measured'
        self.allocation = 'variation'
        self.target_metric = 'flops'
        self.target = 0.5
        self.tau = 0.0
        self.alive: Optional[np.ndarray] = None
        self.pruned: List[int] = []
        self.ratios: Dict[str, float] = {}
        self.base_loss = float('nan')
        self.combined_loss = float('nan')
        self.sum_variations = 0.0
        self.curves: List[UnitCurve] = []
        self.search: List[Dict[str, float]] = []
        self.batches = 0
        self.samples = 0
        self.forwards = 0
        self.points = 0
        self.grid_points = 0
        self.tau_up = math.inf  # the measuring bound the lazy rounds stopped at (inf: every point was measured)
        # the gap filling (see BalancedPruning._fill): the threshold where the target was crossed before it filled
        # (None: no filling), and the units it stopped below their rate at tau (their next atom, whose key lies
        # in [tau_before_fill, tau], would have crossed the target)
        self.tau_before_fill: Optional[float] = None
        self.fill_stopped: List[str] = []
        self.wall: Dict[str, float] = {}
        self.importance = ''
        self.grid: Tuple[float, ...] = ()
        self.norm_stats = 'running'
        self.norms_recalibrated = 0
        self.replay: Optional[Dict[str, Any]] = None  # ActivationReplay.stats() of the measured points
        # estimated mode: the repair rounds (BalancedPruning._repair; None when repair_rounds=0)
        self.repair: Optional[Dict[str, Any]] = None
        self.warnings: List[str] = []

    @property
    def combined_variation(self) -> float:
        return self.combined_loss - self.base_loss

    @property
    def search_steps(self) -> int:
        return len(self.search)

    def to_json(self) -> Dict[str, Any]:
        def num(x: float) -> Optional[float]:
            return float(x) if math.isfinite(x) else None
        return {
            'method': 'balanced one-shot pruning (seed 003)', 'mode': self.mode, 'allocation': self.allocation,
            'importance': self.importance,
            'grid': list(self.grid), 'target': self.target, 'target_metric': self.target_metric,
            'tau': num(self.tau), 'ratios': dict(self.ratios), 'search_steps': self.search_steps,
            'search': self.search, 'base_loss': num(self.base_loss), 'combined_loss': num(self.combined_loss),
            'combined_variation': num(self.combined_variation), 'sum_unit_variations': num(self.sum_variations),
            'calibration_batches': self.batches, 'calibration_samples': self.samples, 'forwards': self.forwards,
            'points_measured': self.points, 'grid_points': self.grid_points, 'tau_up': num(self.tau_up),
            'gap_fill': None if self.tau_before_fill is None else {
                'tau_before': num(self.tau_before_fill), 'stopped_units': list(self.fill_stopped)},
            'norm_stats': self.norm_stats,
            'norms_recalibrated': self.norms_recalibrated, 'pruned_atoms': len(self.pruned), 'replay': self.replay,
            'repair': self.repair,
            'wall_s': dict(self.wall), 'warnings': list(self.warnings),
            'units': [c.to_json() for c in self.curves]}


class BalancedPruning:
    """Balanced one-shot pruning of a trained model to a global target (see the module docstring).

    Args:
        target: the remaining ``target_metric`` ratio to reach, in (0, 1).
        target_metric: ``'flops'``, ``'acts'`` or ``'params'`` (of the written structure, divisor rounding
            included).
        mode: ``'measured'`` (real loss variations on a grid) or ``'estimated'`` (second order, from the Fisher
            sums; no extra forwards).
        grid: shares ``r`` in (0, 1) of a unit's atoms at which the variation is measured (the most the unit may
            lose is always added). Defaults to 0.1, 0.2, ..., 0.9.
        importance: the ranking criterion (an :class:`Importance`); defaults to ``GroupFisher(delta='none')``.
        tolerance: the achieved ratio may lie at most this far below the target before a warning (the search
            meets it to one atom; a divisor or a big atom can make steps coarser). Defaults to 0.01.
        seed: torch's RNG is seeded with ``seed + batch index`` for every loss evaluation (restored after).
        max_share: the largest share of a unit's atoms that may be pruned (its curve ends there). Defaults to 1
            (only ``min_keep`` atoms kept).
        full_curves: measure every grid point of every unit. Defaults to False: a unit's points above the
            threshold the target needs at most are skipped (the same tau and structure, fewer forwards; the
            curves JSON lists them as ``unmeasured_k``).
        norm_stats: the statistics the trained batch norms (:func:`~mmfisher.core.norm_stats.trained_norms`)
            normalise with in every calibration forward: ``'running'`` (the stored ones of the unpruned model) or
            ``'batch'`` (default: each batch's own, as after re-estimating them for the candidate, "adaptive BN";
            same cost; the units' variations then add up to the combined one far better).
        recalibrate_norms: re-estimate the trained batch norms' stored statistics of the pruned structure from
            the calibration batches (one forward each) before the combined loss is measured, so the written
            weights fit the structure. Defaults to True.
        allocation: what the one threshold ``tau`` bounds in every unit: ``'variation'`` (the seed's: the loss
            variation ``V_u(k)``, every unit pruned to the same loss rise) or ``'variation_per_cost'`` (``V_u(k)``
            divided by the share of ``target_metric`` the unit's ``k`` atoms free alone: the same loss rise per
            FLOP saved, the Lagrangian condition of the least total rise for the target; a unit whose channels
            cost a lot, e.g. a residual stream read by many layers, is pruned further). Same forwards either way.
            Defaults to ``'variation'``.
        replay_mb: memory (MiB) for the recorded activations the curve points replay
            (:class:`~mmfisher.core.replay.ActivationReplay`): a point's forward skips every module call its unit
            cannot change that runs before the unit's first changed layer, answered from the record of that call
            seen unchanged in an earlier point (no extra pass; the same values, bit for bit). 0 turns it off.
            Defaults to 1024.
        repair_rounds: ``mode='estimated'`` only: before pruning, the structure the estimate chose is measured
            (one forward per batch, masks undone); when its real loss rise exceeds the units' estimates
            ``ESTIMATE_TRUST`` times, every unit is measured alone at its rate, its curve is raised to what was
            measured (:func:`_corrected`) and tau is searched again, at most this many rounds, until every chosen
            rate's measurement agrees with its curve (``REPAIR_SLACK``). Each round costs at most one point per
            unit (``units x batches`` forwards), a grid's fraction of the measured mode; nothing when the
            estimate holds. 0: only warn. Defaults to 3.
        model_mode: how the model runs for every loss: ``'train'`` (:func:`loss_mode`: training mode, so what
            branches on ``self.training`` gives its training loss, with dropout / drop-path and stored norm
            statistics frozen) or ``'eval'`` (:func:`eval_mode`: a loss of the inference outputs, e.g. an output
            distance on a model whose training forward needs targets). Defaults to ``'train'``.
    """

    def __init__(self, target: float = 0.5, target_metric: str = 'flops', mode: str = 'measured',
                 grid: Sequence[float] = DEFAULT_GRID, importance: Optional[Importance] = None,
                 tolerance: float = 0.01, seed: int = 0, full_curves: bool = False,
                 max_share: float = 1.0, norm_stats: str = 'batch', recalibrate_norms: bool = True,
                 allocation: str = 'variation', replay_mb: float = 1024, repair_rounds: int = 3,
                 model_mode: str = 'train') -> None:
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < float(target) < 1:
            raise ValueError(f'target={target!r} must be a number in (0, 1): the remaining share of '
                             f'{target_metric!r}, e.g. target=0.5 keeps half')
        if target_metric not in METRICS:
            raise ValueError(f'target_metric={target_metric!r} is unknown: use one of {METRICS}')
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is unknown: use 'measured' (real loss variations on the calibration "
                             "batches) or 'estimated' (second-order estimate from the Fisher sums, no extra "
                             'forwards)')
        if isinstance(grid, (int, float)) or not isinstance(grid, (list, tuple)) or not grid or not all(
                isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < 1 for r in grid):
            raise ValueError(f'grid={grid!r} must be a non-empty sequence of shares in (0, 1), e.g. '
                             '(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)')
        if importance is not None and not isinstance(importance, Importance):
            raise TypeError(f'importance={importance!r} must be an mmfisher.core.importance.Importance')
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
            raise ValueError(f'tolerance={tolerance!r} must be a number in (0, 1), e.g. 0.01')
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f'seed={seed!r} must be an int')
        if isinstance(max_share, bool) or not isinstance(max_share, (int, float)) or not 0 < max_share <= 1:
            raise ValueError(f'max_share={max_share!r} must be a number in (0, 1]: the largest share of a unit\'s '
                             'atoms that may be pruned, e.g. max_share=0.8 keeps at least a fifth of every unit')
        if not isinstance(full_curves, bool):
            raise TypeError(f'full_curves={full_curves!r} must be True or False')
        if norm_stats not in NORM_STATS:
            raise ValueError(f"norm_stats={norm_stats!r} is unknown: use 'running' (the unpruned model's stored "
                             "batch-norm statistics) or 'batch' (each calibration batch's own)")
        if not isinstance(recalibrate_norms, bool):
            raise TypeError(f'recalibrate_norms={recalibrate_norms!r} must be True or False')
        if allocation not in ALLOCATIONS:
            raise ValueError(f"allocation={allocation!r} is unknown: use 'variation' (every unit pruned to the same "
                             "loss variation) or 'variation_per_cost' (to the same loss variation per share of "
                             'the target metric freed)')
        if isinstance(replay_mb, bool) or not isinstance(replay_mb, (int, float)) or not replay_mb >= 0:
            raise ValueError(f'replay_mb={replay_mb!r} must be a number >= 0: the memory (MiB) for the recorded '
                             'activations the curve points replay, e.g. 1024; 0 turns replay off')
        if isinstance(repair_rounds, bool) or not isinstance(repair_rounds, int) or repair_rounds < 0:
            raise ValueError(f'repair_rounds={repair_rounds!r} must be an int >= 0: how many times the estimated '
                             'mode may measure the units at their rates and search again when the real loss of its '
                             'structure contradicts the estimate, e.g. 3; 0 only warns')
        if model_mode not in MODEL_MODES:
            raise ValueError(f"model_mode={model_mode!r} is unknown: use 'train' (the training loss, as the training "
                             "loop runs the model, dropout and stored norm statistics frozen) or 'eval' (every "
                             'module in eval mode: a loss of the inference outputs)')
        self.target = float(target)
        self.target_metric = target_metric
        self.model_mode = model_mode
        self._model_mode = loss_mode if model_mode == 'train' else eval_mode
        self.repair_rounds = repair_rounds
        self.replay_mb = float(replay_mb)
        self.mode = mode
        self.grid = tuple(sorted({float(r) for r in grid}))
        self.importance = importance if importance is not None else GroupFisher(delta='none')
        self.tolerance = float(tolerance)
        self.seed = seed
        self.full_curves = full_curves
        self.max_share = float(max_share)
        self.norm_stats = norm_stats
        self.recalibrate_norms = recalibrate_norms
        self.allocation = allocation
        self._norms: List[nn.Module] = []

    def __repr__(self) -> str:
        return (f'BalancedPruning(target={self.target:g}, target_metric={self.target_metric!r}, '
                f'mode={self.mode!r}, allocation={self.allocation!r}, grid={self.grid}, '
                f'importance={self.importance!r})')

    # ------------------------------------------------------------------ the whole method
    def run(self, state: PruningState, module: nn.Module, batches: Sequence[Any], loss_fn: Callable[[Any], Any],
            model: Optional[nn.Module] = None, reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
            log: Optional[Callable[[str], None]] = None, device: Optional[torch.device] = None,
            measure_fn: Optional[Callable[[Any], Any]] = None,
            invariant: Sequence[Tuple[nn.Module, str]] = ()) -> BalancedResult:
        """Rank, measure the curves, search tau, prune ``state`` at once, measure the combined loss.

        Args:
            state: the pruning state of ``module`` (nothing masked yet, usually); its masks are changed.
            module: the pruned module (the one ``state`` was traced on; the criterion attaches to it).
            model: the module run in ``model_mode`` while measuring, whose parameters' gradients the Fisher pass
                sets and restores: ``module`` (default) or a wrapper holding it (a distiller with a frozen
                teacher); every submodule's train flag is restored after.
            batches: this rank's calibration batches, each passed to ``loss_fn`` as it is.
            loss_fn: ``loss_fn(batch)`` -> a scalar loss (tensor or float) of the model as it is now (masks
                applied). Gradients flow through it in the Fisher pass.
            measure_fn: the loss of the forward-only measurements (the unpruned base they are taken from, the
                curve points, the norms' re-estimation and the combined loss); defaults to ``loss_fn``. E.g. a
                distiller's exact terms where the Fisher pass needs its sampled ones (zero-mean noise that would
                blur every variation).
            reduce: sums a float64 tensor over ranks (in place or returned); None on one process.
            log: progress lines (e.g. ``logger.info``).
            device: where torch's seeded RNG matters (CUDA); defaults to the model's parameters' device.
            invariant: ``(module, method name)`` pairs whose results depend on the batch only, never on a weight
                (a detector head's anchors and target assignment): the curve points answer them from the
                records of their earlier calls (:class:`~mmfisher.core.replay.ActivationReplay`; with
                ``replay_mb > 0``).

        Raises:
            NoCalibrationData: no rank has a batch.
            NonFiniteLoss: the unpruned model's calibration loss is NaN or infinite.
            TargetUnreachable: even every unit at its limit (or every finite point of the curves) stays above
                the target.
        """
        reduce = reduce or _sum_ranks
        log = log or (lambda msg: None)
        measure_fn = loss_fn if measure_fn is None else measure_fn
        model = module if model is None else model
        if device is None:
            device = next((p.device for p in model.parameters()), torch.device('cpu'))
        res = BalancedResult()
        res.mode, res.target, res.target_metric, res.grid = self.mode, self.target, self.target_metric, self.grid
        res.allocation = self.allocation
        res.importance = repr(self.importance)
        res.norm_stats = self.norm_stats
        batches = list(batches)
        self._norms = trained_norms(model) if self.norm_stats == 'batch' or self.recalibrate_norms else []
        counts = reduce(torch.tensor([float(len(batches))], dtype=torch.float64))
        res.batches = int(round(float(counts[0])))
        if res.batches == 0:
            raise NoCalibrationData('calibration_batches: there are no calibration batches (the data gave none). '
                                    'Fix: set calibration_batches >= 1 and check that the training dataloader '
                                    'yields data (data_root, ann_file, filter_cfg)')
        # fail fast, before any forward: can the target be reached at all?
        limits = self._limits(state)
        best = self._ratio_with(state, [a for c in limits for a in c.ranked[:c.k_max].tolist()])
        if best > self.target:
            raise TargetUnreachable(self._unreachable(best, state, 'with every unit pruned to its limit'))

        t0 = time.perf_counter()
        fisher = self._gradient_pass(state, module, model, batches, loss_fn, reduce, device, res, log)
        if measure_fn is not loss_fn:  # the variations' base, in the measurements' own loss
            total, local = self._loss_sum(model, batches, measure_fn, reduce, device)
            self._check_base(total, local, res)
            res.forwards += len(batches)
            log(f'balanced: unpruned calibration loss {res.base_loss:.5g} in the measuring loss')
        res.wall['ranking'] = time.perf_counter() - t0
        curves = self._rank(state, limits)
        t0 = time.perf_counter()
        if self.mode == 'measured':
            self._measure(state, model, curves, batches, measure_fn, reduce, device, res, log, fisher, invariant)
        else:
            self._estimate(curves, fisher, res)
        res.wall['curves'] = time.perf_counter() - t0
        res.curves = curves

        t0 = time.perf_counter()
        atoms, tau = self._search(state, curves, res)
        res.wall['search'] = time.perf_counter() - t0
        if self.mode == 'estimated' and self.repair_rounds:
            t0 = time.perf_counter()
            atoms, tau = self._repair(state, model, curves, batches, measure_fn, reduce, device, res, log, atoms,
                                      tau, invariant)
            res.wall['repair'] = time.perf_counter() - t0
        if res.fill_stopped:
            log(f'balanced: the target was crossed at tau={res.tau_before_fill:.6g} by an atom that overshoots it; '
                f'the gap was filled up to tau={tau:.6g}, which stops {", ".join(res.fill_stopped)} below '
                'their rate there (their next atom would cross the target)')
        res.tau = tau
        # mask only what the written structure removes (after the divisor's rounding): masks == structure
        removed = self._removed(state, atoms)
        state.prune(removed)
        res.pruned = removed
        res.alive = state.alive
        res.ratios = state.ratios()
        res.sum_variations = self._set_chosen(curves, removed)
        achieved = res.ratios[self.target_metric]
        if self.target - achieved > self.tolerance:
            res.warnings.append(f'the structure has {self.target_metric} {achieved:.4f}, more than '
                                f'{self.tolerance:g} below target={self.target:g} (coarse steps: a large divisor '
                                'or atoms of very different cost); lower the divisor or give a finer grid')
        t0 = time.perf_counter()
        total = None
        if self.recalibrate_norms and self._norms:  # no forward when no batch norm trains (a frozen backbone)
            # the re-estimation's forwards normalise with batch statistics, as the measurements do with
            # norm_stats='batch': their losses (seeded as every measurement) are then the combined loss itself
            local = torch.zeros(len(batches), dtype=torch.float64)
            seen = iter(range(len(batches)))

            def forward(batch: Any) -> None:
                i = next(seen)
                with _seeded(self.seed + i, device):
                    local[i] = _as_float(measure_fn(batch))
            with self._model_mode(model):
                res.norms_recalibrated = recalibrate(self._norms, batches, forward, reduce)
            res.forwards += len(batches)
            if self.norm_stats == 'batch':
                total = float(reduce(local.sum().reshape(1))[0])
        if total is None:
            total, _ = self._loss_sum(model, batches, measure_fn, reduce, device)
            res.forwards += len(batches)
        res.combined_loss = total / res.batches
        res.wall['combined'] = time.perf_counter() - t0
        if self.mode == 'estimated' and self._estimate_off(res.combined_variation, res.sum_variations, res):
            # the estimate holds near the trained weights only: a unit it calls free can carry the loss (measured
            # on the tiny detector: a head branch cut to one channel, estimated 6e-7, real rise 1.13)
            res.warnings.append(
                f'the second-order estimate is far off for this structure: the calibration loss rose '
                f'{res.combined_variation:.4g} ({res.base_loss:.4g} -> {res.combined_loss:.4g}) where the units\' '
                f'estimates sum to {res.sum_variations:.4g}; units at the largest estimated shares: '
                f'{", ".join(self._deepest(curves))}'
                + (f' (after {res.repair["rounds"]} repair round(s))' if res.repair and res.repair['rounds'] else '')
                + ". Fix: use mode='measured' (real loss variations), more repair_rounds, or max_share < 1 to "
                'keep part of every unit')
        if self.mode == 'measured':
            self._noise_floor(res, curves)
        log(f'balanced: tau={tau:.6g} after {res.search_steps} search steps; {self.target_metric} '
            f'{achieved:.4f} (target {self.target:g}); calibration loss {res.base_loss:.5g} -> '
            f'{res.combined_loss:.5g} (combined variation {res.combined_variation:.5g}, sum of the units\' '
            f'variations {res.sum_variations:.5g})')
        return res

    # ------------------------------------------------------------------ parts
    @staticmethod
    def _noise_floor(res: BalancedResult, curves: List[UnitCurve]) -> None:
        """Warn (in ``res.warnings``) when many measured points lowered the calibration loss: masking channels
        of a converged model does not lower its loss systematically, so either the model is not converged or the
        variations are noise (a model that fits its calibration batches exactly: CE near 0); either way the
        allocation across units follows that."""
        points = np.concatenate([c.variation for c in curves]) if curves else np.zeros(0)
        points = points[np.isfinite(points)]
        below = int((points < 0).sum())
        if below < NOISE_POINTS or below < NOISE_SHARE * points.size:
            return
        res.warnings.append(
            f'{below} of {points.size} measured points lowered the calibration loss (unpruned: {res.base_loss:.3g}; '
            f'the combined structure\'s real rise {res.combined_variation:.3g}, the units\' sum '
            f'{res.sum_variations:.3g}): the model is not at a minimum of this loss that masking can only raise - '
            'not trained to convergence, or its loss on these batches is near 0 and the variations are noise - so '
            'the units\' rates follow that more than what their channels carry. Fix: prune a converged model, and '
            'calibrate on a loss that still moves: held-out batches, more batches, or a distillation loss against the '
            'unpruned model with feature anchors (a label-free distiller, anchors=\'auto\')')

    @staticmethod
    def _deepest(curves: List[UnitCurve], n: int = 3) -> List[str]:
        """The ``n`` units pruned to the largest share, as 'name (kept/atoms)'."""
        top = sorted(curves, key=lambda c: -c.chosen / max(c.size, 1))[:n]
        return [f'{c.name} ({c.size - c.chosen}/{c.size} kept)' for c in top]

    def _statistics(self) -> contextlib.AbstractContextManager:
        """The batch norms' statistics in a calibration forward (``norm_stats``)."""
        return batch_statistics(self._norms) if self.norm_stats == 'batch' else contextlib.nullcontext()

    def _limits(self, state: PruningState) -> List[UnitCurve]:
        """A curve stub per unit that may lose atoms: its candidate atoms in index order and its limit."""
        cand = state.candidates()
        alive = state.alive
        out = []
        for u, atoms in enumerate(state.unit_atoms):
            atoms = np.asarray(atoms, dtype=np.int64)
            mine = atoms[cand[atoms]]
            k_max = min(mine.size, int(alive[atoms].sum()) - state.min_keep,
                        int(math.floor(self.max_share * atoms.size + 1e-9)))
            if k_max >= 1:
                out.append(UnitCurve(u, state.graph.units[u].name, atoms.size, mine, k_max))
                out[-1].grid_ks = self._grid_ks(out[-1])
        if self.allocation == 'variation_per_cost':
            full = state.ratios()[self.target_metric]
            for c in out:
                # a unit's atoms free the same cost each while the other units are whole (linear in k); the share
                # at k_max is counted exactly (its own rounding and grouping included)
                freed = max(full - self._ratio_with(state, c.ranked[:c.k_max].tolist()), 0.0)
                c.freed = freed * np.arange(1, c.k_max + 1) / c.k_max
        return out

    def _ratio_with(self, state: PruningState, masked: Sequence[int]) -> float:
        alive = state.alive
        alive[np.asarray(masked, dtype=np.int64)] = False
        return state.ratios(alive, list(state.order) + list(masked))[self.target_metric]

    def _unreachable(self, best: float, state: PruningState, how: str) -> str:
        return (f'target={self.target:g} ({self.target_metric}) cannot be reached: the best reachable ratio is '
                f'{best:.4f} ({how}; units keep at least {state.min_keep} atom(s), divisor={state.divisor}, '
                f'skip={state.skip}, prune_frozen={state.prune_frozen}, max_share={self.max_share:g}). Fix: set '
                f'target >= {best:.4f}, or relax skip / divisor / prune_frozen / max_share, or use another '
                'target_metric')

    def _loss_sum(self, model: nn.Module, batches: Sequence[Any], loss_fn: Callable, reduce: Callable,
                  device: torch.device) -> Tuple[float, torch.Tensor]:
        """(sum over every rank's batches of the loss, this rank's per-batch losses), no gradients, in
        ``model_mode``."""
        local = torch.zeros(len(batches), dtype=torch.float64)
        with self._model_mode(model), torch.no_grad(), self._statistics():
            for i, batch in enumerate(batches):
                with _seeded(self.seed + i, device):
                    local[i] = _as_float(loss_fn(batch))
        total = reduce(local.sum().reshape(1))
        return float(total[0]), local

    def _gradient_pass(self, state: PruningState, module: nn.Module, model: nn.Module, batches: Sequence[Any],
                       loss_fn: Callable, reduce: Callable, device: torch.device, res: BalancedResult,
                       log: Callable) -> Optional[torch.Tensor]:
        """The unpruned loss, and (when the criterion or the estimate needs them) the mask gradients.

        Returns the Fisher sums (``sum_n (dL_n/dm)^2``, summed over ranks) when ``mode='estimated'`` or the
        criterion is Group Fisher, else None."""
        self.importance.attach(module, state.graph, state.masks)
        crits: List[Importance] = [self.importance] if isinstance(self.importance, GradientImportance) else []
        fisher_crit: Optional[GroupFisher] = None
        if self.mode == 'estimated':
            fisher_crit = self.importance if isinstance(self.importance, GroupFisher) else GroupFisher(delta='none')
            if fisher_crit is not self.importance:
                fisher_crit.attach(module, state.graph, state.masks)
                crits.append(fisher_crit)
        if not crits:
            total, local = self._loss_sum(model, batches, loss_fn, reduce, device)
            self._check_base(total, local, res)
            res.forwards += len(batches)
            log(f'balanced: unpruned calibration loss {res.base_loss:.5g} over {res.batches} batches')
            return None
        params = [p for p in model.parameters() if p.requires_grad]
        saved = [p.grad for p in params]
        local = torch.zeros(len(batches), dtype=torch.float64)
        try:
            with self._model_mode(model), torch.enable_grad(), self._statistics():
                for i, batch in enumerate(batches):
                    for p in params:
                        p.grad = None
                    with _seeded(self.seed + i, device):
                        loss = loss_fn(batch)
                    value = _as_float(loss)
                    local[i] = value
                    if not math.isfinite(value):
                        break  # every rank still joins the sum below, which reports it
                    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                        raise TypeError(f'loss_fn must return a tensor that requires grad for the '
                                        f'{self.importance!r} ranking / the estimated mode (got '
                                        f'{type(loss).__name__}); use importance=L1Norm or BNScale with '
                                        "mode='measured' for a loss without gradients")
                    loss.backward()
                    for c in crits:
                        c.accumulate()
        finally:
            for p, g in zip(params, saved):
                p.grad = g
            for c in crits:
                c.detach()
        total = float(reduce(local.sum().reshape(1))[0])
        self._check_base(total, local, res)
        res.forwards += len(batches)
        for c in crits:
            summed = c.collect()
            c.add(reduce(summed) if summed.numel() else summed)
        res.samples = int(getattr(crits[0], 'samples', 0))
        log(f'balanced: unpruned calibration loss {res.base_loss:.5g} over {res.batches} batches '
            f'({res.samples} samples); gradients for {", ".join(repr(c) for c in crits)}')
        if fisher_crit is None and isinstance(self.importance, GroupFisher):
            fisher_crit = self.importance  # the measured mode orders its points by the estimate from these sums
        return fisher_crit.sums.clone() if fisher_crit is not None else None

    def _check_base(self, total: float, local: torch.Tensor, res: BalancedResult) -> None:
        res.base_loss = total / res.batches
        if not math.isfinite(res.base_loss):
            bad = [i for i, v in enumerate(local.tolist()) if not math.isfinite(v)]
            where = f' (this rank\'s batches {bad[:8]})' if bad else ''
            raise NonFiniteLoss(f'the calibration loss of the unpruned model is {res.base_loss}{where}: the method '
                                'measures loss variations from it. Fix: set load_from to the trained checkpoint '
                                '(a diverged or untrained model gives NaN/inf), check the data pipeline and the '
                                'loss config (e.g. empty ground truth, a log of 0)')

    def _rank(self, state: PruningState, limits: List[UnitCurve]) -> List[UnitCurve]:
        """Each unit's candidate atoms re-ordered by the criterion's scores, lowest first (ties by index)."""
        score = np.asarray(self.importance.scores(state.alive, state.costs), dtype=np.float64)
        for c in limits:
            c.ranked = c.ranked[np.lexsort((c.ranked, score[c.ranked]))]
        return limits

    def _grid_ks(self, c: UnitCurve) -> np.ndarray:
        ks = {min(c.k_max, max(1, int(math.floor(r * c.size + 1e-9)))) for r in self.grid}
        ks.add(c.k_max)
        return np.array(sorted(ks), dtype=np.int64)

    def _measure(self, state: PruningState, model: nn.Module, curves: List[UnitCurve], batches: Sequence[Any],
                 loss_fn: Callable, reduce: Callable, device: torch.device, res: BalancedResult,
                 log: Callable, fisher: Optional[torch.Tensor] = None,
                 invariant: Sequence[Tuple[nn.Module, str]] = ()) -> None:
        """Measure the curves' grid points one at a time, each unit's points in order (lowest share first).

        Unless ``full_curves``, a unit stops being measured once its curve rises above ``tau_up``
        (:meth:`_prefix`): the largest key the search reads on the curves as they are, the gap filling's scan
        included. Measuring more points only adds rows above each unit's last measured key, so once every unit
        not fully measured ends above tau_up, the rows up to it are the whole grid's: the search finds the same
        tau (<= tau_up) and the same atoms as on the whole grid, in any measuring order. The next point is the
        open units' one with the lowest second-order estimate from the Fisher sums (``fisher``; without them, the
        lowest share), so that tau_up falls early and sensitive units are closed after few points."""
        grids = [c.grid_ks for c in curves]
        if fisher is not None:
            f = fisher.double().numpy()
            prior = [_second_order(c, f, res.samples)[c.grid_ks - 1] for c in curves]
        else:
            prior = [c.grid_ks / c.size for c in curves]
        values: List[List[float]] = [[] for _ in curves]
        total = int(sum(ks.size for ks in grids))
        log(f'balanced: up to {total} points on {len(curves)} units x {len(batches)} batches on this rank '
            f'({total * len(batches)} forwards if every point is needed)')
        base_alive = state.alive
        t0 = time.perf_counter()
        measured, tau_up, every = 0, math.inf, max(1, total // 5)
        replay = ActivationReplay(model, int(self.replay_mb * 2 ** 20), invariant)
        with self._model_mode(model), torch.no_grad(), self._statistics(), replay.installed():
            while True:
                if not self.full_curves:
                    found = self._prefix(state, curves)
                    tau_up = math.inf if found is None else found[3]
                open_units = [ci for ci, c in enumerate(curves)
                              if len(values[ci]) < grids[ci].size and not c.closed_above(tau_up)]
                if not open_units:
                    break
                ci = min(open_units, key=lambda u: (prior[u][len(values[u])], len(values[u]), u))
                alive = base_alive.copy()
                alive[curves[ci].ranked[:grids[ci][len(values[ci])]]] = False
                values[ci].append(self._variation(state, alive, batches, loss_fn, reduce, device, res, replay))
                curves[ci].set_points(grids[ci][:len(values[ci])], np.array(values[ci]))
                measured += 1
                if measured % every == 0:
                    log(f'balanced: {measured} points measured ({time.perf_counter() - t0:.1f} s; {len(open_units)} '
                        f'units open, tau_up {tau_up:.5g})')
        res.replay = replay.stats() if replay.enabled else None
        if replay.enabled:
            log(f'balanced: replayed {replay.replayed} of {replay.replayed + replay.computed} module calls in '
                f'the points ({res.replay["recorded"]} modules recorded, {res.replay["stored_mb"]:.1f} MiB)')
        log(f'balanced: {measured} of {total} grid points measured in {time.perf_counter() - t0:.1f} s')
        res.tau_up = tau_up
        res.points = measured
        res.grid_points = total

    def _variation(self, state: PruningState, alive: np.ndarray, batches: Sequence[Any], loss_fn: Callable,
                   reduce: Callable, device: torch.device, res: BalancedResult,
                   replay: Optional[ActivationReplay] = None) -> float:
        """The calibration loss variation (mean over every rank's batches, minus the unpruned base) with the masks
        set to ``alive`` for the forwards and undone after. The caller holds ``model_mode``, no_grad and the norms'
        statistics; ``replay`` (installed) answers the calls the trial cannot change."""
        with state.masks.trial(alive) as masks:
            s = 0.0
            for i, batch in enumerate(batches):
                with (replay.replay(i, masks.changed_modules, masks.changed_tensors) if replay is not None
                      else contextlib.nullcontext()), _seeded(self.seed + i, device):
                    s += _as_float(loss_fn(batch))
        summed = reduce(torch.tensor([s], dtype=torch.float64))
        res.forwards += len(batches)
        return float(summed[0]) / res.batches - res.base_loss

    def _estimate(self, curves: List[UnitCurve], fisher: torch.Tensor, res: BalancedResult) -> None:
        f = fisher.numpy()
        for c in curves:
            dense = _second_order(c, f, res.samples)
            c.estimate = dense
            c.set_points(c.grid_ks, dense[c.grid_ks - 1], dense=dense)

    @staticmethod
    def _removed(state: PruningState, atoms: List[int]) -> List[int]:
        """The atoms of ``atoms`` (in rate order) that the written structure removes, after the divisor's
        rounding."""
        after = state.alive
        after[atoms] = False
        written = state.export_alive(after, list(state.order) + list(atoms))
        return [a for a in atoms if not written[a]]

    @staticmethod
    def _set_chosen(curves: List[UnitCurve], removed: Sequence[int]) -> float:
        """Set every curve's ``chosen`` (its atoms among ``removed``); returns the sum of the units' variations
        there."""
        removed_set = set(int(a) for a in removed)
        for c in curves:
            c.chosen = int(sum(1 for a in c.ranked[:c.k_max].tolist() if a in removed_set))
        return float(sum(c.at(c.chosen) for c in curves))

    def _repair(self, state: PruningState, model: nn.Module, curves: List[UnitCurve], batches: Sequence[Any],
                loss_fn: Callable, reduce: Callable, device: torch.device, res: BalancedResult, log: Callable,
                atoms: List[int], tau: float, invariant: Sequence[Tuple[nn.Module, str]] = ()
                ) -> Tuple[List[int], float]:
        """Estimated mode: check the structure the estimate chose against its real loss and repair the curves
        that the measurements contradict (see ``repair_rounds``). Returns the search's (atoms, tau) on the final
        curves. Every rank measures the same points (the losses are summed over ranks) and takes the same
        branches. The points replay the unchanged module calls as the measured mode's do (``replay_mb``)."""
        replay = ActivationReplay(model, int(self.replay_mb * 2 ** 20), invariant)
        # the norms' statistics first: the replay then wraps their (patched) forwards, as in _measure
        with self._model_mode(model), torch.no_grad(), self._statistics(), replay.installed():
            try:
                return self._repair_rounds(state, model, curves, batches, loss_fn, reduce, device, res, log,
                                           atoms, tau, replay)
            finally:
                res.replay = replay.stats() if replay.enabled else None

    @staticmethod
    def _estimate_off(real: float, estimated: float, res: BalancedResult) -> bool:
        """Whether a structure's real loss rise contradicts the curves' sum: above ``ESTIMATE_TRUST`` times it
        and above a tenth of the unpruned loss (NaN counts as contradicting)."""
        return not real <= max(ESTIMATE_TRUST * estimated, 0.1 * abs(res.base_loss))

    def _repair_rounds(self, state: PruningState, model: nn.Module, curves: List[UnitCurve],
                       batches: Sequence[Any], loss_fn: Callable, reduce: Callable, device: torch.device,
                       res: BalancedResult, log: Callable, atoms: List[int], tau: float,
                       replay: ActivationReplay) -> Tuple[List[int], float]:
        """The body of :meth:`_repair`, inside its ``model_mode``, norm statistics and installed replay."""
        base_alive = state.alive
        removed = self._removed(state, atoms)
        estimated = self._set_chosen(curves, removed)
        alive = base_alive.copy()
        alive[removed] = False
        real = self._variation(state, alive, batches, loss_fn, reduce, device, res, replay)
        floor = REPAIR_FLOOR * abs(res.base_loss)
        res.repair = {'structure_variation': real, 'structure_estimate': estimated, 'rounds': 0, 'points': [],
                      'agreed': None}
        if not self._estimate_off(real, estimated, res):
            log(f'balanced: the estimated structure\'s real loss rise {real:.4g} agrees with the estimates '
                f'({estimated:.4g}): no repair')
            return atoms, tau
        log(f'balanced: the estimated structure\'s real loss rise is {real:.4g} where the units\' estimates sum to '
            f'{estimated:.4g}: measuring the units at their rates (at most {self.repair_rounds} round(s))')
        agreed = False
        for rnd in range(1, self.repair_rounds + 1):
            res.repair['rounds'] = rnd
            off = []
            for c in curves:
                k = c.chosen
                if k <= 0 or k in c.checks:
                    continue
                alive = base_alive.copy()
                alive[c.ranked[:k]] = False
                m = self._variation(state, alive, batches, loss_fn, reduce, device, res, replay)
                curve = c.at(k)
                c.checks[k] = m
                res.points += 1
                res.repair['points'].append({'round': rnd, 'unit': c.name, 'k': int(k), 'curve': curve,
                                             'measured': m})
                if not m <= REPAIR_SLACK * curve + floor:
                    off.append(f'{c.name} ({k}/{c.size}: {curve:.3g} -> {m:.3g})')
                dense = _corrected(c.estimate, c.checks)
                c.set_points(c.grid_ks, dense[c.grid_ks - 1], dense=dense)
            if not off:
                agreed = True
                break
            log(f'balanced: repair round {rnd}: {len(off)} unit(s) far above their estimate: {", ".join(off[:6])}'
                + (' ...' if len(off) > 6 else ''))
            atoms, tau = self._search(state, curves, res)
            self._set_chosen(curves, self._removed(state, atoms))
        res.repair['agreed'] = agreed
        log(f'balanced: repair {"converged" if agreed else "stopped"} after {res.repair["rounds"]} round(s), '
            f'{len(res.repair["points"])} point(s) measured; tau={tau:.6g}')
        return atoms, tau

    FILL_SCAN = 64  # how many atoms past the crossing one the gap filling tries (see :meth:`_fill`)

    @staticmethod
    def _rows(curves: List[UnitCurve]) -> Tuple[List[Tuple[float, float, int, int]], List[int]]:
        """Every finite ``(key, share, unit index, k)`` of the curves as they are, sorted (threshold order), and
        the atom each row masks."""
        rows = []
        for ci, c in enumerate(curves):
            v = c.keys()
            for k in np.nonzero(np.isfinite(v))[0].tolist():
                rows.append((float(v[k]), (k + 1) / c.size, ci, k + 1))
        rows.sort()
        return rows, [int(curves[ci].ranked[k - 1]) for _, _, ci, k in rows]

    def _crossing(self, state: PruningState, rows: List[Tuple[float, float, int, int]], atoms: List[int],
                  steps: Optional[List[Dict[str, float]]] = None) -> Optional[int]:
        """Bisection: the length of the shortest prefix of ``atoms`` that meets the target (None if none)."""
        if not rows or self._ratio_with(state, atoms) > self.target:
            return None
        lo, hi = 0, len(rows)  # ratio(prefix lo) > target (lo = 0: the unpruned model), ratio(prefix hi) <= target
        while hi - lo > 1:
            mid = (lo + hi) // 2
            r = self._ratio_with(state, atoms[:mid])
            if steps is not None:
                steps.append({'step': len(steps) + 1, 'tau': float(rows[mid - 1][0]), 'ratio': float(r),
                              'atoms': mid})
            if r <= self.target:
                hi = mid
            else:
                lo = mid
        return hi

    def _prefix(self, state: PruningState, curves: List[UnitCurve]
                ) -> Optional[Tuple[List[int], float, List[Dict[str, Any]], float, Optional[Tuple[float, List[int]]]]]:
        """The search on the curves as they are: (atoms to mask, in rate order; tau; the steps; ``tau_up``; the
        gap filling's (crossing threshold, indices of the units it stopped below their rate at tau), None if it
        did not fill) for the shortest prefix in threshold order that meets the target, the gap filled when its
        last atom overshoots; None if no prefix meets it.

        ``tau_up`` is the largest key the search read: the crossing row's, or with the gap filling the last row
        the fill read (inf if it would read past the known rows). Every row a unit may still gain lies above the
        key of its last measured point, so once every unit not fully measured has that key above ``tau_up``,
        the rows up to it are the whole grid's, and so are the search's tau and atoms."""
        rows, atoms = self._rows(curves)
        steps: List[Dict[str, float]] = []
        hi = self._crossing(state, rows, atoms, steps)
        if hi is None:
            return None
        chosen, tau, end = atoms[:hi], float(rows[hi - 1][0]), hi
        reached = self._ratio_with(state, chosen)
        fill: Optional[Tuple[float, List[int]]] = None
        if self.target - reached > 0.5 * self.tolerance:
            filled, end = self._fill(state, rows, atoms, hi, reached)
            if filled is not None:
                fill = (tau, filled[3])
                chosen, tau, reached = filled[:3]
                steps.append({'step': len(steps) + 1, 'tau': tau, 'ratio': float(reached), 'atoms': len(chosen),
                              'filled': True, 'tau_before': fill[0],
                              'stopped_units': [curves[ci].name for ci in fill[1]]})
        return chosen, tau, steps, (rows[end - 1][0] if end <= len(rows) else math.inf), fill

    def _fill(self, state: PruningState, rows: List[Tuple[float, float, int, int]], atoms: List[int], hi: int,
              reached: float) -> Tuple[Optional[Tuple[List[int], float, float, List[int]]], int]:
        """When the atom that crosses the target is coarse (a stream channel read by many layers can free several
        % of the FLOPs) and overshoots by more than half the tolerance: skip it (and its unit's later atoms) and
        take the next atoms in threshold order while the ratio stays above the target, keeping the structure that
        lands closest below it; stop once one lands within half the tolerance, or after ``FILL_SCAN`` atoms.
        Returns ((atoms, tau, ratio, the units stopped before the last atom taken: below their rate at that tau),
        or None when nothing lands closer; the number of rows read up to where it stopped, counted from the start:
        ``hi - 1 + FILL_SCAN`` when it read its whole scan)."""
        base, blocked, best = list(atoms[:hi - 1]), set(), None
        end = hi - 1 + self.FILL_SCAN
        for j in range(hi - 1, min(len(rows), end)):
            ci = rows[j][2]
            if ci in blocked:
                continue
            r = self._ratio_with(state, base + [atoms[j]])
            if r <= self.target:
                if r > (best[2] if best else reached):
                    best = (base + [atoms[j]], float(rows[j][0]), r, sorted(blocked))
                if best is not None and self.target - best[2] <= 0.5 * self.tolerance:
                    return best, j + 1
                blocked.add(ci)  # this unit stops here: its later atoms rank after the skipped one
            else:
                base.append(atoms[j])
        return best, end

    def _search(self, state: PruningState, curves: List[UnitCurve], res: BalancedResult
                ) -> Tuple[List[int], float]:
        """The tau search on the final curves: (atoms to mask, in rate order; tau)."""
        res.tau_before_fill, res.fill_stopped = None, []
        found = self._prefix(state, curves)
        if found is None:
            finite = [int(c.ranked[k]) for c in curves for k in np.nonzero(np.isfinite(c.keys()))[0].tolist()]
            if not finite:
                best = self._ratio_with(state, [])
                raise TargetUnreachable(self._unreachable(best, state, 'every measured point had a NaN/inf loss'))
            raise TargetUnreachable(self._unreachable(
                self._ratio_with(state, finite), state, 'with every unit pruned as far as its loss stayed finite'))
        atoms, tau, res.search, _, fill = found
        if fill is not None:
            res.tau_before_fill = fill[0]
            res.fill_stopped = [curves[ci].name for ci in fill[1]]
        return atoms, tau
