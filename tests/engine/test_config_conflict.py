"""A pruning base beside a model base that sets the same key (custom_hooks: SSD, YOLOX, RTMDet, ...): mmengine's
bare KeyError becomes an error naming the key, both bases and the recipe that works; the recipe loads."""
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest

import mmfisher  # noqa: F401  (mmfisher:: bases resolve after this import)
from mmfisher.engine import ConfigConflict, load_config

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
MODEL_BASE = textwrap.dedent("""
    default_scope = 'mmdet'
    model = dict(type='RetinaNet')
    custom_hooks = [dict(type='EMAHook', momentum=0.0002)]
""")


def _write(path, text):
    with open(path, 'w') as f:
        f.write(textwrap.dedent(text))
    return str(path)


def test_a_pruning_base_beside_a_model_base_with_hooks_names_the_key_the_bases_and_the_recipe(tmp_path):
    _write(tmp_path / 'model.py', MODEL_BASE)
    cfg = _write(tmp_path / 'prune.py', """
        _base_ = ['./model.py', 'mmfisher::_base_/balanced_pruning.py']
        load_from = 'trained.pth'
    """)
    with pytest.raises(ConfigConflict) as info:
        load_config(cfg)
    msg = str(info.value)
    assert "'custom_hooks' is set by ./model.py, mmfisher::_base_/balanced_pruning.py" in msg
    assert "custom_hooks = _base_.custom_hooks + [dict(type='mmfisher.BalancedPruningHook'" in msg
    assert isinstance(info.value, ValueError) and cfg in msg


def test_the_recipe_the_error_gives_loads_with_both_hooks(tmp_path):
    _write(tmp_path / 'model.py', MODEL_BASE)
    cfg = _write(tmp_path / 'prune.py', """
        _base_ = ['./model.py']
        load_from = 'trained.pth'
        custom_hooks = _base_.custom_hooks + [dict(type='mmfisher.BalancedPruningHook', target=0.5)]
    """)
    hooks = load_config(cfg).custom_hooks
    assert [h['type'] for h in hooks] == ['EMAHook', 'mmfisher.BalancedPruningHook']


def test_a_conflict_in_a_nested_base_is_found_there_and_other_keys_get_the_generic_fix(tmp_path):
    _write(tmp_path / 'a.py', "train_cfg = dict(max_iters=1)\n")
    _write(tmp_path / 'b.py', "train_cfg = dict(max_iters=2)\n")
    _write(tmp_path / 'mid.py', "_base_ = ['./a.py', './b.py']\n")
    cfg = _write(tmp_path / 'top.py', "_base_ = ['./mid.py']\n")
    with pytest.raises(ConfigConflict) as info:
        load_config(cfg)
    msg = str(info.value)
    assert "'train_cfg' is set by ./a.py, ./b.py" in msg and 'mid.py' in msg
    assert 'set train_cfg in your config' in msg


def test_a_zoo_model_base_with_hooks_through_train_py_exits_non_zero_and_writes_nothing(tmp_path):
    cfg = _write(tmp_path / 'ssdlite_prune.py', """
        _base_ = ['mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py', 'mmfisher::_base_/balanced_pruning.py']
        load_from = 'trained.pth'
    """)
    work = tmp_path / 'work'
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), cfg, '--work-dir', str(work)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode != 0
    assert 'ConfigConflict' in proc.stderr and "'custom_hooks' is set by mmdet::ssd/" in proc.stderr
    assert '_base_.custom_hooks + [' in proc.stderr
    assert not work.exists()


def test_the_fisher_pruning_base_names_its_own_hook(tmp_path):
    _write(tmp_path / 'model.py', MODEL_BASE)
    cfg = _write(tmp_path / 'prune.py', "_base_ = ['./model.py', 'mmfisher::_base_/fisher_pruning.py']\n")
    with pytest.raises(ConfigConflict, match=r"_base_\.custom_hooks \+ \[dict\(type='mmfisher\.FisherPruningHook'"):
        load_config(cfg)


def test_a_config_named_by_a_relative_path_is_resolved_as_mmengine_does(tmp_path, monkeypatch):
    (tmp_path / 'cfgs').mkdir()
    _write(tmp_path / 'cfgs' / 'model.py', MODEL_BASE)
    _write(tmp_path / 'cfgs' / 'prune.py', "_base_ = ['./model.py', 'mmfisher::_base_/balanced_pruning.py']\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigConflict, match=r"'custom_hooks' is set by \./model\.py, mmfisher::"):
        load_config(osp.join('cfgs', 'prune.py'))
