"""Tensors made from one parameter (or buffer) by data movement only: ``gamma.view(1, -1, 1, 1)`` (ConvNeXt's layer
scale), ``cls_token.expand(B, -1, -1)`` (ViT), ``table[index].view(N, N, -1).permute(2, 0, 1)`` (Swin's relative
position bias).

Such a tensor is described by a :class:`ParamRef`: the parameter's name and, per position, the flat index of the
parameter element it holds, replayed on int64 *position tensors* like channel ids are (``movement.py``). When it
meets traced channels (a pointwise op, a cat along another dim), :func:`attribute` finds the one parameter dim that
runs along the channel dim, position by position; the parameter is then sliced with the channels
(:class:`~mmfisher.core.trace.records.ParamUse`) and slimming stays exact. A derived tensor the positions cannot
explain (a gather along the channel dim, a mix of two parameters) stays a constant the tracer cannot attribute.
"""
import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_map

from .channels import ChannelCount, channel_counts
from .optable import LIST_DATA, MOVE, NARY, UNARY
from .records import ParamUse

__all__ = ['ParamRef', 'param_op', 'attribute', 'record_param_use', 'param_vector']


@dataclasses.dataclass
class ParamRef:
    """A tensor derived from parameter ``name`` (shape ``shape``) by data movement: ``pos`` (int64, CPU, shaped
    like the tensor) holds the flat index of the parameter element at each position."""

    name: str
    shape: Tuple[int, ...]
    pos: torch.Tensor


def _cpu_index(x: Any) -> Any:
    """Meta tensors among an op's arguments (indices on a meta-device trace) replaced by zeros on the CPU: the
    positions they pick become constant, so a dim indexed that way can never be attributed (see
    :func:`attribute`), which keeps the replay safe without values."""
    if isinstance(x, torch.Tensor) and x.is_meta:
        return torch.zeros(x.shape, dtype=x.dtype if not x.dtype.is_floating_point else torch.int64)
    return x


def param_op(state, name: str, func, args: tuple, kwargs: Dict[str, Any], flat_in: List[torch.Tensor],
             out: Any) -> None:
    """An op none of whose inputs carries channels: follow parameter-derived tensors through data movement and
    dtype/contiguity changes (and scalar arithmetic); anything else ends the derivation."""
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    if not outs:
        return
    if flat_in and (name in UNARY or name in MOVE and name not in LIST_DATA) and state.is_zero(flat_in[0]):
        for t in outs:  # zeros moved are zeros (DETR's first decoder query, transposed)
            state.mark_zero(t)
    refs = [state.param_ref(t) for t in flat_in]
    if not any(r is not None for r in refs):
        return
    if name in MOVE and name not in LIST_DATA:
        ref = refs[0] if flat_in and flat_in[0] is (args[0] if args else None) else None
        if ref is None:
            return
        counts = channel_counts((args[1:], kwargs))
        if counts:  # DINO/Deformable DETR: split(query_embed, c) with c the stream's width: checked after the
            from .constraints import SizeCheck  # forward (it must not change)
            for c in counts:
                state.constraints.append(SizeCheck(None, -1, c.sources, f'op {name} sizes a parameter-derived '
                                                   'tensor by their count'))
            return
        pargs = (ref.pos,) + tuple(tree_map(_cpu_index, tuple(args[1:])))
        pkw = tree_map(_cpu_index, dict(kwargs))
        try:
            with torch.no_grad():
                probe = func(*pargs, **pkw)
        except Exception:  # noqa: BLE001  the replay must behave like the op; if not, the derivation ends
            return
        probes = [t for t in tree_flatten(probe)[0] if isinstance(t, torch.Tensor)]
        if len(probes) != len(outs):
            return
        for t, p in zip(outs, probes):
            if tuple(t.shape) == tuple(p.shape) and p.dtype == torch.int64:
                state.set_param_ref(t, ParamRef(ref.name, ref.shape, p))
                if name in _SIZED:
                    _note_literal_sizes(state, ParamRef(ref.name, ref.shape, p), args[1:], kwargs)
        return
    scalar_only = all(r is not None or t.dim() == 0 or state.is_zero(t) for t, r in zip(flat_in, refs))
    real = [r for r in refs if r is not None]
    same = all(r.name == real[0].name and r.pos.shape == real[0].pos.shape and torch.equal(r.pos, real[0].pos)
               for r in real[1:])  # e.g. zeros_like(query_pos) + query_pos: the same positions
    if (name in UNARY or (name in NARY and scalar_only)) and real and (len(real) == 1 or same):
        ref = real[0]
        for t in outs[:1]:
            if tuple(t.shape) == tuple(ref.pos.shape):
                state.set_param_ref(t, ParamRef(ref.name, ref.shape, ref.pos))


#: moves whose int arguments are the result's sizes
_SIZED = frozenset({'view', 'reshape', 'expand', 'broadcast_to'})
#: words an int attribute holding a parameter's width may be named by (timm's ``Scale.shape``)
_SIZE_WORDS = ('shape', 'size', 'dim', 'channels', 'features', 'width')


def _note_literal_sizes(state, out: ParamRef, args: tuple, kwargs: Dict[str, Any]) -> None:
    """A view/reshape/expand of a parameter (``out``: the result's positions) sized by plain ints: a literal
    that sizes a result dim running along a parameter dim is that dim's width, which would not follow pruning
    unless an attribute holding it is updated (see :func:`record_param_use`). Sizes read off traced tensors
    (:class:`ChannelCount`) and -1 follow by themselves."""
    sizes = list(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else list(args)
    if not sizes:
        sizes = list(kwargs.get('size', kwargs.get('shape', ())) or ())
    if len(sizes) != out.pos.dim():
        return
    for d, v in enumerate(sizes):
        if not isinstance(v, int) or isinstance(v, (bool, ChannelCount)) or v <= 1:
            continue
        k = attribute(out, d)
        if k is not None:
            owner, names = state.size_attribute(v, _SIZE_WORDS)
            state.param_sizes.setdefault(out.name, {}).setdefault(k, (v, owner, names))


def attribute(ref: ParamRef, t_dim: int) -> Optional[int]:
    """The parameter dim that runs along dim ``t_dim`` of the derived tensor position by position (index k along
    ``t_dim`` holds parameter index k along it, everywhere, and the parameter is exactly that long), or None."""
    pos = ref.pos
    n = pos.shape[t_dim]
    if (pos < 0).any():
        return None
    idx = []
    rest = pos
    for size in reversed(ref.shape):  # unravel the flat index
        idx.append(rest % size)
        rest = rest // size
    idx = idx[::-1]
    first = [i.narrow(t_dim, 0, 1) for i in idx]
    varying = [p for p, (i, f) in enumerate(zip(idx, first)) if bool((i != f).any())]
    if len(varying) != 1:
        return None
    p = varying[0]
    if ref.shape[p] != n:
        return None
    view = [1] * pos.dim()
    view[t_dim] = n
    if not torch.equal(idx[p], torch.arange(n).view(view).expand(pos.shape)):
        return None
    return p


def record_param_use(state, ref: ParamRef, p: int, vec: Optional[np.ndarray] = None) -> bool:
    """Slice parameter ``ref.name`` along dim ``p`` with channels: its positions there are elements of their own
    (made on first use), coupled with ``vec`` (the channels they meet) position by position. False when the
    parameter is already sliced along another dim (then the caller keeps the channels)."""
    use = state.params.get(ref.name)
    if use is None:
        use = state.params[ref.name] = ParamUse(ref.name, p, state.uf.make(ref.shape[p]))
    if use.dim != p or (vec is not None and use.elems.shape != np.shape(vec)):
        return False
    fixed = state.param_sizes.get(ref.name, {}).pop(p, None)
    if fixed is not None:  # a literal sized this dim: bind it to the one attribute holding it, or keep the width
        n, owner, names = fixed
        if len(names) == 1:
            state.bind_attribute(owner, names[0], use.elems)
        else:
            state.uf.flag(use.elems, f'{ref.name} is reshaped to a literal width ({n}) that would not follow '
                                     'pruning')
    if vec is not None:
        state.uf.union_arrays(use.elems, vec)
    return True


def param_vector(state, t: torch.Tensor, dim: int) -> Optional[np.ndarray]:
    """The elements along ``dim`` of a parameter-derived tensor ``t`` read by a layer (the parameter's own, see
    :func:`record_param_use`), or None when ``t`` is not one or cannot be attributed."""
    ref = state.param_ref(t)
    p = attribute(ref, dim) if ref is not None else None
    if p is None or not record_param_use(state, ref, p):
        return None
    return state.params[ref.name].elems.copy()
