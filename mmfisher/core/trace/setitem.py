"""``target[index] = value``: writes into buffers, replayed on id tensors. Exact only when every channel dim is
written whole and in order, and a fresh buffer's channel size follows pruning (a ``*channels*`` attribute)."""
from typing import Any, List

import torch

from .channels import ChannelInfo, Mixed, elems_of, ids_tensor, info_from_ids
from .errors import Unmappable, no_meta
from .state import TraceState

__all__ = ['op_setitem']


def op_setitem(state: TraceState, args: tuple) -> None:
    """``target[index] = value``: replay the write on id tensors; channels written into a fresh buffer tie the
    buffer's size to the running module's ``*channels*`` attribute (or make them unprunable)."""
    target, index, value = args[0], args[1], args[2]
    if state.get(target) is not None or state.get(value) is not None:
        no_meta(index)
    t_info, v_info = state.get(target), state.get(value)
    if t_info is None and v_info is None:
        return
    if isinstance(t_info, Mixed) or isinstance(v_info, Mixed):
        state.use(v_info)
        state.set(target, state.new_mixed([elems_of(t_info), elems_of(v_info)], 'setitem of mixed'))
        return
    ids = ids_tensor(target, t_info) if t_info is not None else torch.full(target.shape, -1, dtype=torch.int64)
    if isinstance(value, torch.Tensor):
        vids = ids_tensor(value, v_info) if v_info is not None else torch.full(value.shape, -1, dtype=torch.int64)
    else:
        vids = -1
    try:
        ids[index] = vids
    except Exception:
        raise Unmappable('setitem could not be replayed on channel ids') from None
    if isinstance(v_info, ChannelInfo) and v_info.dims and isinstance(value, torch.Tensor):
        check_setitem_positions(state, target, index, value, v_info)
    info = info_from_ids(ids)
    if info is None:
        raise Unmappable('setitem mixes channel identities')
    if t_info is None and isinstance(v_info, ChannelInfo) and v_info.dims and isinstance(value, torch.Tensor):
        region = target[index].shape
        offset = target.dim() - len(region)
        shift = len(region) - value.dim()
        dims = [vd + shift + offset for vd in v_info.dims if value.shape[vd] > 1]
        bind_buffer_size(state, target, info, [d for d in dims if 0 <= d < target.dim()])
    state.set(target, info)


def bind_buffer_size(state: TraceState, target: torch.Tensor, info: ChannelInfo, dims: List[int]) -> None:
    """A fresh buffer receives channels: its channel size came from somewhere the tracer cannot see. Tie it
    to the one ``*channels*`` int attribute of the running module that equals it, or make it unprunable."""
    for d in dims:
        size = target.shape[d]
        vec = state.channel_vector(info, d, size)
        if vec is None:
            continue
        owner, names = state.size_attribute(size, ('channels',))
        if len(names) != 1:
            state.uf.flag(vec, f'op setitem writes channels into a buffer of literal size {size}'
                          + (f' in {owner}' if owner else ''))
            continue
        state.bind_attribute(owner, names[0], vec)


def check_setitem_positions(state: TraceState, target: torch.Tensor, index: Any, value: torch.Tensor,
                            v_info: ChannelInfo) -> None:
    """Writing channels into a buffer is exact only if every channel dim is written whole and in order
    (``feats[rows] = x``); ``out[:, :8] = x`` puts channels at literal offsets that would not follow pruning."""
    region = target[index].shape
    shift = len(region) - value.dim()
    for vd in v_info.dims:
        rd = vd + shift
        if rd < 0 or value.shape[vd] <= 1:
            continue
        whole = False
        for d in range(target.dim()):
            if target.shape[d] != region[rd]:
                continue
            pos = torch.arange(target.shape[d]).view([-1 if k == d else 1 for k in range(target.dim())])
            sel = pos.expand(target.shape)[index]
            line = sel.movedim(rd, -1).reshape(-1, region[rd])
            if bool((line == torch.arange(region[rd])).all()):
                whole = True
                break
        if not whole:
            state.uf.flag(v_info.cmap, 'op setitem writes channels at literal positions')
            return
