"""Build OpenMMLab zoo models from configs for analysis: config lookup (paths or ``mmdet::``/``mmpretrain::``),
pretrained-weight stripping, building in the config's scope, and the trace forward."""
import copy
import os
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
from torch import nn

SCOPES = ('mmdet', 'mmpretrain')


def load_config(spec: str):
    """A config from a path or ``mmdet::``/``mmpretrain::``/``mmfisher::`` package path, read by
    :func:`mmfisher.engine.load_config` (a key two ``_base_`` files set is named, with the fix)."""
    from .engine.config import load_config as read
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
        return read(path)
    if not os.path.isfile(spec):
        raise FileNotFoundError(f'config "{spec}" not found: give a config path or mmdet::/mmpretrain:: path')
    return read(spec)


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
    (``init_weights`` runs the model's own initialisation; PyTorch's default initialisation otherwise). A
    top-level ``data_preprocessor`` (mmpretrain's configs) goes into the model dict unless it sets its own, as
    mmengine's Runner does, so the model is the one ``tools/train.py`` builds (its structure fingerprint included)."""
    import mmfisher  # noqa: F401  registers mmfisher components
    from mmengine.registry import MODELS, init_default_scope
    scope = scope_of(cfg)
    init_default_scope(scope)
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None and isinstance(model_cfg, dict):
        model_cfg.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
    if not pretrained:
        model_cfg = strip_pretrained(model_cfg)
    model = MODELS.build(model_cfg)
    if init_weights:
        model.init_weights()
    return model


def tensor_forward(model: nn.Module, shape: Sequence[int], seed: int = 0) -> Callable[[nn.Module], Any]:
    """The hook's trace forward (:func:`mmfisher.models.tracing.make_trace_forward`) for ``model`` at ``shape``:
    tensor mode on a seeded fake batch of one; two-stage detectors run their RoI head on fixed proposals, so
    masked/slimmed comparisons are not at the mercy of NMS ties."""
    from .models.tracing import make_trace_forward
    return make_trace_forward(model, tuple(int(v) for v in shape), seed)


def fake_batch(model: nn.Module, shape: Sequence[int], batch: int = 1, seed: int = 0
               ) -> Tuple[torch.Tensor, Optional[list]]:
    """A seeded ``(batch, *shape)`` input on the model's device and, for detectors, matching data samples."""
    from .models.tracing import det_data_samples, is_detector
    device = next((p.device for p in model.parameters()), torch.device('cpu'))
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed)).to(device)
    samples = det_data_samples((int(shape[-2]), int(shape[-1])), batch) if is_detector(model) else None
    return x, samples
