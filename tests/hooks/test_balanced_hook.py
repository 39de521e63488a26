"""BalancedPruningHook (seed 003) through an mmengine Runner and the mm tools: it prunes before the first
iteration, writes channels.json + pruned.pth (+ the curves and plots) and stops; bad input is refused with the field
and the fix, a non-zero exit and no result files."""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from mmengine.runner import Runner

from _hook_helpers import ROOT, ToyData, ToyNet, assert_same_outputs

OUTPUTS = ('channels.json', 'pruned.pth', 'balanced_curves.json', 'balanced_curves.png', 'kept_channels.png')
WIDTH = 16


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A briefly trained ToyNet(16) (30 SGD steps) as an mmengine-style checkpoint."""
    torch.manual_seed(0)
    net = ToyNet(width=WIDTH)
    data = ToyData()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for i in range(30):
        x = torch.stack([data[j]['inputs'] for j in range(4 * i % 256, 4 * i % 256 + 4)])
        y = torch.stack([data[j]['data_samples'] for j in range(4 * i % 256, 4 * i % 256 + 4)])
        loss = net(x, y, mode='loss')['loss']
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = str(tmp_path_factory.mktemp('ckpt') / 'trained.pth')
    torch.save({'state_dict': net.state_dict()}, path)
    return path


def toy_loader(dataset):
    return dict(dataset=dataset, sampler=dict(type='DefaultSampler', shuffle=True), batch_size=4, num_workers=0,
                collate_fn=dict(type='default_collate'))


def toy_runner(work_dir, load_from=None, train_data=None, **hook):
    import mmfisher  # noqa: F401  registers the hook
    torch.manual_seed(0)
    return Runner(
        model=ToyNet(width=WIDTH), work_dir=work_dir,
        train_dataloader=toy_loader(ToyData() if train_data is None else train_data),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)), train_cfg=dict(by_epoch=False, max_iters=20),
        custom_hooks=[dict(type='mmfisher.BalancedPruningHook',
                           **dict(dict(input_shape=(3, 12, 12), target=0.5, calibration_batches=3), **hook))],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1000, by_epoch=False)),
        load_from=load_from, default_scope=None, randomness=dict(seed=0))


def get_hook(runner):
    from mmfisher.hooks import BalancedPruningHook
    return next(h for h in runner.hooks if isinstance(h, BalancedPruningHook))


def no_outputs(work_dir):
    left = [f for f in OUTPUTS if osp.exists(osp.join(work_dir, f))]
    temps = [f for f in os.listdir(work_dir) if f.endswith('.tmp')] if osp.isdir(work_dir) else []
    assert not left and not temps, (left, temps)


def test_hook_prunes_before_training_writes_the_pair_and_stops(tmp_path, checkpoint):
    from mmfisher.core import apply_channel_config, load_channel_config
    from mmfisher.core.export import DIGEST_KEY
    work = str(tmp_path / 'w')
    runner = toy_runner(work, load_from=checkpoint)
    runner.train()
    assert runner.iter == 0  # no training iteration ran
    hook = get_hook(runner)
    res = hook.result
    for f in OUTPUTS:
        assert osp.getsize(osp.join(work, f)) > 0, f
    assert res.ratios['flops'] <= 0.5 and res.batches == 3 and res.samples == 12
    with open(osp.join(work, 'balanced_curves.json')) as f:
        curves = json.load(f)
    assert curves['tau'] == pytest.approx(res.tau) and curves['search_steps'] == res.search_steps >= 1
    assert curves['calibration_batches'] == 3 and curves['mode'] == 'measured'
    assert curves['combined_loss'] == pytest.approx(res.combined_loss)
    assert curves['sum_unit_variations'] == pytest.approx(res.sum_variations)
    assert {u['name'] for u in curves['units']} and all(u['k'] and u['variation'] for u in curves['units'])
    assert 'trace' in curves['wall_s'] and 'curves' in curves['wall_s']
    # the points measured, and the grid points skipped above the threshold the target could need
    assert curves['points_measured'] == res.points == sum(len(u['k']) for u in curves['units']) >= 1
    assert curves['grid_points'] == res.grid_points == sum(len(u['grid_k']) for u in curves['units'])
    assert all(u['k'] + u['unmeasured_k'] == u['grid_k'] for u in curves['units'])
    cfg = load_channel_config(osp.join(work, 'channels.json'))
    meta = cfg['meta']
    assert meta['mmfisher'] == 'BalancedPruningHook' and meta['flops_ratio'] == pytest.approx(res.ratios['flops'])
    assert meta['tau'] == pytest.approx(res.tau) and meta['calibration_batches'] == 3
    # the slimmed model (a real smaller ToyNet) computes what the masked model computes
    slim = apply_channel_config(ToyNet(width=WIDTH), cfg)
    state = torch.load(osp.join(work, 'pruned.pth'), weights_only=True)['state_dict']
    state.pop(DIGEST_KEY, None)
    slim.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in runner.model.parameters())
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    assert_same_outputs(runner.model, slim, lambda m: m(x))


def test_estimated_mode_with_l1_ranking_from_a_config_dict(tmp_path, checkpoint):
    work = str(tmp_path / 'w')
    runner = toy_runner(work, load_from=checkpoint, mode='estimated', importance=dict(type='L1Norm'), target=0.6,
                        allocation='variation_per_cost')
    runner.train()
    res = get_hook(runner).result
    assert res.allocation == 'variation_per_cost' and all(c.freed is not None for c in res.curves)
    with open(osp.join(work, 'balanced_curves.json')) as f:
        assert json.load(f)['allocation'] == 'variation_per_cost'
    # the Fisher pass, the BN re-estimation of the pruned structure, the combined loss: 3 batches each
    # the Fisher pass, the check of the estimated structure (it agrees here: no repair), the re-estimation
    assert res.mode == 'estimated' and res.forwards == 3 * 3 and res.ratios['flops'] <= 0.6
    assert res.repair['rounds'] == 0 and res.repair['points'] == []
    assert res.norms_recalibrated == 1
    assert osp.isfile(osp.join(work, 'channels.json'))


def test_calibration_dataloader_replaces_the_training_batches(tmp_path, checkpoint):
    """A held-out calibration split: the curves, the base loss and the structure are those of a run whose training
    dataloader is that split, and not those of the training data."""
    held_out = ToyData(seed=5)
    runs = {}
    for name, kw in (('train', {}), ('held_out_as_train', dict(train_data=held_out)),
                     ('calibration_dataloader', dict(calibration_dataloader=toy_loader(held_out)))):
        runner = toy_runner(str(tmp_path / name), load_from=checkpoint, **kw)
        runner.train()
        assert runner.iter == 0
        hook = get_hook(runner)
        runs[name] = (hook.result, hook.state.masks.alive.clone())
        with open(osp.join(tmp_path, name, 'balanced_curves.json')) as f:
            assert json.load(f)['calibration_data'] == ('calibration_dataloader' if name == 'calibration_dataloader'
                                                        else 'train_dataloader')
    given, same = runs['calibration_dataloader'], runs['held_out_as_train']
    assert given[0].base_loss == pytest.approx(same[0].base_loss, rel=1e-6)
    assert given[0].tau == pytest.approx(same[0].tau, rel=1e-6) and torch.equal(given[1], same[1])
    assert [v for c in given[0].curves for v in c.variation.tolist()] == pytest.approx(
        [v for c in same[0].curves for v in c.variation.tolist()], rel=1e-5, abs=1e-9)
    assert abs(given[0].base_loss - runs["train"][0].base_loss) > 1e-4 * abs(given[0].base_loss)


def test_a_near_zero_training_loss_warns_and_names_calibration_dataloader(tmp_path, checkpoint, monkeypatch):
    from mmfisher.hooks import balanced_pruning_hook as bph
    monkeypatch.setattr(bph, 'OVERFIT_LOSS', 1e9)  # every loss counts as "fits its training batches"
    seen = []
    for name, kw in (('train', {}), ('given', dict(calibration_dataloader=toy_loader(ToyData(seed=5))))):
        runner = toy_runner(str(tmp_path / name), load_from=checkpoint, **kw)
        logged = []
        monkeypatch.setattr(runner.logger, 'warning', lambda msg, *a, **k: logged.append(msg))
        runner.train()
        seen.append([m for m in logged if 'calibration_dataloader' in m])
    assert len(seen[0]) == 1 and 'held-out' in seen[0][0]
    assert seen[1] == []  # calibrated on the data given: no advice


def test_a_calibration_set_smaller_than_calibration_batches_warns_with_the_count(tmp_path, checkpoint, monkeypatch):
    small = toy_loader(ToyData(n=6, seed=5))  # batch_size 4: 2 batches (the last one of 2 images)
    runner = toy_runner(str(tmp_path / 'w'), load_from=checkpoint, calibration_dataloader=small,
                        calibration_batches=5, grid=(0.5,))
    logged = []
    monkeypatch.setattr(runner.logger, 'warning', lambda msg, *a, **k: logged.append(msg))
    runner.train()
    short = [m for m in logged if 'gave' in m]
    assert short == ['BalancedPruningHook: calibration_batches=5 but the calibration_dataloader gave 2 batch(es) in '
                     'total (its dataset is smaller): the curves were measured on 2. Fix: a larger calibration set, '
                     'or calibration_batches <= 2 to silence this']
    assert get_hook(runner).result.batches == 2
    with open(osp.join(tmp_path, 'w', 'channels.json')) as f:
        assert json.load(f)['meta']['calibration_batches'] == 2


def test_an_input_shape_far_from_the_batches_images_warns_with_their_size(tmp_path, checkpoint, monkeypatch):
    for name, shape, expect in (('same', (3, 12, 12), 0), ('far', (3, 48, 48), 1)):
        runner = toy_runner(str(tmp_path / name), load_from=checkpoint, input_shape=shape, grid=(0.5,))
        logged = []
        monkeypatch.setattr(runner.logger, 'warning', lambda msg, *a, **k: logged.append(msg))
        runner.train()
        notes = [m for m in logged if 'input_shape=' in m]
        assert len(notes) == expect, notes
    assert notes[0].startswith('BalancedPruningHook: input_shape=(3, 48, 48) but the training batches hold 3x12x12 '
                               'images') and notes[0].endswith('Fix: set input_shape=(3, 12, 12) in the hook (the size '
                                                               'it is deployed at)')


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize('value, error', [(5, TypeError), ('data/val', TypeError), (dict(batch_size=4), ValueError)])
def test_bad_calibration_dataloader_names_the_field(value, error):
    from mmfisher.hooks import BalancedPruningHook
    with pytest.raises(error, match='calibration_dataloader'):
        BalancedPruningHook(calibration_dataloader=value)


def test_no_load_from_is_refused_unless_allowed(tmp_path):
    work = str(tmp_path / 'w')
    with pytest.raises(ValueError, match='load_from is not set.*Fix: set load_from to the trained.*'
                                         'allow_random_init=True'):
        toy_runner(work).train()
    no_outputs(work)
    work2 = str(tmp_path / 'w2')
    toy_runner(work2, allow_random_init=True, calibration_batches=1, grid=(0.5,)).train()
    assert osp.isfile(osp.join(work2, 'channels.json'))


@pytest.mark.parametrize('value', [0, -1, 2.5, True])
def test_calibration_batches_must_be_a_positive_int(value):
    from mmfisher.registry import HOOKS
    with pytest.raises(ValueError, match=rf'^calibration_batches={value!r} must be an int >= 1'):
        HOOKS.build(dict(type='mmfisher.BalancedPruningHook', calibration_batches=value))


@pytest.mark.parametrize('kwargs, field', [(dict(target=1.5), 'target'), (dict(mode='fast'), 'mode'),
                                           (dict(grid=[0.5, 2]), 'grid'), (dict(input_shape=(3, 12)), 'input_shape'),
                                           (dict(importance=dict(type='Nope')), 'importance'),
                                           (dict(allocation='cost'), 'allocation')])
def test_bad_hook_arguments_name_the_field(kwargs, field):
    from mmfisher.registry import HOOKS
    with pytest.raises(ValueError, match=f'^{field}'):
        HOOKS.build(dict(type='mmfisher.BalancedPruningHook', **kwargs))


def test_unreachable_target_is_refused_with_the_best_ratio_and_nothing_written(tmp_path, checkpoint):
    from mmfisher.core.balanced import TargetUnreachable
    work = str(tmp_path / 'w')
    with pytest.raises(TargetUnreachable, match=r'target=0\.05 \(flops\) cannot be reached: the best reachable '
                                                r'ratio is 0\.\d{4}.*Fix: set target >= '):
        toy_runner(work, load_from=checkpoint, target=0.05, skip=('stem',)).train()
    no_outputs(work)


def test_a_checkpoint_of_another_width_is_refused_unless_allowed(tmp_path, checkpoint):
    # a checkpoint whose tensors do not fit the model (here the head of a narrower net): mmengine loads it
    # non-strictly and keeps those weights random; the hook refuses before anything is measured
    from mmfisher.hooks.checkpoint_match import CheckpointMismatch
    state = torch.load(checkpoint, weights_only=True)['state_dict']
    state['head.weight'] = state['head.weight'][:, :WIDTH - 4]
    del state['mid.bias']
    bad = str(tmp_path / 'narrow.pth')
    torch.save({'state_dict': state}, bad)
    work = str(tmp_path / 'w')
    with pytest.raises(CheckpointMismatch, match=r'BalancedPruningHook: the checkpoint does not fit the ToyNet it '
                       r'would prune: 1 of \d+ tensors have other shapes \(e\.g\. head\.weight \(2, 12, 1, 1\) in the '
                       r'checkpoint, \(2, 16, 1, 1\) in the model\); 1 of \d+ tensors are missing \(e\.g\. mid\.bias\).*'
                       r'Fix: set load_from to the trained checkpoint.*allow_partial_checkpoint=True'):
        toy_runner(work, load_from=bad).train()
    no_outputs(work)
    work2 = str(tmp_path / 'w2')
    runner = toy_runner(work2, load_from=bad, allow_partial_checkpoint=True, calibration_batches=1, grid=(0.5,))
    runner.train()
    assert osp.isfile(osp.join(work2, 'channels.json'))
    with pytest.raises(TypeError, match='allow_partial_checkpoint'):
        toy_runner(str(tmp_path / 'w3'), load_from=checkpoint, allow_partial_checkpoint='yes')


def test_nan_loss_of_the_unpruned_model_is_refused_and_nothing_written(tmp_path, checkpoint):
    from mmfisher.core.balanced import NonFiniteLoss
    state = torch.load(checkpoint, weights_only=True)['state_dict']
    state['head.bias'] = torch.full_like(state['head.bias'], float('nan'))
    bad = str(tmp_path / 'nan.pth')
    torch.save({'state_dict': state}, bad)
    work = str(tmp_path / 'w')
    with pytest.raises(NonFiniteLoss, match='calibration loss of the unpruned model is nan.*Fix: set load_from'):
        toy_runner(work, load_from=bad).train()
    no_outputs(work)


# ---------------------------------------------------------------------------------------------- the mm tools
CLS_PRUNE = osp.join(ROOT, 'configs', 'tiny', 'resnet_tiny_cls_balanced_prune.py')
CLS_FINETUNE = osp.join(ROOT, 'configs', 'tiny', 'resnet_tiny_cls_balanced_finetune.py')
SMALL_DATA = ['train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
              'train_dataloader.batch_size=8', 'val_dataloader.num_workers=0',
              'val_dataloader.persistent_workers=False']


def _env():
    env = {k: v for k, v in os.environ.items() if k != 'PORT'}
    env.update(OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    return env


def _cls_checkpoint(path: str) -> str:
    """The tiny classifier's initial weights as a checkpoint (the mechanics need no trained model)."""
    from mmengine.config import Config
    from mmfisher.data_gen import make_all
    from mmfisher.zoo import build_model
    make_all(osp.join(ROOT, 'data', 'generated'), which=['shapes_cls'])
    torch.manual_seed(0)
    model = build_model(Config.fromfile(CLS_PRUNE), init_weights=True)
    torch.save({'state_dict': model.state_dict()}, path)
    return path


def _train(args, timeout=300):
    return subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'train.py')] + args, cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def _finetune_as_pruned(tmp_path, work: str) -> str:
    """Fine-tune the pair in ``work`` with the labeled mmfisher.Pruned config (16 images: 2 iterations, then
    validation); its work dir."""
    ft = str(tmp_path / 'ft')
    proc = _train([CLS_FINETUNE, '--work-dir', ft, '--cfg-options', f'model.channels={work}/channels.json',
                   f'load_from={work}/pruned.pth', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
                   'train_dataloader.dataset.indices=16', 'val_dataloader.dataset.indices=16'] + SMALL_DATA)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert 'Pruned: built ImageClassifier' in proc.stdout and 'accuracy/top1' in proc.stdout
    return ft


def test_tiny_classifier_config_prunes_with_train_py_and_fine_tunes_as_pruned(tmp_path):
    ckpt = _cls_checkpoint(str(tmp_path / 'init.pth'))
    work = str(tmp_path / 'prune')
    proc = _train([CLS_PRUNE, '--work-dir', work, '--cfg-options', f'load_from={ckpt}',
                   'custom_hooks.0.calibration_batches=2', 'custom_hooks.0.grid=[0.25,0.5,0.75]'] + SMALL_DATA)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert 'BalancedPruningHook: pruned in one shot (measured)' in proc.stdout
    assert 'Epoch(train)' not in proc.stdout  # no training iteration
    for f in OUTPUTS:
        assert osp.isfile(osp.join(work, f)), f
    with open(osp.join(work, 'channels.json')) as f:
        meta = json.load(f)['meta']
    assert meta['flops_ratio'] <= 0.5 and meta['mmfisher'] == 'BalancedPruningHook'
    # the result fine-tunes with the mmfisher.Pruned pattern (16 images: 2 iterations, then validation)
    ft = _finetune_as_pruned(tmp_path, work)
    assert osp.isfile(osp.join(ft, 'epoch_1.pth'))



CLS_LABEL_FREE = osp.join(ROOT, 'configs', 'tiny', 'resnet_tiny_cls_balanced_label_free_prune.py')


@pytest.mark.parametrize('anchors', ['None', "'auto'"])
def test_label_free_config_measures_the_exact_distillation_loss_and_writes_a_plain_classifier(tmp_path, anchors):
    """The distiller config (output KL against the frozen unpruned model, unlabeled images; and with seed 002's
    anchors, whose feature capture hooks the teacher for one forward: the replay must compute what lies above
    them): the Fisher pass uses the sampled terms, every measurement the exact ones (their own base); the pair is
    the student's, which the labeled fine-tune config rebuilds as a Pruned ImageClassifier."""
    from mmfisher.data_gen import make_all
    make_all(osp.join(ROOT, 'data', 'generated'), which=['shapes_unlabeled'])
    ckpt = _cls_checkpoint(str(tmp_path / 'init.pth'))
    work = str(tmp_path / 'prune')
    proc = _train([CLS_LABEL_FREE, '--work-dir', work, '--cfg-options', f'load_from={ckpt}',
                   'custom_hooks.0.calibration_batches=2', 'custom_hooks.0.grid=[0.25,0.5,0.75]',
                   f'model.anchors={anchors}'] + SMALL_DATA)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert 'LabelFreeDistiller' in proc.stdout and 'BalancedPruningHook: pruned in one shot (measured)' in proc.stdout
    sampled = float(re.search(r'unpruned calibration loss ([0-9.e+-]+) over 2 batches', proc.stdout).group(1))
    exact = float(re.search(r'unpruned calibration loss ([0-9.e+-]+) in the measuring loss', proc.stdout).group(1))
    with open(osp.join(work, 'balanced_curves.json')) as f:
        curves = json.load(f)
    assert curves['base_loss'] == pytest.approx(exact, rel=1e-4) and exact != pytest.approx(sampled, rel=1e-3)
    # Fisher, exact base, BN re-estimation (= combined loss; the replay records in the points: no pass of its own)
    assert curves['replay'] is not None and curves['replay']['calls_replayed'] > 0
    assert curves['forwards'] == 2 * (curves['points_measured'] + 3)
    if anchors != 'None':  # the teacher's containers above its hooked anchors were computed
        assert any(n.startswith('teacher.') for n in curves['replay']['hooked']), curves['replay']['hooked']
    with open(osp.join(work, 'channels.json')) as f:
        written = json.load(f)
    assert written['meta']['flops_ratio'] <= 0.5
    assert written['layers'] and all(n.startswith(('backbone.', 'neck.', 'head.')) for n in written['layers'])
    _finetune_as_pruned(tmp_path, work)


def test_train_py_without_load_from_exits_non_zero_naming_the_field(tmp_path):
    work = str(tmp_path / 'prune')
    proc = _train([CLS_PRUNE, '--work-dir', work, '--cfg-options', 'load_from=None'] + SMALL_DATA)
    assert proc.returncode != 0
    assert 'BalancedPruningHook: load_from is not set' in proc.stdout and 'allow_random_init=True' in proc.stdout
    no_outputs(work)


def test_train_py_refuses_a_pruned_checkpoint_as_load_from_and_writes_nothing(tmp_path):
    # the slimmed pruned.pth of an earlier run given to the unpruned config: named as a pruned checkpoint, with the
    # Pruned model as the way to use it
    ckpt = _cls_checkpoint(str(tmp_path / 'init.pth'))
    state = torch.load(ckpt, weights_only=True)['state_dict']
    slim = {k: (v[:v.shape[0] // 2] if k.startswith('backbone.bn1.') and v.dim() == 1 else v) for k, v in state.items()}
    slim['backbone.conv1.weight'] = state['backbone.conv1.weight'][:state['backbone.conv1.weight'].shape[0] // 2]
    bad = str(tmp_path / 'pruned.pth')
    torch.save({'state_dict': slim, 'meta': dict(mmfisher='BalancedPruningHook', channels='channels.json',
                                                 structure_digest='0' * 32)}, bad)
    work = str(tmp_path / 'prune')
    proc = _train([CLS_PRUNE, '--work-dir', work, '--cfg-options', f'load_from={bad}'] + SMALL_DATA)
    assert proc.returncode != 0
    assert re.search(r'CheckpointMismatch: BalancedPruningHook: the checkpoint does not fit the ImageClassifier it '
                     r'would prune: \d+ of \d+ tensors have other shapes \(e\.g\. backbone\.conv1\.weight', proc.stdout)
    assert "It is a pruned checkpoint (written by BalancedPruningHook, channels.json)" in proc.stdout
    assert "dict(type='mmfisher.Pruned'" in proc.stdout
    no_outputs(work)


def test_dist_train_splits_the_batches_and_every_rank_picks_rank_0s_structure(tmp_path):
    ckpt = _cls_checkpoint(str(tmp_path / 'init.pth'))
    work = str(tmp_path / 'prune')
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', CLS_PRUNE, '2', '--work-dir', work, '--cfg-options', f'load_from={ckpt}',
         'custom_hooks.0.calibration_batches=3', 'custom_hooks.0.grid=[0.5]'] + SMALL_DATA,
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:]
    with open(osp.join(work, 'balanced_curves.json')) as f:
        curves = json.load(f)
    # 3 batches of 8 in total over the 2 ranks (2 + 1); rank 1 checked its structure against rank 0's
    assert curves['world_size'] == 2 and curves['calibration_batches'] == 3 and curves['calibration_samples'] == 24
    assert osp.isfile(osp.join(work, 'pruned.pth'))
