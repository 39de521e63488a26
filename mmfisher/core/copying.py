"""Deep copies of modules that hold tensors computed in a forward.

``copy.deepcopy`` refuses a module with a non-leaf tensor among its attributes (a forward that caches, say,
``self.priors = f(x)`` while autograd records: YOLACT's and CondInst's heads). :func:`deepcopy_module` copies
such attributes detached, so slimming, export and verification work on every model that can be traced.
"""
import copy
from typing import Any, Dict, Optional

import torch
from torch import nn

_SKIP = frozenset({'_parameters', '_buffers', '_modules'})


def _collect(obj: Any, found: Dict[int, torch.Tensor], depth: int) -> None:
    if isinstance(obj, torch.Tensor):
        if not obj.is_leaf:
            found[id(obj)] = obj
        return
    if depth <= 0 or isinstance(obj, nn.Module):
        return
    if isinstance(obj, dict):
        for v in obj.values():
            _collect(v, found, depth - 1)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            _collect(v, found, depth - 1)
    elif hasattr(obj, '__dict__') and not isinstance(obj, type):
        for v in vars(obj).values():
            _collect(v, found, depth - 1)


def non_leaf_attributes(model: nn.Module, depth: int = 4) -> Dict[int, torch.Tensor]:
    """``{id: tensor}`` of the non-leaf tensors held by ``model``'s modules (attributes, and up to ``depth``
    levels into the lists, dicts and plain objects among them)."""
    found: Dict[int, torch.Tensor] = {}
    for m in model.modules():
        for key, value in vars(m).items():
            if key not in _SKIP:
                _collect(value, found, depth)
    return found


def deepcopy_module(model: nn.Module, memo: Optional[Dict[int, Any]] = None) -> nn.Module:
    """``copy.deepcopy(model, memo)`` where every non-leaf tensor attribute is copied detached."""
    memo = {} if memo is None else memo
    for key, t in non_leaf_attributes(model).items():
        memo.setdefault(key, t.detach().clone())
    return copy.deepcopy(model, memo)
