"""Build OpenMMLab models from configs for analysis: config lookup, pretrained-weight stripping, tensor-mode
forwards at a fixed input shape (the only mm-aware glue the core needs)."""
import copy
import os
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
from torch import nn

SCOPES = ('mmdet', 'mmpretrain')


def load_config(spec: str):
    """A config from a path or ``mmdet::``/``mmpretrain::``/``mmfisher::`` package path."""
    from mmengine.config import Config
    if '::' in spec:
        pkg, rel = spec.split('::', 1)
        from mmengine.utils import get_installed_path
        try:
            root = get_installed_path(pkg)
        except Exception as exc:
            raise FileNotFoundError(f'config "{spec}": package "{pkg}" is not installed') from exc
        path = os.path.join(root, '.mim', 'configs', rel)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'config "{spec}" not found: no {rel} in {pkg}\'s shipped configs '
                                    f'({os.path.join(root, ".mim", "configs")})')
        return Config.fromfile(path)
    if not os.path.isfile(spec):
        raise FileNotFoundError(f'config "{spec}" not found: give a config path or mmdet::/mmpretrain:: path')
    return Config.fromfile(spec)


def strip_pretrained(cfg: Any) -> Any:
    """Remove pretrained-weight loading (``init_cfg`` of type Pretrained, ``pretrained=``) recursively: nothing
    can be downloaded here and analysis needs no weights."""
    if isinstance(cfg, dict):
        from mmengine.config import ConfigDict
        out = ConfigDict()
        for k, v in cfg.items():
            if k == 'pretrained' and isinstance(v, str):
                continue
            if k == 'init_cfg' and _is_pretrained(v):
                continue
            out[k] = strip_pretrained(v)
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(strip_pretrained(v) for v in cfg)
    return cfg


def _is_pretrained(init_cfg: Any) -> bool:
    items = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return any(isinstance(i, dict) and i.get('type') == 'Pretrained' for i in items)


def scope_of(cfg) -> str:
    scope = cfg.get('default_scope')
    if scope is None:
        t = str(cfg.get('model', {}).get('type', ''))
        scope = t.split('.')[0] if '.' in t else 'mmdet'
    return scope


def build_model(cfg, pretrained: bool = False, init_weights: bool = False) -> nn.Module:
    """Build ``cfg.model`` in the config's default scope, without pretrained weights unless asked
    (``init_weights`` runs the model's own initialisation; PyTorch's default initialisation otherwise)."""
    import mmfisher  # noqa: F401  registers mmfisher components
    from mmengine.registry import MODELS, init_default_scope
    scope = scope_of(cfg)
    init_default_scope(scope)
    model_cfg = copy.deepcopy(cfg.model)
    if not pretrained:
        model_cfg = strip_pretrained(model_cfg)
    model = MODELS.build(model_cfg)
    if init_weights:
        model.init_weights()
    return model


def is_detector(model: nn.Module) -> bool:
    try:
        from mmdet.models.detectors import BaseDetector
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, BaseDetector)


def is_classifier(model: nn.Module) -> bool:
    try:
        from mmpretrain.models.classifiers import BaseClassifier
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, BaseClassifier)


def fake_batch(model: nn.Module, shape: Sequence[int], batch: int = 1, seed: int = 0
               ) -> Tuple[torch.Tensor, Optional[list]]:
    """A deterministic normalised input of ``(batch, *shape)`` and, for detectors, matching data samples."""
    gen = torch.Generator().manual_seed(seed)
    device = next((p.device for p in model.parameters()), torch.device('cpu'))
    x = torch.randn((batch, *shape), generator=gen).to(device)
    samples = None
    if is_detector(model):
        from mmdet.structures import DetDataSample
        h, w = int(shape[-2]), int(shape[-1])
        samples = []
        for _ in range(batch):
            s = DetDataSample()
            s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                                scale_factor=(1.0, 1.0), img_id=0))
            samples.append(s)
    return x, samples


def tensor_forward(model: nn.Module, shape: Sequence[int], batch: int = 1, seed: int = 0
                   ) -> Callable[[nn.Module], Any]:
    """``forward(m)`` running the model's ``'tensor'`` mode on a fixed fake batch (detectors: through RPN and
    RoI heads for two-stage models; classifiers: backbone, neck and head logits)."""
    x, samples = fake_batch(model, shape, batch, seed)
    if samples is not None:
        return lambda m: m(x, samples, mode='tensor')
    if is_classifier(model) or 'mode' in _forward_params(model):
        return lambda m: m(x, mode='tensor')
    return lambda m: m(x)


def _forward_params(model: nn.Module) -> Sequence[str]:
    import inspect
    try:
        return list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return []


def is_two_stage(model: nn.Module) -> bool:
    return hasattr(model, 'rpn_head') and hasattr(model, 'roi_head') and is_detector(model)


def compare_forward(model: nn.Module, shape: Sequence[int], batch: int = 1, seed: int = 0
                    ) -> Callable[[nn.Module], Any]:
    """Like :func:`tensor_forward`, but stable under float rounding: for two-stage detectors the RoI head runs on
    fixed random proposals (RPN top-k and NMS would turn 1e-7 differences into different proposals) and the
    RPN's raw outputs are returned beside it."""
    if not is_two_stage(model):
        return tensor_forward(model, shape, batch, seed)
    from mmengine.structures import InstanceData
    x, samples = fake_batch(model, shape, batch, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    h, w = int(shape[-2]), int(shape[-1])
    proposals = []
    for _ in range(batch):
        xy = torch.rand(64, 2, generator=gen) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(64, 2, generator=gen) * torch.tensor([w * 0.3, h * 0.3]) + 4
        inst = InstanceData()
        inst.bboxes = torch.cat([xy, xy + wh], 1)
        inst.scores = torch.rand(64, generator=gen)
        inst.labels = torch.zeros(64, dtype=torch.long)
        proposals.append(inst)

    def forward(m):
        feats = m.extract_feat(x)
        return m.rpn_head(feats), m.roi_head.forward(feats, proposals, samples)
    return forward
