"""Helpers shared by the label-free tests (tests/test_label_free*.py): tiny model configs, distiller builders,
batches, and a Runner for short label-free pruning runs. Collected by pytest but holds no tests."""
from __future__ import annotations

import copy
import os.path as osp
from typing import Any, Dict, List, Optional

import torch
from mmengine.config import Config, ConfigDict

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATA = osp.join(ROOT, 'data', 'generated')
UNLABELED = osp.join(DATA, 'shapes_unlabeled') + '/'
TINY = osp.join(ROOT, 'configs', 'tiny')
DET_PRUNE = osp.join(TINY, 'retinanet_tiny_label_free_prune.py')
DET_FINETUNE = osp.join(TINY, 'retinanet_tiny_label_free_finetune.py')
CLS_PRUNE = osp.join(TINY, 'resnet_tiny_cls_label_free_prune.py')
CLS_FINETUNE = osp.join(TINY, 'resnet_tiny_cls_label_free_finetune.py')
DET_SHAPE = (3, 128, 128)
CLS_SHAPE = (3, 64, 64)


def ensure_data(*which: str) -> None:
    from mmfisher.data_gen import make_all
    make_all(DATA, which=list(which) or ['shapes_unlabeled'])


def det_arch() -> ConfigDict:
    """The tiny RetinaNet at the test width (ResNet-18 at base 8, FPN / head of 16 channels), no pretrained init."""
    cfg = Config.fromfile(osp.join(TINY, 'retinanet_tiny_shapes.py'))
    model = copy.deepcopy(cfg.model)
    model.backbone.update(base_channels=8, init_cfg=None)
    model.neck.update(in_channels=[8, 16, 32, 64], out_channels=16)
    model.bbox_head.update(in_channels=16, feat_channels=16)
    return model


def cls_arch() -> ConfigDict:
    """The tiny ResNet classifier (with its top-level data_preprocessor, as the Runner hands it down)."""
    cfg = Config.fromfile(osp.join(TINY, 'resnet_tiny_shapes_cls.py'))
    model = copy.deepcopy(cfg.model)
    model.data_preprocessor = dict(type='ClsDataPreprocessor', **cfg.data_preprocessor)
    return model


def frcnn_arch(mask: bool = False) -> ConfigDict:
    """A small Faster R-CNN (or Mask R-CNN): ResNet-18 at base 8, FPN 16, RPN 16, 2-fc RoI head of 32."""
    from mmfisher.zoo import load_config, strip_pretrained
    base = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py' if mask else \
        'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
    model = strip_pretrained(load_config(base).model)
    model.backbone.update(depth=18, base_channels=8, init_cfg=None)
    model.neck.update(in_channels=[8, 16, 32, 64], out_channels=16)
    model.rpn_head.update(in_channels=16, feat_channels=16)
    model.roi_head.bbox_roi_extractor.out_channels = 16
    model.roi_head.bbox_head.update(in_channels=16, fc_out_channels=32, num_classes=3)
    if mask:
        model.roi_head.mask_roi_extractor.out_channels = 16
        model.roi_head.mask_head.update(in_channels=16, conv_out_channels=16, num_classes=3)
    model.test_cfg.rpn.update(nms_pre=200, max_per_img=50)
    return model


def build(arch: Dict[str, Any], scope: str = 'mmdet', **kwargs) -> torch.nn.Module:
    """A LabelFreeDistiller around ``arch`` (built in ``scope``); ``kwargs`` are its arguments."""
    import mmfisher  # noqa: F401
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(scope)
    kwargs.setdefault('input_shape', DET_SHAPE if scope == 'mmdet' else CLS_SHAPE)
    torch.manual_seed(0)
    return MODELS.build(dict(type='mmfisher.LabelFreeDistiller', architecture=copy.deepcopy(arch), **kwargs))


def det_batch(n: int = 2, seed: int = 0, labels: bool = False):
    """A preprocessed detection batch: inputs (N, 3, 128, 128) and DetDataSamples (optionally with random labels)."""
    from mmengine.structures import InstanceData

    from mmfisher.models.tracing import det_data_samples
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn((n, ) + DET_SHAPE, generator=g)
    samples = det_data_samples(DET_SHAPE[1:], n)
    if labels:
        for s in samples:
            xy = torch.rand(3, 2, generator=g) * 80
            s.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + 30], 1),
                                          labels=torch.randint(0, 3, (3, ), generator=g))
    return inputs, samples


def cls_batch(n: int = 4, seed: int = 0, labels: bool = False):
    from mmpretrain.structures import DataSample
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn((n, ) + CLS_SHAPE, generator=g)
    samples = [DataSample() for _ in range(n)]
    if labels:
        for s in samples:
            s.set_gt_label(int(torch.randint(0, 3, (1, ), generator=g)))
    return inputs, samples


def set_iter(it: int) -> None:
    """The iteration the sampling generator is seeded with (the Runner's RuntimeInfoHook sets it)."""
    from mmengine.logging import MessageHub
    MessageHub.get_current_instance().update_info('iter', it)


def prune_cfg(task: str, work_dir: str, max_iters: int = 30, interval: int = 2, k: int = 64, images: int = 16,
              batch_size: Optional[int] = None, hook: Optional[Dict[str, Any]] = None) -> Config:
    """A tiny label-free pruning config (configs/tiny/*label_free_prune.py) made short: ``images`` unlabeled
    images, ``k`` atoms every ``interval`` iterations, no validation, no load_from (teacher = initial student)."""
    ensure_data()
    cfg = Config.fromfile(DET_PRUNE if task == 'det' else CLS_PRUNE)
    if task == 'det':
        arch = det_arch()
        cfg.model.architecture = arch
    cfg.load_from = None
    cfg.work_dir = work_dir
    cfg.train_dataloader.update(num_workers=0, persistent_workers=False,
                                batch_size=batch_size or (2 if task == 'det' else 8))
    cfg.train_dataloader.dataset.data_root = UNLABELED
    cfg.train_dataloader.dataset.indices = images
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.custom_hooks[0].update(interval=interval, channels_per_step=k, **(hook or {}))
    cfg.train_cfg.max_iters = max_iters
    cfg.default_hooks.logger.interval = 1
    cfg.env_cfg.dist_cfg.backend = 'gloo'
    return cfg


def run(cfg: Config, **kwargs):
    from mmengine.runner import Runner

    import mmfisher  # noqa: F401
    for k, v in kwargs.items():
        cfg[k] = v
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def fisher_hook(runner):
    return next(h for h in runner.hooks if type(h).__name__ == 'FisherPruningHook')


def tensors(obj: Any) -> List[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return []
