"""What a trace records besides the union-find: ruled modules and their calls, per-channel parameters and the
int attributes that size channel buffers. ``units.py`` turns these into atoms and units."""
import dataclasses
from typing import List, Optional, Tuple

import numpy as np

from ..layers import LayerRule

__all__ = ['ModuleCall', 'ModuleRecord', 'ParamUse', 'AttrUse']


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
    #: grouped layers: 'whole' (whole groups are atoms) or 'column' (position j of every group is one atom)
    group_mode: str = 'whole'
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
