"""The label-free configs: the two _base_ files (one helper key each), the tiny and the zoo prune / fine-tune
configs. Each loads with Config.fromfile after ``import mmfisher`` and builds its model without pretrained weights
(fine-tune configs from a channels.json and a teacher checkpoint written here). Nothing is trained or downloaded."""
import copy
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import mmfisher  # noqa: F401  registers mmfisher:: configs and the label-free components
from _label_free_helpers import ROOT

CONFIGS = osp.join(ROOT, 'configs')
ZOO = [
    ('classification', 'efficientnet-b0', 'mmpretrain::efficientnet/efficientnet-b0_8xb32_in1k.py', 0.5, '_in1k'),
    ('classification', 'densenet121', 'mmpretrain::densenet/densenet121_4xb256_in1k.py', 0.5, '_in1k'),
    ('detection', 'retinanet_r50_fpn', 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', 0.5, '_coco'),
    ('detection', 'fcos_r50-caffe_fpn_gn-head', 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', 0.5, '_coco'),
    ('detection', 'faster-rcnn_r50_fpn', 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', 0.25, '_coco'),
]
TINY = [('retinanet_tiny', 'retinanet_tiny_shapes.py'), ('resnet_tiny_cls', 'resnet_tiny_shapes_cls.py')]


def _path(task, name, step, suffix):
    return osp.join(CONFIGS, task, f'{name}_label_free_{step}{suffix}.py')


def _model_cfg(cfg):
    """``cfg.model`` as the Runner builds it (a top-level data_preprocessor is handed down), pretrained init
    stripped."""
    from mmfisher.zoo import strip_pretrained
    model = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:
        model.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
    return strip_pretrained(model)


def _build(cfg, model_cfg=None):
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    return MODELS.build(model_cfg if model_cfg is not None else _model_cfg(cfg))


def test_every_label_free_config_is_tested():
    found = {osp.relpath(p, CONFIGS) for p in glob.glob(osp.join(CONFIGS, '**', '*label_free*.py'), recursive=True)}
    listed = {osp.relpath(_path(t, n, s, x), CONFIGS) for t, n, _, _, x in ZOO for s in ('prune', 'finetune')}
    listed |= {f'tiny/{n}_label_free_{s}.py' for n, _ in TINY for s in ('prune', 'finetune')}
    listed |= {'_base_/label_free_pruning.py', '_base_/label_free_finetune.py'}
    # balanced one-shot pruning with the distillation loss: run end to end in tests/hooks/test_balanced_hook.py
    listed |= {'tiny/resnet_tiny_cls_balanced_label_free_prune.py'}
    assert found == listed


def test_bases_set_one_helper_key_each():
    for name, key in (('label_free_pruning', 'label_free_pruning'), ('label_free_finetune', 'label_free_finetune')):
        cfg = Config.fromfile(osp.join(CONFIGS, '_base_', name + '.py'))
        assert set(cfg.keys()) == {key}
        assert cfg[key].model.type == 'mmfisher.LabelFreeDistiller'
    prune = Config.fromfile(osp.join(CONFIGS, '_base_', 'label_free_pruning.py')).label_free_pruning
    assert prune.model.sample_targets is True and prune.model.output_weight == prune.model.anchor_weight == 1.0
    assert prune.hook.interval == 25 and prune.hook.channels_per_step == 500  # seed 002's schedule
    ft = Config.fromfile(osp.join(CONFIGS, '_base_', 'label_free_finetune.py')).label_free_finetune
    assert ft.model.sample_targets is False and ft.model.output_weight == ft.model.anchor_weight == 0.1
    # a mmfisher:: path resolves like the relative one (configs ship in the package)
    via_pkg = Config.fromfile(osp.join(CONFIGS, '_base_', 'label_free_pruning.py'))
    assert via_pkg.label_free_pruning.hook.type == 'mmfisher.FisherPruningHook'


@pytest.mark.parametrize('task, name, base, target, suffix', ZOO, ids=[z[1] for z in ZOO])
def test_zoo_prune_config(task, name, base, target, suffix):
    from mmfisher.zoo import load_config
    cfg = Config.fromfile(_path(task, name, 'prune', suffix))
    package = load_config(base)
    assert cfg.default_scope == package.default_scope
    assert cfg.model.type == 'mmfisher.LabelFreeDistiller'
    assert cfg.model.architecture.type == package.model.type
    assert cfg.model.architecture.backbone.type == package.model.backbone.type
    assert cfg.train_dataloader.dataset.type == 'mmfisher.UnlabeledImages'
    assert cfg.load_from and cfg.load_from.startswith('https://download.openmmlab.com/')
    (hook, ) = cfg.custom_hooks
    assert hook.type == 'mmfisher.FisherPruningHook' and hook.target == target and hook.interval == 25
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    model_cfg = _model_cfg(cfg)
    model_cfg.input_shape = (3, 128, 128) if task == 'detection' else (3, 64, 64)  # a quick trace here
    model = _build(cfg, model_cfg)
    from mmfisher.models import pruned_module
    assert type(pruned_module(model)).__name__ == package.model.type
    assert len(model.anchor_names) == 5


@pytest.mark.parametrize('task, name, base, target, suffix', ZOO, ids=[z[1] for z in ZOO])
def test_zoo_finetune_config(tmp_path, task, name, base, target, suffix):
    from mmfisher.core import analyze_fast, channel_config, random_alive, save_channel_config
    from mmfisher.models.tracing import make_trace_forward
    cfg = Config.fromfile(_path(task, name, 'finetune', suffix))
    assert cfg.model.type == 'mmfisher.LabelFreeDistiller'
    assert cfg.model.architecture.type == 'mmfisher.Pruned'
    assert cfg.model.architecture.channels == f'work_dirs/{name}_label_free_prune{suffix}/channels.json'
    assert cfg.load_from == f'work_dirs/{name}_label_free_prune{suffix}/pruned.pth'
    prune = Config.fromfile(_path(task, name, 'prune', suffix))
    assert cfg.model.teacher_checkpoint == prune.load_from  # the teacher: the model pruning started from
    assert cfg.model.architecture.architecture == prune.model.architecture  # the same unpruned architecture
    assert not cfg.get('custom_hooks')
    # build it from a random 30% mask of the unpruned model and that model's weights as the teacher checkpoint
    shape = (3, 128, 128) if task == 'detection' else (3, 64, 64)
    unpruned_cfg = _model_cfg(cfg).architecture.architecture
    if cfg.get('data_preprocessor') is not None:  # what the distiller hands down to the student (and Pruned)
        unpruned_cfg.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
    unpruned = _build(cfg, copy.deepcopy(unpruned_cfg))
    graph = analyze_fast(unpruned, lambda m: make_trace_forward(m, shape))
    channels = str(tmp_path / 'channels.json')
    save_channel_config(channel_config(unpruned, graph, random_alive(graph, 0.3, seed=0)), channels)
    teacher = str(tmp_path / 'unpruned.pth')
    torch.save({'state_dict': unpruned.state_dict()}, teacher)
    model_cfg = _model_cfg(cfg)
    model_cfg.architecture.channels = channels
    model_cfg.teacher_checkpoint = teacher
    model_cfg.input_shape = shape
    model = _build(cfg, model_cfg)
    n_student = sum(p.numel() for p in model.student.parameters())
    n_teacher = sum(p.numel() for p in model.teacher.parameters())
    assert n_student < n_teacher and type(model.student) is type(model.teacher)
    assert all(torch.equal(v, unpruned.state_dict()[k]) for k, v in model.teacher.state_dict().items())


@pytest.mark.parametrize('name, base', TINY)
def test_tiny_configs(tmp_path, name, base):
    prune = Config.fromfile(osp.join(CONFIGS, 'tiny', f'{name}_label_free_prune.py'))
    ft = Config.fromfile(osp.join(CONFIGS, 'tiny', f'{name}_label_free_finetune.py'))
    plain = Config.fromfile(osp.join(CONFIGS, 'tiny', base))
    assert prune.model.architecture == plain.model and ft.model.architecture.architecture == plain.model
    assert prune.train_dataloader.dataset.type == ft.train_dataloader.dataset.type == 'mmfisher.UnlabeledImages'
    assert prune.train_dataloader.dataset.data_root == 'data/generated/shapes_unlabeled/'
    assert prune.val_dataloader.dataset.type == plain.val_dataloader.dataset.type  # labeled val, for measuring
    assert ft.model.teacher_checkpoint == prune.load_from
    assert ft.load_from == f'work_dirs/{name}_label_free_prune/pruned.pth'
    model = _build(prune)
    assert len(model.anchor_names) == 5 and model.input_shape == prune.custom_hooks[0].input_shape
