"""The balanced one-shot zoo configs: each loads through mmengine after ``import mmfisher``, inherits its package
config, prunes the released trained weights with BalancedPruningHook, and its fine-tune config rebuilds the slimmed
model with ``mmfisher.Pruned`` from the prune run's files."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config

import mmfisher  # noqa: F401  (mmdet:: / mmpretrain:: bases resolve after this import)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = osp.join(ROOT, 'configs')
ZOO = [  # (task, name, suffix, package base of the model)
    ('detection', 'retinanet_r50_fpn', 'coco', 'retinanet/retinanet_r50_fpn_1x_coco.py'),
    ('detection', 'fcos_r50-caffe_fpn_gn-head', 'coco', 'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py'),
    ('detection', 'faster-rcnn_r50_fpn', 'coco', 'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'),
    ('classification', 'resnet50', 'in1k', 'resnet/resnet50_8xb32_in1k.py'),
    ('classification', 'mobilenet-v2', 'in1k', 'mobilenet_v2/mobilenet-v2_8xb32_in1k.py'),
]


def _path(task, name, step, suffix):
    return osp.join(CONFIGS, task, f'{name}_balanced_{step}_{suffix}.py')


def test_every_balanced_zoo_config_is_listed():
    found = set(glob.glob(osp.join(CONFIGS, '*', '*_balanced_*.py'))) - set(glob.glob(osp.join(CONFIGS, 'tiny', '*')))
    listed = {_path(t, n, s, x) for t, n, x, _ in ZOO for s in ('prune', 'finetune')}
    assert found == listed


@pytest.mark.parametrize('task, name, suffix, base', ZOO, ids=[z[1] for z in ZOO])
def test_balanced_zoo_pair(task, name, suffix, base):
    prune = Config.fromfile(_path(task, name, 'prune', suffix))
    hooks = [h for h in prune.custom_hooks if str(h['type']).split('.')[-1] == 'BalancedPruningHook']
    assert len(hooks) == 1
    hook = hooks[0]
    assert 0 < hook['target'] < 1 and hook['calibration_batches'] >= 1
    assert prune.load_from and str(prune.load_from).endswith('.pth')  # a trained model is pruned
    from mmfisher.hooks import BalancedPruningHook
    BalancedPruningHook(**{k: v for k, v in hook.items() if k not in ('type', '_scope_')})  # arguments accepted
    from mmengine.utils import get_installed_path
    pkg = 'mmdet' if task == 'detection' else 'mmpretrain'
    package = Config.fromfile(osp.join(get_installed_path(pkg), '.mim', 'configs', base))
    assert prune.model.type == package.model.type  # the package's model, changed only as configured
    ft = Config.fromfile(_path(task, name, 'finetune', suffix))
    assert str(ft.model.type).split('.')[-1] == 'Pruned'
    work = f'work_dirs/{name}_balanced_prune_{suffix}'
    assert ft.model.channels == f'{work}/channels.json' and ft.load_from == f'{work}/pruned.pth'
    assert ft.model.architecture.type == package.model.type
    assert not [h for h in ft.get('custom_hooks') or [] if 'Pruning' in str(h.get('type'))]
