"""Deterministic fake batches for tracing OpenMMLab models at a fixed input shape.

The trace (``mmfisher.core.analyze``) needs one ``forward(model)`` call; these helpers build it for

* mmdet detectors (``BaseDetector``): ``model(inputs, data_samples, mode='tensor')`` with ``DetDataSample``\\ s
  carrying ``img_shape``, ``ori_shape``, ``pad_shape``, ``batch_input_shape`` and ``scale_factor``;
* two-stage detectors (an ``roi_head``): backbone and neck, the RPN head's convs, then ``roi_head.forward`` on
  fixed, seeded proposals (as many as the RPN keeps at test time, ``test_cfg.rpn.max_per_img``, default 1000).
  Proposals from the RPN's own ``predict`` would tie every FPN channel to the score sorting and NMS, which read
  all channels, and make the whole FPN unprunable; fixed boxes trace the same layers and the RoI head's cost at
  the test-time number of RoIs;
* mmpretrain classifiers (``BaseClassifier``) and other mmengine ``BaseModel``\\ s: ``model(inputs, mode='tensor')``;
* anything else: ``model(inputs)``.

The input is ``torch.randn((1, C, H, W))`` from a private generator seeded with ``seed`` (the global RNG is not
touched, so tracing never changes a training run's random stream), on the model's device.
"""
import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .target import pruned_module


def check_input_shape(input_shape: Any, name: str = 'input_shape') -> Tuple[int, int, int]:
    """``(C, H, W)`` as positive ints, or ``ValueError`` naming the field and the fix.

    ``name`` is how the caller names the value: a config field (``'input_shape'``, the default) or a
    command-line option (``'--shape'``, written ``--shape C H W`` in the message)."""
    option = name.startswith('-')

    def shown(value: Any) -> str:
        if option and isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            return f'{name} {" ".join(str(v) for v in value)}'
        return f'{name}={value!r}'

    det, cls = shown((3, 800, 1333)), shown((3, 224, 224))
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or len(input_shape) != 3:
        raise ValueError(f'{shown(input_shape)} must be (C, H, W), e.g. {det} for detection or {cls} for '
                         'classification')
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_shape):
        raise ValueError(f'{shown(tuple(input_shape))} must hold three positive ints (C, H, W), e.g. {det}')
    return int(input_shape[0]), int(input_shape[1]), int(input_shape[2])


SHAPE_SLACK = 2.0  # the batches' image area may differ from input_shape's this many times before a warning


def input_shape_note(input_shape: Sequence[int], inputs: Any, owner: str) -> Optional[str]:
    """A warning when the images the model trains on are far from ``input_shape`` (another channel count, or an
    area more than :data:`SHAPE_SLACK` times larger or smaller), else None.

    ``inputs``: a batch's ``inputs``, an ``(N, C, H, W)`` tensor (after the data preprocessor) or a list of
    ``(C, H, W)`` tensors (before it); anything else gives None. The costs, ratios and the target are counted at
    ``input_shape``, and a CNN's FLOP shares barely move with the size, but a head's FC layers, attention and
    position embeddings do: a classifier left at the detection default ``(3, 800, 1333)`` is counted wrong.
    """
    if isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
        shapes = [tuple(inputs.shape[1:])]
    elif isinstance(inputs, (list, tuple)):
        shapes = [tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor) and t.dim() == 3]
    else:
        shapes = []
    if not shapes:
        return None
    c, h, w = sorted(shapes, key=lambda s: s[1] * s[2])[len(shapes) // 2]  # the median image by area
    area = h * w
    ours = int(input_shape[1]) * int(input_shape[2])
    if c == int(input_shape[0]) and ours / SHAPE_SLACK <= area <= ours * SHAPE_SLACK:
        return None
    return (f'{owner}: input_shape={tuple(int(v) for v in input_shape)} but the training batches hold {c}x{h}x{w} '
            'images: the FLOPs and activation shares and the target are counted at input_shape, not at the size '
            f'the model runs at. Fix: set input_shape=({c}, {h}, {w}) in the hook (the size it is deployed at)')


def inexact_units_at(model: nn.Module, graph: Any, input_shape: Sequence[int]) -> Dict[str, str]:
    """:func:`mmfisher.core.verify.inexact_units` of ``model`` on its trace input at ``input_shape`` (the check
    the export runs at the end, before anything is pruned): ``{unit name: reason}`` of units to keep whole."""
    from ..core.verify import inexact_units

    def make(m: nn.Module):
        return make_trace_forward(m, input_shape)
    return inexact_units(model, graph, make(model), make_forward=make)


def _isinstance_of(model: nn.Module, module: str, name: str) -> bool:
    try:
        mod = __import__(module, fromlist=[name])
    except ImportError:  # the task package is not installed: the model cannot be one of its classes
        return False
    return isinstance(model, getattr(mod, name))


def is_detector(model: nn.Module) -> bool:
    return _isinstance_of(model, 'mmdet.models.detectors', 'BaseDetector')


def is_classifier(model: nn.Module) -> bool:
    return _isinstance_of(model, 'mmpretrain.models.classifiers', 'BaseClassifier')


def _has_mode(model: nn.Module) -> bool:
    try:
        return 'mode' in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def det_data_samples(shape: Tuple[int, int], batch: int = 1) -> List[Any]:
    """``DetDataSample``\\ s whose metainfo describes an unscaled, unpadded ``shape == (H, W)`` image, with empty
    ``gt_instances`` (some tensor-mode forwards unpack them, e.g. Sparse R-CNN's ``SparseRoIHead.forward``)."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    h, w = shape
    samples = []
    for i in range(batch):
        sample = DetDataSample()
        sample.set_metainfo(dict(img_id=i, img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                 batch_input_shape=(h, w), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=torch.zeros((0, 4)), labels=torch.zeros((0,), dtype=torch.long))
        samples.append(sample)
    return samples


def _num_proposals(model: nn.Module) -> int:
    rpn_cfg = (getattr(model, 'test_cfg', None) or {}).get('rpn') or {}
    n = rpn_cfg.get('max_per_img') or rpn_cfg.get('max_num') or 1000
    return int(n)


def fixed_proposals(shape: Tuple[int, int], num: int, gen: torch.Generator, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> List[Any]:
    """One image's ``InstanceData`` of ``num`` seeded boxes (x1, y1, x2, y2) inside ``shape == (H, W)``."""
    from mmengine.structures import InstanceData
    h, w = shape
    wh = torch.rand((num, 2), generator=gen) * torch.tensor([w, h]) * 0.5 + 4.0
    ctr = torch.rand((num, 2), generator=gen) * torch.tensor([w, h])
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    data = InstanceData(bboxes=boxes.to(device, dtype), scores=torch.ones(num, device=device, dtype=dtype))
    return [data]


def make_trace_forward(model: nn.Module, input_shape: Sequence[int], seed: int = 0
                       ) -> Callable[[nn.Module], Any]:
    """A ``forward(m)`` for :func:`mmfisher.core.analyze`: the model's tensor-mode forward on a batch of one
    ``input_shape == (C, H, W)`` input (see module docstring). ``model`` may be wrapped; it is unwrapped.

    The forward carries ``input_shape`` (``(C, H, W)``) and ``trace_input_shape`` (``(1, C, H, W)``), which
    :func:`mmfisher.core.analyze_fast` names when the model's forward fails on them."""
    forward = _trace_forward(model, input_shape, seed)
    forward.input_shape = check_input_shape(input_shape)
    forward.trace_input_shape = (1, *forward.input_shape)
    return forward


def _trace_forward(model: nn.Module, input_shape: Sequence[int], seed: int) -> Callable[[nn.Module], Any]:
    model = pruned_module(model)
    c, h, w = check_input_shape(input_shape)
    device = next((p.device for p in model.parameters()), torch.device('cpu'))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    gen = torch.Generator().manual_seed(int(seed))
    inputs = torch.randn((1, c, h, w), generator=gen).to(device, dtype)
    samples: Optional[List[Any]] = det_data_samples((h, w)) if is_detector(model) else None
    rpn = getattr(model, 'rpn_head', None)
    # query-based detectors (Sparse R-CNN, QueryInst): the "RPN" is learned embeddings with no forward and no
    # value-dependent step, so the model's own tensor forward traces as it is
    query_based = rpn is not None and type(rpn).forward is nn.Module.forward
    if samples is not None and getattr(model, 'roi_head', None) is not None and not query_based:
        proposals = fixed_proposals((h, w), _num_proposals(model), gen, device, dtype)
        with_rpn = bool(getattr(model, 'with_rpn', False))

        def two_stage(m: nn.Module) -> Any:
            x = m.extract_feat(inputs)
            rpn_outs = m.rpn_head(x) if with_rpn else ()
            return rpn_outs, m.roi_head.forward(x, proposals, samples)
        return two_stage
    if samples is not None:
        return lambda m: m(inputs, samples, mode='tensor')
    if is_classifier(model) or _has_mode(model):
        return lambda m: m(inputs, mode='tensor')
    return lambda m: m(inputs)
