"""Package layout, config resolution (``mmfisher::``) and the tiny configs' models."""
import os
import os.path as osp
import subprocess

import pytest
import torch
from mmengine.config import Config

import _foundation as F


def walk(obj):
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from walk(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from walk(v)


def test_import_applies_engine_patches():
    import mmengine.dist.utils as dist_utils
    from mmengine.model import MMDistributedDataParallel
    import mmfisher
    assert getattr(dist_utils._init_dist_pytorch, '_mmfisher_cpu_patch', False)
    assert getattr(MMDistributedDataParallel.__init__, '_mmfisher_cpu_patch', False)
    assert mmfisher.__version__


def test_mmfisher_scope_resolves_shipped_configs(tmp_path):
    """``_base_ = 'mmfisher::...'`` resolves through the installed package, like ``mmdet::`` (in a fresh process
    outside the repo, so neither the cwd nor an earlier import helps)."""
    cfg_file = tmp_path / 'uses_mmfisher_base.py'
    cfg_file.write_text("_base_ = ['mmfisher::tiny/retinanet_tiny_shapes.py']\n"
                        "model = dict(bbox_head=dict(num_classes=5))\n")
    script = ('import mmfisher\nfrom mmengine.config import Config\n'
              f'cfg = Config.fromfile({str(cfg_file)!r})\n'
              'print("RESOLVED", cfg.dataset_type, cfg.val_evaluator.type, cfg.model.backbone.base_channels, '
              'cfg.model.bbox_head.num_classes, cfg.model.type)\n')
    proc = subprocess.run([F.PYTHON, '-c', script], cwd=str(tmp_path), capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the mmfisher:: base, its own relative base (datasets/shapes_det.py) and its mmdet:: base all resolved
    assert 'RESOLVED CocoDataset CocoMetric 16 5 RetinaNet' in proc.stdout


@pytest.mark.parametrize('path,scope', [(F.DET_CFG, 'mmdet'), (F.CLS_CFG, 'mmpretrain')])
def test_tiny_configs_are_self_contained(path, scope):
    cfg = Config.fromfile(path)
    from mmfisher.engine.launch import detect_scope
    assert detect_scope(cfg) == scope
    assert cfg.custom_imports.imports == ['mmfisher']
    for d in walk(cfg._cfg_dict.to_dict()):
        init = d.get('init_cfg')
        inits = init if isinstance(init, list) else [init]
        assert not any(isinstance(i, dict) and i.get('type') == 'Pretrained' for i in inits), d
    assert cfg.load_from is None


def build(cfg_path):
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(cfg_path)
    init_default_scope(cfg.default_scope)
    model_cfg = cfg.model
    if cfg.get('data_preprocessor') and 'data_preprocessor' not in model_cfg:  # mmpretrain style, as Runner does
        model_cfg.data_preprocessor = cfg.data_preprocessor
    model = MODELS.build(model_cfg)
    model.init_weights()
    return cfg, model


def test_tiny_detector_builds_and_trains_one_step():
    F.ensure_data()
    from mmdet.registry import DATASETS
    from mmengine.dataset import pseudo_collate
    torch.manual_seed(0)
    cfg, model = build(F.DET_CFG)
    assert type(model).__name__ == 'RetinaNet' and cfg.model.neck.num_outs == 5
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 < n_params < 1_000_000, n_params
    ds = DATASETS.build(cfg.train_dataloader.dataset)
    batch = pseudo_collate([ds[i] for i in range(4)])
    data = model.data_preprocessor(batch, training=True)
    # the head is shared by the 5 FPN levels: count its calls
    calls = []
    h = model.bbox_head.retina_cls.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    losses = model(**data, mode='loss')
    h.remove()
    assert len(calls) == 5
    assert [s[-1] for s in calls] == [16, 8, 4, 2, 1]
    total = sum(sum(v) if isinstance(v, list) else v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total) and total > 0
    total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        preds = model(**model.data_preprocessor(batch, training=False), mode='predict')
    assert len(preds) == 4 and preds[0].pred_instances.bboxes.shape[-1] == 4


def test_tiny_classifier_builds_and_predicts():
    F.ensure_data()
    from mmpretrain.registry import DATASETS
    from mmengine.dataset import pseudo_collate
    cfg, model = build(F.CLS_CFG)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    ds = DATASETS.build(cfg.train_dataloader.dataset)
    batch = pseudo_collate([ds[i] for i in range(4)])
    losses = model(**model.data_preprocessor(batch, training=True), mode='loss')
    assert torch.isfinite(losses['loss']) and losses['loss'] > 0
    model.eval()
    with torch.no_grad():
        preds = model(**model.data_preprocessor(batch, training=False), mode='predict')
    assert preds[0].pred_score.shape == (3, )


def test_launch_helpers_on_cpu():
    from mmfisher.engine import launch
    cfg = Config.fromfile(F.DET_CFG)
    launch.set_launcher(cfg, 'pytorch')
    assert cfg.launcher == 'pytorch'
    assert cfg.env_cfg.dist_cfg.backend == ('nccl' if torch.cuda.is_available() else 'gloo')
    with pytest.raises(ValueError, match='--out'):
        launch.dump_metric('mmdet', 'results.json')
    bad = Config(dict(default_scope='mmseg'))
    with pytest.raises(ValueError, match='default_scope'):
        launch.detect_scope(bad)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='--amp'):
            launch.enable_amp(cfg)
    launch.set_resume(cfg, 'auto')
    assert cfg.resume is True and cfg.load_from is None
    launch.set_resume(cfg, 'x.pth')
    assert cfg.load_from == 'x.pth'
