"""Ops that act on non-channel dims: spatial ops (pooling, interpolation, padding) and reductions or ops along
one dim (sum, mean, softmax, topk, ...). They keep channels when they leave the channel dims alone."""
import numpy as np
import torch

from ..dims import normalize_dim
from .channels import ChannelInfo
from .constraints import couple_across
from .errors import Unmappable
from .optable import ALONG, OpCall
from .state import TraceState

__all__ = ['op_spatial', 'op_reduce']


def op_spatial(state: TraceState, call: OpCall) -> None:
    """Pooling, interpolation, padding, grid sampling: the first input's channels pass when the op leaves the
    channel dims' sizes alone (and acts only on dims >= 2, except ``pad``)."""
    name, flat_in, in_infos, outs = call.name, call.flat_in, call.in_infos, call.outs
    x, info = flat_in[0], in_infos[0]
    for i in in_infos[1:]:
        state.use(i)
    grid = (call.args[1] if len(call.args) > 1 else call.kwargs.get('grid')) if name == 'grid_sample' else None
    if isinstance(state.get(grid), ChannelInfo):  # grid_sample reads only its input's channels (FIRST_ONLY)
        _sampling_grid(state, x, info, grid, state.get(grid))
    elif state.get(grid) is not None:
        state.flag_info(state.get(grid), 'op grid_sample reads them as sampling coordinates')
    if not isinstance(info, ChannelInfo) or not outs:
        return
    out = outs[0]
    if out.dim() != x.dim() or any(out.shape[d] != x.shape[d] for d in info.dims) or \
            any(d >= 2 for d in info.dims) and name not in ('pad',):
        raise Unmappable('it resizes a channel dim')
    for t in outs[:1]:
        state.set(t, ChannelInfo(info.dims, info.cmap.copy()))


def _sampling_grid(state: TraceState, x: torch.Tensor, info, grid: torch.Tensor, g_info: ChannelInfo) -> None:
    """``grid_sample(x, grid)`` with a grid computed from channels (deformable attention's sampling offsets): the
    grid's channels are coordinates, read whole. When ``x``'s batch dim holds channels (the heads, merged into
    the batch), each batch position's grid goes with that position's channels (a head's offsets with the head);
    otherwise the grid's channels are kept."""
    from .channels import ids_tensor
    gids = ids_tensor(grid, g_info).reshape(grid.shape[0], -1).numpy()
    if isinstance(info, ChannelInfo) and 0 in info.dims and x.shape[0] == grid.shape[0]:
        xids = ids_tensor(x, info).reshape(x.shape[0], -1).numpy()
        for n in range(x.shape[0]):
            row = np.concatenate([np.unique(xids[n]), np.unique(gids[n])])
            state.uf.union_all(row[row >= 0])
        return
    state.uf.flag(gids, 'op grid_sample reads them as sampling coordinates')


def op_reduce(state: TraceState, call: OpCall) -> None:
    """Reductions (sum, mean, max, ...) and ops along one dim (softmax, sort, topk, normalize, ...): channels
    pass when the reduced dims hold none. A reduction over a dim that splits channels while other dims still
    hold them (ResNeSt's sum and softmax over its radix splits, a softmax within each attention head) couples
    the positions along it like an add, so it never shrinks; reducing over all dims or across the channels
    themselves is unmappable."""
    name, args, kwargs, in_infos, outs = call.name, call.args, call.kwargs, call.in_infos, call.outs
    info = in_infos[0]
    if not isinstance(info, ChannelInfo) or not outs:
        return
    x = args[0]
    if not info.dims:
        for t in outs:
            state.set(t, ChannelInfo((), info.cmap.copy()))
        return
    dim = kwargs.get('dim', args[1] if len(args) > 1 and not isinstance(args[1], torch.Tensor) else None)
    if name in ('normalize',):
        dim = kwargs.get('dim', args[2] if len(args) > 2 else 1)
    if name in ('topk',):
        dim = kwargs.get('dim', args[2] if len(args) > 2 else -1)
    if dim is None:
        raise Unmappable('it reduces over all dims, channels included')
    red = [dim] if isinstance(dim, int) else list(dim)
    red = sorted(normalize_dim(d, x.dim()) for d in red)
    across = [d for d in red if d in info.dims]
    cmap, dims = info.cmap, info.dims
    if across:
        rest = [a for a, d in enumerate(info.dims) if d not in across and info.cmap.shape[a] > 1]
        if not rest:
            raise Unmappable('it reduces or normalises across channels')
        for d in across:  # a split of channels: couple its positions like an add
            couple_across(state, info.cmap, info.dims.index(d))
        if name not in ALONG:  # the reduced dims leave the map (index 0 stands for the coupled positions)
            keep_axes = [a for a, d in enumerate(info.dims) if d not in across]
            cmap = info.cmap[tuple(slice(None) if a in keep_axes else 0 for a in range(info.cmap.ndim))]
            dims = tuple(info.dims[a] for a in keep_axes)
    for t in outs:
        keep = t.dim() == x.dim()
        if name in ALONG:
            state.set(t, ChannelInfo(info.dims, info.cmap.copy()))
        elif keep:
            state.set(t, ChannelInfo(dims, cmap.copy()))
        else:
            new_dims = tuple(d - sum(r < d for r in red) for d in dims)
            state.set(t, ChannelInfo(new_dims, cmap.copy()))  # value and index outputs alike
