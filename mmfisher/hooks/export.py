"""Writing the pruning results: channel config + slimmed weights, atomically, loadable with ``weights_only``."""
import os
import tempfile
from typing import Any, Dict, Tuple

import numpy as np
import torch
from torch import nn

from ..core import ChannelGraph, deepcopy_module, outputs_agree, save_channel_config, slim_model


def plain(obj: Any) -> Any:
    """``obj`` reduced to what ``torch.load(weights_only=True)`` and JSON accept: dicts with str keys, lists,
    str, int, float, bool, None (numpy scalars/arrays and tuples converted; anything else becomes its str)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [plain(v) for v in obj]
    return str(obj)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temp file in the same directory, then ``os.replace``: never a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class SlimmingMismatch(RuntimeError):
    """The slimmed model does not compute what the masked model computes: nothing is written."""


def slimmed(model: nn.Module, graph: ChannelGraph, alive: np.ndarray, forward=None, rtol: float = 1e-3,
            make_forward=None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(channel config, slimmed CPU state dict) of ``model`` (unpruned structure, masked) kept to ``alive``.

    ``model`` is not changed: a deep copy is slimmed. With ``forward`` (the trace forward), the slimmed copy's
    outputs are checked against the masked model's first, so an op the tracer mapped wrongly can never yield
    a silently different model: :class:`SlimmingMismatch` is raised instead. ``make_forward(m)`` (the trace
    forward for any model ``m``) lets a float32 disagreement be re-checked in float64
    (:func:`mmfisher.core.outputs_agree`: top-k over near-equal scores).
    """
    with torch.no_grad():
        copied = deepcopy_module(model)
        for p in copied.parameters():
            p.grad = None
        cfg = slim_model(copied, graph, np.asarray(alive, dtype=bool))
    if forward is not None:
        try:
            check = outputs_agree(model, copied, forward, rtol, make_forward)
        except RuntimeError as exc:
            raise SlimmingMismatch(f'the slimmed model does not run like the masked one ({exc}); nothing was '
                                   'written. Please report the model config; as a work-around, add the '
                                   'affected layers to the hook\'s `skip`.') from exc
        if not check['ok']:
            raise SlimmingMismatch(
                f'the slimmed model differs from the masked one (max abs diff {check["max_abs_diff"]:.3g}, output '
                f'scale {check["scale"]:.3g}); nothing was written. Please report the model config; as a '
                'work-around, add the affected layers to the hook\'s `skip`.')
    with torch.no_grad():
        state = {k: v.detach().cpu().clone() for k, v in copied.state_dict().items()}
    del copied
    return cfg, state


def export_pruned(model: nn.Module, graph: ChannelGraph, alive: np.ndarray, work_dir: str, suffix: str,
                  meta: Dict[str, Any], forward=None, make_forward=None) -> Tuple[str, str]:
    """Write ``channels{suffix}.json`` and ``pruned{suffix}.pth`` (``{'meta', 'state_dict'}``) into ``work_dir``.

    Returns both paths. The weights file loads into ``Pruned(architecture, channels=<the json>)`` strictly.
    """
    meta = plain(meta)
    cfg, state = slimmed(model, graph, alive, forward, make_forward=make_forward)
    cfg['meta'] = meta
    json_path = os.path.join(work_dir, f'channels{suffix}.json')
    pth_path = os.path.join(work_dir, f'pruned{suffix}.pth')
    save_channel_config(cfg, json_path)
    atomic_torch_save({'meta': dict(meta, channels=os.path.basename(json_path)), 'state_dict': state}, pth_path)
    return json_path, pth_path
