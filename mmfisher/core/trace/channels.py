"""The channel-id algebra: what the tracer knows about a tensor's channels, and the id tensors that replay it.

A traced tensor is described by a :class:`ChannelInfo` (which dims carry channels and the element at each
position of them) or, once an op mixed channels in a way no map can express, by a :class:`Mixed`. Data movement
is replayed on *id tensors* (int64 tensors shaped like the real one whose values are the elements, -1 for "no
channel"): :func:`ids_tensor` builds one, :func:`info_from_ids` reads a :class:`ChannelInfo` back.
"""
import dataclasses
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ['ChannelInfo', 'Mixed', 'ChannelCount', 'elems_of', 'ids_tensor', 'info_from_ids', 'broadcast_cmap']


@dataclasses.dataclass
class ChannelInfo:
    """Channel identity of a traced tensor.

    ``dims`` are the tensor dims that carry channels (sorted); ``cmap[i0, i1, ...]`` is the element at those
    positions (-1: a constant, no channel). Along every other dim the identity is constant.
    """

    dims: Tuple[int, ...]
    cmap: np.ndarray


@dataclasses.dataclass
class Mixed:
    """A tensor whose values depend on channels in a way the tracer cannot map (e.g. a reduction over channels).

    Its elements are made unprunable at the end of the trace unless its only uses were multiplications by zero
    (mmdet keeps graphs connected with ``x.sum() * 0``)."""

    elems: np.ndarray
    reason: str
    used: bool = False
    zero_only: bool = True


class ChannelCount(int):
    """An int the forward read off the size of a traced channel dim (``B, N, C = x.shape``), and ints computed
    from it (``C // num_heads``): slimming may change it. ``sources`` holds ``(cmap, axis)`` of each traced map it
    was read from. The tracer checks where such a size shapes another tensor (``trace.constraints.SizeCheck``,
    ``params.param_op``)."""

    sources: list

    def __new__(cls, value: int, sources: list) -> 'ChannelCount':
        obj = int.__new__(cls, value)
        obj.sources = sources
        return obj

    @property
    def elems(self) -> np.ndarray:
        return np.unique(np.concatenate([c.reshape(-1) for c, _ in self.sources]))

    def _derive(self, value: Any, other: Any = None) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            return value
        return ChannelCount(value, self.sources + (other.sources if isinstance(other, ChannelCount) else []))

    def __floordiv__(self, o): return self._derive(int(self) // o, o)  # noqa: E704
    def __rfloordiv__(self, o): return self._derive(o // int(self), o)  # noqa: E704
    def __mul__(self, o): return self._derive(int(self) * o, o)  # noqa: E704
    __rmul__ = __mul__
    def __add__(self, o): return self._derive(int(self) + o, o)  # noqa: E704
    __radd__ = __add__
    def __sub__(self, o): return self._derive(int(self) - o, o)  # noqa: E704
    def __rsub__(self, o): return self._derive(o - int(self), o)  # noqa: E704
    def __neg__(self): return self._derive(-int(self))  # noqa: E704

    def __reduce__(self):  # pickles (and copies) as the plain int
        return (int, (int(self),))

    def __deepcopy__(self, memo):
        return int(self)

    def __copy__(self):
        return int(self)


def channel_counts(obj: Any) -> list:
    """The :class:`ChannelCount` ints among ``obj`` (an op's arguments, nested)."""
    from torch.utils._pytree import tree_flatten
    return [v for v in tree_flatten(obj)[0] if isinstance(v, ChannelCount)]


def elems_of(info: Any) -> Optional[np.ndarray]:
    """Every element a :class:`ChannelInfo` or :class:`Mixed` holds (flat, may repeat); None for anything else."""
    if isinstance(info, ChannelInfo):
        return info.cmap.ravel()
    if isinstance(info, Mixed):
        return info.elems
    return None


def ids_tensor(t: torch.Tensor, info: ChannelInfo) -> torch.Tensor:
    """An int64 CPU tensor shaped like ``t`` holding each position's element."""
    shape = [1] * t.dim()
    for d, n in zip(info.dims, info.cmap.shape):
        shape[d] = n
    base = torch.from_numpy(np.ascontiguousarray(info.cmap)).reshape(shape)
    return base.expand(t.shape).contiguous()


def info_from_ids(ids: torch.Tensor) -> Optional[ChannelInfo]:
    """Read a :class:`ChannelInfo` off an id tensor; None if identity varies in a non-separable way."""
    if ids.numel() == 0:
        return ChannelInfo((), np.array(-1))
    dims = tuple(d for d in range(ids.dim()) if ids.shape[d] > 1 and
                 bool((ids != ids.narrow(d, 0, 1)).any()))
    index = tuple(slice(None) if d in dims else 0 for d in range(ids.dim()))
    cmap = ids[index]
    shape = [ids.shape[d] if d in dims else 1 for d in range(ids.dim())]
    if not torch.equal(cmap.reshape(shape).expand(ids.shape), ids):
        return None
    return ChannelInfo(dims, cmap.numpy().copy())


def broadcast_cmap(info: ChannelInfo, in_ndim: int, out_shape: Sequence[int], dims: Sequence[int]) -> np.ndarray:
    """``info``'s map (of an ``in_ndim``-dim input, right-aligned to the output as broadcasting does) broadcast
    onto the output dims ``dims`` of an output shaped ``out_shape``; ``dims`` must hold every shifted channel dim."""
    shift = len(out_shape) - in_ndim
    shape = [1] * len(dims)
    cm = info.cmap
    src_dims = [d + shift for d in info.dims]
    # reorder info.cmap axes onto positions in `dims`
    pos = [list(dims).index(d) for d in src_dims]
    for p, n in zip(pos, cm.shape):
        shape[p] = n
    order = np.argsort(pos)
    cm = np.transpose(cm, order) if cm.ndim > 1 else cm
    cm = cm.reshape(shape)
    return np.broadcast_to(cm, [out_shape[d] for d in dims])
