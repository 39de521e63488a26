"""mm-aware model glue: the ``Pruned`` registry builder, which module is pruned, tracing helpers."""
from .distiller import LabelFreeDistiller
from .pruned import Pruned
from .target import pruned_module
from .tensor_mode import TensorMode
from .tracing import is_classifier, is_detector, make_trace_forward

__all__ = ['LabelFreeDistiller', 'Pruned', 'TensorMode', 'make_trace_forward', 'pruned_module', 'is_detector', 'is_classifier']
