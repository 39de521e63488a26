"""Which methods of an mm model depend on the batch only (never on a weight): the curve points of balanced
pruning answer them from one recording pass (:class:`mmfisher.core.replay.ActivationReplay`'s ``invariant``).

A dense detection head's anchors and target assignment (``get_anchors``, ``get_targets``: anchors from the
feature map sizes, matched to the ground-truth boxes) are a function of the image sizes and boxes alone, so every
trial of a calibration batch recomputes the same thing: about a third of the tiny RetinaNet's loss forward. A method
is taken only when every parameter of its signature is in :data:`BATCH_ONLY_ARGS` (an allow-list: ``TOODHead``'s
``get_targets(cls_scores, bbox_preds, ...)``, which aligns targets to the predictions, is not; neither is a
signature with ``*args`` / ``**kwargs``). A method that draws from torch's RNG (an RPN's random sampler) or returns
objects other than tensors is computed every time anyway (the replay checks both).
"""
import inspect
from typing import List, Tuple

from torch import nn

__all__ = ['invariant_methods', 'BATCH_ONLY_ARGS', 'METHODS']

METHODS = ('get_anchors', 'get_targets')
# arguments derived from the batch's images and boxes only (never from a prediction)
BATCH_ONLY_ARGS = frozenset({
    'featmap_sizes', 'batch_img_metas', 'device', 'anchor_list', 'valid_flag_list', 'responsible_flag_list',
    'points', 'batch_gt_instances', 'batch_gt_instances_ignore', 'unmap_outputs', 'return_sampling_results'})


def _batch_only(method) -> bool:
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name in BATCH_ONLY_ARGS for p in params)


def invariant_methods(model: nn.Module) -> List[Tuple[nn.Module, str]]:
    """``(head, method name)`` for every mmdet dense head's :data:`METHODS` whose arguments are all batch-only."""
    try:
        from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
    except ImportError:  # no mmdet: nothing to find
        return []
    out = []
    for module in model.modules():
        if isinstance(module, BaseDenseHead):
            for name in METHODS:
                method = getattr(module, name, None)
                if callable(method) and _batch_only(method):
                    out.append((module, name))
    return out
