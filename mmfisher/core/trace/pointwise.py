"""Pointwise ops: channel identities pass through; n-ary ops (add, mul, where, ...) union the channels they
combine (residual adds, FPN top-down adds, SE/attention gates). Also what a :class:`Mixed` input does to a
result, and the ``x * 0`` idiom that carries no channel."""
from typing import Any, List

import numpy as np
import torch

from .channels import ChannelInfo, Mixed, broadcast_cmap, elems_of
from .constraints import couple_across
from .errors import MetaTraceUnsupported
from .optable import NARY, OpCall
from .params import attribute, record_param_use
from .state import TraceState

__all__ = ['is_zero_scalar', 'op_pointwise', 'propagate_mixed']


def is_zero_scalar(x: Any) -> bool:
    """Whether ``x`` is a literal zero (a Python number or a constant one-element tensor equal to 0)."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return x == 0
    if isinstance(x, torch.Tensor) and x.is_meta:
        if x.requires_grad:  # a learnable scale (mmdet's Scale) is no zero literal
            return False
        raise MetaTraceUnsupported('a scalar tensor value is needed')
    if isinstance(x, torch.Tensor) and x.numel() == 1 and x.dim() == 0 and not x.requires_grad:
        try:
            return bool(x.item() == 0)
        except Exception:  # meta tensors and the like
            return False
    return False


def propagate_mixed(state: TraceState, name: str, in_infos: List[Any], outs: List[torch.Tensor]) -> None:
    """Some input is :class:`Mixed`: every output is one :class:`Mixed` over all inputs' elements."""
    elems = [elems_of(i) for i in in_infos if i is not None]
    reasons = [i.reason for i in in_infos if isinstance(i, Mixed)]
    m = state.new_mixed(elems, reasons[0] if reasons else f'op {name}')
    has_channels = any(isinstance(i, ChannelInfo) and i.dims for i in in_infos)
    if has_channels and name in NARY and m is not None:
        # a mixed value added into real channels contaminates them
        m.used, m.zero_only = True, False
    for t in outs:
        state.set(t, m)


def _flag_against_fixed(state: TraceState, name: str, maps: List[np.ndarray]) -> None:
    """Position by position, an element combined with a fixed position of another operand (-1: a channel the
    tracer could not map, e.g. a norm's output whose input came from an op it cannot see) cannot go: the slimmed
    op would still see the other operand's channel there. Broadcast operands (scalars along the dim) are not
    passed here."""
    if len(maps) < 2:
        return
    stack = np.stack(np.broadcast_arrays(*maps))
    fixed = (stack < 0).any(0)
    if not fixed.any():
        return
    hit = stack[:, fixed]
    elems = np.unique(hit[hit >= 0])
    if elems.size:
        state.uf.flag(elems, f'op {name} combines them with channels the tracer cannot map')


def op_pointwise(state: TraceState, call: OpCall) -> None:
    """Broadcast every traced input's map onto the output, union them position by position; per-channel
    parameters along the channel dim are recorded (sliced with the channels), other per-channel constants make
    the channels unprunable."""
    name, flat_in, in_infos, outs = call.name, call.flat_in, call.in_infos, call.outs
    if not outs:
        return
    out = outs[0]
    shape = tuple(out.shape)
    traced = [(t, i) for t, i in zip(flat_in, in_infos) if isinstance(i, ChannelInfo)]
    shift = lambda t, d: d + len(shape) - t.dim()  # noqa: E731
    dims = sorted({shift(t, d) for t, i in traced for d in i.dims})
    maps, scalar = [], []
    for t, i in traced:
        m = broadcast_cmap(i, t.dim(), shape, dims)
        # a size-1 channel broadcast over many (a 1-channel gate) couples nothing: it acts as a scalar
        bdims = [k for k, d in enumerate(dims) if shape[d] > 1 and (t.dim() - len(shape) + d < 0 or
                                                                    t.shape[t.dim() - len(shape) + d] == 1)]
        if bdims:
            m = np.full(m.shape, -1, dtype=np.int64)
        maps.append(m)
        scalar.append(bool(bdims))
    _flag_against_fixed(state, name, [m for m, s in zip(maps, scalar) if not s])
    # constants (incl. parameters) with per-channel extent along a channel dim
    merged_info = None
    for t, i in zip(flat_in, in_infos):
        if i is not None or t.dim() == 0:
            continue
        cdims = [d for d in range(t.dim()) if t.shape[d] > 1 and shift(t, d) in dims]
        if not cdims:
            continue
        ref = state.param_ref(t)
        if ref is not None and len(cdims) == 1 and maps:
            p = attribute(ref, cdims[0])
            d_out = shift(t, cdims[0])
            if p is not None and t.shape[cdims[0]] == shape[d_out]:
                if merged_info is None:
                    merged = maps[0].copy()
                    for m in maps[1:]:
                        merged = np.where(merged < 0, m, merged)
                    merged_info = ChannelInfo(tuple(dims), np.ascontiguousarray(merged))
                vec = state.channel_vector(merged_info, d_out, shape[d_out])
                if vec is not None and record_param_use(state, ref, p, vec):
                    continue
        out_cdims = {shift(t, d) for d in cdims}
        rest = [k for k, d in enumerate(dims) if d not in out_cdims and shape[d] > 1]
        if rest:  # other dims still hold channels: the fixed-size ones must keep their size (coupled across)
            for m in maps:
                for k, d in enumerate(dims):
                    if d in out_cdims:
                        couple_across(state, m, k)
            continue
        reason = f'op {name} combines channels with a per-channel tensor the tracer cannot attribute'
        for m in maps:
            state.uf.flag(m, reason)
    if not traced:
        return
    for m in maps[1:]:
        state.uf.union_arrays(maps[0], m)
    merged = maps[0].copy()
    for m in maps[1:]:
        merged = np.where(merged < 0, m, merged)
    state.set(out, ChannelInfo(tuple(dims), np.ascontiguousarray(merged)))
