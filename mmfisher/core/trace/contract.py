"""Products that sum over a dim: ``matmul`` / ``@``, ``bmm``, ``mm``, two-operand ``einsum`` and
``scaled_dot_product_attention`` (attention in ViT, Swin, timm, torchvision; non-local blocks).

Each operand's dims get labels: *batch* (in both operands and the result), *free* (in one operand and the
result) and *contracted* (summed over). On the id tensors:

* nothing contracted holds channels (``attn @ v``, ``v @ attn^T``): the result's position is the free positions'
  channels; along batch dims the operands' channels are one atom position by position (as in an add);
* the contracted dim holds channels (``q @ k^T`` over a head's channels): exact only when they go as a whole. If a
  batch dim holds channels (the heads), every head's contracted channels of both operands become one atom (the
  head: pruned as a whole, its attention scores with it), and that batch position of the result carries it;
  with no such dim (a non-local block's ``q^T k`` over all channels) the channels are unmappable.

An operand computed from kept channels (:class:`~mmfisher.core.trace.channels.Mixed`) or a constant acts as a
fixed-size operand: along a batch dim where the other operand's channels would shrink, those are coupled across
it (the dim keeps its size) when other dims still hold channels, else the op is unmappable.
"""
import string
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from .channels import ChannelInfo, ids_tensor, info_from_ids
from .constraints import couple_across
from .errors import Unmappable
from .optable import OpCall
from .state import TraceState

__all__ = ['CONTRACT', 'op_contract']

CONTRACT = {'matmul', 'rmatmul', 'bmm', 'mm', 'einsum', 'scaled_dot_product_attention'}


def _ids(t: Optional[torch.Tensor], info: Any) -> Optional[np.ndarray]:
    if t is None or not isinstance(info, ChannelInfo):
        return None
    return ids_tensor(t, info).numpy()


def _varies(ids: Optional[np.ndarray], axis: int) -> bool:
    if ids is None or ids.shape[axis] <= 1:
        return False
    first = np.take(ids, [0], axis=axis)
    return bool((ids != first).any())


def _arrange(ids: np.ndarray, spec: str, labels: str, sizes: dict, drop: str) -> np.ndarray:
    """``ids`` (dims labelled ``spec``) with the labels in ``drop`` indexed at 0, moved and broadcast to
    ``labels`` (labels it lacks become size-1 dims, then broadcast)."""
    idx = tuple(0 if c in drop else slice(None) for c in spec)
    sub = ids[idx]
    kept = [c for c in spec if c not in drop]
    order = [kept.index(c) for c in labels if c in kept]
    sub = np.transpose(sub, order) if sub.ndim > 1 else sub
    shape = [sub.shape[[c for c in labels if c in kept].index(c)] if c in kept else 1 for c in labels]
    sub = sub.reshape(shape)
    return np.broadcast_to(sub, [sizes[c] for c in labels])


def contract_ids(state: TraceState, a: Optional[np.ndarray], b: Optional[np.ndarray], sa: str, sb: str,
                 so: str, sizes: dict, shape_a: Tuple[int, ...], shape_b: Tuple[int, ...]) -> np.ndarray:
    """The id array (labels ``so``) of ``einsum(sa,sb->so)`` on operands with ids ``a`` / ``b`` (None: a
    fixed-size operand), coupling what exactness needs (see the module docstring)."""
    batch = [c for c in so if c in sa and c in sb]
    contracted = [c for c in sa + sb if c not in so]
    free = [c for c in so if c not in batch]
    traced = [(ids, spec) for ids, spec in ((a, sa), (b, sb)) if ids is not None]
    if not traced:
        return np.full([sizes[c] for c in so], -1, dtype=np.int64)
    over = any(_varies(ids, spec.index(c)) for ids, spec in traced for c in contracted if c in spec)
    # a fixed-size operand along a batch dim where the traced one's channels vary: that dim must keep its size
    for ids, spec, shape in ((a, sa, shape_a), (b, sb, shape_b)):
        if ids is not None:
            continue
        for c in batch:
            if shape[spec.index(c)] <= 1:
                continue
            for tids, tspec in traced:
                if not _varies(tids, tspec.index(c)):
                    continue
                rest = [x for x in tspec if x != c and (x not in contracted or not over) and
                        _varies(tids, tspec.index(x))]
                if not rest:
                    raise Unmappable('it combines channels with a fixed-size operand along their dim')
                couple_across(state, tids, tspec.index(c))
    if over:
        if any(_varies(ids, spec.index(c)) for ids, spec in traced for c in free if c in spec):
            raise Unmappable('it contracts channels of an operand whose other dims hold channels too')
        groups = [c for c in batch if any(_varies(ids, spec.index(c)) for ids, spec in traced)]
        if not groups:
            raise Unmappable('it contracts channels (a sum over them)')
        g_sizes = [sizes[c] for c in groups]
        rows = []
        for ids, spec in traced:
            local = {c: (sizes[c] if c in groups else ids.shape[spec.index(c)]) for c in spec}
            lab = ''.join(groups) + ''.join(c for c in spec if c not in groups)
            arr = _arrange(ids, spec, lab, dict(sizes, **{c: local[c] for c in spec if c not in groups}), '')
            rows.append(arr.reshape(int(np.prod(g_sizes)), -1))
        merged = np.concatenate(rows, axis=1)
        reps = np.full(merged.shape[0], -1, dtype=np.int64)
        for r in range(merged.shape[0]):
            row = merged[r]
            valid = np.unique(row[row >= 0])
            if valid.size:
                state.uf.union_all(valid)
                reps[r] = valid[0]
            if (row < 0).any() and valid.size:
                state.uf.flag(valid, 'its attention (a product over a head) reads untracked channels')
        out = reps.reshape(g_sizes)
        return _arrange(out, ''.join(groups), so, sizes, '')
    maps = [_arrange(ids, spec, so, sizes, ''.join(c for c in spec if c in contracted)) for ids, spec in traced]
    maps.sort(key=lambda m: -np.unique(m).size)  # the finest map names the positions (v's, not a head's score)
    for m in maps[1:]:
        state.uf.union_arrays(maps[0], m)
    merged = maps[0].copy()
    for m in maps[1:]:
        merged = np.where(merged < 0, m, merged)
    return merged


def _matmul_specs(da: int, db: int) -> Tuple[str, str, str]:
    if da < 2 or db < 2:
        raise Unmappable('a matrix-vector product over channels')
    nd = max(da, db)
    letters = string.ascii_lowercase
    batch = letters[:nd - 2]
    return batch[nd - da:] + 'xy', batch[nd - db:] + 'yz', batch + 'xz'


def _einsum_specs(eq: str, n: int) -> Tuple[List[str], str]:
    eq = eq.replace(' ', '')
    if '...' in eq or n != 2:
        raise Unmappable('an einsum the tracer does not map (ellipsis, or not two operands)')
    lhs, _, rhs = eq.partition('->')
    specs = lhs.split(',')
    if not rhs and '->' not in eq:
        counts = {}
        for c in ''.join(specs):
            counts[c] = counts.get(c, 0) + 1
        rhs = ''.join(sorted(c for c, k in counts.items() if k == 1))
    return specs, rhs


def op_contract(state: TraceState, call: OpCall) -> None:
    """See the module docstring; Mixed operands arrive as None (fixed-size operands)."""
    name, args, kwargs, outs = call.name, call.args, call.kwargs, call.outs
    if not outs:
        return
    out = outs[0]
    infos = {id(t): i for t, i in zip(call.flat_in, call.in_infos)}
    if name == 'scaled_dot_product_attention':
        _sdpa(state, call, infos)
        return
    if name == 'einsum':
        eq = args[0]
        ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
        if not all(isinstance(t, torch.Tensor) for t in ops):
            raise Unmappable('an einsum the tracer does not map')
        specs, so = _einsum_specs(eq, len(ops))
        (ta, tb), (sa, sb) = ops, specs
    else:
        ta, tb = (args[1], args[0]) if name == 'rmatmul' else (args[0], args[1])
        if not (isinstance(ta, torch.Tensor) and isinstance(tb, torch.Tensor)):
            raise Unmappable('a product with a non-tensor operand')
        sa, sb, so = _matmul_specs(ta.dim(), tb.dim())
    sizes = {}
    for t, spec in ((ta, sa), (tb, sb)):
        for c, n in zip(spec, t.shape):
            sizes[c] = max(sizes.get(c, 1), int(n))
    for c, n in zip(so, out.shape):
        sizes[c] = int(n)
    ids = contract_ids(state, _ids(ta, infos.get(id(ta))), _ids(tb, infos.get(id(tb))), sa, sb, so, sizes,
                       tuple(ta.shape), tuple(tb.shape))
    _set(state, out, ids)


def _set(state: TraceState, out: torch.Tensor, ids: np.ndarray) -> None:
    if tuple(ids.shape) != tuple(out.shape):
        raise Unmappable('the product replayed on channel ids gave another shape')
    info = info_from_ids(torch.from_numpy(np.ascontiguousarray(ids)))
    if info is None:
        raise Unmappable('the product mixes channel identities along non-channel dims')
    state.set(out, info)


def _sdpa(state: TraceState, call: OpCall, infos: dict) -> None:
    """``softmax(q @ k^T * scale + mask) @ v`` as two products (the softmax runs over keys, never channels)."""
    args, kwargs = call.args, call.kwargs
    q, k, v = (list(args[:3]) + [kwargs.get(n) for n in ('query', 'key', 'value')[len(args):]])[:3]
    mask = args[3] if len(args) > 3 else kwargs.get('attn_mask')
    if kwargs.get('enable_gqa'):
        raise Unmappable('grouped-query attention (enable_gqa)')
    if isinstance(mask, torch.Tensor) and isinstance(infos.get(id(mask)), ChannelInfo):
        raise Unmappable('an attention mask computed from channels')
    nd = max(q.dim(), k.dim(), v.dim())
    letters = string.ascii_lowercase[:nd - 2]
    sq, sk, sv = letters[nd - q.dim():] + 'LE', letters[nd - k.dim():] + 'SE', letters[nd - v.dim():] + 'SD'
    sizes = {}
    for t, spec in ((q, sq), (k, sk), (v, sv)):
        for c, n in zip(spec, t.shape):
            sizes[c] = max(sizes.get(c, 1), int(n))
    scores = contract_ids(state, _ids(q, infos.get(id(q))), _ids(k, infos.get(id(k))), sq, sk, letters + 'LS',
                          sizes, tuple(q.shape), tuple(k.shape))
    score_shape = tuple(sizes[c] for c in letters + 'LS')
    if isinstance(mask, torch.Tensor):  # a fixed-size mask broadcast onto the scores
        m_shape = (1,) * (len(score_shape) - mask.dim()) + tuple(mask.shape)
        for axis, n in enumerate(m_shape[:-2]):
            if n > 1 and _varies(scores, axis):
                raise Unmappable('an attention mask of fixed size along the heads')
    s_ids = scores if (scores >= 0).any() else None
    ids = contract_ids(state, s_ids, _ids(v, infos.get(id(v))), letters + 'LS', sv, letters + 'LD', sizes,
                       score_shape, tuple(v.shape))
    _set(state, call.outs[0], ids)
