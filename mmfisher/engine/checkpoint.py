"""Let mmengine 0.10.7 checkpoints load under torch >= 2.6's ``weights_only=True`` default, safely.

torch >= 2.6 unpickles checkpoints with a restricted unpickler that refuses every global not on an allow-list.
mmengine's checkpoints carry a few harmless non-tensor objects (the message hub's ``HistoryBuffer`` with numpy
arrays inside, numpy scalars and dtypes in ``meta``), so ``Runner.resume`` fails with ``UnpicklingError``.

We add exactly those globals to torch's allow-list (``torch.serialization.add_safe_globals``) and never turn
``weights_only`` off: a checkpoint carrying any other object (e.g. a ``__reduce__`` that runs a shell command)
is still refused.

One of them is ``builtins.getattr``: a ``HistoryBuffer`` stores its statistics functions (``min``, ``max``,
``mean``, ``current``), which pickle as ``getattr(HistoryBuffer, 'min')``. A free ``getattr`` would let a
checkpoint reach any attribute of any allowed object (e.g. ``__globals__``), so the name ``builtins.getattr``
is bound to :func:`history_buffer_getattr`, which resolves only those methods and refuses everything else.
"""
from __future__ import annotations

from typing import Any, List, Tuple, Union

import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

SafeGlobal = Union[Any, Tuple[Any, str]]


def _numpy_multiarray() -> Any:
    """numpy 2 moved ``numpy.core`` to ``numpy._core``."""
    core = getattr(np, '_core', None)
    return core.multiarray if core is not None and hasattr(core, 'multiarray') else np.core.multiarray


# bool, (u)int8/16/32/64 in every C spelling, float16/32/64: what numbers in a checkpoint can be.
_NUMPY_DTYPE_CHARS = '?bBhHiIlLqQefd'
_HISTORY_BUFFER_METHODS = frozenset({'min', 'max', 'current', 'mean'})  # HistoryBuffer._set_default_statistics


def history_buffer_getattr(obj: Any, name: Any) -> Any:
    """What a checkpoint's ``builtins.getattr`` means under weights_only: ``HistoryBuffer``'s statistics only."""
    if (isinstance(obj, type) and issubclass(obj, HistoryBuffer) and isinstance(name, str)
            and name in _HISTORY_BUFFER_METHODS and callable(getattr(obj, name, None))):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); only the HistoryBuffer statistics methods '
        f'{sorted(_HISTORY_BUFFER_METHODS)} are allowed under weights_only loading')


def safe_globals() -> List[SafeGlobal]:
    """The globals mmengine checkpoints need, as accepted by ``torch.serialization.add_safe_globals``.

    torch.save pickles with protocol 2: a dtype is created as ``numpy.dtype(str, ...)`` and then has its state
    set, which torch allows only for allow-listed types: its class (``numpy.dtypes.Float64DType``, ...) for the
    bool / integer / float dtypes (not ``object``, so object arrays stay refused). Pickles written under the other numpy
    major version name ``numpy.core`` / ``numpy._core``; both spellings map onto the same two functions
    (``_reconstruct`` rebuilds an ndarray, ``scalar`` a numpy scalar).
    """
    multiarray = _numpy_multiarray()
    items: List[SafeGlobal] = [HistoryBuffer, np.ndarray, np.dtype, (history_buffer_getattr, 'builtins.getattr')]
    for fn_name in ('_reconstruct', 'scalar'):
        fn = getattr(multiarray, fn_name)
        items.append(fn)
        for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
            items.append((fn, f'{module}.{fn_name}'))
    for char in _NUMPY_DTYPE_CHARS:
        items.append(type(np.dtype(char)))
    return items


_registered = False


def register_safe_globals() -> None:
    """Add :func:`safe_globals` to torch's ``weights_only`` allow-list (idempotent)."""
    global _registered
    if not _registered:
        torch.serialization.add_safe_globals(safe_globals())
        _registered = True
