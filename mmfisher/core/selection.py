"""Which atoms to mask next, and how kept counts are rounded (plain numpy, identical on every rank).

All functions are pure: the same inputs give the same result on every rank and after a resume.
"""
from typing import Callable, List, Sequence

import numpy as np


def unit_index(num_atoms: int, unit_atoms: Sequence[np.ndarray]) -> np.ndarray:
    """(A,) the unit of each atom (units partition the atoms)."""
    unit_of = np.full(num_atoms, -1, dtype=np.int64)
    for u, atoms in enumerate(unit_atoms):
        unit_of[np.asarray(atoms, dtype=np.int64)] = u
    if (unit_of < 0).any():
        raise RuntimeError('channel graph: some atoms belong to no unit (mmfisher.core invariant broken)')
    return unit_of


def scores(fisher: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``fisher / (delta / max(delta))``; an atom whose removal saves nothing (delta 0) scores ``inf``."""
    fisher = np.asarray(fisher, dtype=np.float64)
    delta = np.asarray(delta, dtype=np.float64)
    top = float(delta.max()) if delta.size else 0.0
    norm = delta / top if top > 0 else delta
    out = np.full(fisher.shape, np.inf)
    ok = norm > 0
    out[ok] = fisher[ok] / norm[ok]
    return out


def rank(score: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Candidate atom indices, lowest score first; ties broken by atom index (``np.lexsort``)."""
    idx = np.nonzero(np.asarray(candidates, dtype=bool))[0]
    return idx[np.lexsort((idx, score[idx]))]


def choose(ranked: np.ndarray, alive: np.ndarray, unit_of: np.ndarray, min_keep: int, k: int,
           reached: Callable[[np.ndarray, List[int]], bool]) -> List[int]:
    """Walk ``ranked`` and take up to ``k`` atoms, never leaving a unit with fewer than ``min_keep`` alive atoms;
    stop early as soon as ``reached(alive_after, chosen_so_far)`` is True. ``alive`` is not modified."""
    alive = np.array(alive, dtype=bool)
    unit_alive = np.bincount(unit_of[alive], minlength=int(unit_of.max()) + 1 if unit_of.size else 0)
    chosen: List[int] = []
    for a in ranked.tolist():
        u = unit_of[a]
        if not alive[a] or unit_alive[u] - 1 < min_keep:
            continue
        alive[a] = False
        unit_alive[u] -= 1
        chosen.append(a)
        if len(chosen) >= k or reached(alive, chosen):
            break
    return chosen


def round_up(alive: np.ndarray, unit_atoms: Sequence[np.ndarray], divisor: int, order: Sequence[int]
             ) -> np.ndarray:
    """Round every unit's alive-atom count up to a multiple of ``divisor`` (at most the unit's size).

    The atoms brought back are the unit's most recently pruned ones (``order`` is the pruning order). Their
    readers' weights are already zero, so the rounded model computes exactly what the masked model computes; the
    extra channels only cost compute and are trained again during fine-tuning.
    """
    alive = np.array(alive, dtype=bool)
    if divisor <= 1:
        return alive
    position = {a: i for i, a in enumerate(order)}
    for atoms in unit_atoms:
        atoms = np.asarray(atoms, dtype=np.int64)
        kept = int(alive[atoms].sum())
        want = min(atoms.size, -(-kept // divisor) * divisor)
        if want <= kept:
            continue
        dead = [int(a) for a in atoms if not alive[a]]
        dead.sort(key=lambda a: position.get(a, -1), reverse=True)
        alive[dead[:want - kept]] = True
    return alive
