"""The public entry: :func:`trace_channels` runs one forward under the tracer and returns a :class:`TraceResult`."""
import dataclasses
import time
from typing import Any, Callable, Dict, List

import torch
from torch import nn

from ..layers import find_rule
from ..outputs import output_tensors
from ..unionfind import UnionFind
from .channels import ChannelInfo, Mixed
from .constraints import resolve
from .dispatch import Tracer
from .errors import MetaTraceUnsupported
from .failure import attach_failure
from .modules import post_hook, pre_hook
from .records import AttrUse, ModuleRecord, ParamUse
from .state import TraceState

__all__ = ['TraceResult', 'MetaTraceUnsupported', 'trace_channels']


@dataclasses.dataclass
class TraceResult:
    """What one trace learned: the union-find over channel elements (with the reasons that keep some), every
    ruled module's record in call order, per-channel parameters and buffer-sizing attributes, the traced batch
    size, the ops the tracer had no rule for (with counts) and the trace's wall time."""

    uf: UnionFind
    modules: Dict[str, ModuleRecord]
    params: Dict[str, ParamUse]
    attrs: Dict[str, AttrUse]
    module_order: List[str]
    batch: int
    unknown_ops: Dict[str, int]
    seconds: float
    #: module name -> sorted ``[number of sizes, position]`` of view/reshape sizes its slimmed forward infers
    inferred: Dict[str, List[List[int]]] = dataclasses.field(default_factory=dict)


def trace_channels(model: nn.Module, forward: Callable[[nn.Module], Any], batch: int = 1) -> TraceResult:
    """Run ``forward(model)`` once with autograd on and record how channels flow.

    Args:
        model: any ``nn.Module``; it is put in eval mode for the trace (no BN statistics are touched) and its
            train/eval mode and parameters' ``requires_grad`` flags are restored afterwards.
        forward: calls the model and returns its outputs (any nesting of tensors, lists, tuples, dicts, plain
            objects: see :func:`mmfisher.core.outputs.output_tensors`); their channels are kept.
        batch: the batch size of the traced input, used to turn shapes into per-sample costs.

    Raises:
        MetaTraceUnsupported: on a meta-device model, when an op needs values.
        whatever the forward raises, unchanged, with where it raised attached (``failure.failure_of``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'trace_channels expects an nn.Module, got {type(model).__name__}')
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    state = TraceState(model)
    handles = []
    t0 = time.perf_counter()
    try:
        model.eval()
        for name, module in model.named_modules():
            if not name:
                continue
            rule = find_rule(module)
            state.module_objs[name] = module
            handles.append(module.register_forward_pre_hook(pre_hook(state, name, rule), with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook(state, name, rule), with_kwargs=True))
        try:
            with torch.enable_grad(), Tracer(state):
                outputs = forward(model)
        except MetaTraceUnsupported:
            raise
        except Exception as exc:
            attach_failure(state, exc)
            raise
        resolve(state)
        for t in output_tensors(outputs):
            info = state.get(t)
            if isinstance(info, ChannelInfo):
                state.uf.flag(info.cmap, 'reaches the model output')
            elif isinstance(info, Mixed):
                info.used, info.zero_only = True, False
        for m in state.mixed:
            if not (m.used and m.zero_only):
                state.uf.flag(m.elems, m.reason)
        for elems, reason in state.late_flags:
            state.uf.flag(elems, reason)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
        for p, g in grads.items():
            p.requires_grad_(g)
    return TraceResult(state.uf, state.modules, state.params, state.attrs, state.module_order, batch,
                       state.unknown_ops, time.perf_counter() - t0,
                       {k: sorted(list(p) for p in v) for k, v in state.inferred.items()})
