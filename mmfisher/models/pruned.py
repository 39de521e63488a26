"""``Pruned``: build any model config, then slim it to a channel config written by ``FisherPruningHook``.

Fine-tune / test config pattern (see ``configs/_base_/fisher_finetune.py``)::

    model = dict(_delete_=True, type='mmfisher.Pruned', architecture={{_base_.model}},
                 channels='work_dirs/prune/channels.json')
    load_from = 'work_dirs/prune/pruned.pth'

The result is the architecture's own class (e.g. ``RetinaNet``), physically smaller, with no masks: it trains,
tests, runs in mmdet/mmpretrain inferencers and exports like the unpruned model. It refuses weights that do not
belong to its structure on every loading path (``load_from``, ``tools/test.py CKPT``, ``--resume``, the
inferencers' ``load_checkpoint``): tensors of other shapes, or a ``pruned.pth`` of another structure
(:func:`mmfisher.core.export.guard_state_dict_loading`), instead of mmengine's size-mismatch warnings.

``init_cfg`` entries of the architecture (e.g. ``Pretrained`` ImageNet backbones) are kept, so
``runner.train()``'s ``init_weights`` may still download them and load them non-strictly into the slimmed
layers (mismatched shapes are skipped with a warning); ``load_from`` then overwrites every weight. Set
``init_cfg=None`` in the architecture to avoid the download (the tests do).
"""
import copy
from typing import Any, Dict, Optional, Union

from mmengine.logging import print_log
from torch import nn

from ..core import ChannelConfigError, apply_channel_config, load_channel_config
from ..core.export import guard_state_dict_loading
from ..registry import MMENGINE_MODELS, MODELS

__all__ = ['Pruned']


def _load(channels: Union[str, Dict[str, Any]]) -> Dict[str, Any]:
    if isinstance(channels, str):
        return load_channel_config(channels)
    if isinstance(channels, dict):
        return dict(channels)
    raise TypeError(f'Pruned: channels must be the path of a channels.json written by FisherPruningHook (or its '
                    f'loaded dict), got {type(channels).__name__}')


def Pruned(architecture: Dict[str, Any], channels: Union[str, Dict[str, Any]], check_fingerprint: bool = True,
           data_preprocessor: Optional[Dict[str, Any]] = None) -> nn.Module:
    """Build ``architecture`` and slim it in place to ``channels``; returns the architecture's own class.

    Args:
        architecture (dict): the unpruned model config that was pruned (e.g. ``{{_base_.model}}``); built with the
            current ``default_scope`` (or its ``_scope_`` / ``mmdet.``-style prefixed type).
        channels (str | dict): path of ``channels.json`` (or ``channels_<r>.json``) from ``FisherPruningHook``.
        check_fingerprint (bool): refuse a channel config made for a differently shaped model. Defaults to True.
        data_preprocessor (dict, optional): what the Runner passes from a top-level ``data_preprocessor`` config
            field (mmpretrain configs); set on ``architecture`` unless it has its own, as the Runner does for an
            unpruned model, so the structure matches the pruned one.

    Raises:
        ChannelConfigError: missing / corrupted file, or a config made for another model.
        mmfisher.core.WeightsMismatch: (when weights are loaded later) weights of another structure.
    """
    from mmengine.registry import MODELS as ROOT
    if not isinstance(architecture, dict) or 'type' not in architecture:
        raise TypeError('Pruned: architecture must be the unpruned model config dict (with a "type"), e.g. '
                        'architecture={{_base_.model}}')
    if str(architecture['type']).split('.')[-1] == 'Pruned':
        raise ValueError('Pruned: architecture is itself a Pruned model; pass the unpruned model config that '
                         'FisherPruningHook pruned')
    cfg = _load(channels)
    architecture = copy.deepcopy(architecture)
    if data_preprocessor is not None:
        architecture.setdefault('data_preprocessor', data_preprocessor)
    try:
        model = ROOT.build(architecture)
    except KeyError as exc:
        raise KeyError(f'Pruned: cannot build architecture type={architecture["type"]!r} ({exc}). Fix: set '
                       "default_scope (e.g. 'mmdet' or 'mmpretrain') or give a scoped type such as "
                       "'mmdet.RetinaNet'") from exc
    try:  # the fingerprint ignores norm flavours: a run with runner-level sync_bn fits a plain-BN build
        apply_channel_config(model, cfg, check_fingerprint=check_fingerprint)
    except ChannelConfigError as exc:
        where = f' ({channels})' if isinstance(channels, str) else ''
        raise ChannelConfigError(f'Pruned{where}: {exc}') from exc
    guard_state_dict_loading(model, cfg, where=channels if isinstance(channels, str) else 'the given dict')
    units = cfg.get('units') or []
    kept = sum(len(u.get('kept', ())) for u in units)
    total = sum(int(u.get('channels', 0)) for u in units)
    meta = cfg.get('meta') or {}
    ratio = f', flops {meta["flops_ratio"]:.4f} of the unpruned model' if 'flops_ratio' in meta else ''
    print_log(f'Pruned: built {type(model).__name__} keeping {kept}/{total} prunable atoms{ratio}',
              logger='current')
    return model


MODELS.register_module(name='Pruned', module=Pruned)
MMENGINE_MODELS.register_module(name='Pruned', module=Pruned)
