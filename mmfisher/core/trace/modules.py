"""Module recording: forward pre/post hooks on every submodule.

A module with a rule (``layers.py``) is recorded as one node when its outermost call returns, and the ops inside
it are not looked at; how it is recorded follows what its rule answers (:attr:`LayerRule.is_passthrough`,
:attr:`LayerRule.is_norm`, :attr:`LayerRule.keeps_input_layout`, :meth:`LayerRule.groups`, ...), never its type.
A module without a rule is followed op by op; if its outputs carry nothing traced although traced inputs went
in, it computed with ops the tracer cannot see (compiled extensions), and its inputs' channels are kept.
"""
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..layers import LayerRule, find_rule
from .channels import ChannelInfo, elems_of
from .constraints import GroupGrid
from .params import param_vector
from .errors import MetaTraceUnsupported, is_meta_limitation
from .records import ModuleCall, ModuleRecord
from .state import TraceState

__all__ = ['pre_hook', 'post_hook', 'record_module']

Inputs = List[Tuple[torch.Tensor, Any]]  # (input tensor, its info as the module was entered)


def _tensors(obj: Any) -> List[torch.Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


def pre_hook(state: TraceState, name: str, rule: Optional[LayerRule]) -> Callable:
    """A ``register_forward_pre_hook(..., with_kwargs=True)`` hook: note the call and its inputs' infos."""
    def hook(module, args, kwargs):
        inputs = [(t, state.get(t)) for t in _tensors((args, kwargs))]
        state.stack.append((name, rule, inputs, (args, kwargs)))
        if rule is not None:
            state.suppress += 1
    return hook


def post_hook(state: TraceState, name: str, rule: Optional[LayerRule]) -> Callable:
    """A ``register_forward_hook(..., with_kwargs=True)`` hook: record a ruled module's outermost call, or check
    an unruled module for hidden computation."""
    def hook(module, args, kwargs, output):
        _, _, inputs, call = state.stack.pop()
        if rule is not None:
            state.suppress -= 1
            if state.suppress == 0:
                _record_safely(state, name, module, rule, inputs, output, call)
            return None
        if state.suppress:
            return None
        traced_in = [info for _, info in inputs if info is not None]
        if not traced_in:
            return None
        outs = _tensors(output)
        hidden = any(t.requires_grad for t in outs) or any(True for _ in module.parameters(recurse=False))
        if outs and hidden and all(state.get(t) is None for t in outs):
            # outputs came from ops the tracer could not see (compiled extensions): opaque module
            reason = f'{name} ({type(module).__name__}) computes with an op the tracer cannot see'
            for info in traced_in:
                state.flag_info(info, reason)
            for t in outs:
                state.set(t, state.new_mixed([elems_of(i) for i in traced_in], reason))
        return None
    return hook


def _record_safely(state: TraceState, name: str, module: nn.Module, rule: LayerRule, inputs: Inputs,
                   output: Any, call: Tuple[tuple, dict] = ((), {})) -> None:
    """:func:`record_module`; a failure of the tracer itself leaves this call unrecorded and keeps the channels
    the module read, with the reason (its outputs carry them as a :class:`Mixed`)."""
    rec = state.modules.get(name)
    calls = len(rec.calls) if rec is not None else 0
    try:
        record_module(state, name, module, rule, inputs, output, call)
    except MetaTraceUnsupported:
        raise
    except Exception as exc:  # noqa: BLE001  a defect here must degrade, not crash the user's forward
        if is_meta_limitation(exc):
            raise MetaTraceUnsupported(f'{name}: {exc}') from exc
        if rec is None:  # drop the half-made record
            state.modules.pop(name, None)
            if name in state.module_order:
                state.module_order.remove(name)
        else:
            del rec.calls[calls:]
        reason = f'{name} ({type(module).__name__}): the tracer failed on it ({type(exc).__name__}: {exc})'
        infos = [info for _, info in inputs if info is not None]
        for info in infos:
            state.flag_info(info, reason)
        for t in _tensors(output):
            state.set(t, state.new_mixed([elems_of(i) for i in infos], reason))


def record_module(state: TraceState, name: str, module: nn.Module, rule: LayerRule, inputs: Inputs,
                  output: Any, call: Tuple[tuple, dict] = ((), {})) -> None:
    """Record one call of a ruled module: its positions' elements (coupled across calls), and the output's map."""
    rec = state.modules.get(name)
    if rec is None:
        rec = state.modules[name] = ModuleRecord(name, rule)
        state.module_order.append(name)
        if not rule.is_passthrough:
            rec.groups, rec.kernel = int(rule.groups(module)), int(rule.kernel_numel(module))
    outs = _tensors(output)
    if not inputs or not outs:
        return
    if rule.attention:
        _record_attention(state, name, module, rule, rec, call, output)
        return
    if rule.is_generator:
        for _, i in inputs:  # read for their shapes only
            state.use(i)
        out = outs[0]
        rec.calls.append(ModuleCall(tuple(inputs[0][0].shape), tuple(out.shape), False))
        if rec.out_elems is None:
            rec.out_elems = state.uf.make(rule.out_channels(module))
        if out.dim() > 1 and out.shape[1] == rec.out_elems.size:
            state.set(out, ChannelInfo((1,), rec.out_elems.copy()))
        return
    x, info = inputs[0]
    for _, other in inputs[1:]:
        state.use(other)
    state.use(info)
    out = outs[0]
    if rule.is_passthrough:
        _record_passthrough(state, name, rule, x, info, out)
        return
    dim = rule.call_dim(module, x, *call) if call[0] or call[1] else rule.channel_dim(x.dim())
    c_in = rule.in_channels(module)
    rec.calls.append(ModuleCall(tuple(x.shape), tuple(out.shape), bool(x.requires_grad)))
    vec = state.channel_vector(info, dim, c_in) if dim is not None and x.shape[dim] == c_in else None
    if vec is None and info is None and dim is not None and x.shape[dim] == c_in:
        vec = param_vector(state, x, dim)  # a parameter-derived input: the layer reads the parameter's positions
    if vec is None and rule.passes_other_dims and isinstance(info, ChannelInfo) and info.dims and \
            dim is not None and dim not in info.dims and x.shape[dim] == c_in and out.dim() == x.dim():
        # mixing along a dim that holds no channel (tokens): the layer reads fixed positions, the channels on the
        # other dims pass through, its own outputs are read by no layer along a channel dim (kept)
        _merge_inputs(state, rec, np.full(c_in, -1, dtype=np.int64))
        if rec.out_elems is None:
            rec.out_elems = state.uf.make(rule.out_channels(module))
        state.set(out, ChannelInfo(info.dims, info.cmap.copy()))
        return
    if vec is None:
        if info is not None:
            state.flag_info(info, f'{name} ({type(module).__name__}) reads channels the tracer cannot map')
        vec = np.full(c_in, -1, dtype=np.int64)
    if rule.keeps_input_layout:
        _record_layout_keeping(state, name, module, rule, rec, x, info, vec, out, dim)
    elif rule.is_norm:
        _record_norm(state, name, module, rule, rec, dim, vec, out)
    else:
        _record_weighted(state, name, module, rule, rec, vec, out)


def _record_attention(state: TraceState, name: str, module: nn.Module, rule: LayerRule, rec: ModuleRecord,
                      call: Tuple[tuple, dict], output: Any) -> None:
    """An attention layer (``rule.attention``): query/key/value channels are one set of input positions (packed
    projection columns); the projection rows (q, k, v of every head) are fresh elements, one atom per head; the
    ``out_proj`` child is recorded as a layer reading the heads' value rows and producing the output channels."""
    args, kwargs = call
    tensors = [args[i] if i < len(args) else kwargs.get(n) for i, n in enumerate(rule.inputs)]
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    out0 = output[0] if isinstance(output, (tuple, list)) else output
    weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
    infos = [state.get(t) for t in tensors]
    others = [state.get(t) for t in _tensors((args, kwargs)) if not any(t is u for u in tensors)]
    for i in infos + others:
        state.use(i)
    for i in others:  # masks computed from channels
        state.flag_info(i, f'{name} ({type(module).__name__}) takes a mask computed from channels')
    if not tensors or not isinstance(out0, torch.Tensor):
        return
    if not rule.packed(module):
        reason = f'{name} ({type(module).__name__}) with separate q/k/v projections (kdim/vdim) is not pruned'
        for i in infos:
            state.flag_info(i, reason)
        state.set(out0, state.new_mixed([elems_of(i) for i in infos], reason))
        return
    c_in, rows = rule.in_channels(module), rule.out_channels(module)
    heads, hd = rule.heads(module)
    inner = heads * hd
    q = tensors[0]
    constant = False
    for t, info in zip(tensors, infos):
        vec = state.channel_vector(info, t.dim() - 1, c_in) if t.shape[-1] == c_in else None
        if vec is None and info is None and t.shape[-1] == c_in:
            vec = param_vector(state, t, t.dim() - 1)  # a parameter-derived input (DETR's query embedding)
            constant = constant or vec is None
        if vec is None:
            if info is not None:
                state.flag_info(info, f'{name} ({type(module).__name__}) reads channels the tracer cannot map')
            vec = np.full(c_in, -1, dtype=np.int64)
        _merge_inputs(state, rec, vec)
    if constant:  # the packed columns also read an input of fixed width: they cannot go
        state.uf.flag(rec.in_elems, f'{name} ({type(module).__name__}) reads a constant input of fixed width')
    rec.calls.append(ModuleCall(tuple(q.shape), tuple(q.shape[:-1]) + (rows,), bool(q.requires_grad)))
    if rec.out_elems is None:
        rec.out_elems = state.uf.make(rows)
        parts = rec.out_elems.reshape(3, heads, hd)
        for h in range(heads):  # one head: its q, k and v rows (and the out_proj columns reading them)
            state.uf.union_all(parts[:, h])
    child_name, child = f'{name}.out_proj', getattr(module, 'out_proj', None)
    child_rule = find_rule(child) if isinstance(child, nn.Module) else None
    if child_rule is None or not child_rule.is_weighted:
        state.set(out0, state.new_mixed([rec.out_elems], f'{name}: output projection not traced'))
        return
    crec = state.modules.get(child_name)
    if crec is None:
        crec = state.modules[child_name] = ModuleRecord(child_name, child_rule)
        state.module_order.append(child_name)
    _merge_inputs(state, crec, rec.out_elems[2 * inner:3 * inner])
    if crec.out_elems is None:
        crec.out_elems = state.uf.make(child_rule.out_channels(child))
    crec.calls.append(ModuleCall(tuple(out0.shape[:-1]) + (inner,), tuple(out0.shape), bool(q.requires_grad)))
    if out0.shape[-1] == crec.out_elems.size:
        state.set(out0, ChannelInfo((out0.dim() - 1,), crec.out_elems.copy()))
    if isinstance(weights, torch.Tensor):  # averaged over the heads: changes when heads go, if anything reads it
        m = state.new_mixed([rec.out_elems], f'{name}: its attention weights (averaged over heads) are used')
        m.used = True  # harmless unless read (zero_only turns False on a real use)
        state.set(weights, m)


def _record_passthrough(state: TraceState, name: str, rule: LayerRule, x: torch.Tensor, info: Any,
                        out: torch.Tensor) -> None:
    """Output channel c is the first input's channel c (RoI ops); nothing is recorded per position."""
    dim = rule.channel_dim(x.dim())
    vec = state.channel_vector(info, dim, x.shape[dim]) if dim is not None else None
    if vec is None:
        if info is not None:
            state.set(out, state.new_mixed([elems_of(info)], f'{name}: unmapped input'))
        return
    state.set(out, ChannelInfo((dim,), vec.copy()))


def _merge_inputs(state: TraceState, rec: ModuleRecord, vec: np.ndarray, fill: bool = True) -> None:
    """Couple this call's input elements with earlier calls' (``fill``: a position untracked so far takes
    this call's element)."""
    if rec.in_elems is None:
        rec.in_elems = vec.copy()
    else:
        state.uf.union_arrays(rec.in_elems, vec)
        if fill:
            rec.in_elems = np.where(rec.in_elems < 0, vec, rec.in_elems)


def _record_layout_keeping(state: TraceState, name: str, module: nn.Module, rule: LayerRule, rec: ModuleRecord,
                           x: torch.Tensor, info: Any, vec: np.ndarray, out: torch.Tensor,
                           dim: Optional[int] = None) -> None:
    """A norm whose statistics run over :meth:`LayerRule.normalized_dims` (LayerNorm). Channels on the one
    normalised dim of a renormalizing rule (:attr:`LayerRule.renormalizes`) are prunable positions like a
    per-channel norm's; channels on other normalised dims are mixed and unprunable; otherwise the output keeps
    the input's channel layout."""
    norm_dims = set(rule.normalized_dims(module, x.dim()))
    if isinstance(info, ChannelInfo) and norm_dims & set(info.dims):
        if rule.renormalizes_for(module) and dim is not None and norm_dims == {dim} and (vec >= 0).any() and \
                (rec.in_elems is None or rec.out_elems is not None):
            _record_norm(state, name, module, rule, rec, dim, vec, out)
            return
        state.uf.flag(info.cmap, f'{name} ({rule.label}) normalises over channels')
    _merge_inputs(state, rec, vec, fill=False)
    rec.out_elems = rec.in_elems
    state.set(out, info if isinstance(info, ChannelInfo) else None)


def _record_norm(state: TraceState, name: str, module: nn.Module, rule: LayerRule, rec: ModuleRecord,
                 dim: Optional[int], vec: np.ndarray, out: torch.Tensor) -> None:
    """Per-channel or per-group norm: output position c is input position c; with ``groups > 1`` (GroupNorm) a
    group is one atom, and a group holding untracked channels is unprunable."""
    _merge_inputs(state, rec, vec)
    groups = rule.groups(module)
    if groups > 1:
        size = rule.in_channels(module) // groups
        for g in range(groups):
            state.uf.union_all(rec.in_elems[g * size:(g + 1) * size])
        if (rec.in_elems < 0).any():
            state.uf.flag(rec.in_elems, f'{name} ({rule.label}) normalises a group with untracked channels')
    rec.out_elems = rec.in_elems
    state.set(out, ChannelInfo((dim,), rec.in_elems.copy()) if dim is not None else None)


def _record_weighted(state: TraceState, name: str, module: nn.Module, rule: LayerRule, rec: ModuleRecord,
                     vec: np.ndarray, out: torch.Tensor) -> None:
    """Conv/linear: fresh output elements (made once, shared by every call); a grouped layer's group structure
    is resolved after the forward (``constraints.GroupGrid``)."""
    c_in, c_out, groups = rule.in_channels(module), rule.out_channels(module), rule.groups(module)
    _merge_inputs(state, rec, vec)
    if rec.out_elems is None:
        rec.out_elems = state.uf.make(c_out)
        if groups > 1:  # whole groups or the same positions of every group: decided after the forward
            state.constraints.append(GroupGrid(name, groups))
    out_dim = rule.channel_dim(out.dim())
    if out_dim is not None and out.shape[out_dim] == c_out:
        state.set(out, ChannelInfo((out_dim,), rec.out_elems.copy()))
