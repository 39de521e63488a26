"""Does a ``load_from`` / ``--resume`` checkpoint fill the model a pruning hook prunes?

mmengine loads ``load_from`` non-strictly: a parameter the checkpoint lacks, or holds with another shape (a
slimmed ``pruned.pth`` given to the unpruned config, a checkpoint of another depth or width), keeps its random
initialisation, and mmengine only logs it. A pruning hook would then rank, measure and prune partly random weights
and write a structure that looks fine. The hooks call :func:`checkpoint_mismatch` from ``after_load_checkpoint``
(mmengine calls it with the checkpoint before loading it into the model) and refuse such a checkpoint with
:class:`CheckpointMismatch`, unless the user allows it (``allow_partial_checkpoint=True``: e.g. a detector trained
on COCO whose classifier convolutions do not fit a new class count). ``tools/test.py`` registers
:class:`CheckpointFitHook`, so a checkpoint is never evaluated in a model it does not fit (the unpruned config
given a ``pruned.pth``: mmengine would report the metrics of a partly random model). A ``mmfisher.Pruned`` model
checks its own weights (:func:`mmfisher.core.export.guard_state_dict_loading`) and is left to that.
"""
import re
from typing import Any, Callable, Dict, List, Optional

import torch
from mmengine.hooks import Hook
from torch import nn

from ..core.export import DIGEST_KEY
from ..models.target import pruned_module, unwrap

# keys a checkpoint may lack without leaving weights random: the batch-norm step counter (older checkpoints and
# converted weights do not carry it) and the data preprocessor's buffers (mean / std, set by the config)
_OPTIONAL = (re.compile(r'(^|\.)num_batches_tracked$'), re.compile(r'^data_preprocessor\.'))


class CheckpointMismatch(ValueError):
    """The checkpoint does not hold the weights of the model that is pruned."""


def _prefix_of(full: nn.Module, module: nn.Module) -> str:
    """``'student.'`` for the student inside a distiller; ``''`` when ``module`` is ``full``."""
    for name, m in full.named_modules():
        if m is module:
            return f'{name}.' if name else ''
    return ''


def checkpoint_mismatch(full: nn.Module, module: nn.Module, checkpoint: Dict[str, Any]) -> Optional[str]:
    """What the checkpoint leaves unloaded in ``module`` (the pruned part of ``full``), or None when it fills it.

    Keys are read as mmengine's ``Runner.load_checkpoint`` reads them (``state_dict`` if present, a leading
    ``module.`` removed); a checkpoint of ``full`` (a distiller's ``student.*`` keys) and a plain checkpoint of
    ``module`` are both understood. Keys the checkpoint has beyond the model are not a mismatch (nothing stays
    random); missing parameters or buffers and other shapes are.
    """
    sd = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(sd, dict):
        return f'it holds no state_dict ({type(checkpoint).__name__})'
    sd = {re.sub(r'^module\.', '', k): v for k, v in sd.items() if isinstance(k, str)}
    prefix = _prefix_of(full, module)
    if prefix and any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    own = module.state_dict()
    if DIGEST_KEY in own:  # a Pruned model: its load pre-hook refuses weights of another structure itself
        return None
    missing = [k for k in own if k not in sd and not any(p.search(k) for p in _OPTIONAL)]
    shapes = [f'{k} {tuple(sd[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model' for k in own
              if k in sd and isinstance(sd[k], torch.Tensor) and tuple(sd[k].shape) != tuple(own[k].shape)]
    if not missing and not shapes:
        return None
    parts: List[str] = []
    if shapes:
        parts.append(f'{len(shapes)} of {len(own)} tensors have other shapes (e.g. {"; ".join(shapes[:3])})')
    if missing:
        parts.append(f'{len(missing)} of {len(own)} tensors are missing (e.g. {", ".join(missing[:4])})')
    return '; '.join(parts)


def _slim_hint(checkpoint: Any, use: str) -> str:
    """A pointer to ``mmfisher.Pruned`` when the checkpoint holds a pruned model (a ``pruned.pth`` or a checkpoint
    of a Pruned fine-tune, which carries the structure digest)."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    sd = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else {}
    if isinstance(meta, dict) and 'structure_digest' in meta:
        what = f'a pruned checkpoint (written by {meta.get("mmfisher", "mmfisher")}, {meta.get("channels")})'
    elif isinstance(sd, dict) and any(isinstance(k, str) and k.endswith(DIGEST_KEY) for k in sd):
        what = 'a checkpoint of a pruned model (it carries a structure digest)'
    else:
        return ''
    return (f" It is {what}: to {use} it, build the model as dict(type='mmfisher.Pruned', architecture=<this "
            'model>, channels=<its channels.json>).')


def refuse_mismatch(owner: str, model: nn.Module, checkpoint: Dict[str, Any], allow: bool,
                    warn: Callable[[str], Any]) -> None:
    """Raise :class:`CheckpointMismatch` naming the problem and the fix when the checkpoint does not fill the
    pruned module of the runner's ``model`` (:func:`~mmfisher.models.target.pruned_module`); ``allow``:
    ``warn(message)`` instead."""
    module = pruned_module(model)
    why = checkpoint_mismatch(unwrap(model), module, checkpoint)
    if why is None:
        return
    msg = (f'{owner}: the checkpoint does not fit the {type(module).__name__} it would prune: {why}; mmengine would '
           'leave those weights randomly initialised and the pruning would rank and measure them.'
           f'{_slim_hint(checkpoint, "fine-tune it or prune")} Fix: set load_from to the trained checkpoint of this '
           'model config')
    if allow:
        warn(msg + ' (allow_partial_checkpoint=True: going on)')
        return
    raise CheckpointMismatch(msg + ', or set allow_partial_checkpoint=True in the hook to prune a partly loaded '
                             'model on purpose (e.g. a new class count)')


class CheckpointFitHook(Hook):
    """Refuse to test a checkpoint that does not fill the tested model (registered by ``tools/test.py``).

    mmengine's ``Runner.test`` loads the checkpoint non-strictly, so e.g. the unpruned config given a
    ``pruned.pth`` reports the metrics of a partly random model with a size-mismatch warning; this hook raises
    :class:`CheckpointMismatch` with the fix instead, before any tensor is copied.
    """

    priority = 'VERY_HIGH'

    def __init__(self, allow_partial: bool = False) -> None:
        self.allow_partial = allow_partial

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = unwrap(runner.model)
        why = checkpoint_mismatch(model, model, checkpoint)
        if why is not None and self.allow_partial:
            runner.logger.warning(f'the checkpoint does not fit the {type(model).__name__} of this config: {why} '
                                  '(--allow-partial-checkpoint: testing it as loaded)')
        elif why is not None:
            raise CheckpointMismatch(
                f'the checkpoint does not fit the {type(model).__name__} of this config: {why}; mmengine would '
                'leave those weights randomly initialised and the metrics would be those of a partly random model.'
                f'{_slim_hint(checkpoint, "test")} Fix: pass the config the checkpoint was trained with (for a '
                'fine-tuned pruned model: its mmfisher.Pruned fine-tune config), or --allow-partial-checkpoint to test it '
                'as mmengine loads it')
