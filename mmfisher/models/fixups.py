"""OpenMMLab modules that keep a channel count as a plain attribute and use it in ``forward``.

Slimming (``mmfisher.core``) updates layers and their mmcv wrappers; these modules read a stale count:

* mmdet RoI extractors (``BaseRoIExtractor``): ``roi_feats = feats[0].new_zeros(K, self.out_channels, ...)``.

:func:`fix_slimmed` makes them follow their inputs (a forward pre-hook that sets the attribute from the features
it receives), which is exact for any kept channel count and costs nothing.
"""
from typing import Any, Tuple

from torch import nn

_FIXED = '_mmfisher_channel_sync'


def _sync_roi_out_channels(module: nn.Module, args: Tuple[Any, ...]) -> None:
    feats = args[0] if args else None
    if isinstance(feats, (list, tuple)) and feats and hasattr(feats[0], 'shape') and len(feats[0].shape) > 1:
        module.out_channels = int(feats[0].shape[1])


def fix_slimmed(model: nn.Module) -> nn.Module:
    """Register the channel-count syncs on ``model``'s affected modules (idempotent); returns ``model``."""
    try:
        from mmdet.models.roi_heads.roi_extractors import BaseRoIExtractor
    except ImportError:  # no mmdet: nothing to fix
        return model
    for module in model.modules():
        if isinstance(module, BaseRoIExtractor) and not getattr(module, _FIXED, False):
            module.register_forward_pre_hook(_sync_roi_out_channels)
            setattr(module, _FIXED, True)
    return model
