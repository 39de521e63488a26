"""Channel atoms and units: the prunable structure of a model, from one trace.

* An **atom** is the smallest set of channels that must be removed together: one connected set of the tracer's
  union-find (a channel of a residual stream in every block, FPN lateral and head tower that reads it; a whole
  GroupNorm group; a whole group of a grouped conv). One mask entry per atom.
* A **unit** is the set of atoms that share exactly the same layers (e.g. the 256 channels of a ResNet stage's
  residual stream): the grouping users see in logs and channel configs.

An atom is prunable when some layer produces it, some layer reads it, and nothing flagged it (model outputs,
ops the tracer cannot map, untracked inputs). Unprunable layers are reported with the reason.
"""
import copy
import dataclasses
from collections import Counter, defaultdict
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .copying import non_leaf_attributes
from .layers import LayerRule, find_rule
from .trace import ModuleRecord, TraceResult, failure_of, forward_error, is_meta_limitation, trace_channels


@dataclasses.dataclass
class Unit:
    """Atoms that share the same layers; ``atoms`` are ordered by their channel index in ``name``."""

    name: str
    layers: List[str]
    atoms: np.ndarray
    producers: List[str] = dataclasses.field(default_factory=list)  # layers whose outputs are these channels
    readers: List[str] = dataclasses.field(default_factory=list)    # weighted layers that read them


@dataclasses.dataclass
class ChannelGraph:
    """The prunable structure of a model (see module docstring). All arrays index atoms ``0..num_atoms-1``;
    position arrays hold the atom of each channel position or -1 (never pruned)."""

    num_atoms: int
    in_atoms: Dict[str, np.ndarray]     # weighted layer -> (C_in,)
    out_atoms: Dict[str, np.ndarray]    # weighted or norm layer -> (C_out,)
    param_atoms: Dict[str, Tuple[int, np.ndarray]]  # parameter name -> (dim, (size,))
    attr_atoms: Dict[str, np.ndarray]   # "module.attr" (an int sizing a channel buffer) -> (size,)
    rules: Dict[str, LayerRule]
    records: Dict[str, ModuleRecord]
    units: List[Unit]
    trainable: np.ndarray               # (A,) bool: some reader of the atom receives a gradient
    unprunable: Dict[str, str]          # layer -> reason its output channels are kept
    batch: int
    trace_seconds: float
    unknown_ops: Dict[str, int]
    device: str = 'real'                # 'meta' when traced on a meta-device copy (see analyze_fast)
    #: conv/linear-like layers no rule covers (a subclass whose forward transforms its weight, a deformable
    #: conv) -> their output channels: never pruned, named in ``unprunable``, counted in ``summary()``'s total
    unruled: Dict[str, int] = dataclasses.field(default_factory=dict)
    #: module -> ``[number of sizes, position]`` of view/reshape sizes its slimmed forward infers from the tensor
    #: (a width read off the input that pruning makes different: ``reshape(B, N, C)`` after attention;
    #: ``layers.InferredSizesAdapter``)
    inferred_sizes: Dict[str, List[List[int]]] = dataclasses.field(default_factory=dict)

    @property
    def module_names(self) -> List[str]:
        return list(self.records)

    def atom_channels(self) -> np.ndarray:
        """(A,) the number of output channels each atom holds in its first producer."""
        counts = np.zeros(self.num_atoms, dtype=np.int64)
        seen = np.zeros(self.num_atoms, dtype=bool)
        for name, atoms in self.out_atoms.items():
            if not self.rules[name].is_weighted:
                continue
            valid = atoms[atoms >= 0]
            c = np.bincount(valid, minlength=self.num_atoms)
            first = (c > 0) & ~seen
            counts[first] = c[first]
            seen |= c > 0
        return counts

    def summary(self) -> Dict[str, Any]:
        total = prunable = 0
        for name, atoms in self.out_atoms.items():
            if self.rules[name].is_weighted:
                total += atoms.size
                prunable += int((atoms >= 0).sum())
        total += sum(self.unruled.values())
        return {'units': len(self.units), 'atoms': self.num_atoms, 'channels_total': total,
                'channels_prunable': prunable, 'unprunable': dict(self.unprunable),
                'trace_seconds': round(self.trace_seconds, 3)}


def build_graph(trace: TraceResult, model: Optional[nn.Module] = None) -> ChannelGraph:
    """Turn a :class:`TraceResult` into atoms and units (deterministic for a given model and input shape)."""
    uf = trace.uf
    roots = uf.roots() if len(uf) else np.zeros(0, dtype=np.int64)
    flagged: Dict[int, str] = {}
    for elem, reason in uf.reasons.items():
        flagged.setdefault(int(roots[elem]), reason)

    def root_of(elems: Optional[np.ndarray]) -> np.ndarray:
        if elems is None:
            return np.zeros(0, dtype=np.int64)
        out = np.full(elems.shape, -1, dtype=np.int64)
        ok = elems >= 0
        out[ok] = roots[elems[ok]]
        return out

    produced, consumed = set(), set()
    for name in trace.module_order:
        rec = trace.modules[name]
        if not rec.rule.is_weighted or not rec.calls:
            continue
        produced.update(root_of(rec.out_elems)[root_of(rec.out_elems) >= 0].tolist())
        r_in = root_of(rec.in_elems)
        consumed.update(r_in[r_in >= 0].tolist())
    prunable = {r for r in produced & consumed if r not in flagged}

    atom_of: Dict[int, int] = {}
    for name in trace.module_order:
        rec = trace.modules[name]
        if not rec.rule.is_weighted:
            continue
        for r in root_of(rec.out_elems).tolist():
            if r in prunable and r not in atom_of:
                atom_of[r] = len(atom_of)

    def atoms_of(elems: Optional[np.ndarray]) -> np.ndarray:
        rs = root_of(elems)
        return np.array([atom_of.get(r, -1) for r in rs.tolist()], dtype=np.int64)

    in_atoms, out_atoms, rules, records = {}, {}, {}, {}
    members: Dict[int, set] = defaultdict(set)
    trainable = np.zeros(len(atom_of), dtype=bool)
    for name in trace.module_order:
        rec = trace.modules[name]
        if not rec.calls and not rec.rule.is_passthrough:
            continue
        rules[name], records[name] = rec.rule, rec
        if rec.rule.is_passthrough:
            continue
        o = atoms_of(rec.out_elems)
        out_atoms[name] = o
        for a in np.unique(o[o >= 0]).tolist():
            members[a].add((name, 'out'))
        if rec.rule.is_weighted:
            i = atoms_of(rec.in_elems)
            in_atoms[name] = i
            for a in np.unique(i[i >= 0]).tolist():
                members[a].add((name, 'in'))
            if any(c.in_requires_grad for c in rec.calls):
                trainable[i[i >= 0]] = True
    param_atoms = {}
    for pname, use in trace.params.items():
        a = atoms_of(use.elems)
        param_atoms[pname] = (use.dim, a)
        for x in np.unique(a[a >= 0]).tolist():
            members[x].add((pname, 'param'))

    attr_atoms = {key: atoms_of(use.elems) for key, use in trace.attrs.items()}

    # units: atoms with identical layer sets, named after their first producer
    groups: Dict[frozenset, List[int]] = defaultdict(list)
    for a in range(len(atom_of)):
        groups[frozenset(members[a])].append(a)
    order = {n: k for k, n in enumerate(trace.module_order)}
    units = []
    for sig, atoms in groups.items():
        producers = sorted((n for n, k in sig if k == 'out' and rules.get(n) is not None and
                            rules[n].is_weighted), key=lambda n: order.get(n, 1 << 30))
        layers = sorted({n for n, _ in sig}, key=lambda n: order.get(n, 1 << 30))
        readers = sorted((n for n, k in sig if k == 'in'), key=lambda n: order.get(n, 1 << 30))
        units.append(Unit(producers[0] if producers else layers[0], layers, np.array(sorted(atoms)), producers,
                          readers))
    units.sort(key=lambda u: int(u.atoms[0]))

    unprunable: Dict[str, str] = {}
    for name, o in out_atoms.items():
        if not rules[name].is_weighted:
            continue
        rs = root_of(trace.modules[name].out_elems)
        bad = [r for r, a in zip(rs.tolist(), o.tolist()) if a < 0]
        if not bad:
            continue
        reasons = Counter(flagged.get(r) or ('never read by a layer' if r not in consumed else
                                             'no layer produces it') for r in bad)
        reason, _ = reasons.most_common(1)[0]
        frac = '' if len(bad) == o.size else f' ({len(bad)}/{o.size} channels)'
        unprunable[name] = reason + frac
    unruled = _unruled_layers(model, rules) if model is not None else {}
    for name, (kind, _) in unruled.items():
        unprunable[name] = (f'{kind}: a conv/linear-like layer whose forward the engine does not know (it may '
                            'transform its weight): not pruned')
    return ChannelGraph(len(atom_of), in_atoms, out_atoms, param_atoms, attr_atoms, rules, records, units, trainable,
                        unprunable, trace.batch, trace.seconds, dict(trace.unknown_ops),
                        unruled={n: c for n, (_, c) in unruled.items()}, inferred_sizes=dict(trace.inferred))


def _unruled_layers(model: nn.Module, ruled: Dict[str, LayerRule]) -> Dict[str, Tuple[str, int]]:
    """Layers with weights of their own that no rule covers: conv/linear subclasses with an unknown forward
    (timm's ``ScaledStdConv2d``: weight standardisation) and deformable convs; ``{name: (class, out channels)}``.
    Children of such a layer are not listed again."""
    out: Dict[str, Tuple[str, int]] = {}
    for name, m in model.named_modules():
        if name in ruled or any(name.startswith(p + '.') for p in out):
            continue
        conv_like = isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or (
            'Conv' in type(m).__name__ and isinstance(getattr(m, 'weight', None), torch.Tensor) and
            m.weight.dim() >= 3)
        if not conv_like or find_rule(m) is not None:
            continue
        n_out = getattr(m, 'out_channels', getattr(m, 'out_features', None))
        if not isinstance(n_out, int):
            n_out = int(m.weight.shape[0])
        out[name] = (type(m).__name__, int(n_out))
    return out


def analyze(model: nn.Module, forward: Callable[[nn.Module], Any], batch: int = 1) -> ChannelGraph:
    """Trace ``forward(model)`` and build the model's :class:`ChannelGraph` (see :func:`trace_channels`)."""
    return build_graph(trace_channels(model, forward, batch), model)


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers live on the meta device (no data is copied)."""
    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in memo:
            continue
        empty = torch.empty_like(t, device='meta')
        memo[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else empty
    for key, t in non_leaf_attributes(model).items():  # tensors a forward cached on a module
        memo.setdefault(key, torch.empty_like(t.detach(), device='meta'))
    return copy.deepcopy(model, memo)


def analyze_fast(model: nn.Module, make_forward: Callable[[nn.Module], Callable[[nn.Module], Any]],
                 batch: int = 1, shape_name: str = 'input_shape') -> ChannelGraph:
    """:func:`analyze` with the forward run on a meta-device copy (shapes only, no arithmetic: seconds even at
    800x1333 on a CPU). ``make_forward(m)`` builds the forward for model ``m`` (inputs on ``m``'s device).

    Falls back to a real trace only when the meta trace cannot do what the forward needs
    (:class:`~mmfisher.core.trace.MetaTraceUnsupported` and the meta device's own limits: data-dependent
    indices, NMS, ``.item()``; see :func:`~mmfisher.core.trace.is_meta_limitation`), or when the meta copy
    cannot be made. An error of the model's own forward (a wrong channel count in the input, say) is raised once,
    as a :class:`~mmfisher.core.trace.TraceForwardError` naming ``shape_name``, the field or option the caller's
    input shape came from (``'input_shape'`` for the hook, ``'--shape'`` for tools/verify_slimming.py).
    """
    try:
        meta = meta_copy(model)
    except Exception:  # noqa: BLE001  a module deepcopy refuses: trace the model itself
        meta = None
    if meta is not None:
        forward = None
        try:
            forward = make_forward(meta)
            graph = analyze(meta, forward, batch)
        except Exception as exc:  # noqa: BLE001  sorted below: a meta limit falls back, anything else is raised
            if not is_meta_limitation(exc):
                _raise_forward_error(exc, forward, shape_name)
        else:
            graph.device = 'meta'
            return graph
    forward = make_forward(model)
    try:
        graph = analyze(model, forward, batch)
    except Exception as exc:  # noqa: BLE001
        _raise_forward_error(exc, forward, shape_name)
    graph.device = 'real'
    return graph


def _raise_forward_error(exc: BaseException, forward: Optional[Callable], shape_name: str) -> None:
    """Re-raise ``exc``: as one clear :class:`TraceForwardError` when the model's forward raised it in a trace,
    unchanged otherwise (an error in ``make_forward`` or in the tracer's bookkeeping)."""
    if forward is None or failure_of(exc) is None:
        raise exc
    error, explained = forward_error(exc, forward, shape_name)
    if explained:  # the message says everything: no second, raw traceback of the same mismatch
        raise error from None
    raise error from exc


def input_forward(*inputs: torch.Tensor) -> Callable[[nn.Module], Any]:
    """A ``forward`` for :func:`analyze` that calls ``model(*inputs)`` (its ``trace_input_shape`` is the first
    input's shape, named in errors of the model's forward)."""
    def forward(model: nn.Module) -> Any:
        return model(*inputs)
    if inputs and isinstance(inputs[0], torch.Tensor):
        forward.trace_input_shape = tuple(inputs[0].shape)
    return forward
