"""Let mmengine 0.10.7 checkpoints load under torch >= 2.6's ``weights_only=True`` default, safely.

torch >= 2.6 unpickles checkpoints with a restricted unpickler that refuses every global not on an allow-list.
mmengine's checkpoints carry a few harmless non-tensor objects (the message hub's ``HistoryBuffer`` with numpy
arrays inside, numpy scalars and dtypes in ``meta``), so ``Runner.resume`` fails with ``UnpicklingError``.

We add exactly those globals to torch's allow-list (``torch.serialization.add_safe_globals``) and never turn
``weights_only`` off: a checkpoint carrying any other object (e.g. a ``__reduce__`` that runs a shell command)
is still refused.
"""
from __future__ import annotations

from typing import Any, List, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

SafeGlobal = Union[Any, Tuple[Any, str]]

# dtypes a HistoryBuffer / numpy scalar in a checkpoint can have (numeric and bool only; no object dtype).
_NUMPY_DTYPE_NAMES = ('bool_', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
                      'float16', 'float32', 'float64')


def _numpy_multiarray() -> Any:
    """numpy 2 moved ``numpy.core`` to ``numpy._core``."""
    core = getattr(np, '_core', None)
    return core.multiarray if core is not None and hasattr(core, 'multiarray') else np.core.multiarray


def safe_globals() -> List[SafeGlobal]:
    """The globals mmengine checkpoints need, as accepted by ``torch.serialization.add_safe_globals``.

    Pickles written under the other numpy major version name ``numpy.core`` / ``numpy._core``; both spellings are
    mapped onto the same two functions (``_reconstruct`` rebuilds an ndarray, ``scalar`` a numpy scalar).
    """
    multiarray = _numpy_multiarray()
    items: List[SafeGlobal] = [HistoryBuffer, np.ndarray, np.dtype]
    for fn_name in ('_reconstruct', 'scalar'):
        fn = getattr(multiarray, fn_name)
        items.append(fn)
        for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
            items.append((fn, f'{module}.{fn_name}'))
    # numpy >= 1.25 pickles a dtype through its class (numpy.dtypes.Float64DType, ...).
    for name in _NUMPY_DTYPE_NAMES:
        items.append(type(np.dtype(getattr(np, name))))
    return items


_registered = False


def register_safe_globals() -> None:
    """Add :func:`safe_globals` to torch's ``weights_only`` allow-list (idempotent)."""
    global _registered
    if not _registered:
        torch.serialization.add_safe_globals(safe_globals())
        _registered = True
