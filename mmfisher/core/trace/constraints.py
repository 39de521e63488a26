"""Constraints resolved once the whole forward is traced: how a channel dim that a reshape split into several dims
(channel shuffle's ``(g, c/g)``, attention's ``(3, heads, head_dim)``, ResNeSt's ``(radix, c)``), or a grouped
conv's ``(groups, channels per group)`` grid, may lose channels.

Pruning must leave such a grid a product of kept indices (every group loses the same positions, or whole groups
go), or the slimmed model's reshape would regroup the channels differently from the masked model's. Which of the
two the model allows depends on ops that may come later in the forward (an attention product over a head's
channels makes a head one atom; a sum over ResNeSt's radix couples position c of every split), so the union-find
is complete before the grids are looked at:

* :class:`SplitGrid` (a reshape that split a channel dim): if, along some grid dim, every slab (all positions with
  one index along it) is already a single atom, pruning removes whole slabs along that dim and nothing needs to be
  added; that dim's size then changes with pruning, and the int attribute of the running module that the reshape
  read it from (``num_heads``) is bound to it (slimming sets it to the kept count). Otherwise the positions along
  the grid's last dim are coupled across the other dims (the same channel of every group), as channel shuffle
  needs.
* :class:`GroupGrid` (a grouped conv): whole groups are atoms (inputs and outputs of a group together, the
  default), unless the trace already coupled different groups' channels (ResNeSt's split attention sums its
  radix groups position by position): then position j of every group is coupled instead, the conv keeps its
  group count and loses the same positions in every group.

Unions only ever merge atoms, so a grid once satisfied stays satisfied: one pass in trace order suffices.
"""
import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = ['SplitGrid', 'GroupGrid', 'SizeBinding', 'SizeCheck', 'resolve', 'couple_across']


@dataclasses.dataclass
class SplitGrid:
    """``cmap`` (the result's channel map, one axis per channel dim) of a reshape that split a channel dim;
    ``attrs[k]``: the (module, attribute names) the reshape's size for axis ``k`` may have come from."""

    cmap: np.ndarray
    attrs: List[Tuple[Optional[str], List[str]]]


@dataclasses.dataclass
class SizeBinding:
    """A reshape read the size of channel axis ``axis`` of ``cmap`` (its result's channel map) from one of
    ``names`` (int attributes of module ``owner`` that hold that value). Bound after the forward, and only if the
    axis can shrink: to one element per slab when slabs along it are atoms, to its positions when it is the only
    channel axis."""

    owner: str
    names: List[str]
    cmap: np.ndarray
    axis: int


@dataclasses.dataclass
class SizeCheck:
    """A reshape sized axis ``axis`` of its result (channel map ``cmap``; None or axis -1: a dim with no channels)
    by a count read off other channels (``sources``: ``(cmap, axis)`` of each map the count came from:
    ``reshape(B, N, C)`` with ``C`` the input's width). Exact when neither can lose channels along those axes, or
    both are the same channels; otherwise both are kept, named by ``reason``."""

    cmap: Optional[np.ndarray]
    axis: int
    sources: list
    reason: str
    #: a view/reshape whose one such size could as well be inferred (-1): the running module ``owner`` and the
    #: size's position among the call's sizes. Instead of keeping both sides, the slimmed ``owner`` then infers
    #: that size (``layers.InferredSizesAdapter``); None: keep them
    owner: Optional[str] = None
    position: Tuple[int, int] = (0, -1)  # (the call's number of sizes, the size's position)


@dataclasses.dataclass
class GroupGrid:
    """A grouped conv (``name``) whose group structure is decided at the end of the trace."""

    name: str
    groups: int


def couple_across(state, cmap: np.ndarray, axis: int) -> None:
    """Union the elements of ``cmap`` position by position across ``axis``: the dim can then never shrink."""
    n = cmap.shape[axis]
    if n <= 1:
        return
    rows = np.moveaxis(cmap, axis, -1).reshape(-1, n)
    for row in np.unique(rows, axis=0):
        state.uf.union_all(row)


# a count of whole slabs (heads, groups) vs a count of positions (widths): preferred attribute names when several
# attributes hold the same value (4 heads of 4 channels: num_heads and head_dims)
_COUNT_WORDS = ('num', 'heads', 'groups', 'radix')
_WIDTH_WORDS = ('dim', 'channels', 'width', 'features', 'embed', 'mid')


def _prefer(names: List[str], words: Tuple[str, ...]) -> List[str]:
    best = [n for n in names if any(w in n for w in words)]
    return best or names


def _roots(state, arr: np.ndarray) -> np.ndarray:
    out = np.full(arr.shape, -1, dtype=np.int64)
    flat, res = arr.reshape(-1), out.reshape(-1)
    for k, e in enumerate(flat.tolist()):
        if e >= 0:
            res[k] = state.uf.find(e)
    return out


def _slab_atomic(roots: np.ndarray, axis: int) -> bool:
    """Every slab across ``axis`` (one index along it) holds a single atom (no untracked position)."""
    moved = np.moveaxis(roots, axis, 0).reshape(roots.shape[axis], -1)
    return bool((moved >= 0).all() and (moved == moved[:, :1]).all())


def _resolve_split(state, grid: SplitGrid) -> None:
    cmap = grid.cmap
    if cmap.ndim < 2 or not (cmap >= 0).any():
        return
    roots = _roots(state, cmap)
    for axis in range(cmap.ndim):
        if cmap.shape[axis] > 1 and _slab_atomic(roots, axis):
            owner, names = grid.attrs[axis] if axis < len(grid.attrs) else (None, [])
            if owner is not None and names:
                reps = np.moveaxis(cmap, axis, 0).reshape(cmap.shape[axis], -1)[:, 0]
                for attr in _prefer(names, _COUNT_WORDS):
                    state.bind_attribute(owner, attr, reps)
            return
    last = cmap.ndim - 1
    rows = cmap.reshape(-1, cmap.shape[last])
    for j in range(1, rows.shape[0]):
        state.uf.union_arrays(rows[0], rows[j])


def _resolve_group(state, grid: GroupGrid) -> None:
    rec = state.modules.get(grid.name)
    if rec is None or rec.in_elems is None or rec.out_elems is None:
        return
    g = grid.groups
    ins = rec.in_elems.reshape(g, -1)
    outs = rec.out_elems.reshape(g, -1)
    column = False
    for part in (outs, ins):
        roots = _roots(state, part)
        seen: Dict[int, int] = {}
        for row in range(g):
            for r in np.unique(roots[row][roots[row] >= 0]).tolist():
                if seen.setdefault(r, row) != row:
                    column = True
    rec.group_mode = 'column' if column else 'whole'
    if column:
        for part in (outs, ins):
            for j in range(part.shape[1]):
                state.uf.union_all(part[:, j])
        bad = (ins < 0).any(axis=0) & (ins >= 0).any(axis=0)
        if bad.any():
            state.uf.flag(ins[:, bad], f'{grid.name} (grouped conv) reads untracked channels')
        return
    for k in range(g):
        state.uf.union_all(np.concatenate([ins[k], outs[k]]))
        if (ins[k] < 0).any():
            state.uf.flag(np.concatenate([ins[k], outs[k]]), f'{grid.name} (grouped conv) reads untracked '
                          'channels')


def _resolve_binding(state, b: SizeBinding) -> None:
    roots = _roots(state, b.cmap)
    if b.cmap.ndim == 1:
        reps, words = b.cmap, _WIDTH_WORDS
    elif _slab_atomic(roots, b.axis):
        reps, words = np.moveaxis(b.cmap, b.axis, 0).reshape(b.cmap.shape[b.axis], -1)[:, 0], _COUNT_WORDS
    else:
        return  # the axis keeps its size (coupled across it) or cannot lose channels on its own
    if len(np.unique(roots[roots >= 0])) <= 1 and b.cmap.ndim > 1:
        return
    for attr in _prefer(b.names, words):
        state.bind_attribute(b.owner, attr, reps)


def _shrinks(roots: np.ndarray, axis: int) -> bool:
    """Whether pruning can shorten ``axis``: its slabs do not all hold the same atoms."""
    moved = np.moveaxis(roots, axis, 0).reshape(roots.shape[axis], -1)
    sets = [frozenset(row[row >= 0].tolist()) for row in moved]
    return len(set(sets)) > 1


def _resolve_check(state, b: SizeCheck) -> None:
    srcs = [(c, a) for c, a in b.sources if (c >= 0).any()]
    shrinking = [(c, a) for c, a in srcs if _shrinks(_roots(state, c), a)]
    target = b.cmap is not None and b.axis >= 0 and _shrinks(_roots(state, b.cmap), b.axis)
    if not shrinking and not target:
        return  # neither side can change size
    if shrinking and target:
        mine = set(_roots(state, b.cmap).reshape(-1).tolist()) - {-1}
        theirs = set(np.concatenate([_roots(state, c).reshape(-1) for c, _ in shrinking]).tolist()) - {-1}
        if mine == theirs:
            return  # the same channels: the size follows them
    if b.owner is not None:  # the slimmed owner infers this size from its tensor (reshape(B, N, -1))
        state.inferred.setdefault(b.owner, set()).add(b.position)
        return
    if b.cmap is not None:
        state.uf.flag(b.cmap, b.reason)
    for c, _ in srcs:
        state.uf.flag(c, b.reason)


def _elements(c) -> List[np.ndarray]:
    if isinstance(c, (SplitGrid, SizeBinding)):
        return [c.cmap]
    if isinstance(c, SizeCheck):
        return ([c.cmap] if c.cmap is not None else []) + [m for m, _ in c.sources]
    return []


def resolve(state) -> None:
    """Resolve every recorded grid in trace order (see the module docstring), then the size bindings and checks
    (which need the final atoms). A constraint the tracer fails on keeps its channels (named), never crashes."""
    def safely(fn, c):
        try:
            fn(state, c)
        except Exception as exc:  # noqa: BLE001  a defect here must degrade, not crash the trace
            reason = f'the tracer failed on a {type(c).__name__} ({type(exc).__name__}: {exc})'
            for arr in _elements(c):
                state.uf.flag(arr, reason)
            if isinstance(c, GroupGrid) and c.name in state.modules:
                rec = state.modules[c.name]
                for arr in (rec.in_elems, rec.out_elems):
                    if arr is not None:
                        state.uf.flag(arr, reason)
    for c in state.constraints:
        if isinstance(c, SplitGrid):
            safely(_resolve_split, c)
        elif isinstance(c, GroupGrid):
            safely(_resolve_group, c)
    for c in state.constraints:
        if isinstance(c, SizeBinding):
            safely(_resolve_binding, c)
        elif isinstance(c, SizeCheck):
            safely(_resolve_check, c)
