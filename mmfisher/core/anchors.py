"""Anchor layers for label-free (distillation) pruning: which intermediate outputs are compared, and on which
channels (plain PyTorch + numpy, no OpenMMLab imports).

Seed 002 (Lee & Moon, BMVC 2022) adds to the output distillation loss a mean squared error between the student's
and the teacher's outputs at a few *anchor layers*, picked from the channel graph:

1. the channel units (groups of coupled channels) are sorted in execution order (the first layer producing them);
2. they are split into ``P`` partitions of (nearly) equal size (``numpy.array_split``: sizes differ by at most one);
3. for each partition, the partition's *last* unit gives the anchor: the first weighted layer (conv / linear, in
   execution order) that every producer of that unit reaches (its "first common descendant"); the anchor is the
   norm layer applied right after it (or the layer itself when it has no norm). Model outputs (layers whose own
   output channels are not prunable: a classifier's fc, a detector's class / box convs) are not candidates, since
   the output terms already compare them; a unit with no other common descendant (the end of a head) is anchored
   at its own last producer. Two partitions that give the same module give one anchor.

Reachability is read off the channel graph: a layer ``B`` reads layer ``A``'s output when ``B`` reads a channel
atom that ``A`` produces and ``B`` runs after ``A``. (A residual stream is one unit with many producers and
readers; "runs after" orients it, so a block's readers see the blocks before them, as in the forward pass.)

**What an anchor compares while channels are masked.** Masking zeroes the readers' input weights of a masked
channel (``masks.py``), so the producer still computes a value there: the teacher's and the student's outputs at a
masked channel differ, but no later layer sees the difference, and the slimmed model does not have that channel at
all. The MSE therefore covers the *alive* channels only: :func:`alive_positions` finds them from the weights of the
layers that read the anchor's channels (a channel is masked when every reader's weights on it are zero, which is
exactly what ``ChannelMasks.apply`` leaves), and :func:`anchor_mse` averages over those channels only. So the
anchor term of a masked student equals the anchor term of its slimmed copy, and masked channels neither add to the
loss nor pull the still-alive layers in front of them towards reproducing a channel that is gone (which would
bias those layers' Fisher scores). For a slimmed student (fine-tuning a ``Pruned`` model) the teacher's output is
indexed by the kept channels (``teacher_index``) so both sides hold the same channels.

The anchor compares the norm layer's output as it leaves the norm (pre-activation): activations are often
functional or shared modules (ResNet's ``relu`` runs three times per block), so they cannot be named reliably; the
pre-activation value constrains the student at least as tightly (a ReLU hides only the negative part).
"""
import dataclasses
from typing import Dict, Iterable, List, Optional, Sequence, Set

import numpy as np
import torch
from torch import nn

__all__ = ['AnchorError', 'AnchorChoice', 'execution_order', 'ordered_units', 'layer_children', 'descendants',
           'anchor_module', 'select_anchors', 'every_anchor', 'check_anchor_names', 'input_weight_norms',
           'alive_positions', 'anchor_mse', 'fisher_noise_mse', 'indices', 'compose']


class AnchorError(ValueError):
    """Anchor layers that cannot be chosen or compared (the message names the field and the fix)."""


@dataclasses.dataclass
class AnchorChoice:
    """One automatically chosen anchor: the partition it stands for and why this module."""

    partition: int            # 0-based
    units: int                # units in the partition
    last_unit: str            # name of the partition's last unit
    layer: str                # its first common descendant (a weighted layer)
    anchor: str               # the module whose output is compared: the norm after ``layer``, or ``layer``
    note: str = ''


def execution_order(graph) -> List[str]:
    """Traced modules in the order of their first call."""
    order = getattr(graph, 'module_order', None)
    return list(order) if order else list(graph.records)


def _is_weighted(graph, name: str) -> bool:
    rule = graph.rules.get(name)
    return rule is not None and rule.role == 'weighted'


def ordered_units(graph) -> List:
    """``graph.units`` sorted by the execution position of their first producer (then by name)."""
    pos = {n: i for i, n in enumerate(execution_order(graph))}
    far = len(pos) + 1

    def key(unit):
        layers = list(unit.producers) or list(unit.layers)
        return (min((pos.get(n, far) for n in layers), default=far), unit.name)
    return sorted(graph.units, key=key)


def layer_children(graph) -> Dict[str, Set[str]]:
    """Weighted layer -> the weighted layers that read one of its output atoms and run after it."""
    pos = {n: i for i, n in enumerate(execution_order(graph))}
    readers_of: Dict[int, Set[str]] = {}
    for name, atoms in graph.in_atoms.items():
        if not _is_weighted(graph, name):
            continue
        for a in np.unique(atoms[atoms >= 0]).tolist():
            readers_of.setdefault(int(a), set()).add(name)
    children: Dict[str, Set[str]] = {}
    for name, atoms in graph.out_atoms.items():
        if not _is_weighted(graph, name):
            continue
        me = pos.get(name, -1)
        kids: Set[str] = set()
        for a in np.unique(atoms[atoms >= 0]).tolist():
            kids |= {r for r in readers_of.get(int(a), ()) if pos.get(r, -1) > me}
        children[name] = kids
    return children


def descendants(graph, children: Optional[Dict[str, Set[str]]] = None) -> Dict[str, Set[str]]:
    """Weighted layer -> every weighted layer it reaches (not itself). Edges point forward in execution order, so
    one pass in reverse order suffices."""
    children = layer_children(graph) if children is None else children
    order = [n for n in execution_order(graph) if n in children]
    desc: Dict[str, Set[str]] = {}
    for name in reversed(order):
        out: Set[str] = set()
        for c in children[name]:
            out.add(c)
            out |= desc.get(c, set())
        desc[name] = out
    return desc


def _feeds_on(graph, name: str) -> bool:
    """A layer with prunable output channels (read by later layers): not a model output such as a detector's
    box conv or a classifier's fc, which the output terms already compare."""
    atoms = graph.out_atoms.get(name)
    return atoms is not None and bool((atoms >= 0).any())


def anchor_module(graph, layer: str) -> str:
    """The module compared for weighted ``layer``: the norm layer traced right after it on the same channels,
    else the layer itself."""
    order = [n for n in execution_order(graph) if n in graph.out_atoms]
    if layer not in order:
        return layer
    atoms = graph.out_atoms[layer]
    i = order.index(layer)
    if i + 1 < len(order):
        nxt = order[i + 1]
        rule = graph.rules.get(nxt)
        other = graph.out_atoms[nxt]
        if rule is not None and rule.role == 'norm' and other.shape == atoms.shape and (atoms >= 0).any() and \
                np.array_equal(other, atoms):
            return nxt
    return layer


def select_anchors(graph, num_partitions: int = 5) -> List[AnchorChoice]:
    """Seed 002's anchors (see the module docstring): one per partition, duplicates dropped.

    Raises:
        AnchorError: ``num_partitions`` is not an int >= 1, or exceeds the number of units.
    """
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, (int, np.integer)) or num_partitions < 1:
        raise AnchorError(f'num_partitions={num_partitions!r} must be an int >= 1 (the number of anchor layers '
                          'chosen automatically; seed 002 uses 5)')
    units = ordered_units(graph)
    if not units:
        raise AnchorError('the model has no prunable channel units, so no anchor layer can be chosen: set '
                          'anchors=None (output distillation only) or name anchor modules by hand')
    if num_partitions > len(units):
        raise AnchorError(f'num_partitions={num_partitions} is more than the model\'s {len(units)} channel units: '
                          f'use 1 <= num_partitions <= {len(units)}')
    desc = descendants(graph)
    pos = {n: i for i, n in enumerate(execution_order(graph))}
    choices: List[AnchorChoice] = []
    seen: Set[str] = set()
    for p, chunk in enumerate(np.array_split(np.arange(len(units)), int(num_partitions))):
        last = units[int(chunk[-1])]
        producers = [n for n in last.producers if n in desc] or [n for n in last.layers if n in desc]
        note = ''
        common: Optional[Set[str]] = None
        for n in producers:
            common = set(desc[n]) if common is None else common & desc[n]
        common = {n for n in (common or ()) if _feeds_on(graph, n)}
        if common:
            layer = min(common, key=lambda n: (pos.get(n, 1 << 30), n))
        else:  # nothing after it reads every producer (the network's end): the unit's own last producer
            layer = max(producers or [last.name], key=lambda n: (pos.get(n, -1), n))
            note = 'no common descendant; its last producer'
        anchor = anchor_module(graph, layer)
        if anchor in seen:
            continue
        seen.add(anchor)
        choices.append(AnchorChoice(p, len(chunk), last.name, layer, anchor, note))
    return choices


def every_anchor(graph) -> List[str]:
    """"Every activation" as an anchor (seed 002's ablation): the anchor module of every weighted layer that has
    prunable output channels, in execution order."""
    out: List[str] = []
    for name in execution_order(graph):
        if not _is_weighted(graph, name) or name not in graph.out_atoms:
            continue
        if not (graph.out_atoms[name] >= 0).any():
            continue
        a = anchor_module(graph, name)
        if a not in out:
            out.append(a)
    return out


def check_anchor_names(model: nn.Module, names: Iterable[str], what: str = 'anchors') -> List[str]:
    """The names as a list, or :class:`AnchorError` naming each one that is not a submodule of ``model``."""
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not all(isinstance(n, str) and n for n in names):
        raise AnchorError(f'{what}={names!r} must be module names (strings such as "backbone.layer2.0.bn1")')
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        close = []
        for n in missing:
            head = n.rsplit('.', 1)[0]
            close += [m for m in modules if m.startswith(head + '.')][:4]
        hint = f'; modules near it: {close[:6]}' if close else ''
        raise AnchorError(f'{what}: {missing} {"is" if len(missing) == 1 else "are"} not a module of '
                          f'{type(model).__name__}{hint}. Fix: name modules from model.named_modules() (e.g. a '
                          'norm layer after a conv), or use anchors="auto"')
    return names


def input_weight_norms(module: nn.Module) -> Optional[torch.Tensor]:
    """``(C_in,)``: the sum of ``|weight|`` reading each input position of a conv / transposed conv / linear, or
    None for a layer type this does not know."""
    w = getattr(module, 'weight', None)
    if not isinstance(w, torch.Tensor) or w.dim() < 2:
        return None
    w = w.detach().abs()
    if isinstance(module, nn.Linear):
        return w.sum(0)
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:  # (C_in, C_out / g, k...)
            return w.flatten(1).sum(1)
        g = int(module.groups)
        out, ig = w.shape[0], w.shape[1]
        return w.flatten(2).sum(2).view(g, out // g, ig).sum(1).flatten()
    return None


def alive_positions(graph, model: nn.Module, anchor: str) -> Optional[torch.Tensor]:
    """Bool ``(C,)`` over ``anchor``'s output channels: False where every reader's input weights are zero (a
    masked channel); None when all are alive or ``anchor`` is not a traced conv/linear/norm layer (then every
    channel is compared). Channels of unprunable atoms are always alive; an atom read by a layer type
    :func:`input_weight_norms` does not know counts as alive."""
    atoms = graph.out_atoms.get(anchor)
    if atoms is None or not (atoms >= 0).any():
        return None
    wanted = np.unique(atoms[atoms >= 0])
    local = {int(a): i for i, a in enumerate(wanted.tolist())}
    alive = np.zeros(len(wanted), dtype=bool)
    modules = dict(model.named_modules())
    for name, in_atoms in graph.in_atoms.items():
        hit = np.isin(in_atoms, wanted)
        if not hit.any():
            continue
        module = modules.get(name)
        norms = input_weight_norms(module) if module is not None else None
        if norms is None or norms.numel() != in_atoms.size:
            for a in np.unique(in_atoms[hit]).tolist():
                alive[local[int(a)]] = True
            continue
        nz = (norms != 0).cpu().numpy()
        for a in np.unique(in_atoms[hit & nz]).tolist():
            alive[local[int(a)]] = True
    if alive.all():
        return None
    keep = np.ones(atoms.size, dtype=bool)
    valid = atoms >= 0
    keep[valid] = alive[np.array([local[int(a)] for a in atoms[valid].tolist()], dtype=np.int64)]
    return torch.from_numpy(keep)


def anchor_mse(student: torch.Tensor, teacher: torch.Tensor, dim: int = 1,
               student_index: Optional[torch.Tensor] = None, teacher_index: Optional[torch.Tensor] = None,
               name: str = 'anchor') -> torch.Tensor:
    """Mean squared error over the channels ``student_index`` of ``student`` against the channels
    ``teacher_index`` of ``teacher`` (both along ``dim``; None = all), in float32.

    Raises:
        AnchorError: the two sides do not have the same shape once indexed (names ``name``).
    """
    s, t = _pair(student, teacher, dim, student_index, teacher_index, name)
    return torch.mean((s - t) ** 2)


def fisher_noise_mse(student: torch.Tensor, teacher: torch.Tensor, batch: int, generator: torch.Generator,
                     dim: int = 1, student_index: Optional[torch.Tensor] = None,
                     teacher_index: Optional[torch.Tensor] = None, name: str = 'anchor') -> torch.Tensor:
    """The zero-mean term that turns :func:`anchor_mse` into a one-sample Gaussian estimate of itself (see
    ``mmfisher.models.distiller``, "sampled targets"): ``-sqrt(2 / (batch * M)) * sum(xi * (s - t))`` over the
    ``M`` compared elements, ``xi`` standard normal from ``generator``. Its expectation is 0; its gradient at
    ``s == t`` is not, and its expected square per sample is the MSE's Gauss-Newton curvature."""
    s, t = _pair(student, teacher, dim, student_index, teacher_index, name)
    xi = torch.randn(s.shape, generator=generator, device=generator.device, dtype=torch.float32).to(s.device)
    m = max(int(s.numel()), 1)
    return -((2.0 / (max(int(batch), 1) * m)) ** 0.5) * torch.sum(xi * (s - t))


def _pair(student, teacher, dim, student_index, teacher_index, name):
    s, t = student.float(), teacher.float().detach()
    d = dim if dim >= 0 else s.dim() + dim
    if student_index is not None:
        s = s.index_select(d, student_index.to(s.device))
    if teacher_index is not None:
        t = t.index_select(d, teacher_index.to(t.device))
    if s.shape != t.shape:
        raise AnchorError(f'anchor "{name}": the student\'s output {tuple(s.shape)} and the teacher\'s '
                          f'{tuple(t.shape)} cannot be compared channel by channel. Fix: name an anchor whose '
                          'output has the same shape in both (a conv/linear/norm layer of the same architecture), '
                          'or use anchors="auto"')
    return s, t


def indices(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Positions where ``mask`` is True (None stays None)."""
    return None if mask is None else torch.nonzero(mask).flatten()


def compose(kept: Optional[Sequence[int]], student_alive: Optional[torch.Tensor]):
    """(student index, teacher index) for an anchor whose student keeps the teacher's channels ``kept`` (None: all)
    and of those has ``student_alive`` alive (None: all)."""
    s_idx = indices(student_alive)
    if kept is None:
        return s_idx, s_idx
    kept_t = torch.as_tensor(list(kept), dtype=torch.long)
    return s_idx, (kept_t if s_idx is None else kept_t[s_idx])
