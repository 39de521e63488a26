"""Trace a real forward pass and build the channel-coupling union-find.

A :class:`torch.overrides.TorchFunctionMode` sees every torch function and tensor method called in the forward
(whatever Python control flow the model uses, unlike FX tracing), and module hooks see every call of every module,
so modules shared across FPN levels are seen once per call. Modules with a rule in ``layers.py`` are recorded as
one node and their internals are not looked at; everything else is followed op by op:

* pointwise ops pass channel identities through; n-ary pointwise ops (add, mul, where, ...) union the channels
  they combine (residual adds, FPN top-down adds, SE/attention multiplies);
* pure data-movement ops (view, flatten, permute, cat, split, chunk, slicing, channel shuffle, ...) are replayed
  on integer *id tensors* that hold each position's channel identity, so any reshape is mapped exactly, and a
  reshape that cannot be expressed as a channel map is refused rather than guessed;
* spatial ops (pooling, interpolation, padding, reductions over non-channel dims) keep channels; a reduction or
  softmax over a dim that splits channels while other dims hold them (ResNeSt's radix) couples the splits;
* products (matmul, bmm, einsum, scaled_dot_product_attention) map channels through free and batch dims, and a
  product over a head's channels makes that head one atom (attention is pruned by whole heads);
* tensors derived from one parameter by data movement (layer scales, class tokens, bias tables) are sliced with
  the channels they meet; reshapes that split channels and grouped convs are resolved once the forward is traced
  (``constraints``); sizes read off channel dims are tracked ints, so a size that would not follow pruning keeps
  its channels;
* any other op that reads channels (a functional conv, a reduction over channels, a compiled op the tracer cannot
  see into), and any op the tracer itself fails on, makes those channels unprunable, with the op named as the
  reason.

The result, :class:`TraceResult`, lists per module its input/output elements and per call the shapes needed for
costs; ``units.py`` turns it into atoms and units.

Layout (one idea per module): ``channels`` (the channel-id algebra, tracked channel counts), ``optable`` (op
families by name), ``dispatch`` (the torch-function mode and the handler table), ``pointwise`` / ``movement`` /
``setitem`` / ``spatial`` / ``contract`` (the handlers), ``params`` (parameter-derived tensors), ``constraints``
(grids, size bindings and checks resolved after the forward), ``modules`` (module hooks and recording by rule),
``state`` (one trace's state), ``records`` (what is recorded), ``errors`` (unmappable ops, meta-device limits),
``failure`` (the model's own forward failing), ``api`` (:func:`trace_channels`).
"""
from .api import TraceResult, trace_channels
from .channels import ChannelInfo, Mixed
from .errors import MetaTraceUnsupported, is_meta_limitation
from .failure import ForwardFailure, TraceForwardError, failure_of, forward_error
from .records import AttrUse, ModuleCall, ModuleRecord, ParamUse

__all__ = ['trace_channels', 'TraceResult', 'MetaTraceUnsupported', 'is_meta_limitation', 'ChannelInfo', 'Mixed',
           'ModuleCall', 'ModuleRecord', 'ParamUse', 'AttrUse', 'ForwardFailure', 'TraceForwardError', 'failure_of',
           'forward_error']
