"""When the model's own forward raises during a trace: where it was, and one clear error for the caller.

:func:`~mmfisher.core.trace.trace_channels` re-raises the model's exception unchanged (same type) with a
:class:`ForwardFailure` attached (:func:`failure_of` reads it). A caller that built the trace input from a shape
(``units.analyze_fast``, the hook's ``input_shape``, verify_slimming's ``--shape``) turns it into one
:class:`TraceForwardError` that names the shape it was given and, for a channel mismatch at the model's first
layer, the channel count to use.
"""
import dataclasses
from typing import Any, Callable, Optional, Sequence, Tuple

from .state import TraceState

__all__ = ['ForwardFailure', 'TraceForwardError', 'failure_of', 'attach_failure', 'forward_error']

_ATTR = '_mmfisher_trace_failure'


@dataclasses.dataclass
class ForwardFailure:
    """Where the model's forward raised: the innermost ruled layer running then (None if none was), the input
    channels it reads and the channels its input had (None when unknown), and whether it was the first ruled
    layer to run."""

    layer: Optional[str] = None
    layer_type: Optional[str] = None
    expected: Optional[int] = None
    got: Optional[int] = None
    first: bool = False

    @property
    def channel_mismatch(self) -> bool:
        return self.expected is not None and self.got is not None and self.expected != self.got


class TraceForwardError(RuntimeError):
    """The model's own forward failed on the trace input (not a limit of the tracer). ``error`` is the
    exception the forward raised, ``failure`` where it raised."""

    def __init__(self, message: str, error: BaseException, failure: ForwardFailure) -> None:
        super().__init__(message)
        self.error = error
        self.failure = failure


def attach_failure(state: TraceState, exc: BaseException) -> None:
    """Attach to ``exc`` (raised by the forward) a :class:`ForwardFailure` read off the trace's module stack."""
    failure = ForwardFailure(first=not state.module_order)
    for name, rule, inputs, *_ in reversed(state.stack):
        if rule is None:
            continue
        module = state.module_objs.get(name)
        failure.layer, failure.layer_type = name, type(module).__name__
        try:
            failure.expected = int(rule.in_channels(module))
            x = inputs[0][0] if inputs else None
            dim = rule.channel_dim(x.dim()) if x is not None else None
            failure.got = int(x.shape[dim]) if dim is not None else None
        except Exception:  # noqa: BLE001  a rule without channel counts (passthrough): no mismatch to report
            failure.expected = failure.got = None
        break
    try:
        setattr(exc, _ATTR, failure)
    except Exception:  # noqa: BLE001  an exception type that refuses attributes: no diagnosis
        pass


def failure_of(exc: BaseException) -> Optional[ForwardFailure]:
    """The :class:`ForwardFailure` of an exception the model's forward raised in a trace, else None (the
    exception did not come from the forward: a tracer limit or an error outside the trace)."""
    return getattr(exc, _ATTR, None)


def _shape_text(shape_name: str, shape: Optional[Sequence[int]]) -> str:
    if shape is None:
        return shape_name
    if shape_name.startswith('-'):  # a command-line option: --shape 3 224 224
        return f'{shape_name} {" ".join(str(int(v)) for v in shape)}'
    return f'{shape_name}={tuple(int(v) for v in shape)}'


def forward_error(exc: BaseException, forward: Callable, shape_name: str = 'input_shape'
                  ) -> Tuple[TraceForwardError, bool]:
    """One clear error for ``exc`` raised by the model's forward in a trace of ``forward``.

    ``forward`` may carry ``input_shape`` (the ``(C, H, W)`` the caller gave) and ``trace_input_shape`` (the
    tensor shape built from it), as :func:`mmfisher.models.tracing.make_trace_forward`'s forwards do;
    ``shape_name`` is how the caller names that shape (``'input_shape'``, ``'--shape'``). Returns the error and
    whether it is fully explained (a channel mismatch at the first layer: the original traceback adds nothing).
    """
    failure = failure_of(exc) or ForwardFailure()
    given: Optional[Any] = getattr(forward, 'input_shape', None)
    traced: Optional[Any] = getattr(forward, 'trace_input_shape', None)
    built = f' built from {_shape_text(shape_name, given)}' if given is not None else ''
    of = f' of shape {tuple(int(v) for v in traced)}' if traced is not None else ''
    text = str(exc).strip() or type(exc).__name__
    msg = f"the model's forward failed on the trace input{of}{built}: {type(exc).__name__}: {text}"
    if failure.layer is not None:
        msg += f' (in layer {failure.layer!r} ({failure.layer_type})'
        if failure.channel_mismatch:
            msg += f', which reads {failure.expected} input channels but got {failure.got}'
        msg += ')'
    explained = failure.channel_mismatch and failure.first
    if explained:
        msg += (f". Fix: set {shape_name}'s channel count to what the model's first layer expects "
                f'({failure.expected})')
    elif failure.channel_mismatch:
        msg += (f'. Fix: check {shape_name} and the model config: layer {failure.layer!r} expects '
                f'{failure.expected} channels where the forward gives it {failure.got}')
    else:
        msg += (f'. Fix: check that {shape_name} is an input this model accepts (its channel count and a size '
                'its strides and heads support); the traceback above is the model\'s own error')
    return TraceForwardError(msg, exc, failure), explained
