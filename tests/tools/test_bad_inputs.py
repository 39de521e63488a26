"""Every bad input fails early with an error that names the field and the fix; failed runs leave no outputs."""
import json
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.registry import MODELS
from torch import nn

from _hook_helpers import DET_CFG, ROOT, ToyNet, ensure_det_data, get_hook, toy_runner
from mmfisher.core import ChannelConfigError, analyze, channel_config, input_forward, save_channel_config
from mmfisher.hooks import FisherPruningHook

SHAPE = (3, 12, 12)


@pytest.mark.parametrize('kwargs, field, hint', [
    (dict(delta='fisher'), "delta='fisher'", "'acts'"),
    (dict(delta=None), 'delta=None', "'flops'"),
    (dict(target=0), 'target=0', '(0, 1)'),
    (dict(target=1.0), 'target=1.0', '(0, 1)'),
    (dict(target=1.5), 'target=1.5', 'remaining share'),
    (dict(target='half'), "target='half'", '(0, 1)'),
    (dict(target_metric='latency'), "target_metric='latency'", "'flops'"),
    (dict(interval=0), 'interval=0', '>= 1'),
    (dict(interval=2.5), 'interval=2.5', '>= 1'),
    (dict(channels_per_step=0), 'channels_per_step=0', '>= 1'),
    (dict(channels_per_step=-3), 'channels_per_step=-3', '>= 1'),
    (dict(input_shape=(3, 224)), 'input_shape=(3, 224)', '(C, H, W)'),
    (dict(input_shape='3x224x224'), "input_shape='3x224x224'", '(C, H, W)'),
    (dict(input_shape=(3, 0, 224)), 'input_shape=(3, 0, 224)', 'positive'),
    (dict(save_thresholds=(0.4,), target=0.5), 'save_thresholds=(0.4,)', 'between the target and 1'),
    (dict(divisor=0), 'divisor=0', 'multiples'),
    (dict(start_iter=-1), 'start_iter=-1', '>= 0'),
])
def test_bad_hook_arguments_raise_value_error_naming_the_field(kwargs, field, hint):
    with pytest.raises(ValueError) as info:
        FisherPruningHook(**kwargs)
    assert field in str(info.value) and hint in str(info.value)


@pytest.mark.parametrize('kwargs, field', [
    (dict(skip=3), 'skip=3'),
    (dict(skip=['ok', 1]), "skip=['ok', 1]"),
    (dict(prune_frozen='yes'), "prune_frozen='yes'"),
    (dict(stop_at_target=1), 'stop_at_target=1'),
    (dict(save_thresholds='0.7'), "save_thresholds='0.7'"),
])
def test_badly_typed_hook_arguments_raise_type_error(kwargs, field):
    with pytest.raises(TypeError, match=field.replace('[', r'\[').replace(']', r'\]').replace('(', r'\(')):
        FisherPruningHook(**kwargs)


def test_good_arguments_are_normalised():
    hook = FisherPruningHook(save_thresholds=(0.6, 0.75, 0.6), skip='neck.*', input_shape=[3, 64, 64], target=0.5)
    assert hook.save_thresholds == (0.75, 0.6) and hook.skip == ('neck.*',) and hook.input_shape == (3, 64, 64)


# ---------------------------------------------------------------------------------------------- channel configs
def _cls_channels(tmp_path, width: int):
    """A channel config of a torchvision-free tiny model built through the registry (mmengine root scope)."""
    model = MODELS.build(dict(type='MmfisherTestTinyNet', width=width))
    graph = analyze(model, input_forward(torch.randn(1, 3, 8, 8)))
    alive = torch.ones(graph.num_atoms, dtype=torch.bool).numpy()
    alive[0] = False
    path = str(tmp_path / f'channels_w{width}.json')
    save_channel_config(channel_config(model, graph, alive), path)
    return path


@MODELS.register_module(name='MmfisherTestTinyNet', force=True)
class TinyNet(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, width, 3)
        self.b = nn.Conv2d(width, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_channel_config_of_another_model_is_refused(tmp_path):
    path = _cls_channels(tmp_path, width=4)
    assert MODELS.build(dict(type='mmfisher.Pruned', architecture=dict(type='MmfisherTestTinyNet', width=4),
                             channels=path)).a.out_channels == 3
    with pytest.raises(ChannelConfigError, match='another model.*build the same model config that was pruned'):
        MODELS.build(dict(type='mmfisher.Pruned', architecture=dict(type='MmfisherTestTinyNet', width=6),
                          channels=path))


def test_missing_and_corrupted_channel_configs(tmp_path):
    arch = dict(type='MmfisherTestTinyNet', width=4)
    with pytest.raises(ChannelConfigError, match='does not exist.*channels.json that FisherPruningHook wrote'):
        MODELS.build(dict(type='mmfisher.Pruned', architecture=arch, channels=str(tmp_path / 'nope.json')))
    good = _cls_channels(tmp_path, width=4)
    truncated = str(tmp_path / 'truncated.json')
    with open(good) as f, open(truncated, 'w') as g:
        g.write(f.read()[:40])
    with pytest.raises(ChannelConfigError, match='not valid JSON.*corrupted'):
        MODELS.build(dict(type='mmfisher.Pruned', architecture=arch, channels=truncated))
    other = str(tmp_path / 'other.json')
    with open(other, 'w') as f:
        json.dump({'hello': 1}, f)
    with pytest.raises(ChannelConfigError, match='not an mmfisher channel config'):
        MODELS.build(dict(type='mmfisher.Pruned', architecture=arch, channels=other))
    cfg = json.load(open(good))
    cfg['layers']['a']['out'] = [0, 7]  # an index past the layer's channels
    with pytest.raises(ChannelConfigError, match='invalid indices'):
        MODELS.build(dict(type='mmfisher.Pruned', architecture=arch, channels=cfg))
    with pytest.raises(TypeError, match='architecture must be the unpruned model config'):
        MODELS.build(dict(type='mmfisher.Pruned', architecture='TinyNet', channels=good))
    with pytest.raises(TypeError, match='channels must be the path of a channels.json'):
        MODELS.build(dict(type='mmfisher.Pruned', architecture=arch, channels=3))


# ---------------------------------------------------------------------------------------------- hook at run time
class OnlyOutput(ToyNet):
    """Nothing prunable: one conv whose output is the model output."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 2, 1)

    def features(self, x):
        return self.head(x)


def test_model_with_nothing_prunable_fails_before_training(tmp_path):
    runner = toy_runner(str(tmp_path), dict(input_shape=SHAPE), model=OnlyOutput())
    with pytest.raises(ValueError, match='nothing to prune in OnlyOutput.*head: reaches the model output.*Fix'):
        runner.train()
    assert runner.iter == 0
    assert not [f for f in os.listdir(tmp_path) if f.startswith(('channels', 'pruned'))]


def test_everything_frozen_or_skipped_fails_with_the_reason(tmp_path):
    model = ToyNet()
    for p in model.parameters():
        p.requires_grad_(False)
    model.head.weight.requires_grad_(True)
    runner = toy_runner(str(tmp_path / 'frozen'), dict(input_shape=SHAPE, skip=('mid',)), model=model)
    with pytest.raises(ValueError, match=r'no atom is eligible.*skip=\(\'mid\',\).*prune_frozen=True'):
        runner.train()


def test_checkpoint_masks_that_do_not_fit_the_model(tmp_path):
    first = toy_runner(str(tmp_path / 'a'), dict(input_shape=SHAPE, interval=1, target=0.2), max_iters=2,
                       ckpt_interval=2, experiment_name='a')
    first.train()
    ckpt = osp.join(str(tmp_path / 'a'), 'iter_2.pth')
    assert len(get_hook(first).order) == 2

    wider = toy_runner(str(tmp_path / 'b'), dict(input_shape=SHAPE), model=ToyNet(width=8), load_from=ckpt,
                       experiment_name='b')
    with pytest.raises(ValueError, match='checkpoint masks do not fit the model.*num_atoms.*same model config'):
        wider.train()
    other_shape = toy_runner(str(tmp_path / 'c'), dict(input_shape=(3, 16, 16)), load_from=ckpt,
                             experiment_name='c')
    with pytest.raises(ValueError, match=r'input_shape=\(3, 12, 12\).*set input_shape=\(3, 12, 12\)'):
        other_shape.train()
    same = toy_runner(str(tmp_path / 'd'), dict(input_shape=SHAPE, interval=1000), load_from=ckpt, max_iters=1,
                      experiment_name='d')
    same.train()
    assert get_hook(same).order == get_hook(first).order  # a fitting state is restored, masks re-applied
    assert torch.equal(get_hook(same).masks.alive, get_hook(first).masks.alive)


# ---------------------------------------------------------------------------------------------- tools/train.py
def _prune_cfg(tmp_path) -> str:
    ensure_det_data()
    path = str(tmp_path / 'prune.py')
    data_root = osp.join(ROOT, 'data', 'generated', 'shapes_det') + '/'
    with open(path, 'w') as f:
        f.write(textwrap.dedent(f"""\
            _base_ = [{DET_CFG!r}, 'mmfisher::_base_/fisher_pruning.py']
            custom_hooks = [dict(type='mmfisher.FisherPruningHook', interval=1, channels_per_step=64, target=0.8,
                                 input_shape=(3, 128, 128))]
            train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=3, val_interval=100)
            param_scheduler = None
            train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                                    dataset=dict(data_root={data_root!r}))
            val_dataloader = None
            val_cfg = None
            val_evaluator = None
            """))
    return path


def _train(cfg: str, work: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, 'tools/train.py', cfg, '--work-dir', work, *extra], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))


def _outputs(work: str):
    found = []
    for _, _, files in os.walk(work):
        found += [f for f in files if f.startswith(('channels', 'pruned', '.channels', '.pruned'))
                  or f.endswith('.tmp')]
    return found


def test_tools_train_bad_delta_exits_non_zero_without_outputs(tmp_path):
    work = str(tmp_path / 'work')
    proc = _train(_prune_cfg(tmp_path), work, '--cfg-options', 'custom_hooks.0.delta=bogus')
    assert proc.returncode != 0
    assert "delta='bogus' is unknown: use one of ('acts', 'flops', 'none')" in proc.stdout
    assert not osp.isdir(work) or not _outputs(work)


def test_tools_train_checkpoint_that_does_not_fit_exits_non_zero_without_outputs(tmp_path):
    bad = str(tmp_path / 'foreign.pth')
    torch.save({'meta': {}, 'state_dict': {},
                'fisher_pruning': {'version': 1, 'alive': torch.ones(5, dtype=torch.bool),
                                   'fisher': torch.zeros(5, dtype=torch.float64), 'samples': 0, 'order': [],
                                   'saved': [], 'done': False, 'num_atoms': 5, 'fingerprint': 'x', 'digest': 'y',
                                   'input_shape': [3, 128, 128]}}, bad)
    work = str(tmp_path / 'work')
    proc = _train(_prune_cfg(tmp_path), work, '--cfg-options', f'load_from={bad}')
    assert proc.returncode != 0
    assert 'checkpoint masks do not fit the model (num_atoms: checkpoint 5' in proc.stdout
    assert not _outputs(work)


# ---------------------------------------------------------------------------------------------- tools/test.py
CLS_CFG = osp.join(ROOT, 'configs', 'tiny', 'resnet_tiny_shapes_cls.py')


def _test(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, 'tools/test.py', *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1'))


def test_tools_test_refuses_a_checkpoint_that_leaves_weights_random(tmp_path):
    # the unpruned config given a slimmed pruned.pth: mmengine would load it with size-mismatch warnings and
    # report the metrics of a partly random model
    from mmengine.config import Config
    from mmfisher.data_gen import make_all
    from mmfisher.zoo import build_model
    make_all(osp.join(ROOT, 'data', 'generated'), which=['shapes_cls'])
    torch.manual_seed(0)
    state = build_model(Config.fromfile(CLS_CFG), init_weights=True).state_dict()
    slim = {k: (v[:v.shape[0] // 2] if k.startswith(('backbone.conv1.', 'backbone.bn1.')) and v.dim() else v)
            for k, v in state.items()}
    bad = str(tmp_path / 'pruned.pth')
    torch.save({'state_dict': slim, 'meta': dict(mmfisher='FisherPruningHook', channels='channels.json',
                                                 structure_digest='0' * 32)}, bad)
    small = ['--cfg-options', 'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
             'test_dataloader.dataset.indices=8']
    work = str(tmp_path / 't')
    proc = _test(CLS_CFG, bad, '--work-dir', work, '--out', str(tmp_path / 'preds.pkl'), *small)
    assert proc.returncode != 0
    assert ('CheckpointMismatch: the checkpoint does not fit the ImageClassifier of this config: 5 of '
            in proc.stdout), proc.stdout[-3000:]
    assert 'tensors have other shapes (e.g. backbone.conv1.weight (8, 3, 7, 7) in the checkpoint' in proc.stdout
    assert "It is a pruned checkpoint (written by FisherPruningHook, channels.json): to test it" in proc.stdout
    assert 'accuracy/top1' not in proc.stdout and not osp.exists(str(tmp_path / 'preds.pkl'))  # nothing evaluated
    whole = str(tmp_path / 'trained.pth')
    torch.save({'state_dict': state, 'meta': {}}, whole)
    proc = _test(CLS_CFG, whole, '--work-dir', str(tmp_path / 'ok'), *small)
    assert proc.returncode == 0 and 'accuracy/top1' in proc.stdout, proc.stdout[-3000:]  # a fitting one tests
    proc = _test(CLS_CFG, bad, '--work-dir', str(tmp_path / 'partial'), '--allow-partial-checkpoint', *small)
    assert proc.returncode == 0 and '--allow-partial-checkpoint: testing it as loaded' in proc.stdout
