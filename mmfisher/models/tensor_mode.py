"""An mm model as a module of one tensor input: what FLOP counters, ONNX export, latency timers and
Torch-Pruning take."""
from typing import Any, Optional, Sequence, Tuple

import torch
from torch import nn

from ..core.outputs import output_tensors

__all__ = ['TensorMode']


class TensorMode(nn.Module):
    """``forward(x)`` runs ``model(x, samples, mode='tensor')`` (``model(x, mode='tensor')`` without
    ``samples``) and returns the flat tuple of its output tensors (:func:`mmfisher.core.outputs.output_tensors`,
    the same walk the tracer and the masked-vs-slimmed check use). The model is held as ``.m``.

    Args:
        model: an mmdet detector / mmpretrain classifier / mmengine ``BaseModel``.
        samples: data samples for detectors (e.g. ``mmfisher.models.tracing.det_data_samples``); None for
            classifiers.
    """

    def __init__(self, model: nn.Module, samples: Optional[Sequence[Any]] = None) -> None:
        super().__init__()
        self.m = model
        self.samples = samples

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.samples is not None:
            out = self.m(x, self.samples, mode='tensor')
        else:
            out = self.m(x, mode='tensor')
        return tuple(output_tensors(out))
