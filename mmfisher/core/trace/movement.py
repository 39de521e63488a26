"""Data movement (view, reshape, permute, cat, split, chunk, slicing, gather, channel shuffle, ...): replayed on
id tensors, so any reshape is mapped exactly, and a movement that cannot be expressed as a channel map is
refused rather than guessed. :func:`constrain_move` then couples what must stay equal after pruning."""
from typing import List, Optional

import numpy as np
import torch
from torch.utils._pytree import tree_flatten

from .channels import ChannelCount, ChannelInfo, ids_tensor, info_from_ids
from .errors import Unmappable, no_meta
from .optable import LIST_DATA, LITERAL, OpCall
from .constraints import SizeBinding, SizeCheck, SplitGrid, couple_across
from .params import attribute, record_param_use
from .state import TraceState

# names of the int attributes a reshape may read a split dim's size from (``num_heads``, ``groups``, ``radix``)
# or a merged dim's (``embed_dims``, ``out_channels``)
SPLIT_WORDS = ('head', 'group', 'radix', 'channels', 'dim', 'width', 'mid', 'split', 'features')

__all__ = ['op_move', 'constrain_move']


def op_move(state: TraceState, call: OpCall) -> None:
    """Replay the op on id tensors (untraced inputs as -1) and read each result's map back; refuse (Unmappable)
    when the replay fails, differs in structure or shape, or mixes identities along non-channel dims."""
    func, name, args, kwargs, out = call.func, call.name, call.args, call.kwargs, call.out
    if name in LIST_DATA:
        data = args[0] if args else kwargs.get('tensors')
        seq = list(data)
        new_seq = []
        for t in seq:
            info = state.get(t)
            if isinstance(info, ChannelInfo):
                new_seq.append(ids_tensor(t, info))
            else:
                new_seq.append(torch.full(t.shape, -1, dtype=torch.int64))
        pargs = (new_seq,) + tuple(args[1:]) if args else ()
        pkw = dict(kwargs)
        if not args:
            pkw['tensors'] = new_seq
        refs = [(k, state.param_ref(t)) for k, t in enumerate(seq) if state.get(t) is None]
        if any(r is not None for _, r in refs):
            _cat_params(state, func, pargs, pkw, seq, new_seq, [(k, r) for k, r in refs if r is not None])
    else:
        x = args[0] if args else next(iter(kwargs.values()))
        info = state.get(x)
        if not isinstance(info, ChannelInfo):
            return
        ids = ids_tensor(x, info)
        pargs = (ids,) + tuple(args[1:])
        pkw = kwargs
        if name == 'masked_select':
            raise Unmappable('data-dependent selection')
    no_meta(pargs, pkw)
    try:
        with torch.no_grad():
            probe = func(*pargs, **pkw)
    except Exception as exc:  # the probe must behave like the real op; if not, refuse to guess
        probe = _replay_float(func, name, pargs, pkw)
        if probe is None:
            raise Unmappable(f'could not replay it on channel ids ({type(exc).__name__})')
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    probes = [t for t in tree_flatten(probe)[0] if isinstance(t, torch.Tensor)]
    if len(outs) != len(probes):
        raise Unmappable('replay gave a different structure')
    infos = []
    for t, p in zip(outs, probes):
        if tuple(t.shape) != tuple(p.shape):
            raise Unmappable('replay gave a different shape')
        info = info_from_ids(p)
        if info is None:
            raise Unmappable('the result mixes channel identities along non-channel dims')
        infos.append(info)
    constrain_move(state, name, pargs, infos, func, pkw, outs)
    for t, info in zip(outs, infos):
        state.set(t, info)


def _replay_float(func, name: str, pargs: tuple, pkw: dict):
    """Replay an op that has no int64 kernel (``F.unfold``, the im2col of Swin's patch merging) on float64 ids
    shifted by one, so the zeros it pads with read as "no channel" (exact for ids below 2**53)."""
    if name != 'unfold' or not pargs or not isinstance(pargs[0], torch.Tensor):
        return None
    try:
        with torch.no_grad():
            probe = func((pargs[0] + 1).double(), *pargs[1:], **pkw)
    except Exception:  # noqa: BLE001
        return None
    return probe.round().long() - 1


def _cat_params(state: TraceState, func, pargs: tuple, pkw: dict, seq: list, new_seq: list, refs: list) -> None:
    """``cat([cls_token.expand(...), x], 1)``: a parameter-derived input along a non-channel dim holds the
    channels of the others at the same positions of the channel dims; the parameter is sliced with them and its
    positions take their identities (``new_seq`` is updated in place). One it cannot be attributed to keeps them."""
    no_meta(pargs, pkw)
    with torch.no_grad():
        first = func(*pargs, **pkw)
    info = info_from_ids(first)
    if info is None or not info.dims:
        return
    cat_dim = pkw.get('dim', pargs[1] if len(pargs) > 1 else 0)
    for k, ref in refs:
        t = seq[k]
        if t.dim() != first.dim():
            continue
        cd = cat_dim % t.dim() if isinstance(cat_dim, int) else None
        dims = [d for d in info.dims if d != cd and t.shape[d] > 1]
        if len(dims) != 1:
            if dims:
                state.uf.flag(info.cmap, 'op cat joins channels with a per-channel tensor the tracer cannot '
                              'attribute')
            continue
        d = dims[0]
        vec = state.channel_vector(info, d, first.shape[d])
        p = attribute(ref, d)
        if vec is None or p is None or t.shape[d] != first.shape[d] or not record_param_use(state, ref, p, vec):
            state.uf.flag(info.cmap, 'op cat joins channels with a per-channel tensor the tracer cannot attribute')
            continue
        view = [1] * t.dim()
        view[d] = vec.size
        new_seq[k].copy_(torch.from_numpy(vec.copy()).view(view).expand(t.shape))


def constrain_move(state: TraceState, name: str, pargs: tuple, infos: List[ChannelInfo], func=None,
                   pkw: Optional[dict] = None, outs: Optional[list] = None) -> None:
    """Keep the slimmed model's count-dependent data movement equal to the masked model's.

    * equal parts (chunk, split into equal sizes): position i of every part is one atom, so parts stay equal and
      aligned;
    * a reshape that splits a channel dim (channel shuffle's ``view(n, g, c/g, h, w)``, attention's
      ``(3, heads, head_dim)``): a :class:`~mmfisher.core.trace.constraints.SplitGrid`, resolved after the
      forward; a reshape that merges channel dims to a size an attribute holds (``reshape(B, N, embed_dims)``)
      binds that attribute;
    * picking by position along a dim that splits channels while other dims hold them (``qkv[0]``,
      ``qkv.unbind(0)``): positions are coupled across that dim, so it never shrinks;
    * picking channels by position (``x[:, :k]``, narrow, index_select, unequal splits): the bounds are
      literals that would not follow pruning, so those channels are unprunable.
    """
    data = pargs[0]
    ins = data if isinstance(data, (list, tuple)) else [data]
    in_infos = [info_from_ids(i) for i in ins]
    in_elems = np.unique(np.concatenate([np.unique(i.numpy()) for i in ins]))
    in_elems = in_elems[in_elems >= 0]
    in_dims = max((len(i.dims) for i in in_infos if i is not None), default=0)
    if name in LITERAL:
        src = in_infos[0]
        if all(src is not None and i.cmap.shape == src.cmap.shape and np.array_equal(i.cmap, src.cmap)
               for i in infos):
            return  # channel axis untouched (slicing batch/spatial dims, splitting along them)
        if name == 'tensor_split' and len(pargs) > 1 and isinstance(pargs[1], int):
            name = 'chunk'  # a section count scales with the channels like chunk
        elif name in ('split', 'split_with_sizes') and len(infos) > 1 and split_sizes_follow(state, pargs, infos):
            return
        elif name in ('split', 'split_with_sizes') and len(infos) > 1 and split_sizes_bound(state, pargs, infos):
            return
        elif name in ('getitem', 'narrow') and len(infos) == 1 and half_slice(state, src, infos[0]):
            return
        elif name == 'getitem' and len(infos) == 1 and attribute_slice(state, src, infos[0], pargs):
            return
        elif func is not None and src is not None and _pick_along_split(state, func, pargs, pkw or {}, src):
            return
        else:
            state.uf.flag(in_elems, f'op {name} picks channels at literal positions')
            return
    if name == 'chunk' and len(infos) > 1 and not all(
            np.array_equal(i.cmap, infos[0].cmap) and i.cmap.shape == infos[0].cmap.shape for i in infos[1:]):
        if len({i.cmap.shape for i in infos}) == 1 and len({i.dims for i in infos}) == 1:
            for other in infos[1:]:  # position i of every part is one atom: parts stay equal and aligned
                state.uf.union_arrays(infos[0].cmap, other.cmap)
        else:
            state.uf.flag(in_elems, 'op chunk splits channels into unequal parts')
        return
    info = infos[0]
    sizes = _size_args(name, pargs, pkw or {}, outs[0].dim() if outs else None)
    raw = _size_args(name, pargs, pkw or {}, outs[0].dim() if outs else None, raw=True)
    if raw is not None and not state.owner_adapted():
        counted = [d for d, c in enumerate(raw) if isinstance(c, ChannelCount)]
        # one counted size and no -1 in a view/reshape: it can be inferred from the tensor instead
        inferable = name in ('view', 'reshape') and len(counted) == 1 and all(
            v is not None and int(v) != -1 for v in raw)
        owner = state.running_owner() if inferable else None
        for d in counted:  # a size read off some channels shapes this dim: checked after the forward
            state.constraints.append(SizeCheck(
                info.cmap.copy() if info.dims else None, info.dims.index(d) if d in info.dims else -1,
                raw[d].sources, f'op {name} sizes them by the width of other channels (a size read off an input, '
                'like reshape(B, N, C))', owner, (len(raw), d)))
    if len(info.dims) > in_dims and info.cmap.ndim > 1:
        # a reshape that splits a channel dim: decided after the forward (constraints.SplitGrid)
        attrs = []
        for d in info.dims:
            size = sizes[d] if sizes is not None else -1
            # a size read off a tensor (a tracked count) follows by itself: only literals are bound to attributes
            literal = size not in (-1, 1) and not isinstance(raw[d] if raw is not None else None, ChannelCount)
            attrs.append(state.size_attribute(size, SPLIT_WORDS) if literal else (None, []))
        state.constraints.append(SplitGrid(info.cmap.copy(), attrs))
    elif sizes is not None:
        for d in info.dims:  # a channel dim's size read from an attribute (merged heads, Swin's num_features[i])
            size = sizes[d]
            if size in (-1, 1) or isinstance(raw[d] if raw is not None else None, ChannelCount):
                continue
            owner, names = state.size_attribute(size, SPLIT_WORDS)
            if names:  # bound after the forward, if this axis can shrink (constraints.SizeBinding)
                state.constraints.append(SizeBinding(owner, names, info.cmap.copy(), info.dims.index(d)))
            else:  # a literal no attribute of the running module holds (VAN's reshape(-1, H, W, block.out_channels))
                # would not follow pruning: those channels keep their width
                state.late_flags.append((np.unique(info.cmap), f'op {name} sizes them by a literal ({size}) that '
                                         f'no attribute of {owner or "the model"} holds'))


def _size_args(name: str, pargs: tuple, pkw: dict, ndim: Optional[int], raw: bool = False) -> Optional[list]:
    """The result's size per dim as the op was given it (-1: inferred), for view/reshape/unflatten; ``raw``
    keeps the ints as given (:class:`ChannelCount` included), None for dims the op did not name."""
    if ndim is None:
        return None
    conv = (lambda v: v) if raw else int
    if name in ('view', 'reshape'):
        rest = list(pargs[1:]) or list(pkw.get('shape', pkw.get('size', ())) or ())
        if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
            rest = list(rest[0])
        if len(rest) == ndim and all(isinstance(v, int) for v in rest):
            return [conv(v) for v in rest]
        return None
    if name == 'unflatten' and len(pargs) > 2 and isinstance(pargs[1], int):
        x = pargs[0]
        d = pargs[1] % x.dim()
        new = [conv(v) for v in pargs[2]]
        keep = [None] * d if raw else list(x.shape[:d])
        tail = [None] * (x.dim() - d - 1) if raw else list(x.shape[d + 1:])
        return keep + new + tail if len(new) + x.dim() - 1 == ndim else None
    return None


def _pick_along_split(state: TraceState, func, pargs: tuple, pkw: dict, src: ChannelInfo) -> bool:
    """An op that picks positions along some channel dims of ``src`` while others pass whole (``qkv[0]`` of a
    ``(3, B, heads, N, head_dim)`` tensor): couple the picked dims' positions, so they never shrink and the
    literal indices stay valid. False (nothing coupled) when every channel dim is picked."""
    x = pargs[0]
    if not isinstance(x, torch.Tensor) or len(src.dims) < 2:
        return False
    picked = []
    for axis, d in enumerate(src.dims):
        n = x.shape[d]
        view = [1] * x.dim()
        view[d] = n
        coord = torch.arange(n, dtype=torch.int64).view(view).expand(x.shape).contiguous()
        try:
            with torch.no_grad():
                probe = func(coord, *pargs[1:], **pkw)
        except Exception:  # noqa: BLE001
            return False
        probes = [t for t in tree_flatten(probe)[0] if isinstance(t, torch.Tensor)]
        if not probes or not all(_whole_range(p, n) for p in probes):
            picked.append(axis)
    whole = [a for a in range(len(src.dims)) if a not in picked and src.cmap.shape[a] > 1]
    if not picked or not whole:
        return False
    for axis in picked:
        couple_across(state, src.cmap, axis)
    return True


def _whole_range(p: torch.Tensor, n: int) -> bool:
    """``p`` (coordinates along one source dim) holds 0..n-1 in order along one of its dims, everywhere."""
    for e in range(p.dim()):
        if p.shape[e] != n:
            continue
        view = [1] * p.dim()
        view[e] = n
        if torch.equal(p, torch.arange(n, dtype=p.dtype).view(view).expand(p.shape)):
            return True
    return n == 1


def half_slice(state: TraceState, src: Optional[ChannelInfo], out: ChannelInfo) -> bool:
    """``x[:, :c]`` / ``x[:, c:]`` with ``c = C/2`` (mmpretrain's ShuffleNetV2 channel split, written this way
    for deployment): the halves are coupled position by position, so ``c`` stays half after pruning."""
    if src is None or len(src.dims) != 1 or out.dims != src.dims or src.cmap.ndim != 1:
        return False
    full, part = src.cmap, out.cmap
    if full.size % 2 or part.size != full.size // 2:
        return False
    half = full.size // 2
    if not (np.array_equal(part, full[:half]) or np.array_equal(part, full[half:])):
        return False
    state.uf.union_arrays(full[:half], full[half:])
    return True


def attribute_slice(state: TraceState, src: Optional[ChannelInfo], out: ChannelInfo, pargs: tuple) -> bool:
    """``x[:, :k]`` / ``x[:, k:]`` with ``k`` an int attribute of the running module (timm's DPN:
    ``x[:, :self.num_1x1_c]``): the head ``[0, k)`` and the tail stay separate channels, and the attribute is
    bound to the head's channels, so slimming sets it to the head's kept count."""
    if src is None or len(src.dims) != 1 or out.dims != src.dims or src.cmap.ndim != 1 or len(pargs) < 2:
        return False
    full, part = src.cmap, out.cmap
    n = part.size
    if not 0 < n < full.size:
        return False
    if np.array_equal(part, full[:n]):
        k = n
    elif np.array_equal(part, full[full.size - n:]):
        k = full.size - n
    else:
        return False
    index = pargs[1] if isinstance(pargs[1], tuple) else (pargs[1],)
    bounds = [b for sl in index if isinstance(sl, slice) for b in (sl.start, sl.stop)
              if isinstance(b, int) and not isinstance(b, bool)]
    if bounds != [k]:  # the slice's one literal bound is k
        return False
    owner = state.running_owner()
    module = state.module_objs.get(owner)
    names = [a for a, v in (vars(module).items() if module is not None else ())
             if not a.startswith('_') and isinstance(v, int) and not isinstance(v, bool) and v == k]
    if len(names) != 1:
        return False
    state.bind_attribute(owner, names[0], full[:k])
    return True


def split_sizes_bound(state: TraceState, pargs: tuple, infos: List[ChannelInfo]) -> bool:
    """A split by a list of sizes that the running module holds as a list attribute (timm's MixedConv2d:
    ``torch.split(x, self.splits, 1)``): each part keeps its own channels (no coupling across parts), and
    ``attr[i]`` is bound to part i's channels, so slimming sets it to the part's kept count."""
    sizes = pargs[1] if len(pargs) > 1 else None
    if not isinstance(sizes, (list, tuple)) or len(sizes) != len(infos) or \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes):
        return False
    if len({i.dims for i in infos}) != 1 or len(infos[0].dims) != 1:
        return False
    owner = state.running_owner()
    module = state.module_objs.get(owner)
    attrs = [k for k, v in (vars(module).items() if module is not None else ())
             if not k.startswith('_') and isinstance(v, (list, tuple)) and list(v) == [int(x) for x in sizes]]
    if len(attrs) != 1:
        return False
    vecs = [state.channel_vector(i, i.dims[0], int(n)) for i, n in zip(infos, sizes)]
    if any(v is None for v in vecs):
        return False
    for k, vec in enumerate(vecs):
        state.bind_attribute(owner, f'{attrs[0]}[{k}]', vec)
    return True


def split_sizes_follow(state: TraceState, pargs: tuple, infos: List[ChannelInfo]) -> bool:
    """Equal parts of a channel split stay exact if their size follows pruning: couple position i of every
    part, and tie the size to the running module's int attribute that holds it (Res2Net's ``width``, C2f's
    ``mid_channels``) or all parts' width (``in_channels // num_paths``), or accept a size computed from a traced
    width (a :class:`ChannelCount`: ``x.size(1) // 2``). Any other int would not follow pruning: the split is then
    one at literal positions."""
    sizes = pargs[1] if len(pargs) > 1 else None
    if len({i.cmap.shape for i in infos}) != 1 or len({i.dims for i in infos}) != 1 or not infos[0].dims:
        return False
    for other in infos[1:]:
        state.uf.union_arrays(infos[0].cmap, other.cmap)
    part = infos[0]
    size = part.cmap.shape[-1] if part.cmap.ndim else 1
    owner, names = state.size_attribute(size, ('channels', 'width', 'mid'))
    if len(names) == 1:
        vec = state.channel_vector(part, part.dims[-1], size)
        if vec is not None:
            state.bind_attribute(owner, names[0], vec)
            return True
    if isinstance(sizes, ChannelCount):
        return True
    if not isinstance(sizes, int):  # a list of sizes: split_sizes_bound
        return False
    # the size computed from an attribute holding all parts' width (timm's SelectiveKernel:
    # ``self.in_channels // self.num_paths``, CSP stages: ``self.expand_chs // 2``): bind it to every part's
    # channels; parts are coupled position by position, so it stays a multiple of the part count
    owner, names = state.size_attribute(size * len(infos), ('channels', 'width', 'mid', 'chs'))
    if len(names) > 1:  # in_channels == out_channels: the input's width is the one split
        names = [n for n in names if n.startswith('in')]
    vecs = [state.channel_vector(i, i.dims[-1], size) for i in infos]
    if len(names) == 1 and all(v is not None for v in vecs):
        state.bind_attribute(owner, names[0], np.concatenate(vecs))
        return True
    return False
