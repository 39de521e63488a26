"""Trace a real forward pass and build the channel-coupling union-find.

A :class:`torch.overrides.TorchFunctionMode` sees every torch function and tensor method called in the forward
(whatever Python control flow the model uses, unlike FX tracing), and module hooks see every call of every module,
so modules shared across FPN levels are seen once per call. Modules with a rule in ``layers.py`` are recorded as
one node and their internals are not looked at; everything else is followed op by op:

* pointwise ops pass channel identities through; n-ary pointwise ops (add, mul, where, ...) union the channels
  they combine (residual adds, FPN top-down adds, SE/attention multiplies);
* pure data-movement ops (view, flatten, permute, cat, split, chunk, slicing, channel shuffle, ...) are replayed
  on integer *id tensors* that hold each position's channel identity, so any reshape is mapped exactly, and a
  reshape that cannot be expressed as a channel map is refused rather than guessed;
* spatial ops (pooling, interpolation, padding, reductions over non-channel dims) keep channels;
* any other op that reads channels (a functional conv, matmul, a reduction over channels, a compiled op the
  tracer cannot see into) makes those channels unprunable, with the op named as the reason.

The result, :class:`TraceResult`, lists per module its input/output elements and per call the shapes needed for
costs; ``units.py`` turns it into atoms and units.
"""
import dataclasses
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .layers import LayerNormRule, LayerRule, find_rule
from .unionfind import UnionFind


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


@dataclasses.dataclass
class ModuleCall:
    """One call of a ruled module: input/output shapes as traced (batch size ``TraceResult.batch``)."""

    in_shape: Tuple[int, ...]
    out_shape: Tuple[int, ...]
    in_requires_grad: bool


@dataclasses.dataclass
class ModuleRecord:
    """Everything the tracer learned about one ruled module over all its calls."""

    name: str
    rule: LayerRule
    in_elems: Optional[np.ndarray] = None   # (C_in,) element per input position, -1 = not a channel we track
    out_elems: Optional[np.ndarray] = None  # (C_out,) element per output position
    groups: int = 1                          # channel groups (grouped convs, GroupNorm)
    kernel: int = 1                          # weights per (input, output) channel pair: prod(kernel_size)
    calls: List[ModuleCall] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ParamUse:
    """A parameter used directly in a per-channel elementwise op (e.g. a layer scale): sliced along ``dim``."""

    name: str
    dim: int
    elems: np.ndarray


@dataclasses.dataclass
class AttrUse:
    """A module's int attribute that sizes a buffer the forward writes channels into (mmdet's RoI extractor:
    ``new_zeros(n, self.out_channels, ...)``): slimming sets it to the number of kept positions."""

    module: str
    attr: str
    elems: np.ndarray


@dataclasses.dataclass
class TraceResult:
    uf: UnionFind
    modules: Dict[str, ModuleRecord]
    params: Dict[str, ParamUse]
    attrs: Dict[str, AttrUse]
    module_order: List[str]
    batch: int
    unknown_ops: Dict[str, int]
    seconds: float


_UNARY = {
    'relu', 'relu6', 'sigmoid', 'tanh', 'gelu', 'silu', 'mish', 'hardswish', 'hardsigmoid', 'hardtanh',
    'leaky_relu', 'elu', 'selu', 'celu', 'softplus', 'softsign', 'prelu', 'rrelu', 'logsigmoid', 'threshold',
    'glu_', 'exp', 'exp2', 'expm1', 'log', 'log2', 'log10', 'log1p', 'sqrt', 'rsqrt', 'abs', 'neg', 'negative',
    'sign', 'sgn', 'square', 'reciprocal', 'sin', 'cos', 'erf', 'erfc', 'floor', 'ceil', 'round', 'trunc', 'frac',
    'clamp', 'clip', 'clamp_min', 'clamp_max', 'nan_to_num', 'dropout', 'dropout1d', 'dropout2d', 'dropout3d',
    'alpha_dropout', 'feature_alpha_dropout', 'contiguous', 'clone', 'detach', 'float', 'half', 'double', 'bfloat16',
    'to', 'type', 'type_as', 'cpu', 'cuda', 'requires_grad_', 'sigmoid_', 'logit', 'bool', 'long', 'int',
    'isnan', 'isinf', 'isfinite', 'logical_not', 'bitwise_not', 'positive', 'silu_', 'pin_memory',
}
_NARY = {
    'add', 'sub', 'subtract', 'rsub', 'mul', 'multiply', 'div', 'divide', 'true_divide', 'floor_divide',
    'truediv', 'rtruediv', 'rmul', 'radd', 'floordiv', 'rfloordiv', 'pow', 'rpow', 'maximum', 'minimum', 'fmax',
    'fmin', 'where', 'addcmul', 'addcdiv', 'lerp', 'fmod', 'remainder', 'mod', 'atan2', 'hypot', 'logaddexp',
    'eq', 'ne', 'gt', 'lt', 'ge', 'le', 'greater', 'less', 'and', 'or', 'xor', 'logical_and', 'logical_or',
    'masked_fill', 'copysign', 'xlogy', 'squared_difference',
}
_MOVE = {
    'view', 'view_as', 'reshape', 'reshape_as', 'flatten', 'unflatten', 'permute', 'transpose', 'swapaxes',
    'swapdims', 't', 'squeeze', 'unsqueeze', 'expand', 'expand_as', 'repeat', 'tile', 'cat', 'concat',
    'concatenate', 'stack', 'hstack', 'vstack', 'split', 'split_with_sizes', 'chunk', 'tensor_split', 'narrow',
    'unbind', 'getitem', 'index_select', 'select', 'roll', 'flip', 'pixel_shuffle', 'pixel_unshuffle', 'movedim',
    'moveaxis', 'channel_shuffle', 'native_channel_shuffle', 'gather', 'take_along_dim', 'repeat_interleave',
    'masked_select',
}
_LIST_DATA = {'cat', 'concat', 'concatenate', 'stack', 'hstack', 'vstack'}
_SPATIAL = {
    'interpolate', 'upsample', 'upsample_nearest', 'upsample_bilinear', 'max_pool1d', 'max_pool2d', 'max_pool3d',
    'avg_pool1d', 'avg_pool2d', 'avg_pool3d', 'adaptive_avg_pool1d', 'adaptive_avg_pool2d', 'adaptive_avg_pool3d',
    'adaptive_max_pool1d', 'adaptive_max_pool2d', 'adaptive_max_pool3d', 'lp_pool1d', 'lp_pool2d',
    'max_pool1d_with_indices', 'max_pool2d_with_indices', 'max_pool3d_with_indices', 'pad', 'grid_sample',
    'adaptive_max_pool2d_with_indices', 'fractional_max_pool2d', 'reflection_pad2d', 'replication_pad2d',
}
_REDUCE = {'sum', 'mean', 'amax', 'amin', 'max', 'min', 'std', 'var', 'norm', 'logsumexp', 'prod', 'nansum',
           'nanmean', 'median', 'argmax', 'argmin', 'all', 'any', 'std_mean', 'var_mean'}
_ALONG = {'softmax', 'log_softmax', 'cumsum', 'cumprod', 'normalize', 'sort', 'argsort', 'topk', 'cummax',
          'cummin', 'softmin'}
# ops whose result does not depend on the values (shapes, metadata, fresh tensors shaped like the input)
_NEW = {'new_zeros', 'new_ones', 'new_full', 'new_empty', 'new_tensor', 'zeros_like', 'ones_like', 'empty_like',
        'full_like', 'rand_like', 'randn_like', 'randint_like', 'size', 'dim', 'numel', 'len', 'get',
        'is_contiguous', 'stride', 'element_size', 'data_ptr', 'nelement', 'get_device', 'is_floating_point',
        'storage_offset', 'has_names', 'dim_order', 'is_complex', 'untyped_storage', 'hash', 'shape', 'repr',
        'format', 'is_same_size', 'is_nonzero_shape'}
# ops whose only data input is the first argument (the others are shapes, dtypes, indices or references)
_FIRST_ONLY = {'type_as', 'view_as', 'expand_as', 'reshape_as', 'to', 'index_select', 'gather', 'take_along_dim',
               'getitem', 'narrow', 'select', 'roll', 'flip', 'grid_sample', 'masked_select', 'repeat_interleave'}
# data movement whose channel-axis action is fixed by literals (indices, offsets, sizes): exact only when it
# leaves the channel axis untouched
_LITERAL = {'getitem', 'index_select', 'gather', 'take_along_dim', 'roll', 'narrow', 'select', 'split',
            'split_with_sizes', 'unbind', 'masked_select', 'tensor_split'}


def _op_name(func: Callable) -> Tuple[str, bool]:
    """Normalised op name and whether it is in place (``add_``, ``__iadd__``)."""
    name = getattr(func, '__name__', None) or type(func).__name__
    if name == '__get__':  # property getters: x.shape, x.data, x.T ...
        prop = getattr(getattr(func, '__self__', None), '__name__', '')
        return {'data': 'detach', 'T': 't', 'mT': 'mT'}.get(prop, 'get'), False
    inplace = False
    if name.startswith('__') and name.endswith('__'):
        core = name[2:-2]
        if core.startswith('i') and core[1:] in ('add', 'sub', 'mul', 'truediv', 'floordiv', 'and', 'or', 'xor',
                                                 'mod', 'pow'):
            return core[1:], True
        return core, False
    if name.endswith('_') and not name.startswith('_'):
        name, inplace = name[:-1], True
    return name, inplace


def _is_zero_scalar(x: Any) -> bool:
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


class _Tracer(TorchFunctionMode):
    """Records channel flow; used only through :func:`trace_channels`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.uf = UnionFind()
        self.infos: Dict[int, Tuple[torch.Tensor, Any]] = {}  # id(tensor) -> (tensor, ChannelInfo | Mixed)
        self.mixed: List[Mixed] = []
        self.modules: Dict[str, ModuleRecord] = {}
        self.module_order: List[str] = []
        self.params: Dict[str, ParamUse] = {}
        self.attrs: Dict[str, AttrUse] = {}
        self.module_objs: Dict[str, nn.Module] = {}
        self.param_names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self.param_names.update({id(b): n for n, b in model.named_buffers(remove_duplicate=False)})
        self.unknown_ops: Dict[str, int] = {}
        self.suppress = 0
        self._stack: List[Tuple[str, Optional[LayerRule], list]] = []

    # ---- tensor bookkeeping -------------------------------------------------------------------------------
    def get(self, t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return None
        entry = self.infos.get(id(t))
        if entry is None or entry[0] is not t:
            return None
        return entry[1]

    def set(self, t: torch.Tensor, info: Any) -> None:
        if info is None:
            self.infos.pop(id(t), None)
        else:
            self.infos[id(t)] = (t, info)

    def new_mixed(self, elems: List[np.ndarray], reason: str) -> Optional[Mixed]:
        elems = [np.asarray(e).ravel() for e in elems if e is not None and np.asarray(e).size]
        if not elems:
            return None
        m = Mixed(np.unique(np.concatenate(elems)), reason)
        self.mixed.append(m)
        return m

    @staticmethod
    def elems_of(info: Any) -> Optional[np.ndarray]:
        if isinstance(info, ChannelInfo):
            return info.cmap.ravel()
        if isinstance(info, Mixed):
            return info.elems
        return None

    def use(self, info: Any, zero: bool = False) -> None:
        if isinstance(info, Mixed):
            info.used = True
            info.zero_only = info.zero_only and zero

    def ids_tensor(self, t: torch.Tensor, info: ChannelInfo) -> torch.Tensor:
        """An int64 tensor shaped like ``t`` holding each position's element."""
        shape = [1] * t.dim()
        for d, n in zip(info.dims, info.cmap.shape):
            shape[d] = n
        base = torch.from_numpy(np.ascontiguousarray(info.cmap)).reshape(shape)
        return base.expand(t.shape).contiguous()

    @staticmethod
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

    def broadcast_cmap(self, info: ChannelInfo, in_ndim: int, out_shape: Sequence[int],
                       dims: Sequence[int]) -> np.ndarray:
        """``info``'s map broadcast onto output dims ``dims`` (the input is right-aligned to the output)."""
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

    def channel_vector(self, info: Any, dim: int, size: int) -> Optional[np.ndarray]:
        """The element of each position along ``dim`` (``size`` long), unioning identities across other dims
        (batch rows share weights). None if the channels cannot be mapped."""
        if not isinstance(info, ChannelInfo):
            return None
        if not info.dims:
            return np.full(size, int(info.cmap.reshape(-1)[0]), dtype=np.int64)
        if dim not in info.dims:
            return None
        axis = info.dims.index(dim)
        cm = np.moveaxis(info.cmap, axis, 0).reshape(info.cmap.shape[axis], -1)
        if cm.shape[0] != size:
            return None
        if cm.shape[1] > 1:
            cm = np.unique(cm, axis=1)  # rows usually repeat a few maps (one per pyramid level)
        for j in range(1, cm.shape[1]):
            self.uf.union_arrays(cm[:, 0], cm[:, j])
        vec = cm[:, 0].copy()
        for j in range(1, cm.shape[1]):  # a position constant in one row but a channel in another keeps it
            vec = np.where(vec < 0, cm[:, j], vec)
        return vec

    def flag_info(self, info: Any, reason: str) -> None:
        if isinstance(info, Mixed):  # name the op that mixed the channels, not the layer that met the result
            reason = info.reason
        elems = self.elems_of(info)
        if elems is not None:
            self.uf.flag(elems, reason)

    # ---- module calls --------------------------------------------------------------------------------------
    def pre_hook(self, name: str, rule: Optional[LayerRule]):
        def hook(module, args, kwargs):
            inputs = [(t, self.get(t)) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            self._stack.append((name, rule, inputs))
            if rule is not None:
                self.suppress += 1
        return hook

    def post_hook(self, name: str, rule: Optional[LayerRule]):
        def hook(module, args, kwargs, output):
            _, _, inputs = self._stack.pop()
            if rule is not None:
                self.suppress -= 1
                if self.suppress == 0:
                    self.record_module(name, module, rule, inputs, output)
                return None
            if self.suppress:
                return None
            traced_in = [info for _, info in inputs if info is not None]
            if not traced_in:
                return None
            outs = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
            hidden = any(t.requires_grad for t in outs) or any(True for _ in module.parameters(recurse=False))
            if outs and hidden and all(self.get(t) is None for t in outs):
                # outputs came from ops the tracer could not see (compiled extensions): opaque module
                reason = f'{name} ({type(module).__name__}) computes with an op the tracer cannot see'
                for info in traced_in:
                    self.flag_info(info, reason)
                for t in outs:
                    self.set(t, self.new_mixed([self.elems_of(i) for i in traced_in], reason))
            return None
        return hook

    def record_module(self, name: str, module: nn.Module, rule: LayerRule, inputs, output) -> None:
        rec = self.modules.get(name)
        if rec is None:
            rec = self.modules[name] = ModuleRecord(name, rule)
            self.module_order.append(name)
            if rule.role != 'passthrough':
                rec.groups, rec.kernel = int(rule.groups(module)), int(rule.kernel_numel(module))
        outs = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
        if not inputs or not outs:
            return
        x, info = inputs[0]
        for _, other in inputs[1:]:
            self.use(other)
        self.use(info)
        out = outs[0]
        if rule.role == 'passthrough':
            dim = 1
            vec = self.channel_vector(info, dim, x.shape[dim]) if x.dim() > 1 else None
            if vec is None:
                if info is not None:
                    self.set(out, self.new_mixed([self.elems_of(info)], f'{name}: unmapped input'))
                return
            self.set(out, ChannelInfo((1,), vec.copy()))
            return
        dim = rule.in_dim if rule.in_dim >= 0 else x.dim() + rule.in_dim
        c_in = rule.in_channels(module)
        rec.calls.append(ModuleCall(tuple(x.shape), tuple(out.shape), bool(x.requires_grad)))
        vec = self.channel_vector(info, dim, c_in) if x.dim() > dim and x.shape[dim] == c_in else None
        if vec is None:
            if info is not None:
                self.flag_info(info, f'{name} ({type(module).__name__}) reads channels the tracer cannot map')
            vec = np.full(c_in, -1, dtype=np.int64)
        groups = rule.groups(module)
        if rule.role == 'norm':
            if isinstance(rule, LayerNormRule):
                # statistics over the normalised dims mix those channels
                norm_dims = set(range(x.dim() - len(module.normalized_shape), x.dim()))
                if isinstance(info, ChannelInfo) and norm_dims & set(info.dims):  # noqa: SIM102
                    self.uf.flag(info.cmap, f'{name} (LayerNorm) normalises over channels')
                if rec.in_elems is None:
                    rec.in_elems = vec.copy()
                else:
                    self.uf.union_arrays(rec.in_elems, vec)
                rec.out_elems = rec.in_elems
                self.set(out, info if isinstance(info, ChannelInfo) else None)
                return
            if rec.in_elems is None:
                rec.in_elems = vec.copy()
            else:
                self.uf.union_arrays(rec.in_elems, vec)
                rec.in_elems = np.where(rec.in_elems < 0, vec, rec.in_elems)
            if groups > 1:  # GroupNorm: one atom per group
                size = c_in // groups
                for g in range(groups):
                    self.uf.union_all(rec.in_elems[g * size:(g + 1) * size])
                if (rec.in_elems < 0).any():
                    self.uf.flag(rec.in_elems, f'{name} (GroupNorm) normalises a group with untracked channels')
            rec.out_elems = rec.in_elems
            self.set(out, ChannelInfo((dim,), rec.in_elems.copy()))
            return
        # weighted layers
        c_out = rule.out_channels(module)
        if rec.in_elems is None:
            rec.in_elems = vec.copy()
        else:
            self.uf.union_arrays(rec.in_elems, vec)
            rec.in_elems = np.where(rec.in_elems < 0, vec, rec.in_elems)
        if rec.out_elems is None:
            if groups == 1:
                rec.out_elems = self.uf.make(c_out)
            else:
                rec.out_elems = self.uf.make(c_out)
        if groups > 1:
            ig, og = c_in // groups, c_out // groups
            for g in range(groups):
                group = np.concatenate([rec.in_elems[g * ig:(g + 1) * ig], rec.out_elems[g * og:(g + 1) * og]])
                self.uf.union_all(group)
                if (rec.in_elems[g * ig:(g + 1) * ig] < 0).any():
                    self.uf.flag(group, f'{name} (grouped conv) reads untracked channels')
        out_dim = dim if rule.in_dim >= 0 else out.dim() + rule.in_dim
        if out.dim() > out_dim and out.shape[out_dim] == c_out:
            self.set(out, ChannelInfo((out_dim,), rec.out_elems.copy()))

    # ---- ops -----------------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.suppress:
            return out
        try:
            self.record_op(func, args, kwargs, out)
        except _Unmappable as exc:
            self.unmappable(func, args, kwargs, out, str(exc))
        return out

    def unmappable(self, func, args, kwargs, out, why: str) -> None:
        name = _op_name(func)[0]
        if name in _FIRST_ONLY and args:
            infos = [self.get(args[0])]
        else:
            infos = [self.get(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        elems = [self.elems_of(i) for i in infos if i is not None]
        for i in infos:
            self.use(i)
        reason = f'op {name}: {why}'
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not outs:  # the values leave tensor land (python numbers): treat the read as a real use
            for e in elems:
                self.uf.flag(e, reason)
        for t in outs:  # lazy: flagged at the end unless only ever multiplied by zero
            self.set(t, self.new_mixed(elems, reason))
        self.unknown_ops[name] = self.unknown_ops.get(name, 0) + 1

    def record_op(self, func, args, kwargs, out) -> None:
        name, inplace = _op_name(func)
        if name == 'setitem':
            self.op_setitem(args)
            return
        if name in _NEW:
            return
        if name in _FIRST_ONLY and args:
            flat_in = [args[0]] if isinstance(args[0], torch.Tensor) else []
        else:
            flat_in = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        in_infos = [self.get(t) for t in flat_in]
        if all(i is None for i in in_infos):
            return  # nothing traced flows in: constants stay constants
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not outs:  # values leave tensor land (item, tolist, numpy, bool): a read the tracer cannot follow
            raise _Unmappable('its values leave torch (python or numpy values)')
        zero = name == 'mul' and any(_is_zero_scalar(a) for a in list(args[1:]) + list(kwargs.values()))
        if zero:  # mmdet keeps graphs connected with `x.sum() * 0`: the result carries no channel
            for i in in_infos:
                self.use(i, zero=True)
            for t in outs:
                self.set(t, None)
            return
        if any(isinstance(i, Mixed) for i in in_infos):
            for i in in_infos:
                self.use(i)
            self.propagate_mixed(name, in_infos, outs)
            return
        if name in _UNARY or (name in ('max', 'min') and len(args) > 1 and isinstance(args[1], torch.Tensor)) or \
                (name in _NARY):
            self.op_pointwise(name, flat_in, in_infos, outs)
        elif name in _MOVE:
            self.op_move(func, name, args, kwargs, out)
        elif name in _SPATIAL:
            self.op_spatial(name, args, kwargs, flat_in, in_infos, outs)
        elif name in _REDUCE or name in _ALONG:
            self.op_reduce(name, args, kwargs, in_infos, outs)
        elif name == 'copy':
            self.set(outs[0], in_infos[1] if len(in_infos) > 1 else None)
        elif name in ('fill', 'zero', 'normal', 'uniform'):
            self.set(outs[0], None)
        else:
            raise _Unmappable('the tracer has no rule for it')
        if inplace and outs and flat_in and outs[0] is not flat_in[0]:
            self.set(flat_in[0], self.get(outs[0]))

    def propagate_mixed(self, name: str, in_infos, outs) -> None:
        elems = [self.elems_of(i) for i in in_infos if i is not None]
        reasons = [i.reason for i in in_infos if isinstance(i, Mixed)]
        m = self.new_mixed(elems, reasons[0] if reasons else f'op {name}')
        has_channels = any(isinstance(i, ChannelInfo) and i.dims for i in in_infos)
        if has_channels and name in _NARY and m is not None:
            # a mixed value added into real channels contaminates them
            m.used, m.zero_only = True, False
        for t in outs:
            self.set(t, m)

    def op_pointwise(self, name, flat_in, in_infos, outs) -> None:
        if not outs:
            return
        out = outs[0]
        shape = tuple(out.shape)
        traced = [(t, i) for t, i in zip(flat_in, in_infos) if isinstance(i, ChannelInfo)]
        shift = lambda t, d: d + len(shape) - t.dim()  # noqa: E731
        dims = sorted({shift(t, d) for t, i in traced for d in i.dims})
        maps = []
        for t, i in traced:
            m = self.broadcast_cmap(i, t.dim(), shape, dims)
            # a size-1 channel broadcast over many (a 1-channel gate) couples nothing: it acts as a scalar
            bdims = [k for k, d in enumerate(dims) if shape[d] > 1 and (t.dim() - len(shape) + d < 0 or
                                                                        t.shape[t.dim() - len(shape) + d] == 1)]
            if bdims:
                m = np.full(m.shape, -1, dtype=np.int64)
            maps.append(m)
        # constants (incl. parameters) with per-channel extent along a channel dim
        for t, i in zip(flat_in, in_infos):
            if i is not None or t.dim() == 0:
                continue
            cdims = [d for d in range(t.dim()) if t.shape[d] > 1 and shift(t, d) in dims]
            if not cdims:
                continue
            pname = self.param_names.get(id(t))
            if pname is not None and len(cdims) == 1 and len(dims) == 1 and t.shape[cdims[0]] == shape[dims[0]]:
                vec = maps[0].reshape(-1) if maps else None
                use = self.params.get(pname)
                if use is None:
                    self.params[pname] = ParamUse(pname, cdims[0], vec.copy())
                else:
                    self.uf.union_arrays(use.elems, vec)
                continue
            reason = f'op {name} combines channels with a per-channel tensor the tracer cannot attribute'
            for m in maps:
                self.uf.flag(m, reason)
        if not traced:
            return
        for m in maps[1:]:
            self.uf.union_arrays(maps[0], m)
        merged = maps[0].copy()
        for m in maps[1:]:
            merged = np.where(merged < 0, m, merged)
        self.set(out, ChannelInfo(tuple(dims), np.ascontiguousarray(merged)))

    def op_move(self, func, name, args, kwargs, out) -> None:
        if name in _LIST_DATA:
            data = args[0] if args else kwargs.get('tensors')
            seq = list(data)
            new_seq = []
            for t in seq:
                info = self.get(t)
                if isinstance(info, ChannelInfo):
                    new_seq.append(self.ids_tensor(t, info))
                else:
                    new_seq.append(torch.full(t.shape, -1, dtype=torch.int64))
            pargs = (new_seq,) + tuple(args[1:]) if args else ()
            pkw = dict(kwargs)
            if not args:
                pkw['tensors'] = new_seq
        else:
            x = args[0] if args else next(iter(kwargs.values()))
            info = self.get(x)
            if not isinstance(info, ChannelInfo):
                return
            ids = self.ids_tensor(x, info)
            pargs = (ids,) + tuple(args[1:])
            pkw = kwargs
            if name == 'masked_select':
                raise _Unmappable('data-dependent selection')
        _no_meta(pargs, pkw)
        try:
            with torch.no_grad():
                probe = func(*pargs, **pkw)
        except Exception as exc:  # the probe must behave like the real op; if not, refuse to guess
            raise _Unmappable(f'could not replay it on channel ids ({type(exc).__name__})')
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        probes = [t for t in tree_flatten(probe)[0] if isinstance(t, torch.Tensor)]
        if len(outs) != len(probes):
            raise _Unmappable('replay gave a different structure')
        infos = []
        for t, p in zip(outs, probes):
            if tuple(t.shape) != tuple(p.shape):
                raise _Unmappable('replay gave a different shape')
            info = self.info_from_ids(p)
            if info is None:
                raise _Unmappable('the result mixes channel identities along non-channel dims')
            infos.append(info)
        self.constrain_move(name, pargs, infos)
        for t, info in zip(outs, infos):
            self.set(t, info)

    def constrain_move(self, name: str, pargs, infos: List[ChannelInfo]) -> None:
        """Keep the slimmed model's count-dependent data movement equal to the masked model's.

        * equal parts (chunk, split into equal sizes, unbind): position i of every part is one atom, so parts
          stay equal and aligned;
        * a reshape that splits a channel dim (channel shuffle's ``view(n, g, c/g, h, w)``): positions are
          coupled across the outer axes;
        * picking channels by position (``x[:, :k]``, narrow, index_select, unequal splits): the bounds are
          literals that would not follow pruning, so those channels are unprunable.
        """
        data = pargs[0]
        ins = data if isinstance(data, (list, tuple)) else [data]
        in_infos = [self.info_from_ids(i) for i in ins]
        in_elems = np.unique(np.concatenate([np.unique(i.numpy()) for i in ins]))
        in_elems = in_elems[in_elems >= 0]
        in_dims = max((len(i.dims) for i in in_infos if i is not None), default=0)
        if name in _LITERAL:
            src = in_infos[0]
            if all(src is not None and i.cmap.shape == src.cmap.shape and np.array_equal(i.cmap, src.cmap)
                   for i in infos):
                return  # channel axis untouched (slicing batch/spatial dims, splitting along them)
            if name == 'tensor_split' and len(pargs) > 1 and isinstance(pargs[1], int):
                name = 'chunk'  # a section count scales with the channels like chunk
            elif name in ('split', 'split_with_sizes') and len(infos) > 1 and self.split_sizes_follow(pargs, infos):
                return
            elif name in ('getitem', 'narrow') and len(infos) == 1 and self.half_slice(src, infos[0]):
                return
            else:
                self.uf.flag(in_elems, f'op {name} picks channels at literal positions')
                return
        if name == 'chunk' and len(infos) > 1 and not all(
                np.array_equal(i.cmap, infos[0].cmap) and i.cmap.shape == infos[0].cmap.shape for i in infos[1:]):
            if len({i.cmap.shape for i in infos}) == 1 and len({i.dims for i in infos}) == 1:
                for other in infos[1:]:  # position i of every part is one atom: parts stay equal and aligned
                    self.uf.union_arrays(infos[0].cmap, other.cmap)
            else:
                self.uf.flag(in_elems, 'op chunk splits channels into unequal parts')
            return
        info = infos[0]
        if len(info.dims) > in_dims and info.cmap.ndim > 1:
            # a reshape that splits a channel dim (channel shuffle): couple positions across the outer axes
            cm = info.cmap.reshape(-1, info.cmap.shape[-1])
            for j in range(1, cm.shape[0]):
                self.uf.union_arrays(cm[0], cm[j])

    def half_slice(self, src: Optional[ChannelInfo], out: ChannelInfo) -> bool:
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
        self.uf.union_arrays(full[:half], full[half:])
        return True

    def size_attribute(self, size: int, words: Tuple[str, ...]) -> Tuple[Optional[str], List[str]]:
        """(running module's name, its int attributes equal to ``size`` whose names contain one of ``words``)."""
        owner = next((n for n, rule, _ in reversed(self._stack) if rule is None), None)
        module = self.module_objs.get(owner) if owner is not None else None
        names = [k for k, v in vars(module).items() if isinstance(v, int) and not isinstance(v, bool) and v == size
                 and any(w in k for w in words)] if module is not None else []
        return owner, names

    def bind_attribute(self, owner: str, attr: str, vec: np.ndarray) -> None:
        """Record that ``owner.attr`` counts the channels ``vec``: slimming sets it to the kept count."""
        key = f'{owner}.{attr}'
        use = self.attrs.get(key)
        if use is None:
            self.attrs[key] = AttrUse(owner, attr, vec.copy())
        else:
            self.uf.union_arrays(use.elems, vec)

    def split_sizes_follow(self, pargs, infos: List[ChannelInfo]) -> bool:
        """Equal parts of a channel split stay exact if their size follows pruning: couple position i of every
        part, and tie the size to the running module's int attribute that holds it (Res2Net's ``width``, C2f's
        ``mid_channels``); an int size with no such attribute is taken as computed from the input's shape."""
        sizes = pargs[1] if len(pargs) > 1 else None
        if len({i.cmap.shape for i in infos}) != 1 or len({i.dims for i in infos}) != 1 or not infos[0].dims:
            return False
        for other in infos[1:]:
            self.uf.union_arrays(infos[0].cmap, other.cmap)
        part = infos[0]
        size = part.cmap.shape[-1] if part.cmap.ndim else 1
        owner, names = self.size_attribute(size, ('channels', 'width', 'mid'))
        if len(names) == 1:
            vec = self.channel_vector(part, part.dims[-1], size)
            if vec is not None:
                self.bind_attribute(owner, names[0], vec)
                return True
        return isinstance(sizes, int)

    def op_setitem(self, args) -> None:
        target, index, value = args[0], args[1], args[2]
        if self.get(target) is not None or self.get(value) is not None:
            _no_meta(index)
        t_info, v_info = self.get(target), self.get(value)
        if t_info is None and v_info is None:
            return
        if isinstance(t_info, Mixed) or isinstance(v_info, Mixed):
            self.use(v_info)
            self.set(target, self.new_mixed([self.elems_of(t_info), self.elems_of(v_info)], 'setitem of mixed'))
            return
        ids = self.ids_tensor(target, t_info) if t_info is not None else torch.full(target.shape, -1,
                                                                                   dtype=torch.int64)
        if isinstance(value, torch.Tensor):
            vids = self.ids_tensor(value, v_info) if v_info is not None else torch.full(value.shape, -1,
                                                                                       dtype=torch.int64)
        else:
            vids = -1
        try:
            ids[index] = vids
        except Exception:
            raise _Unmappable('setitem could not be replayed on channel ids')
        if isinstance(v_info, ChannelInfo) and v_info.dims and isinstance(value, torch.Tensor):
            self.check_setitem_positions(target, index, value, v_info)
        info = self.info_from_ids(ids)
        if info is None:
            raise _Unmappable('setitem mixes channel identities')
        if t_info is None and isinstance(v_info, ChannelInfo) and v_info.dims and isinstance(value, torch.Tensor):
            region = target[index].shape
            offset = target.dim() - len(region)
            shift = len(region) - value.dim()
            dims = [vd + shift + offset for vd in v_info.dims if value.shape[vd] > 1]
            self.bind_buffer_size(target, info, [d for d in dims if 0 <= d < target.dim()])
        self.set(target, info)

    def bind_buffer_size(self, target: torch.Tensor, info: ChannelInfo, dims: List[int]) -> None:
        """A fresh buffer receives channels: its channel size came from somewhere the tracer cannot see. Tie it
        to the one ``*channels*`` int attribute of the running module that equals it, or make it unprunable."""
        for d in dims:
            size = target.shape[d]
            vec = self.channel_vector(info, d, size)
            if vec is None:
                continue
            owner, names = self.size_attribute(size, ('channels',))
            if len(names) != 1:
                self.uf.flag(vec, f'op setitem writes channels into a buffer of literal size {size}'
                             + (f' in {owner}' if owner else ''))
                continue
            self.bind_attribute(owner, names[0], vec)

    def check_setitem_positions(self, target, index, value, v_info: ChannelInfo) -> None:
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
                self.uf.flag(v_info.cmap, 'op setitem writes channels at literal positions')
                return

    def op_spatial(self, name, args, kwargs, flat_in, in_infos, outs) -> None:
        x, info = flat_in[0], in_infos[0]
        for i in in_infos[1:]:
            self.use(i)
        if not isinstance(info, ChannelInfo) or not outs:
            return
        out = outs[0]
        if out.dim() != x.dim() or any(out.shape[d] != x.shape[d] for d in info.dims) or \
                any(d >= 2 for d in info.dims) and name not in ('pad',):
            raise _Unmappable('it resizes a channel dim')
        for t in outs[:1]:
            self.set(t, ChannelInfo(info.dims, info.cmap.copy()))

    def op_reduce(self, name, args, kwargs, in_infos, outs) -> None:
        info = in_infos[0]
        if not isinstance(info, ChannelInfo) or not outs:
            return
        x = args[0]
        if not info.dims:
            for t in outs:
                self.set(t, ChannelInfo((), info.cmap.copy()))
            return
        dim = kwargs.get('dim', args[1] if len(args) > 1 and not isinstance(args[1], torch.Tensor) else None)
        if name in ('normalize',):
            dim = kwargs.get('dim', args[2] if len(args) > 2 else 1)
        if name in ('topk',):
            dim = kwargs.get('dim', args[2] if len(args) > 2 else -1)
        if dim is None:
            raise _Unmappable('it reduces over all dims, channels included')
        red = [dim] if isinstance(dim, int) else list(dim)
        red = sorted(d % x.dim() for d in red)
        if set(red) & set(info.dims):
            raise _Unmappable('it reduces or normalises across channels')
        for t in outs:
            keep = t.dim() == x.dim()
            if name in _ALONG or keep:
                self.set(t, ChannelInfo(info.dims, info.cmap.copy()))
            else:
                new_dims = tuple(d - sum(r < d for r in red) for d in info.dims)
                self.set(t, ChannelInfo(new_dims, info.cmap.copy()))
            if name in ('max', 'min', 'sort', 'topk', 'median', 'cummax', 'cummin', 'std_mean', 'var_mean'):
                pass  # value and index outputs both keep the channel layout


class _Unmappable(Exception):
    pass


class MetaTraceUnsupported(RuntimeError):
    """Tracing on the meta device needs a value (an index, a scalar): trace with real tensors instead."""


def _no_meta(*objs: Any) -> None:
    if any(isinstance(t, torch.Tensor) and t.is_meta for t in tree_flatten(objs)[0]):
        raise MetaTraceUnsupported('an op needs tensor values (indices) to be replayed on channel ids')


def _flatten_outputs(obj: Any, out: List[torch.Tensor], depth: int = 0) -> None:
    if depth > 8:
        return
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _flatten_outputs(v, out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _flatten_outputs(v, out, depth + 1)
    elif hasattr(obj, '__dict__') and not isinstance(obj, nn.Module):
        for v in vars(obj).values():
            _flatten_outputs(v, out, depth + 1)


def trace_channels(model: nn.Module, forward: Callable[[nn.Module], Any], batch: int = 1) -> TraceResult:
    """Run ``forward(model)`` once with autograd on and record how channels flow.

    Args:
        model: any ``nn.Module``; it is put in eval mode for the trace (no BN statistics are touched) and its
            train/eval mode and parameters' ``requires_grad`` flags are restored afterwards.
        forward: calls the model and returns its outputs (any nesting of tensors, lists, tuples, dicts).
        batch: the batch size of the traced input, used to turn shapes into per-sample costs.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'trace_channels expects an nn.Module, got {type(model).__name__}')
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    tracer = _Tracer(model)
    handles = []
    t0 = time.perf_counter()
    try:
        model.eval()
        for name, module in model.named_modules():
            if not name:
                continue
            rule = find_rule(module)
            tracer.module_objs[name] = module
            handles.append(module.register_forward_pre_hook(tracer.pre_hook(name, rule), with_kwargs=True))
            handles.append(module.register_forward_hook(tracer.post_hook(name, rule), with_kwargs=True))
        with torch.enable_grad(), tracer:
            outputs = forward(model)
        flat: List[torch.Tensor] = []
        _flatten_outputs(outputs, flat)
        for t in flat:
            info = tracer.get(t)
            if isinstance(info, ChannelInfo):
                tracer.uf.flag(info.cmap, 'reaches the model output')
            elif isinstance(info, Mixed):
                info.used, info.zero_only = True, False
        for m in tracer.mixed:
            if not (m.used and m.zero_only):
                tracer.uf.flag(m.elems, m.reason)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
        for p, g in grads.items():
            p.requires_grad_(g)
    return TraceResult(tracer.uf, tracer.modules, tracer.params, tracer.attrs, tracer.module_order, batch,
                       tracer.unknown_ops, time.perf_counter() - t0)
