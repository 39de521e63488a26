"""The torch-function mode that sees every op of the forward, and the table from op families to handlers.

Every op runs first; then :func:`record_op` updates the channel infos of its results. An op the tracer cannot map
(:class:`Unmappable`, or a failure of a handler itself) never stops the user's forward: :func:`unmappable` gives
its results a :class:`Mixed` naming the op, so only the channels it read become unprunable.
"""
from typing import Any, Callable, Dict, Optional


import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .channels import ChannelCount, ChannelInfo, Mixed, channel_counts, elems_of
from .errors import MetaTraceUnsupported, Unmappable, is_meta_limitation
from .movement import op_move
from .optable import (ALONG, FILL, FIRST_ONLY, MOVE, NARY, NEW, REDUCE, SPATIAL, UNARY, OpCall, op_name)
from .contract import CONTRACT, op_contract
from .params import param_op
from .pointwise import is_zero_scalar, op_pointwise, propagate_mixed
from .setitem import op_setitem
from .spatial import op_reduce, op_spatial
from .state import TraceState

__all__ = ['Tracer', 'record_op', 'handler_for']

Handler = Callable[[TraceState, OpCall], None]


def _op_copy(state: TraceState, call: OpCall) -> None:
    """``dst.copy_(src)``: the destination now holds the source's channels."""
    state.set(call.outs[0], call.in_infos[1] if len(call.in_infos) > 1 else None)


def _op_fill(state: TraceState, call: OpCall) -> None:
    """``fill_``, ``zero_``, ``normal_``, ...: the result holds no channel."""
    state.set(call.outs[0], None)


_FUNCTIONAL = {
    'linear': 'a functional linear (F.linear with a weight tensor; modules are pruned, calls are not)',
    'conv1d': 'a functional convolution (modules are pruned, calls are not)',
    'conv2d': 'a functional convolution (modules are pruned, calls are not)',
    'conv3d': 'a functional convolution (modules are pruned, calls are not)',
    'conv_transpose2d': 'a functional convolution (modules are pruned, calls are not)',
    'multi_head_attention_forward': 'a functional attention (nn.MultiheadAttention modules are pruned, calls are '
                                    'not)',
    'batch_norm': 'a functional norm (modules are pruned, calls are not)',
    'instance_norm': 'a functional norm (modules are pruned, calls are not)',
    'group_norm': 'a functional norm (modules are pruned, calls are not)',
}


def _op_functional(state: TraceState, call: OpCall) -> None:
    """Functional layers: their weights are tensors the tracer cannot slice as a layer."""
    raise Unmappable(_FUNCTIONAL[call.name])


def _op_shape_norm(state: TraceState, call: OpCall) -> None:
    """``F.layer_norm`` / ``F.rms_norm`` called directly: exact when the normalised (last) dims hold no channels
    (channels pass); over channels it would need the module's renormalization under masks."""
    x, info = call.flat_in[0], call.in_infos[0]
    shape = call.args[1] if len(call.args) > 1 else call.kwargs.get('normalized_shape')
    n = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
    for t, i in zip(call.flat_in[1:], call.in_infos[1:]):
        state.use(i)
        if i is not None:
            raise Unmappable('a functional norm with a weight computed from channels')
    if not isinstance(info, ChannelInfo) or not call.outs:
        return
    if any(d >= x.dim() - n for d in info.dims):
        raise Unmappable('a functional norm over channels (nn.LayerNorm / nn.RMSNorm modules are renormalized '
                         'over the alive channels, calls are not)')
    state.set(call.outs[0], ChannelInfo(info.dims, info.cmap.copy()))


def _op_where_indices(state: TraceState, call: OpCall) -> None:
    """One-argument ``torch.where(cond)`` (``nonzero(as_tuple=True)``): indices of the true elements."""
    raise Unmappable('data-dependent selection (the indices where a condition holds)')


# later entries win, so the families are listed from the lowest priority to the highest
LIKE = {'zeros_like', 'ones_like', 'empty_like', 'full_like', 'rand_like', 'randn_like'}
_TABLE: Dict[str, Handler] = {}
for _names, _handler in ((FILL, _op_fill), ({'copy'}, _op_copy), (REDUCE | ALONG, op_reduce),
                         (SPATIAL, op_spatial), (MOVE, op_move)):
    _TABLE.update(dict.fromkeys(_names, _handler))


def handler_for(name: str, args: tuple, kwargs: Dict[str, Any]) -> Optional[Handler]:
    """The handler of op ``name`` called with ``args`` / ``kwargs``; None if the tracer has no rule for it."""
    if name in UNARY or name in NARY or (name in ('max', 'min') and len(args) > 1 and
                                         isinstance(args[1], torch.Tensor)):
        if name == 'where' and len(args) + len(kwargs) == 1:
            return _op_where_indices
        return op_pointwise
    if name in CONTRACT:
        return op_contract
    if name in _FUNCTIONAL:
        return _op_functional
    if name in ('layer_norm', 'rms_norm'):
        return _op_shape_norm
    return _TABLE.get(name)


def _mixed_is_constant(flat_in: list, in_infos: list, outs: list) -> bool:
    """A pointwise op combines traced channels with :class:`Mixed` values that either broadcast along every
    channel dim of the result, or leave some channel dim to the traced inputs alone (the pointwise handler then
    couples across the others): the mixed values act as constants of fixed shape."""
    if not outs:
        return False
    nd = outs[0].dim()
    dims = {d + nd - t.dim() for t, i in zip(flat_in, in_infos) if isinstance(i, ChannelInfo) for d in i.dims}
    if not dims:
        return False
    shape = outs[0].shape
    for t, i in zip(flat_in, in_infos):
        if not isinstance(i, Mixed):
            continue
        ext = {d for d in dims if d - (nd - t.dim()) >= 0 and t.shape[d - (nd - t.dim())] > 1}
        if ext and not any(shape[d] > 1 for d in dims - ext):
            return False
    return True


def _sized_by_counts(state: TraceState, name: str, args: tuple, kwargs: Dict[str, Any]) -> None:
    """A width read off traced channels (:class:`ChannelCount`) shapes a tensor of kept (mixed) channels: in a
    view/reshape with that one such size and no -1, the slimmed module infers it (``reshape(B, N, C)`` after
    XCiT's channel attention: ``constraints.SizeCheck``'s inference); anywhere else those channels keep their
    width."""
    counts = channel_counts((args[1:], kwargs))
    if not counts:
        return
    rest = list(args[1:])
    sizes = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)) else rest
    at = [k for k, v in enumerate(sizes) if isinstance(v, ChannelCount)]
    if name in ('view', 'reshape') and not kwargs and len(counts) == 1 and len(at) == 1 and \
            all(isinstance(v, int) and int(v) != -1 for v in sizes) and not state.owner_adapted():
        state.inferred.setdefault(state.running_owner(), set()).add((len(sizes), at[0]))
        return
    for c in counts:
        for cmap, _ in c.sources:
            state.uf.flag(cmap, f'op {name} sizes a tensor of kept channels by their width')


def record_op(state: TraceState, func: Callable, args: tuple, kwargs: Dict[str, Any], out: Any) -> None:
    """Update the infos of ``out`` (and of an in-place op's input) after ``func(*args, **kwargs)`` ran."""
    name, inplace = op_name(func)
    if name == 'setitem':
        op_setitem(state, args)
        return
    if name in NEW:
        if name in ('zeros_like', 'new_zeros') and isinstance(out, torch.Tensor):
            state.mark_zero(out)
        if name in LIKE and isinstance(out, torch.Tensor) and args and isinstance(args[0], torch.Tensor) and \
                tuple(out.shape) == tuple(args[0].shape):
            # shaped like its source: its width follows the source's channels (DETR's first query, zeros like the
            # query embedding, is added to the decoder's stream), its values depend on none
            src = state.get(args[0])
            ref = state.param_ref(args[0]) if src is None else None
            if isinstance(src, ChannelInfo):
                state.set(out, ChannelInfo(src.dims, src.cmap.copy()))
            elif ref is not None:
                state.set_param_ref(out, ref)
        return
    if name in FIRST_ONLY and args:
        flat_in = [args[0]] if isinstance(args[0], torch.Tensor) else []
    else:
        flat_in = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    in_infos = [state.get(t) for t in flat_in]
    if all(i is None for i in in_infos):
        param_op(state, name, func, args, kwargs, flat_in, out)  # parameter-derived tensors (params.py)
        return  # nothing traced flows in: constants stay constants
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    if not outs:  # values leave tensor land (item, tolist, numpy, bool): a read the tracer cannot follow
        raise Unmappable('its values leave torch (python or numpy values)')
    zero = name == 'mul' and any(is_zero_scalar(a) for a in list(args[1:]) + list(kwargs.values()))
    if zero:  # mmdet keeps graphs connected with `x.sum() * 0`: the result carries no channel
        for i in in_infos:
            state.use(i, zero=True)
        for t in outs:
            state.set(t, None)
        return
    handler = handler_for(name, args, kwargs)
    if any(isinstance(i, Mixed) for i in in_infos):
        for i in in_infos:
            state.use(i)
        _sized_by_counts(state, name, args, kwargs)
        if handler is op_contract and any(isinstance(i, ChannelInfo) for i in in_infos):
            in_infos = [None if isinstance(i, Mixed) else i for i in in_infos]  # fixed-size operands
        elif handler is op_pointwise and _mixed_is_constant(flat_in, in_infos, outs):
            # a value computed from kept channels (a softmax over them, a matmul across them), combined with
            # traced channels: it acts as a constant of fixed shape (its channels are kept), the others pass
            in_infos = [None if isinstance(i, Mixed) else i for i in in_infos]
        else:
            propagate_mixed(state, name, in_infos, outs)
            return
    if handler is None:
        raise Unmappable('the tracer has no rule for it')
    handler(state, OpCall(func, name, args, kwargs, out, flat_in, in_infos, outs))
    if inplace and outs and flat_in and outs[0] is not flat_in[0]:
        state.set(flat_in[0], state.get(outs[0]))


def unmappable(state: TraceState, func: Callable, args: tuple, kwargs: Dict[str, Any], out: Any,
               why: str) -> None:
    """Give the results of an op the tracer cannot map a :class:`Mixed` over every channel it read."""
    name = op_name(func)[0]
    if name in FIRST_ONLY and args:
        infos = [state.get(args[0])]
    else:
        infos = [state.get(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    elems = [elems_of(i) for i in infos if i is not None]
    for i in infos:
        state.use(i)
    reason = f'op {name}: {why}'
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    if not outs:  # the values leave tensor land (python numbers): treat the read as a real use
        for e in elems:
            state.uf.flag(e, reason)
    for t in outs:  # lazy: flagged at the end unless only ever multiplied by zero
        state.set(t, state.new_mixed(elems, reason))
    state.unknown_ops[name] = state.unknown_ops.get(name, 0) + 1


class Tracer(TorchFunctionMode):
    """Records channel flow into ``state``; used only through :func:`~mmfisher.core.trace.trace_channels`."""

    def __init__(self, state: TraceState) -> None:
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.state.suppress:
            return out
        try:
            record_op(self.state, func, args, kwargs, out)
        except Unmappable as exc:
            unmappable(self.state, func, args, kwargs, out, str(exc))
        except MetaTraceUnsupported:
            raise
        except Exception as exc:  # noqa: BLE001  a defect of a handler degrades to "unmappable", never crashes
            if is_meta_limitation(exc):
                raise MetaTraceUnsupported(f'op {op_name(func)[0]}: {exc}') from exc
            unmappable(self.state, func, args, kwargs, out,
                       f'the tracer failed on it ({type(exc).__name__}: {exc})')
        return _counted(self.state, func, args, out)


def _counted(state: TraceState, func: Callable, args: tuple, out: Any) -> Any:
    """``x.shape`` / ``x.size()`` / ``x.size(d)`` of a traced tensor: its channel dims' sizes as
    :class:`ChannelCount` ints, so the tracer sees where a width read off one tensor sizes another."""
    name = getattr(func, '__name__', '')
    if name == '__get__':
        if getattr(getattr(func, '__self__', None), '__name__', '') != 'shape':
            return out
    elif name != 'size':
        return out
    info = state.get(args[0]) if args else None
    if not isinstance(info, ChannelInfo) or not info.dims:
        return out
    def count(d: int, v: int) -> int:
        return ChannelCount(v, [(info.cmap, info.dims.index(d))]) if d in info.dims and v > 1 else v
    if isinstance(out, torch.Size):
        return torch.Size([count(d, v) for d, v in enumerate(out)])
    if isinstance(out, int) and len(args) > 1 and isinstance(args[1], int):
        return count(args[1] % args[0].dim(), out)
    return out
