"""mm-aware model glue: the ``Pruned`` registry builder and tracing helpers for OpenMMLab models."""
from .pruned import Pruned
from .tracing import is_classifier, is_detector, make_trace_forward, unwrap_model

__all__ = ['Pruned', 'make_trace_forward', 'unwrap_model', 'is_detector', 'is_classifier']
