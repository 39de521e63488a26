"""The tracer's two ways of saying "I cannot do this", and how to tell a meta-device limit from a model's error.

* :class:`Unmappable` (internal): an op's channel flow cannot be mapped; the op's channels become unprunable with
  the reason named, and the trace goes on.
* :class:`MetaTraceUnsupported` (public): the trace runs on a meta-device copy and needs a value (an index, a
  scalar); the caller traces the real model instead (``units.analyze_fast``).
"""
import re
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

__all__ = ['Unmappable', 'MetaTraceUnsupported', 'no_meta', 'is_meta_limitation']


class Unmappable(Exception):
    """An op whose channel flow the tracer cannot map (the message says why)."""


class MetaTraceUnsupported(RuntimeError):
    """Tracing on the meta device needs a value (an index, a scalar): trace with real tensors instead."""


def no_meta(*objs: Any) -> None:
    """Raise :class:`MetaTraceUnsupported` if any tensor in ``objs`` is on the meta device (values are needed)."""
    if any(isinstance(t, torch.Tensor) and t.is_meta for t in tree_flatten(objs)[0]):
        raise MetaTraceUnsupported('an op needs tensor values (indices) to be replayed on channel ids')


# "meta" as a word of its own or in an identifier (register_meta, "Meta backend", "device meta", "meta and
# cpu"), not inside another word (metainfo, metadata)
_META = re.compile(r'(?<![a-z])meta(?![a-z])', re.IGNORECASE)
# a compiled op's own device check, which sees a meta tensor as the wrong device (mmcv's deformable convolution:
# "input must be a CPU tensor"): the message names a device kind, never "meta"
_DEVICE_CHECK = re.compile(r'must be an? (?:cpu|cuda) tensor|(?:cpu|cuda) tensors? (?:is |are )?expected'
                           r'|expected (?:a |all )?(?:cpu|cuda) tensors?', re.IGNORECASE)


def is_meta_limitation(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from or while handling) means "the meta device cannot run
    this": :class:`MetaTraceUnsupported`, a missing meta kernel (``NotImplementedError``: ``nonzero``,
    ``masked_select``, custom ops), a value read (``.item()``, ``.tolist()``, numpy), a meta/real device mix, a
    compiled op's own device check (``input must be a CPU tensor``: mmcv's deformable convolution). Anything else
    (a shape or channel mismatch, a model's own check) fails on real tensors too."""
    seen = set()
    e: Any = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (MetaTraceUnsupported, NotImplementedError)) or _META.search(str(e)) \
                or _DEVICE_CHECK.search(str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False
