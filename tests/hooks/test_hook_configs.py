"""configs/_base_/fisher_pruning.py and fisher_finetune.py combine with mmdet / mmpretrain / our tiny bases."""
import inspect
import os.path as osp
import textwrap

import pytest
from mmengine.config import Config
from mmengine.registry import HOOKS, DefaultScope

from _hook_helpers import DET_CFG, ROOT
from mmfisher.hooks import FisherPruningHook


def _child(tmp_path, base: str, body: str = '') -> Config:
    path = str(tmp_path / 'child.py')
    with open(path, 'w') as f:
        f.write(f'_base_ = [{base!r}, {"mmfisher::_base_/fisher_pruning.py"!r}]\n' + textwrap.dedent(body))
    return Config.fromfile(path)


@pytest.mark.parametrize('base, scope', [
    ('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', 'mmdet'),
    ('mmpretrain::resnet/resnet50_8xb32_in1k.py', 'mmpretrain'),
    (DET_CFG, 'mmdet'),
])
def test_pruning_base_combines_and_builds_the_hook_with_its_documented_defaults(tmp_path, base, scope):
    cfg = _child(tmp_path, base)
    assert cfg.default_scope == scope and len(cfg.custom_hooks) == 1
    with DefaultScope.overwrite_default_scope(scope):
        hook = HOOKS.build(cfg.custom_hooks[0])
    assert isinstance(hook, FisherPruningHook)
    defaults = {k: v.default for k, v in inspect.signature(FisherPruningHook).parameters.items()}
    args = {k: v for k, v in cfg.custom_hooks[0].items() if k not in ('type', '_scope_')}
    assert args == defaults  # the base file spells out exactly the class defaults


def test_hook_arguments_override_from_the_command_line(tmp_path):
    cfg = _child(tmp_path, DET_CFG)
    cfg.merge_from_dict({'custom_hooks.0.target': 0.3, 'custom_hooks.0.input_shape': (3, 128, 128)})
    hook = HOOKS.build(cfg.custom_hooks[0])
    assert hook.target == 0.3 and hook.input_shape == (3, 128, 128) and hook.interval == 10


def test_plain_hook_name_resolves_under_the_task_scopes():
    import mmfisher  # noqa: F401  registers FisherPruningHook in mmengine's root registry too
    for scope in ('mmdet', 'mmpretrain'):
        with DefaultScope.overwrite_default_scope(scope):
            assert isinstance(HOOKS.build(dict(type='FisherPruningHook')), FisherPruningHook)


def test_finetune_base_sets_no_keys():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', '_base_', 'fisher_finetune.py'))
    assert not {k for k in cfg.keys() if not k.startswith('_')}
