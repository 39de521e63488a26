"""Pruning schedules: when a pruning step happens and how many atoms it masks (plain Python).

A schedule sees the iteration counter and the :class:`~mmfisher.core.state.PruningState`; it never chooses
*which* atoms (the importance criterion and the state do). Every rank computes the same answer.

* :class:`IntervalTopK`: every ``interval`` iterations the ``k`` lowest atoms (the paper: ``k = 1``; seed 002's
  top-k steps: larger ``k``).
* :class:`AdaptiveK`: every ``interval`` iterations a ``share`` of the atoms still eligible, so a large model does
  not need thousands of steps and late steps, when fewer atoms remain, are finer.
"""
import math
from typing import Any, Dict, List, Optional

import numpy as np

__all__ = ['Schedule', 'IntervalTopK', 'AdaptiveK']


_HINTS = {'interval': ' (iterations between pruning steps; the paper uses 10 for detection, 25 for ImageNet)',
          'k': ' (atoms masked per pruning step; 1 as in the paper)'}


def _int_at_least(name: str, value: Any, low: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f'{name}={value!r} must be an int >= {low}{_HINTS.get(name, "")}')
    return int(value)


class Schedule:
    """Base: a step every ``interval`` iterations counted from ``start_iter`` (Fisher is collected from there).

    Args:
        interval: iterations between two pruning steps (the paper: 10 for detection, 25 for ImageNet).
        start_iter: first iteration (0-based) whose gradients are collected.
    """

    def __init__(self, interval: int = 10, start_iter: int = 0) -> None:
        self.interval = _int_at_least('interval', interval, 1)
        self.start_iter = _int_at_least('start_iter', start_iter, 0)
        self.history: List[int] = []  # the k of every step taken

    def collects(self, it: int) -> bool:
        """Whether iteration ``it`` (0-based) contributes to the importance sums."""
        return it >= self.start_iter

    def due(self, iters_done: int) -> bool:
        """Whether a pruning step follows the ``iters_done``-th iteration (1-based count)."""
        return iters_done > self.start_iter and (iters_done - self.start_iter) % self.interval == 0

    def step_size(self, state) -> int:  # pragma: no cover - abstract
        """Atoms to mask in this step (>= 1)."""
        raise NotImplementedError

    def next_k(self, state) -> int:
        """:meth:`step_size`, recorded in :attr:`history`."""
        k = self.step_size(state)
        self.history.append(k)
        return k

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {'history': list(self.history)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.history = [int(k) for k in state.get('history', ())]


class IntervalTopK(Schedule):
    """Every ``interval`` iterations, the ``k`` lowest-scoring eligible atoms."""

    def __init__(self, interval: int = 10, k: int = 1, start_iter: int = 0) -> None:
        super().__init__(interval, start_iter)
        self.k = _int_at_least('k', k, 1)

    def __repr__(self) -> str:
        return f'IntervalTopK(interval={self.interval}, k={self.k}, start_iter={self.start_iter})'

    def step_size(self, state) -> int:
        return self.k

    def describe(self) -> str:
        return f'{self.k} atom(s) every {self.interval} iter(s) from iter {self.start_iter}'


class AdaptiveK(Schedule):
    """Every ``interval`` iterations, ``k = ceil(share x eligible alive atoms)`` (at least ``min_k``, at most
    ``max_k`` when given).

    Args:
        share: the share of the eligible alive atoms masked per step, in (0, 1); e.g. 0.01.
        recompute: recompute ``k`` at every step (True, adaptive); False fixes it at the first step's value.
    """

    def __init__(self, interval: int = 10, share: float = 0.01, min_k: int = 1, max_k: Optional[int] = None,
                 recompute: bool = True, start_iter: int = 0) -> None:
        super().__init__(interval, start_iter)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < float(share) < 1:
            raise ValueError(f'share={share!r} must be a number in (0, 1): the share of the eligible alive atoms '
                             'masked per step, e.g. 0.01')
        self.share = float(share)
        self.min_k = _int_at_least('min_k', min_k, 1)
        self.max_k = None if max_k is None else _int_at_least('max_k', max_k, self.min_k)
        if not isinstance(recompute, bool):
            raise TypeError(f'recompute={recompute!r} must be True or False')
        self.recompute = recompute

    def __repr__(self) -> str:
        return (f'AdaptiveK(interval={self.interval}, share={self.share:g}, min_k={self.min_k}, '
                f'max_k={self.max_k}, recompute={self.recompute}, start_iter={self.start_iter})')

    def step_size(self, state) -> int:
        if not self.recompute and self.history:
            return self.history[0]
        k = max(self.min_k, math.ceil(self.share * int(state.candidates().sum())))
        return min(k, self.max_k) if self.max_k is not None else k

    def describe(self) -> str:
        return (f'{self.share:g} of the eligible atoms every {self.interval} iter(s) from iter {self.start_iter}'
                + ('' if self.recompute else ' (k fixed at the first step)'))
