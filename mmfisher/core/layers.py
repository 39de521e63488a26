"""The per-layer rule table: how a module type's input and output channels relate, and how it is sliced.

Tracing (``trace/``), masking (``masks.py``), costs (``cost.py``) and slimming (``slim.py``) all read this one
table, so supporting a new layer type is one :class:`LayerRule` subclass plus :func:`register_rule`.

Vocabulary: a *position* is an index into a layer's input or output channel axis; an *element* is a channel
identity in the union-find (see ``unionfind.py``); elements coupled by the graph end up in one set, an *atom*.

Beyond convs and per-channel norms (issue 11): norms whose statistics run over the channels (LayerNorm, LayerNorm2d,
RMSNorm, mmdet's L2Norm, mmpretrain's GRN, one-group GroupNorm) are *renormalizing* rules: under masks they compute
over the alive channels only (``LayerRule.masked_forward``, installed by ``ChannelMasks``), what the slimmed layer
computes. ``nn.MultiheadAttention`` is one rule (one atom per head). mmdet's sine positional encoding is a
*generator* (its channels join the stream; slimmed ones keep the chosen). Forwards that read a size from a width
pruning changes get a slimming forward (:class:`ForwardAdapter`: Swin's window attention, nn.MultiheadAttention).
"""
import contextlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .dims import normalize_dim

Keep = Optional[torch.Tensor]  # sorted long tensor of kept positions, or None for "keep all"


class Role:
    """The values of :attr:`LayerRule.role` (kept as strings: user rules and configs set ``role = 'norm'``)."""

    WEIGHTED = 'weighted'        # reads input channels with weights, produces fresh output channels (conv, linear)
    NORM = 'norm'                # per-channel or per-group: output position c is input position c
    PASSTHROUGH = 'passthrough'  # no parameters tied to channels, output c is input c (compiled RoI ops)
    GENERATOR = 'generator'      # output channels computed from shapes only (sine positional encodings)


def _replace_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Swap a parameter or buffer for a resized copy, keeping ``requires_grad`` and the parameter type."""
    old = getattr(module, name)
    if old is None:
        return
    value = value.detach().clone().contiguous()
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        module._buffers[name] = value


def set_count(module: nn.Module, attr: str, value: int) -> None:
    """Set a channel-count attribute (``in_channels``, ``num_features`` ...) if it is a plain attribute or a
    settable property; a read-only property (computed from the weights, e.g. timm's ``ConvNormAct.in_channels``)
    already follows the sliced weights and is left alone."""
    prop = getattr(type(module), attr, None)
    if isinstance(prop, property) and prop.fset is None and attr not in vars(module):
        return
    setattr(module, attr, value)


def _take(module: nn.Module, name: str, dim: int, keep: Keep) -> None:
    t = getattr(module, name, None)
    if keep is None or t is None or not isinstance(t, torch.Tensor) or t.dim() <= dim:
        return
    _replace_param(module, name, t.index_select(dim, keep.to(t.device)))


class LayerRule:
    """How one family of modules is traced, masked and sliced.

    Subclasses set ``role`` (one of :class:`Role`): ``Role.WEIGHTED`` (reads input channels with weights and
    produces fresh output channels: conv, linear), ``Role.NORM`` (per-channel or per-group, output channels are the
    input's), or ``Role.PASSTHROUGH`` (no parameters tied to channels, e.g. RoIAlign). Code reads the role through
    :attr:`is_weighted` / :attr:`is_norm` / :attr:`is_passthrough`; everything else a layer type does differently
    is a method or attribute here, so the tracer, units, costs and slimming never test a layer's type.
    """

    role = Role.WEIGHTED
    in_dim = 1  # tensor dim of the channel axis on the input (negative counts from the end)
    #: the traced output keeps the input's channel layout as it came in and the layer's own positions are never
    #: pruned (LayerNorm: its statistics run over :meth:`normalized_dims`, which may hold no channels at all)
    keeps_input_layout = False
    #: a norm whose statistics run over its channels (LayerNorm over C, RMSNorm, an L2 norm across channels, GRN)
    #: and that can compute them over the alive channels only (:meth:`masked_forward`): while some of its channels
    #: are masked, ``ChannelMasks`` makes it do so, which is exactly what the slimmed layer computes, so its
    #: channels are prunable like a per-channel norm's. A rule that mixes channels without it keeps them.
    renormalizes = False
    #: per-channel parameters and buffers (sliced along dim 0 with the channels) of a renormalizing norm
    channel_params: Tuple[str, ...] = ('weight', 'bias')
    #: int attributes holding the channel count (set to the kept count when sliced)
    count_attrs: Tuple[str, ...] = ()
    #: a weighted layer that acts along its channel dim only (Linear: the last dim): channels the input holds on
    #: other dims pass through it position by position (a token-mixing Linear over (B, C, N) in MLP-Mixer / ResMLP /
    #: gMLP), and its own outputs are then kept
    passes_other_dims = False
    #: an attention layer (``nn.MultiheadAttention``): the tracer records it with :meth:`heads`, :attr:`inputs`
    #: and its ``out_proj`` child (see :class:`MultiheadAttentionRule`)
    attention = False

    @property
    def is_weighted(self) -> bool:
        """Conv/linear-like: its output channels are fresh atoms; it carries the cost."""
        return self.role == Role.WEIGHTED

    @property
    def is_norm(self) -> bool:
        """Per-channel or per-group layer: output position c is input position c, one keep list slices both."""
        return self.role == Role.NORM

    @property
    def is_passthrough(self) -> bool:
        """Parameter-free op the tracer cannot see into: channels pass, nothing is sliced or recorded per call."""
        return self.role == Role.PASSTHROUGH

    def renormalizes_for(self, module: nn.Module) -> bool:
        """:attr:`renormalizes` for this module (a rule may depend on its configuration: GroupNorm with one
        group)."""
        return self.renormalizes

    @property
    def is_generator(self) -> bool:
        """Reads no channels, produces channels computed from shapes only (a sine positional encoding): they
        join the channels they are added to; slimming keeps the chosen ones (:class:`GeneratorRule`)."""
        return self.role == Role.GENERATOR

    @property
    def label(self) -> str:
        """The layer family's name in messages (``GroupNormRule`` -> ``GroupNorm``)."""
        name = type(self).__name__
        return name[:-4] if name.endswith('Rule') and len(name) > 4 else name

    def matches(self, module: nn.Module) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- structure -------------------------------------------------------------------------------------------
    def in_channels(self, module: nn.Module) -> int:
        raise NotImplementedError

    def out_channels(self, module: nn.Module) -> int:
        raise NotImplementedError

    def groups(self, module: nn.Module) -> int:
        """Channel groups whose inputs only feed their own outputs (1 for dense layers)."""
        return 1

    def out_dim(self, ndim: int) -> int:
        """The channel dim of an ``ndim``-dim output (``in_dim`` made non-negative)."""
        return normalize_dim(self.in_dim, ndim)

    def channel_dim(self, ndim: int) -> Optional[int]:
        """The channel dim of an ``ndim``-dim input or output, or None when such a tensor has no such dim."""
        try:
            return normalize_dim(self.in_dim, ndim)
        except IndexError:
            return None

    def call_dim(self, module: nn.Module, x: torch.Tensor, args: tuple, kwargs: Dict[str, Any]) -> Optional[int]:
        """The channel dim of input ``x`` in the call ``module(*args, **kwargs)`` (a layer whose layout is a
        forward argument, such as mmpretrain's ``LayerNorm2d(x, data_format=...)``, overrides it)."""
        return self.channel_dim(x.dim())

    def normalized_dims(self, module: nn.Module, ndim: int) -> Tuple[int, ...]:
        """Input dims (of an ``ndim``-dim input) whose positions the layer's statistics mix: channels there are
        unprunable. ``()`` for layers that treat each channel (or group) on its own."""
        return ()

    def keeps(self, in_keep: Keep, out_keep: Keep) -> Tuple[Keep, Keep]:
        """The ``(in_keep, out_keep)`` :meth:`slice` receives for a channel config's entry: a norm's two sides are
        one set of positions (whichever side the config names)."""
        if self.is_norm:
            keep = out_keep if out_keep is not None else in_keep
            return keep, keep
        return in_keep, out_keep

    # -- costs -----------------------------------------------------------------------------------------------
    def kernel_numel(self, module: nn.Module) -> int:
        return 1

    # -- masking and slicing ---------------------------------------------------------------------------------
    def weight_in_mask(self, module: nn.Module, keep: torch.Tensor) -> Optional[torch.Tensor]:
        """A 0/1 tensor broadcastable to ``module.weight`` that zeroes the weights reading input positions where
        ``keep`` (bool, ``(C_in,)``) is False; None for layers without input weights."""
        return None

    def masked_tensors(self, module: nn.Module, keep: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """``(tensor, 0/1 mask)`` pairs that ``ChannelMasks`` multiplies in place to mask the input positions
        where ``keep`` is False (default: :meth:`weight_in_mask` on ``module.weight``)."""
        mask = self.weight_in_mask(module, keep)
        return [] if mask is None else [(module.weight, mask)]

    def tapped_inputs(self, module: nn.Module, args: tuple, kwargs: Dict[str, Any]) -> List[Tuple[Any, int]]:
        """The call's inputs that read the layer's input channels, as ``(key, batch dim)`` with ``key`` an
        index into ``args`` or a name in ``kwargs`` (FisherTaps wraps them); default: the first argument."""
        return [(0, 0)] if args else []

    #: a forward FisherTaps installs while it taps (None: the module's own): one that calls the child layers
    #: the graph reads through as modules (``nn.MultiheadAttention``'s ``out_proj``), so their taps see them
    def tap_forward(self, module: nn.Module):
        return None

    def slice(self, module: nn.Module, in_keep: Keep, out_keep: Keep) -> None:
        raise NotImplementedError

    # -- renormalizing norms (``renormalizes = True``) ------------------------------------------------------
    @contextlib.contextmanager
    def resized(self, module: nn.Module, count: int) -> Iterator[None]:
        """Make ``module``'s non-parameter channel counts read ``count`` for the duration of the block (e.g.
        ``normalized_shape``), restoring them afterwards; parameters are handled by :meth:`masked_forward`."""
        yield

    def masked_forward(self, module: nn.Module, alive: torch.Tensor, args: tuple, kwargs: Dict[str, Any]) -> Any:
        """The module's own forward on its alive channels only (``alive``: sorted long positions), its
        per-channel parameters sliced to them: what the slimmed module computes. Masked positions of the output
        are zero (only masked readers or other masked positions ever see them)."""
        x = args[0]
        dim = self.call_dim(module, x, args, kwargs)
        idx = alive.to(x.device)
        xs = x.index_select(dim, idx)
        saved = {}
        try:
            for name in self.channel_params:
                t = module._parameters.get(name, module._buffers.get(name))
                if t is None:
                    continue
                store = module._parameters if name in module._parameters else module._buffers
                saved[name] = (store, t)
                store[name] = t.index_select(0, idx.to(t.device))
            with self.resized(module, int(idx.numel())):
                ys = type(module).forward(module, xs, *args[1:], **kwargs)
        finally:
            for name, (store, t) in saved.items():
                store[name] = t
        out = torch.zeros(x.shape, dtype=ys.dtype, device=ys.device)
        return out.index_copy(dim, idx, ys)

    def slice_renormalizing(self, module: nn.Module, keep: Keep) -> None:
        """Slice a renormalizing norm's per-channel parameters and counts to ``keep`` (and drop a mask)."""
        module.__dict__.pop(ALIVE_ATTR, None)
        if keep is None:
            return
        for name in self.channel_params:
            _take(module, name, 0, keep)
        for attr in self.count_attrs:
            if hasattr(module, attr):
                set_count(module, attr, int(keep.numel()))


#: the attribute ``ChannelMasks`` sets on a renormalizing norm while some of its channels are masked: the sorted
#: long positions of its alive channels (a plain attribute, so a deep copy of a masked model stays masked)
ALIVE_ATTR = '_mmfisher_alive_channels'


class ConvRule(LayerRule):
    """``nn.Conv1d/2d/3d`` and subclasses (adaptive-padding convs, mmcv's Conv2d wrappers, timm's Conv2dSame).

    Grouped convs are pruned by whole groups: the input and output channels of a group form one atom, so a
    depthwise conv's output channel is coupled with its input channel.
    """

    #: subclasses whose forward only adds padding or empty-input handling around the standard conv
    safe_forwards = ('Conv2dAdaptivePadding', 'Conv2dSamePadding', 'Conv2dSame', 'Conv2dSameExport', 'Conv1d',
                     'Conv2d', 'Conv3d')

    def matches(self, module):
        if not isinstance(module, nn.modules.conv._ConvNd) or module.transposed:
            return False
        cls = type(module)
        if cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
            return True
        # a subclass that transforms its weight in forward (weight standardisation, SAC) would make zeroed or
        # removed input weights change the others: only known-safe forwards are treated as plain convs
        own = [k for k in cls.__mro__ if k not in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and
               ('forward' in vars(k) or '_conv_forward' in vars(k)) and issubclass(k, nn.modules.conv._ConvNd)
               and k is not nn.modules.conv._ConvNd]
        return all(k.__name__ in self.safe_forwards for k in own)

    def in_channels(self, module):
        return module.in_channels

    def out_channels(self, module):
        return module.out_channels

    def groups(self, module):
        return module.groups

    def kernel_numel(self, module):
        return int(np.prod(module.kernel_size))

    @staticmethod
    def _same_in_every_group(keep: torch.Tensor, g: int, size: int) -> Optional[torch.Tensor]:
        """The local positions ``keep`` holds in each of ``g`` groups of ``size``, if they are the same in all."""
        if keep.numel() == 0 or keep.numel() % g:
            return None
        parts = keep.view(g, -1) - (torch.arange(g) * size)[:, None]
        if not bool((parts == parts[:1]).all()) or bool((parts < 0).any()) or bool((parts >= size).any()):
            return None
        return parts[0].clone()

    def weight_in_mask(self, module, keep):
        g = module.groups
        ig, og = module.in_channels // g, module.out_channels // g
        extra = (1,) * (module.weight.dim() - 2)
        if g == 1:
            return keep.view(1, -1, *extra)
        pos = (torch.arange(module.out_channels) // og)[:, None] * ig + torch.arange(ig)[None]
        return keep[pos].view(module.out_channels, ig, *extra)

    def slice(self, module, in_keep, out_keep):
        g = module.groups
        if g == 1:
            _take(module, 'weight', 0, out_keep)
            _take(module, 'weight', 1, in_keep)
            _take(module, 'bias', 0, out_keep)
            if in_keep is not None:
                set_count(module, 'in_channels', int(in_keep.numel()))
            if out_keep is not None:
                set_count(module, 'out_channels', int(out_keep.numel()))
            return
        ig = module.in_channels // g
        og = module.out_channels // g
        if in_keep is None and out_keep is None:
            return
        in_keep = torch.arange(module.in_channels) if in_keep is None else in_keep
        kept_groups = torch.unique(in_keep // ig)
        expect_in = (kept_groups[:, None] * ig + torch.arange(ig)[None]).reshape(-1)
        expect_out = (kept_groups[:, None] * og + torch.arange(og)[None]).reshape(-1)
        if not torch.equal(expect_in, in_keep) or (out_keep is not None and not torch.equal(expect_out, out_keep)):
            local_in = self._same_in_every_group(in_keep, g, ig)
            local_out = self._same_in_every_group(torch.arange(module.out_channels) if out_keep is None
                                                  else out_keep, g, og)
            if local_in is None or local_out is None:
                raise ValueError(f'grouped conv ({type(module).__name__}, groups={g}) can only lose whole groups '
                                 'or the same positions of every group; this channel selection does neither. The '
                                 'channel config does not fit the model.')
            # the same positions of every group (ResNeSt's radix groups): groups stay, each gets smaller
            rows = (torch.arange(g)[:, None] * og + local_out[None]).reshape(-1)
            _take(module, 'weight', 0, rows)
            _take(module, 'weight', 1, local_in)
            _take(module, 'bias', 0, rows)
            set_count(module, 'in_channels', int(g * local_in.numel()))
            set_count(module, 'out_channels', int(g * local_out.numel()))
            return
        _take(module, 'weight', 0, expect_out)
        _take(module, 'bias', 0, expect_out)
        set_count(module, 'groups', int(kept_groups.numel()))
        set_count(module, 'in_channels', int(expect_in.numel()))
        set_count(module, 'out_channels', int(expect_out.numel()))


class ConvTransposeRule(LayerRule):
    """``nn.ConvTranspose*d`` with ``groups == 1`` (weight layout ``(in, out, *k)``)."""

    def matches(self, module):
        return isinstance(module, nn.modules.conv._ConvNd) and module.transposed and module.groups == 1

    def in_channels(self, module):
        return module.in_channels

    def out_channels(self, module):
        return module.out_channels

    def kernel_numel(self, module):
        return int(np.prod(module.kernel_size))

    def weight_in_mask(self, module, keep):
        return keep.view(-1, *(1,) * (module.weight.dim() - 1))

    def slice(self, module, in_keep, out_keep):
        _take(module, 'weight', 0, in_keep)
        _take(module, 'weight', 1, out_keep)
        _take(module, 'bias', 0, out_keep)
        if in_keep is not None:
            set_count(module, 'in_channels', int(in_keep.numel()))
        if out_keep is not None:
            set_count(module, 'out_channels', int(out_keep.numel()))


class LinearRule(LayerRule):
    """``nn.Linear``: channels on the last dim. After a flatten, input position ``c*h*w + i`` belongs to channel c.
    Applied along a dim that holds no channel while other dims do (token mixing), the channels pass through."""

    in_dim = -1
    passes_other_dims = True

    def matches(self, module):
        return isinstance(module, nn.Linear)

    def in_channels(self, module):
        return module.in_features

    def out_channels(self, module):
        return module.out_features

    def weight_in_mask(self, module, keep):
        return keep.view(1, -1)

    def slice(self, module, in_keep, out_keep):
        _take(module, 'weight', 0, out_keep)
        _take(module, 'weight', 1, in_keep)
        _take(module, 'bias', 0, out_keep)
        if in_keep is not None:
            set_count(module, 'in_features', int(in_keep.numel()))
        if out_keep is not None:
            set_count(module, 'out_features', int(out_keep.numel()))


class NormRule(LayerRule):
    """Per-channel norms: BatchNorm (and SyncBN), InstanceNorm, FrozenBatchNorm-like modules."""

    role = Role.NORM

    def matches(self, module):
        if isinstance(module, (nn.modules.batchnorm._NormBase,)):
            return True
        name = type(module).__name__
        return 'FrozenBatchNorm' in name or name in ('FrozenBN', 'FrozenBatchNorm2d')

    def num_features(self, module):
        for attr in ('num_features', 'num_channels'):
            if hasattr(module, attr):
                return int(getattr(module, attr))
        return int(module.weight.numel())

    def in_channels(self, module):
        return self.num_features(module)

    out_channels = in_channels

    def slice(self, module, in_keep, out_keep):
        keep = in_keep if in_keep is not None else out_keep
        if keep is None:
            return
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            _take(module, name, 0, keep)
        for attr in ('num_features', 'num_channels'):
            if hasattr(module, attr):
                set_count(module, attr, int(keep.numel()))


class GroupNormRule(LayerRule):
    """``nn.GroupNorm``: a GN group is the smallest atom, so removing whole groups leaves the others' statistics
    unchanged and slimming stays exact; ``num_groups`` shrinks. With one group (PoolFormer's LayerNorm over
    ``(C, H, W)``) its statistics run over every channel: under masks over the alive ones
    (:meth:`renormalizes_for`), so single channels are prunable."""

    role = Role.NORM

    def matches(self, module):
        return isinstance(module, nn.GroupNorm)

    def renormalizes_for(self, module):
        return int(module.num_groups) == 1

    def groups(self, module):
        return int(module.num_groups) if module.num_groups > 1 else 1

    def in_channels(self, module):
        return module.num_channels

    out_channels = in_channels

    def groups(self, module):
        return module.num_groups

    def slice(self, module, in_keep, out_keep):
        keep = in_keep if in_keep is not None else out_keep
        if keep is None:
            return
        module.__dict__.pop(ALIVE_ATTR, None)
        if module.num_groups == 1:  # renormalized under masks: any channels
            _take(module, 'weight', 0, keep)
            _take(module, 'bias', 0, keep)
            set_count(module, 'num_channels', int(keep.numel()))
            return
        size = module.num_channels // module.num_groups
        if keep.numel() % size:
            raise ValueError('GroupNorm can only lose whole groups; the channel config does not fit the model.')
        _take(module, 'weight', 0, keep)
        _take(module, 'bias', 0, keep)
        set_count(module, 'num_groups', int(keep.numel() // size))
        set_count(module, 'num_channels', int(keep.numel()))


class _ShapeNormRule(LayerRule):
    """Norms with a ``normalized_shape`` over the last dims (LayerNorm, RMSNorm). With one normalised dim holding
    the channels, masking makes the statistics run over the alive channels (:attr:`LayerRule.renormalizes`), so
    the channels are prunable and the weight (and bias) are sliced; channels in other normalised dims are
    unprunable (the tracer flags them), and channels on dims it does not normalise pass through."""

    role = Role.NORM
    in_dim = -1
    keeps_input_layout = True
    renormalizes = True

    def normalized_dims(self, module, ndim):
        return tuple(range(ndim - len(module.normalized_shape), ndim))

    def in_channels(self, module):
        return int(np.prod(module.normalized_shape))

    out_channels = in_channels

    @contextlib.contextmanager
    def resized(self, module, count):
        old = module.normalized_shape
        module.normalized_shape = (int(count),)
        try:
            yield
        finally:
            module.normalized_shape = old

    def masked_forward(self, module, alive, args, kwargs):
        if len(module.normalized_shape) != 1:  # the tracer never makes such channels prunable
            return None
        return super().masked_forward(module, alive, args, kwargs)

    def slice(self, module, in_keep, out_keep):
        keep = in_keep if in_keep is not None else out_keep
        module.__dict__.pop(ALIVE_ATTR, None)
        if keep is None:
            return
        if len(module.normalized_shape) != 1:
            raise ValueError(f'{self.label} over {len(module.normalized_shape)} dims cannot lose channels; the '
                             'channel config does not fit the model.')
        self.slice_renormalizing(module, keep)
        module.normalized_shape = (int(keep.numel()),)


class LayerNormRule(_ShapeNormRule):
    """``nn.LayerNorm`` (and subclasses that normalise the last dims of their input as given)."""

    def matches(self, module):
        return isinstance(module, nn.LayerNorm)


class RMSNormRule(_ShapeNormRule):
    """``nn.RMSNorm`` (torch >= 2.4) and timm's ``RmsNorm`` / ``SimpleNorm``: statistics over the last dims, a
    weight and no bias."""

    channel_params = ('weight',)

    #: timm's own last-dim RMS norms (``normalized_shape``, ``weight``)
    timm_forwards = ('RmsNorm', 'RmsNormFp32', 'SimpleNorm', 'SimpleNormFp32')

    def matches(self, module):
        cls = getattr(nn, 'RMSNorm', None)
        if cls is not None and isinstance(module, cls):
            return True
        owner = next((k for k in type(module).__mro__ if 'forward' in vars(k)), None)
        return owner is not None and owner.__module__.startswith('timm.') and \
            owner.__name__ in self.timm_forwards and isinstance(getattr(module, 'normalized_shape', None), tuple)


def _channel_last(args: tuple, kwargs: Dict[str, Any]) -> bool:
    fmt = kwargs.get('data_format', args[1] if len(args) > 1 and isinstance(args[1], str) else 'channel_first')
    return str(fmt).startswith('channel_last') or str(fmt).startswith('channels_last')


class LayerNorm2dRule(LayerRule):
    """LayerNorm over the channels of an image tensor: ``LayerNorm2d`` of mmpretrain (``data_format`` argument:
    ``channel_first`` (N, C, H, W) by default, ``channel_last`` (N, H, W, C)), timm and torchvision (channels
    first). Statistics run over the channels: under masks over the alive ones (:attr:`LayerRule.renormalizes`)."""

    role = Role.NORM
    renormalizes = True
    count_attrs = ('num_channels',)

    #: timm's channels-first norms over C (the class that defines the forward: subclasses such as
    #: ``LayerNorm2dNoBias`` that only drop the bias inherit it)
    timm_forwards = ('LayerNorm2d', 'LayerNorm2dFp32', 'LayerNormExp2d', 'RmsNorm2d', 'RmsNorm2dFp32',
                     'SimpleNorm2d', 'SimpleNorm2dFp32')

    def matches(self, module):
        shape = getattr(module, 'normalized_shape', None)
        if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 1:
            return False
        if isinstance(module, nn.LayerNorm) and type(module).__name__ == 'LayerNorm2d':
            return True
        owner = next((k for k in type(module).__mro__ if 'forward' in vars(k)), None)
        return owner is not None and owner.__module__.startswith('timm.') and owner.__name__ in self.timm_forwards

    def call_dim(self, module, x, args, kwargs):
        if 'data_format' in kwargs or (len(args) > 1 and isinstance(args[1], str)):
            return x.dim() - 1 if _channel_last(args, kwargs) else 1
        return 1

    def in_channels(self, module):
        return int(module.normalized_shape[0])

    out_channels = in_channels

    resized = _ShapeNormRule.resized

    def slice(self, module, in_keep, out_keep):
        keep = in_keep if in_keep is not None else out_keep
        self.slice_renormalizing(module, keep)
        if keep is not None:
            module.normalized_shape = (int(keep.numel()),)


class L2NormRule(LayerRule):
    """mmdet's ``L2Norm`` (SSD's conv4_3 scaling): ``weight * x / ||x||_2`` over the channels (dim 1). Under masks
    the norm runs over the alive channels (:attr:`LayerRule.renormalizes`)."""

    role = Role.NORM
    renormalizes = True
    channel_params = ('weight',)
    count_attrs = ('n_dims',)

    def matches(self, module):
        w = getattr(module, 'weight', None)
        return type(module).__name__ == 'L2Norm' and 'mmdet' in type(module).__module__ and \
            isinstance(w, torch.Tensor) and w.dim() == 1

    def in_channels(self, module):
        return int(module.weight.numel())

    out_channels = in_channels

    def slice(self, module, in_keep, out_keep):
        self.slice_renormalizing(module, in_keep if in_keep is not None else out_keep)


class GRNRule(LayerRule):
    """mmpretrain's ``GRN`` (ConvNeXt-V2's global response norm): a per-channel spatial L2 norm divided by its mean
    over the channels, ``gamma``/``beta`` per channel; ``data_format`` as ``LayerNorm2d``. Under masks the mean runs
    over the alive channels (:attr:`LayerRule.renormalizes`)."""

    role = Role.NORM
    renormalizes = True
    channel_params = ('gamma', 'beta')
    count_attrs = ('in_channels',)

    def matches(self, module):
        g = getattr(module, 'gamma', None)
        return type(module).__name__ == 'GRN' and 'mmpretrain' in type(module).__module__ and \
            isinstance(g, torch.Tensor) and g.dim() == 1

    call_dim = LayerNorm2dRule.call_dim

    def in_channels(self, module):
        return int(module.gamma.numel())

    out_channels = in_channels

    def slice(self, module, in_keep, out_keep):
        self.slice_renormalizing(module, in_keep if in_keep is not None else out_keep)


class TimmGRNRule(GRNRule):
    """timm's ``GlobalResponseNorm`` (its ConvNeXt-V2): the same computation as :class:`GRNRule` with ``weight`` /
    ``bias`` and the layout fixed at construction (``channel_dim``: -1 channels last, 1 channels first)."""

    channel_params = ('weight', 'bias')
    count_attrs = ()

    def matches(self, module):
        w = getattr(module, 'weight', None)
        return type(module).__name__ == 'GlobalResponseNorm' and type(module).__module__.startswith('timm') and \
            isinstance(w, torch.Tensor) and w.dim() == 1 and getattr(module, 'channel_dim', None) in (1, -1)

    def call_dim(self, module, x, args, kwargs):
        return module.channel_dim % x.dim()

    def in_channels(self, module):
        return int(module.weight.numel())

    out_channels = in_channels


def multihead_attention_forward(module: nn.Module, query, key, value, key_padding_mask=None, need_weights=True,
                                attn_mask=None, average_attn_weights=True, is_causal=False):
    """``nn.MultiheadAttention.forward`` in plain ops, with widths read from the weights: the query/key/value
    inputs may be narrower than the heads (``num_heads * head_dim``), as after slimming; ``out_proj`` is called as
    a module (batch first), so hooks on it see the heads' outputs. Computes what torch's forward computes."""
    if module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    n_q, batch = query.shape[0], query.shape[1]
    heads, hd = module.num_heads, module.head_dim
    inner = heads * hd
    if module._qkv_same_embed_dim:
        w_q, w_k, w_v = module.in_proj_weight.split(inner)
    else:
        w_q, w_k, w_v = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
    b_q = b_k = b_v = None
    if module.in_proj_bias is not None:
        b_q, b_k, b_v = module.in_proj_bias.split(inner)
    q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(attn_mask, float('-inf'))
    if key_padding_mask is not None and key_padding_mask.dtype == torch.bool:
        key_padding_mask = torch.zeros(key_padding_mask.shape, dtype=q.dtype,
                                       device=q.device).masked_fill(key_padding_mask, float('-inf'))
    if module.bias_k is not None:
        k = torch.cat([k, module.bias_k.repeat(1, batch, 1)])
        v = torch.cat([v, module.bias_v.repeat(1, batch, 1)])
        attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
        key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
    q = q.reshape(n_q, batch * heads, hd).transpose(0, 1)
    k = k.reshape(k.shape[0], batch * heads, hd).transpose(0, 1)
    v = v.reshape(v.shape[0], batch * heads, hd).transpose(0, 1)
    if module.add_zero_attn:
        zeros = q.new_zeros((batch * heads, 1, hd))
        k, v = torch.cat([k, zeros], 1), torch.cat([v, zeros], 1)
        attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
        key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
    n_k = k.shape[1]
    mask = None
    if attn_mask is not None:
        mask = attn_mask.unsqueeze(0) if attn_mask.dim() == 2 else attn_mask
    elif is_causal:
        mask = torch.triu(torch.full((n_q, n_k), float('-inf'), dtype=q.dtype, device=q.device), 1).unsqueeze(0)
    if key_padding_mask is not None:
        kp = key_padding_mask.view(batch, 1, 1, n_k).expand(-1, heads, -1, -1).reshape(batch * heads, 1, n_k)
        mask = kp if mask is None else mask + kp
    scores = torch.bmm(q * (float(hd) ** -0.5), k.transpose(1, 2))
    if mask is not None:
        scores = scores + mask
    attn = torch.softmax(scores, dim=-1)
    if module.training and module.dropout > 0:
        attn = F.dropout(attn, p=module.dropout)
    ctx = torch.bmm(attn, v).view(batch, heads, n_q, hd).permute(0, 2, 1, 3).reshape(batch, n_q, inner)
    out = module.out_proj(ctx)
    out = out if module.batch_first else out.transpose(0, 1)
    weights = None
    if need_weights:
        weights = attn.view(batch, heads, n_q, n_k)
        weights = weights.mean(dim=1) if average_attn_weights else weights
    return out, weights


class MultiheadAttentionRule(LayerRule):
    """``nn.MultiheadAttention`` with packed projections (``kdim == vdim == embed_dim``; mmcv's and mmengine's
    ``MultiheadAttention`` wrap it: DETR, Deformable DETR's and DINO's decoders, torchvision's ViT).

    Traced as one layer whose inputs are the query, key and value channels (one set of positions: the packed
    ``in_proj_weight`` reads all three with the same columns) and whose outputs are the rows of ``in_proj_weight``
    (q, k and v of every head); each head's rows are one atom, read by ``out_proj`` (recorded as a Linear whose
    input is the heads' value rows), so heads are pruned whole (``num_heads`` shrinks) and the embedding width is
    the residual stream's unit. Slimmed modules run :func:`multihead_attention_forward` (their input and head
    widths differ), FisherTaps runs it too so that ``out_proj``'s taps see the heads.
    """

    in_dim = -1
    inputs = ('query', 'key', 'value')
    attention = True

    def matches(self, module):
        return isinstance(module, nn.MultiheadAttention)

    def packed(self, module) -> bool:
        return bool(module._qkv_same_embed_dim)

    def in_channels(self, module):
        return int(module.in_proj_weight.shape[1]) if self.packed(module) else int(module.embed_dim)

    def out_channels(self, module):
        return int(module.in_proj_weight.shape[0]) if self.packed(module) else 3 * int(module.embed_dim)

    def heads(self, module) -> Tuple[int, int]:
        """(number of heads, channels per head)."""
        return int(module.num_heads), int(module.head_dim)

    def masked_tensors(self, module, keep):
        if not self.packed(module):
            return []
        return [(module.in_proj_weight, keep.view(1, -1))]

    def tapped_inputs(self, module, args, kwargs):
        bdim = 0 if module.batch_first else 1
        found = []
        for i, name in enumerate(self.inputs):
            if i < len(args):
                found.append((i, bdim))
            elif isinstance(kwargs.get(name), torch.Tensor):
                found.append((name, bdim))
        return found

    def tap_forward(self, module):
        return multihead_attention_forward

    def slice(self, module, in_keep, out_keep):
        if not self.packed(module):
            raise ValueError('nn.MultiheadAttention with separate q/k/v projections is not pruned; the channel config '
                             'does not fit the model.')
        heads, hd = self.heads(module)
        inner = heads * hd
        if out_keep is not None:
            local = out_keep.view(3, -1) - (torch.arange(3) * inner)[:, None] if out_keep.numel() % 3 == 0 else None
            if local is None or not bool((local == local[:1]).all()) or local[0].numel() % hd or \
                    not torch.equal(local[0].view(-1, hd), (local[0].view(-1, hd)[:, :1] + torch.arange(hd))):
                raise ValueError('nn.MultiheadAttention loses whole heads (the same ones in q, k and v); the channel '
                                 'config does not fit the model.')
            rows = local[0]
            _take(module, 'in_proj_weight', 0, out_keep)
            _take(module, 'in_proj_bias', 0, out_keep)
            for name in ('bias_k', 'bias_v'):
                _take(module, name, 2, rows)
            module.num_heads = int(rows.numel() // hd)
        if in_keep is not None:
            _take(module, 'in_proj_weight', 1, in_keep)
            module.embed_dim = module.kdim = module.vdim = int(in_keep.numel())


#: the kept output positions of a slimmed generator (a plain attribute; :class:`OutputSelectAdapter` reads it)
KEEP_ATTR = '_mmfisher_kept_channels'


class GeneratorRule(LayerRule):
    """mmdet's ``SinePositionalEncoding`` (DETR, Deformable DETR, DINO): ``2 * num_feats`` channels of sines and
    cosines of the positions, computed from the input's shape and added to the embedding stream. Its channels are
    fresh ones that join the stream; a slimmed module computes all of them and keeps the chosen ones
    (:class:`OutputSelectAdapter`), exactly the positions the stream keeps."""

    role = Role.GENERATOR

    def matches(self, module):
        return type(module).__name__ == 'SinePositionalEncoding' and 'mmdet' in type(module).__module__ and \
            isinstance(getattr(module, 'num_feats', None), int)

    def in_channels(self, module):
        return 0

    def out_channels(self, module):
        keep = module.__dict__.get(KEEP_ATTR)
        return int(keep.numel()) if keep is not None else 2 * int(module.num_feats)

    def slice(self, module, in_keep, out_keep):
        if out_keep is not None:
            old = module.__dict__.get(KEEP_ATTR)
            module.__dict__[KEEP_ATTR] = out_keep.clone() if old is None else old[out_keep]


class PassthroughRule(LayerRule):
    """Parameter-free modules whose output channel c is input channel c but whose op the tracer cannot see
    (compiled RoI ops: mmcv/torchvision RoIAlign, RoIPool). Only the first input carries channels."""

    role = Role.PASSTHROUGH
    names = ('RoIAlign', 'RoIPool', 'RoIAlignRotated', 'SimpleRoIAlign', 'PrRoIPool')

    def matches(self, module):
        return type(module).__name__ in self.names

    def slice(self, module, in_keep, out_keep):
        return None


_RULES: List[LayerRule] = [ConvRule(), ConvTransposeRule(), LinearRule(), GroupNormRule(), NormRule(),
                           LayerNorm2dRule(), LayerNormRule(), RMSNormRule(), L2NormRule(), GRNRule(),
                           TimmGRNRule(), MultiheadAttentionRule(), GeneratorRule(), PassthroughRule()]


# -- forwards for slimmed modules ------------------------------------------------------------------------------
class ForwardAdapter:
    """A module class whose forward reads a size from its input's width that pruning makes different: the
    attention of Swin (``qkv.reshape(B, N, 3, heads, C // heads)``, ``reshape(B, N, C)`` with ``C`` the residual
    stream's width), where pruned heads and a pruned stream no longer have one width. The adapter's forward is
    the same computation with the sizes read from the layers (``qkv.out_features``) and attributes
    (``num_heads``); :func:`adapt_forwards` gives slimmed modules of the class a subclass with it (the unpruned
    model computes the same either way, so masked and slimmed models still agree)."""

    #: ``(module path, class name)`` pairs whose forward :meth:`forward` reproduces
    classes: Tuple[Tuple[str, str], ...] = ()

    def matches(self, module: nn.Module) -> bool:
        cls = type(module)
        return any(cls.__module__ == mod and cls.__name__ == name for mod, name in self.classes)

    def forward(self, module: nn.Module, *args, **kwargs):  # pragma: no cover - overridden
        raise NotImplementedError


class WindowMSAAdapter(ForwardAdapter):
    """Swin's window attention in mmpretrain and mmdet (identical forwards)."""

    classes = (('mmpretrain.models.utils.attention', 'WindowMSA'), ('mmdet.models.backbones.swin', 'WindowMSA'))

    def forward(self, module, x, mask=None):
        b, n, _ = x.shape
        heads = module.num_heads
        qkv = module.qkv(x)
        head_dim = qkv.shape[-1] // (3 * heads)
        qkv = qkv.reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * module.scale
        attn = q @ k.transpose(-2, -1)
        wh, ww = module.window_size
        bias = module.relative_position_bias_table[module.relative_position_index.view(-1)].view(
            wh * ww, wh * ww, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, heads, n, n)
        attn = module.attn_drop(module.softmax(attn))
        x = (attn @ v).transpose(1, 2).reshape(b, n, heads * head_dim)
        return module.proj_drop(module.proj(x))


class MultiheadAttentionAdapter(ForwardAdapter):
    """Slimmed ``nn.MultiheadAttention``: :func:`multihead_attention_forward`."""

    def matches(self, module):
        return type(module) is nn.MultiheadAttention

    def forward(self, module, *args, **kwargs):
        return multihead_attention_forward(module, *args, **kwargs)


class OutputSelectAdapter(ForwardAdapter):
    """A slimmed generator (:class:`GeneratorRule`): its own forward, then its kept channels (dim 1)."""

    def matches(self, module):
        return KEEP_ATTR in vars(module)

    def forward(self, module, *args, **kwargs):
        base = next(c for c in type(module).__mro__[1:] if 'forward' in vars(c))
        out = base.forward(module, *args, **kwargs)
        keep = module.__dict__.get(KEEP_ATTR)
        return out if keep is None else out.index_select(1, keep.to(out.device))


#: the attribute slimming sets on a module whose forward must infer some view/reshape sizes: their positions
INFER_ATTR = '_mmfisher_infer_sizes'


class _InferSizes(TorchFunctionMode):
    """While a slimmed module's own forward runs: a ``view`` / ``reshape`` whose sizes no longer match its
    tensor (a width read off the input, ``reshape(B, N, C)``, that pruning made different from the tensor's)
    gets the size at one of ``positions`` (``[number of sizes, position]`` pairs, recorded by the trace) inferred
    (-1) instead, if that makes the sizes match. Under ``torch.jit.trace`` (ONNX export, mmengine's FLOPs
    counter) the sizes read off a tensor are 0-dim integer tensors: they count as their values, and the others
    stay as given, so the traced graph keeps its dynamic sizes."""

    def __init__(self, positions: List[List[int]]) -> None:
        super().__init__()
        self.positions = positions

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, '__name__', '')
        if name in ('view', 'reshape') and args and isinstance(args[0], torch.Tensor) and not kwargs:
            x, rest = args[0], list(args[1:])
            sizes = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)) else rest
            values = [_size_value(v) for v in sizes]
            if values and None not in values and -1 not in values and int(np.prod(values)) != x.numel():
                for n, p in self.positions:
                    if n == len(sizes):
                        rest_prod = int(np.prod([v for k, v in enumerate(values) if k != p]))
                        if rest_prod > 0 and x.numel() % rest_prod == 0:
                            sizes = sizes[:p] + [-1] + sizes[p + 1:]
                            return func(x, sizes)
        return func(*args, **kwargs)


def _size_value(v: Any) -> Optional[int]:
    """A view / reshape size as an int: a Python int, or a 0-dim integer tensor (a size under jit tracing)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_floating_point() and v.dtype != torch.bool:
        return int(v)
    return None


class InferredSizesAdapter(ForwardAdapter):
    """A slimmed module whose forward shaped a tensor by a width read off another one (timm-style attention:
    ``x.transpose(1, 2).reshape(B, N, C)`` with ``C`` the stream's width, ``qkv.reshape(B, N, 3, heads, C //
    heads)``): its own forward, with those sizes inferred from the tensor (:class:`_InferSizes`). The unpruned
    model computes the same either way; slimmed, heads and the stream no longer need one width."""

    def matches(self, module):
        return INFER_ATTR in vars(module)

    def forward(self, module, *args, **kwargs):
        base = next(c for c in type(module).__mro__[1:] if 'forward' in vars(c))
        with _InferSizes(module.__dict__[INFER_ATTR]):
            return base.forward(module, *args, **kwargs)


_ADAPTERS: List[ForwardAdapter] = [WindowMSAAdapter(), MultiheadAttentionAdapter(), OutputSelectAdapter(),
                                   InferredSizesAdapter()]
_ADAPTED: Dict[Tuple[type, int], type] = {}


def _adapted_class(cls: type, adapter: ForwardAdapter) -> type:
    key = (cls, id(adapter))
    if key not in _ADAPTED:
        def forward(self, *args, **kwargs):
            return adapter.forward(self, *args, **kwargs)
        forward.__doc__ = adapter.forward.__doc__
        _ADAPTED[key] = type(cls.__name__, (cls,), {'forward': forward, '__module__': cls.__module__,
                                                    '__qualname__': cls.__qualname__, '_mmfisher_adapter': adapter})
    return _ADAPTED[key]


def has_adapter(module: nn.Module) -> bool:
    """Whether a class-level :class:`ForwardAdapter` matches ``module`` (not the per-module ones slimming sets:
    the output selection of generators, inferred sizes)."""
    per_module = (OutputSelectAdapter, InferredSizesAdapter)  # set on slimmed modules only
    return any(a.matches(module) for a in _ADAPTERS if not isinstance(a, per_module))


def adapt_forwards(model: nn.Module) -> int:
    """Give every module of ``model`` that a :class:`ForwardAdapter` matches its adapted forward (a subclass of
    its class, same name); returns how many were adapted. Idempotent."""
    n = 0
    for module in model.modules():
        if getattr(type(module), '_mmfisher_adapter', None) is not None:
            continue
        for adapter in _ADAPTERS:
            if adapter.matches(module):
                module.__class__ = _adapted_class(type(module), adapter)
                n += 1
                break
    return n


def register_rule(rule: LayerRule, first: bool = True) -> None:
    """Add a rule for a new layer type; ``first`` gives it priority over the built-in rules."""
    if not isinstance(rule, LayerRule):
        raise TypeError(f'register_rule expects a LayerRule instance, got {type(rule).__name__}')
    if first:
        _RULES.insert(0, rule)
    else:
        _RULES.append(rule)


def find_rule(module: nn.Module) -> Optional[LayerRule]:
    """The rule for ``module``, or None when the tracer should look inside it."""
    for rule in _RULES:
        if rule.matches(module):
            return rule
    return None
