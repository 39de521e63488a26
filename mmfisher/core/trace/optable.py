"""The op table: which torch functions the tracer knows, by normalised name, and how a call is described.

``dispatch.py`` maps each family to its handler; a name in no family (and not in :data:`NEW`) is an op the tracer
has no rule for, and its channels become unprunable with the op named.
"""
import dataclasses
from typing import Any, Callable, Dict, List, Tuple

import torch

__all__ = ['OpCall', 'op_name', 'UNARY', 'NARY', 'MOVE', 'LIST_DATA', 'SPATIAL', 'REDUCE', 'ALONG', 'NEW',
           'FIRST_ONLY', 'LITERAL', 'FILL']

UNARY = {
    'relu', 'relu6', 'sigmoid', 'tanh', 'gelu', 'silu', 'mish', 'hardswish', 'hardsigmoid', 'hardtanh',
    'leaky_relu', 'elu', 'selu', 'celu', 'softplus', 'softsign', 'prelu', 'rrelu', 'logsigmoid', 'threshold',
    'glu_', 'exp', 'exp2', 'expm1', 'log', 'log2', 'log10', 'log1p', 'sqrt', 'rsqrt', 'abs', 'neg', 'negative',
    'sign', 'sgn', 'square', 'reciprocal', 'sin', 'cos', 'erf', 'erfc', 'floor', 'ceil', 'round', 'trunc', 'frac',
    'clamp', 'clip', 'clamp_min', 'clamp_max', 'nan_to_num', 'dropout', 'dropout1d', 'dropout2d', 'dropout3d',
    'alpha_dropout', 'feature_alpha_dropout', 'contiguous', 'clone', 'detach', 'float', 'half', 'double', 'bfloat16',
    'to', 'type', 'type_as', 'cpu', 'cuda', 'requires_grad_', 'sigmoid_', 'logit', 'bool', 'long', 'int',
    'isnan', 'isinf', 'isfinite', 'logical_not', 'bitwise_not', 'positive', 'silu_', 'pin_memory',
}
NARY = {
    'add', 'sub', 'subtract', 'rsub', 'mul', 'multiply', 'div', 'divide', 'true_divide', 'floor_divide',
    'truediv', 'rtruediv', 'rmul', 'radd', 'floordiv', 'rfloordiv', 'pow', 'rpow', 'maximum', 'minimum', 'fmax',
    'fmin', 'where', 'addcmul', 'addcdiv', 'lerp', 'fmod', 'remainder', 'mod', 'atan2', 'hypot', 'logaddexp',
    'eq', 'ne', 'gt', 'lt', 'ge', 'le', 'greater', 'less', 'and', 'or', 'xor', 'logical_and', 'logical_or',
    'masked_fill', 'copysign', 'xlogy', 'squared_difference',
}
MOVE = {
    'view', 'view_as', 'reshape', 'reshape_as', 'flatten', 'unflatten', 'permute', 'transpose', 'swapaxes',
    'swapdims', 't', 'squeeze', 'unsqueeze', 'expand', 'expand_as', 'repeat', 'tile', 'cat', 'concat',
    'concatenate', 'stack', 'hstack', 'vstack', 'split', 'split_with_sizes', 'chunk', 'tensor_split', 'narrow',
    'unbind', 'getitem', 'index_select', 'select', 'roll', 'flip', 'pixel_shuffle', 'pixel_unshuffle', 'movedim',
    'moveaxis', 'channel_shuffle', 'native_channel_shuffle', 'gather', 'take_along_dim', 'repeat_interleave',
    'masked_select', 'unfold',
}
LIST_DATA = {'cat', 'concat', 'concatenate', 'stack', 'hstack', 'vstack'}
SPATIAL = {
    'interpolate', 'upsample', 'upsample_nearest', 'upsample_bilinear', 'max_pool1d', 'max_pool2d', 'max_pool3d',
    'avg_pool1d', 'avg_pool2d', 'avg_pool3d', 'adaptive_avg_pool1d', 'adaptive_avg_pool2d', 'adaptive_avg_pool3d',
    'adaptive_max_pool1d', 'adaptive_max_pool2d', 'adaptive_max_pool3d', 'lp_pool1d', 'lp_pool2d',
    'max_pool1d_with_indices', 'max_pool2d_with_indices', 'max_pool3d_with_indices', 'pad', 'grid_sample',
    'adaptive_max_pool2d_with_indices', 'fractional_max_pool2d', 'reflection_pad2d', 'replication_pad2d',
}
REDUCE = {'sum', 'mean', 'amax', 'amin', 'max', 'min', 'std', 'var', 'norm', 'logsumexp', 'prod', 'nansum',
          'nanmean', 'median', 'argmax', 'argmin', 'all', 'any', 'std_mean', 'var_mean'}
ALONG = {'softmax', 'log_softmax', 'cumsum', 'cumprod', 'normalize', 'sort', 'argsort', 'topk', 'cummax',
         'cummin', 'softmin'}
# ops whose result does not depend on the values (shapes, metadata, fresh tensors shaped like the input)
NEW = {'new_zeros', 'new_ones', 'new_full', 'new_empty', 'new_tensor', 'zeros_like', 'ones_like', 'empty_like',
       'full_like', 'rand_like', 'randn_like', 'randint_like', 'size', 'dim', 'numel', 'len', 'get',
       'is_contiguous', 'stride', 'element_size', 'data_ptr', 'nelement', 'get_device', 'is_floating_point',
       'storage_offset', 'has_names', 'dim_order', 'is_complex', 'untyped_storage', 'hash', 'shape', 'repr',
       'format', 'is_same_size', 'is_nonzero_shape', '_shape_as_tensor'}
# ops whose only data input is the first argument (the others are shapes, dtypes, indices or references)
FIRST_ONLY = {'type_as', 'view_as', 'expand_as', 'reshape_as', 'to', 'index_select', 'gather', 'take_along_dim',
              'getitem', 'narrow', 'select', 'roll', 'flip', 'grid_sample', 'masked_select', 'repeat_interleave'}
# data movement whose channel-axis action is fixed by literals (indices, offsets, sizes): exact only when it
# leaves the channel axis untouched
LITERAL = {'getitem', 'index_select', 'gather', 'take_along_dim', 'roll', 'narrow', 'select', 'split',
           'split_with_sizes', 'unbind', 'masked_select', 'tensor_split'}
# ops that overwrite their input with values that carry no channel
FILL = {'fill', 'zero', 'normal', 'uniform'}


@dataclasses.dataclass
class OpCall:
    """One traced torch call: the function, its normalised ``name``, its arguments and result, the tensors read
    as data (``flat_in``) with their infos, and the result's tensors (``outs``)."""

    func: Callable
    name: str
    args: tuple
    kwargs: Dict[str, Any]
    out: Any
    flat_in: List[torch.Tensor]
    in_infos: List[Any]
    outs: List[torch.Tensor]


def op_name(func: Callable) -> Tuple[str, bool]:
    """Normalised op name and whether it is in place (``add_``, ``__iadd__``)."""
    name = getattr(func, '__name__', None) or type(func).__name__
    if name == '__get__':  # property getters: x.shape, x.data, x.T ...
        prop = getattr(getattr(func, '__self__', None), '__name__', '')
        return {'data': 'detach', 'T': 't', 'mT': 'mT'}.get(prop, 'get'), False
    inplace = False
    if name.startswith('__') and name.endswith('__'):
        core = name[2:-2]
        if core.startswith('i') and core[1:] in ('add', 'sub', 'mul', 'truediv', 'floordiv', 'and', 'or', 'xor',
                                                 'mod', 'pow'):
            return core[1:], True
        return core, False
    if name.endswith('_') and not name.startswith('_'):
        name, inplace = name[:-1], True
    return name, inplace
