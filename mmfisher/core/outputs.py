"""What counts as a model's output tensors: one walk shared by the tracer, the masked-vs-slimmed check and the
tensor-mode wrappers, so they always look at the same tensors."""
from typing import Any, List

import torch
from torch import nn

__all__ = ['output_tensors']

MAX_DEPTH = 8


def output_tensors(obj: Any) -> List[torch.Tensor]:
    """Every tensor in ``obj``, depth first, in a deterministic order.

    Walks tensors, dicts (values in insertion order), lists and tuples, and plain objects' attributes (``vars``:
    mmengine's ``DetDataSample`` / ``InstanceData`` predictions); ``nn.Module`` values are not outputs and are
    skipped, and nesting deeper than ``MAX_DEPTH`` (8) is ignored. A tensor met twice is listed once.
    """
    out: List[torch.Tensor] = []
    seen = set()
    _walk(obj, out, seen, 0)
    return out


def _walk(obj: Any, out: List[torch.Tensor], seen: set, depth: int) -> None:
    if depth > MAX_DEPTH:
        return
    if isinstance(obj, torch.Tensor):
        if id(obj) not in seen:
            seen.add(id(obj))
            out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _walk(v, out, seen, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _walk(v, out, seen, depth + 1)
    elif hasattr(obj, '__dict__') and not isinstance(obj, (nn.Module, type)):
        for v in vars(obj).values():
            _walk(v, out, seen, depth + 1)
