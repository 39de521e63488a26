"""The state of one trace: the channel info of every live traced tensor, the union-find, and what was recorded.

Op handlers (``pointwise``, ``movement``, ``setitem``, ``spatial``) and module recording (``modules``) all read and
write one :class:`TraceState`; ``api.trace_channels`` creates it and turns it into a ``TraceResult``.
"""
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..layers import LayerRule
from ..unionfind import UnionFind
from .channels import ChannelInfo, Mixed, elems_of
from .records import AttrUse, ModuleRecord, ParamUse

__all__ = ['TraceState']

# (module name, its rule or None, [(input tensor, its info)]) of a module whose forward is running
# and the call's (args, kwargs)
StackEntry = Tuple[str, Optional[LayerRule], List[Tuple[torch.Tensor, Any]], Tuple[tuple, dict]]


class TraceState:
    """Channel infos keyed by tensor identity, the union-find over elements, and the records of one trace."""

    def __init__(self, model: nn.Module) -> None:
        self.uf = UnionFind()
        self.infos: Dict[int, Tuple[torch.Tensor, Any]] = {}  # id(tensor) -> (tensor, ChannelInfo | Mixed)
        self.mixed: List[Mixed] = []
        self.modules: Dict[str, ModuleRecord] = {}
        self.module_order: List[str] = []
        self.params: Dict[str, ParamUse] = {}
        self.attrs: Dict[str, AttrUse] = {}
        #: parameter name -> {parameter dim: (size, owner module, its int attributes of that value)}: a view or
        #: reshape of the parameter gave that dim's size as a literal (timm's ``scale.view(self.shape)``)
        self.param_sizes: Dict[str, Dict[int, Tuple[int, str, List[str]]]] = {}
        #: module name -> {(number of sizes, position)} of view/reshape sizes its slimmed forward infers
        self.inferred: Dict[str, set] = {}
        self.module_objs: Dict[str, nn.Module] = {'': model}  # '' is the model itself (its own forward's sizes)
        self.param_names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self.param_names.update({id(b): n for n, b in model.named_buffers(remove_duplicate=False)})
        self.unknown_ops: Dict[str, int] = {}
        self.suppress = 0  # > 0 inside a ruled module: its internals are not looked at
        self.stack: List[StackEntry] = []
        self.prefs: Dict[int, Tuple[torch.Tensor, Any]] = {}  # id(tensor) -> (tensor, ParamRef): see params.py
        self.zeros: Dict[int, torch.Tensor] = {}  # zeros_like results (see mark_zero)
        self.constraints: List[Any] = []  # SplitGrid / GroupGrid, resolved after the forward (constraints.py)
        # (elements, reason) made unprunable after the outputs are flagged, so an output layer keeps that reason
        self.late_flags: List[Tuple[np.ndarray, str]] = []

    # ---- tensor bookkeeping -------------------------------------------------------------------------------
    def get(self, t: Any) -> Any:
        """The :class:`ChannelInfo` / :class:`Mixed` of ``t``, or None (not traced, or not a tensor)."""
        if not isinstance(t, torch.Tensor):
            return None
        entry = self.infos.get(id(t))
        if entry is None or entry[0] is not t:
            return None
        return entry[1]

    def set(self, t: torch.Tensor, info: Any) -> None:
        """Attach ``info`` to ``t`` (None forgets it: ``t`` is a constant)."""
        if info is None:
            self.infos.pop(id(t), None)
        else:
            self.infos[id(t)] = (t, info)

    def param_ref(self, t: Any) -> Any:
        """The :class:`~mmfisher.core.trace.params.ParamRef` of a parameter-derived tensor (made on first use for
        a parameter or buffer itself), or None."""
        if not isinstance(t, torch.Tensor) or self.get(t) is not None:
            return None
        entry = self.prefs.get(id(t))
        if entry is not None and entry[0] is t:
            return entry[1]
        name = self.param_names.get(id(t))
        if name is None or t.dim() == 0:
            return None
        from .params import ParamRef
        ref = ParamRef(name, tuple(t.shape), torch.arange(t.numel(), dtype=torch.int64).view(t.shape))
        self.prefs[id(t)] = (t, ref)
        return ref

    def set_param_ref(self, t: torch.Tensor, ref: Any) -> None:
        self.prefs[id(t)] = (t, ref)

    def mark_zero(self, t: torch.Tensor) -> None:
        """``t`` is zeros shaped like another tensor (``zeros_like``): adding it changes nothing."""
        self.zeros[id(t)] = t

    def is_zero(self, t: Any) -> bool:
        entry = self.zeros.get(id(t)) if isinstance(t, torch.Tensor) else None
        return entry is not None and entry is t

    def new_mixed(self, elems: List[Optional[np.ndarray]], reason: str) -> Optional[Mixed]:
        """A :class:`Mixed` over the union of ``elems`` (None when there are none), registered for the final
        flagging."""
        elems = [np.asarray(e).ravel() for e in elems if e is not None and np.asarray(e).size]
        if not elems:
            return None
        m = Mixed(np.unique(np.concatenate(elems)), reason)
        self.mixed.append(m)
        return m

    @staticmethod
    def use(info: Any, zero: bool = False) -> None:
        """Note a read of a :class:`Mixed` (``zero``: a multiplication by zero, which keeps it harmless)."""
        if isinstance(info, Mixed):
            info.used = True
            info.zero_only = info.zero_only and zero

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
        """Make every element of ``info`` unprunable; a :class:`Mixed` keeps its own reason (the op that mixed the
        channels, not the layer that met the result)."""
        if isinstance(info, Mixed):
            reason = info.reason
        elems = elems_of(info)
        if elems is not None:
            self.uf.flag(elems, reason)

    # ---- int attributes that size channel buffers ---------------------------------------------------------
    def size_attribute(self, size: int, words: Tuple[str, ...]) -> Tuple[Optional[str], List[str]]:
        """(running module's name, its int attributes equal to ``size`` whose names contain one of ``words``).
        An int inside a list or tuple attribute (Swin's ``num_features[i]``) is named ``attr[i]`` when it is the
        only one of that value there."""
        owner = self.running_owner()
        module = self.module_objs.get(owner)
        names: List[str] = []
        for k, v in (vars(module).items() if module is not None else ()):
            if not any(w in k for w in words) or k.startswith('_'):
                continue
            if isinstance(v, int) and not isinstance(v, bool) and v == size:
                names.append(k)
            elif isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                hits = [i for i, x in enumerate(v) if x == size]
                if len(hits) == 1:
                    names.append(f'{k}[{hits[0]}]')
        return owner, names

    def running_owner(self) -> str:
        """The innermost running module no rule covers (the one whose forward runs the current op; '': the
        model itself)."""
        return next((n for n, rule, *_ in reversed(self.stack) if rule is None), '')

    def owner_adapted(self) -> bool:
        """Whether the running unruled module gets a slimming forward (``layers.ForwardAdapter``) that reads its
        sizes from its layers instead of its input (Swin's window attention)."""
        from ..layers import has_adapter
        owner = self.running_owner()
        module = self.module_objs.get(owner)
        return module is not None and has_adapter(module)

    def bind_attribute(self, owner: str, attr: str, vec: np.ndarray) -> None:
        """Record that ``owner.attr`` counts the channels ``vec``: slimming sets it to the kept count."""
        key = f'{owner}.{attr}'
        use = self.attrs.get(key)
        if use is None:
            self.attrs[key] = AttrUse(owner, attr, vec.copy())
        else:
            self.uf.union_arrays(use.elems, vec)
