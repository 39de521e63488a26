"""The pruning result as one verified pair: ``channels.json`` (the structure) + ``pruned.pth`` (its weights).

* Both files carry the same **structure digest** (:func:`structure_digest`: sha256 of the channel config
  without its ``meta``). ``pruned.pth`` holds it as ``meta['structure_digest']`` and, so that every loader
  (``load_from``, ``tools/test.py CKPT``, ``--resume``, the inferencers) sees it, as the state-dict entry
  :data:`DIGEST_KEY` (a uint8 tensor), which a ``Pruned`` model checks and consumes (see
  :func:`guard_state_dict_loading`).
* The pair is written so that a reader sees the old pair or the new one: both files are written completely to
  temp files beside their targets first (nothing visible changes if that fails, e.g. on a full disk), then the
  weights and the structure are moved into place by two renames microseconds apart. A reader that opens the two
  files across those renames, or after a kill between them, gets a digest mismatch and a clear refusal, never
  a silently wrong model.
* Temp files are removed on failure, also stale ones a killed writer left; files honour the umask.
"""
import hashlib
import json
import os
from typing import Any, Dict, Tuple

import numpy as np
import torch
from torch import nn

from .copying import deepcopy_module
from .files import atomic_write_all, remove_stale_temps
from .slim import slim_model
from .units import ChannelGraph
from .verify import outputs_agree

__all__ = ['DIGEST_KEY', 'SlimmingMismatch', 'WeightsMismatch', 'export_pruned', 'guard_state_dict_loading',
           'plain', 'slimmed', 'structure_digest']

DIGEST_KEY = 'mmfisher_structure_digest'


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


def structure_digest(cfg: Dict[str, Any]) -> str:
    """32 hex chars identifying a channel config's structure (everything but ``meta``)."""
    body = {k: v for k, v in cfg.items() if k != 'meta'}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(',', ':')).encode()).hexdigest()[:32]


def digest_tensor(digest: str) -> torch.Tensor:
    return torch.tensor(list(digest.encode('ascii')), dtype=torch.uint8)


def digest_of_tensor(t: torch.Tensor) -> str:
    return bytes(t.to(torch.uint8).tolist()).decode('ascii', errors='replace')


class SlimmingMismatch(RuntimeError):
    """The slimmed model does not compute what the masked model computes: nothing is written."""


class WeightsMismatch(ValueError):
    """Weights that do not belong to a pruned structure (other shapes, or another structure's digest)."""


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
                                   f'written.{_culprits(model, graph, alive, forward, rtol, make_forward)}') from exc
        if not check['ok']:
            raise SlimmingMismatch(
                f'the slimmed model differs from the masked one (max abs diff {check["max_abs_diff"]:.3g}, output '
                f'scale {check["scale"]:.3g}); nothing was written.'
                f'{_culprits(model, graph, alive, forward, rtol, make_forward)}')
    with torch.no_grad():
        state = {k: v.detach().cpu().clone() for k, v in copied.state_dict().items()}
    del copied
    return cfg, state


def _culprits(model: nn.Module, graph: ChannelGraph, alive: np.ndarray, forward, rtol: float, make_forward) -> str:
    """The fix for a failed export check: the units whose slimming in this structure fails, found by halving the
    set of units (:func:`mmfisher.core.verify.inexact_units` with ``alive``), as a ``skip`` to set."""
    from .verify import inexact_units
    found = inexact_units(model, graph, forward, rtol=rtol, make_forward=make_forward,
                          alive=np.asarray(alive, dtype=bool))
    names = list(found)
    hint = (f' The units whose slimming fails in this structure: {names[:8]}{" ..." if len(names) > 8 else ""}. '
            f'Fix: add them to the hook\'s `skip` (skip={names[:8]!r}) and prune again, and please report the '
            'model config' if names else
            ' Please report the model config; as a work-around, add the affected layers to the hook\'s `skip`.')
    return hint


def export_pruned(model: nn.Module, graph: ChannelGraph, alive: np.ndarray, work_dir: str, suffix: str,
                  meta: Dict[str, Any], forward=None, make_forward=None) -> Tuple[str, str]:
    """Write ``channels{suffix}.json`` and ``pruned{suffix}.pth`` (``{'meta', 'state_dict'}``) into ``work_dir``.

    Returns both paths. The weights load into ``Pruned(architecture, channels=<the json>)`` strictly, and only
    into that structure (see the module docstring for how the pair is written).
    """
    meta = plain(meta)
    cfg, state = slimmed(model, graph, alive, forward, make_forward=make_forward)
    digest = structure_digest(cfg)
    cfg['meta'] = dict(meta, structure_digest=digest)
    json_path = os.path.join(work_dir, f'channels{suffix}.json')
    pth_path = os.path.join(work_dir, f'pruned{suffix}.pth')
    state[DIGEST_KEY] = digest_tensor(digest)
    weights = {'meta': dict(meta, channels=os.path.basename(json_path), structure_digest=digest),
               'state_dict': state}
    for path in (json_path, pth_path):
        remove_stale_temps(path)
    size = sum(v.numel() * v.element_size() for v in state.values())
    atomic_write_all([(pth_path, lambda f: torch.save(weights, f)),
                      (json_path, lambda f: f.write(json.dumps(cfg, separators=(',', ':')).encode()))], size)
    return json_path, pth_path


def guard_state_dict_loading(model: nn.Module, cfg: Dict[str, Any], where: str = '') -> str:
    """Make ``model`` (slimmed to ``cfg``) refuse weights that do not belong to it, on every loading path.

    Adds to the root module (1) a state-dict hook that writes :data:`DIGEST_KEY` into every state dict it
    saves (checkpoints of a fine-tune carry the structure too), and (2) a load pre-hook that, before any tensor
    is copied, raises :class:`WeightsMismatch` when the incoming tensors' shapes differ from the model's, or
    when their digest names another structure; it then removes :data:`DIGEST_KEY` so strict loads see the usual
    keys. mmengine's non-strict ``load_checkpoint`` runs the same pre-hook, so a wrong pair can no longer load
    with warnings only. Returns the digest.
    """
    digest = structure_digest(cfg)
    where = f' ({where})' if where else ''

    def add_digest(module, state_dict, prefix, local_metadata):
        state_dict[prefix + DIGEST_KEY] = digest_tensor(digest)
        return state_dict

    def check(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        theirs = state_dict.pop(prefix + DIGEST_KEY, None)
        own = model.state_dict(keep_vars=True)
        incoming = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
        params = [k for k in own if k != DIGEST_KEY]
        if incoming and params and not set(incoming) & set(params):
            student = [k for k in incoming if k.startswith('student.')]
            hint = ('it is a distillation checkpoint (keys student.* / teacher.*): write its student as a plain '
                    'checkpoint with mmfisher.models.distiller.extract_student and load that'
                    if student else f'e.g. checkpoint key {incoming[0]!r}, model key {params[0]!r}')
            raise WeightsMismatch(
                f'none of the checkpoint\'s {len(incoming)} keys names a tensor of the pruned model of the channel '
                f'config{where}, so nothing would load; {hint}')
        bad = [(k[len(prefix):], tuple(v.shape), tuple(own[k[len(prefix):]].shape))
               for k, v in state_dict.items() if k.startswith(prefix) and isinstance(v, torch.Tensor)
               and k[len(prefix):] in own and isinstance(own[k[len(prefix):]], torch.Tensor)
               and tuple(v.shape) != tuple(own[k[len(prefix):]].shape)]
        if bad:
            name, got, want = bad[0]
            hint = ('they are unpruned (a pruning-run iter_*.pth or the original model?)'
                    if all(int(np.prod(g)) >= int(np.prod(w)) for _, g, w in bad) else
                    'they were pruned to another structure')
            raise WeightsMismatch(
                f'the weights do not fit the pruned structure of the channel config{where}: {len(bad)} tensors '
                f'differ in shape, e.g. {name}: weights {got}, model {want}; {hint}. Fix: load the pruned.pth '
                'written beside this channels.json (same suffix), or a checkpoint of its fine-tune')
        if theirs is not None and isinstance(theirs, torch.Tensor) and digest_of_tensor(theirs) != digest:
            raise WeightsMismatch(
                f'the weights belong to another pruned structure than the channel config{where}: weights '
                f'structure {digest_of_tensor(theirs)!r}, channel config {digest!r}. Fix: load the pruned.pth '
                'written beside this channels.json (same suffix, same run), or a checkpoint of its fine-tune')

    model._register_state_dict_hook(add_digest)
    model._register_load_state_dict_pre_hook(check)
    return digest
