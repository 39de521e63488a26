"""The pruning schedule: the hook's options in a real Runner (the selection rules: tests/core/test_selection.py)."""
import json
import os
import os.path as osp

import numpy as np

from _hook_helpers import ToyNet, get_hook, toy_runner

SHAPE = (3, 12, 12)


# ---------------------------------------------------------------------------------------------- hook options
def _zero_readers(hook) -> bool:
    """Every reader's input weights on masked atoms are exactly zero."""
    dead = ~hook.masks.alive.numpy()
    modules = {name: module for name, module, _ in hook.masks.readers}
    for name, atoms in hook.graph.in_atoms.items():
        cols = np.nonzero((atoms >= 0) & dead[np.clip(atoms, 0, None)])[0]
        if cols.size and modules[name].weight[:, cols].abs().max() != 0:
            return False
    return True


def test_masked_weights_stay_zero_with_momentum_and_gradient_accumulation(tmp_path):
    wrapper = dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-3), accumulative_counts=3)
    runner = toy_runner(str(tmp_path), dict(interval=2, input_shape=SHAPE, target=0.4, stop_at_target=False),
                        max_iters=20, optim_wrapper=wrapper)
    runner.train()
    hook = get_hook(runner)
    assert hook.done and runner.iter == 20  # stop_at_target=False: trained on with the final masks
    assert _zero_readers(hook)
    written = json.load(open(osp.join(str(tmp_path), 'channels.json')))
    kept = [len(u['kept']) for u in written['units']]
    assert sum(kept) == int(hook.masks.alive.sum())


def test_skip_start_iter_and_divisor(tmp_path):
    runner = toy_runner(str(tmp_path), dict(interval=2, input_shape=SHAPE, target=0.5, skip=('mid',), start_iter=4,
                                            divisor=2, channels_per_step=2), max_iters=40)
    runner.train()
    hook = get_hook(runner)
    g = hook.graph
    alive = hook.masks.alive.numpy()
    assert alive[g.out_atoms['mid']].all()  # the unit `mid` produces is skipped
    assert not alive[g.in_atoms['mid']].all()  # the unit it reads is not
    assert hook.skipped_units and 'skipped by' in hook.summary('ToyNet', 0.0)
    written = json.load(open(osp.join(str(tmp_path), 'channels.json')))
    for unit in written['units']:
        assert len(unit['kept']) % 2 == 0 or len(unit['kept']) == unit['channels']
        assert len(unit['kept']) >= 2
    assert written['meta']['flops_ratio'] <= 0.5 and written['meta']['divisor'] == 2 and hook.done


def test_fisher_is_not_collected_before_start_iter(tmp_path):
    runner = toy_runner(str(tmp_path / 'a'), dict(interval=1000, input_shape=SHAPE, start_iter=3), max_iters=5)
    runner.train()
    assert get_hook(runner).samples == 2 * 4  # iterations 3 and 4 (0-based), batch 4
    # interval=2 from start_iter=3: the first step follows iterations 3 and 4
    runner = toy_runner(str(tmp_path / 'b'), dict(interval=2, input_shape=SHAPE, start_iter=3), max_iters=4)
    runner.train()
    assert get_hook(runner).order == [] and get_hook(runner).samples == 4
    runner = toy_runner(str(tmp_path / 'c'), dict(interval=2, input_shape=SHAPE, start_iter=3), max_iters=5)
    runner.train()
    assert len(get_hook(runner).order) == 1 and get_hook(runner).samples == 0


def test_target_on_activations(tmp_path):
    runner = toy_runner(str(tmp_path), dict(interval=1, input_shape=SHAPE, target=0.8, target_metric='acts',
                                            delta='flops', channels_per_step=1), max_iters=40,
                        model=ToyNet(width=8))
    runner.train()
    hook = get_hook(runner)
    r = hook.ratios()
    assert hook.done and r['acts'] <= 0.8
    # one step earlier the target was not reached yet: the step that crossed it was the last one
    alive = hook.masks.alive.numpy().copy()
    alive[hook.order[-1]] = True
    assert hook.ratios(alive, hook.order[:-1])['acts'] > 0.8
    assert sorted(np.nonzero(~alive)[0].tolist()) == sorted(hook.order[:-1])


def test_unreachable_target_writes_the_last_structure_and_says_so(tmp_path):
    runner = toy_runner(str(tmp_path), dict(interval=1, input_shape=SHAPE, target=0.2, skip=('a', 'mid'),
                                            channels_per_step=2), max_iters=30)
    runner.train()
    hook = get_hook(runner)
    alive = hook.masks.alive.numpy()
    assert hook.done and runner.iter < 30
    assert alive[hook.graph.in_atoms['a']].sum() == 1  # only the stem unit was eligible: down to one atom
    written = json.load(open(osp.join(str(tmp_path), 'channels.json')))
    assert written['meta']['reached'] is False and written['meta']['flops_ratio'] > 0.2


def test_training_that_ends_before_the_target_still_writes_its_structure(tmp_path):
    runner = toy_runner(str(tmp_path), dict(interval=2, input_shape=SHAPE, target=0.1, channels_per_step=1),
                        max_iters=6, model=ToyNet(width=8))
    runner.train()
    hook = get_hook(runner)
    assert runner.iter == 6 and len(hook.order) == 3 and not hook.done  # still resumable
    written = json.load(open(osp.join(str(tmp_path), 'channels.json')))
    assert written['meta']['reached'] is False and written['meta']['flops_ratio'] > 0.1
    assert sum(u['channels'] - len(u['kept']) for u in written['units']) == 3
    assert os.path.isfile(osp.join(str(tmp_path), 'pruned.pth'))
