"""A pruning hook's load_from / resume checkpoint must fill the model it prunes (mmengine loads non-strictly and
would leave the rest random): :func:`mmfisher.hooks.checkpoint_match.checkpoint_mismatch` and FisherPruningHook's
refusal."""
import os.path as osp

import pytest
import torch
from torch import nn

from _hook_helpers import ToyNet, toy_runner


def _state(width=6):
    torch.manual_seed(0)
    return ToyNet(width=width).state_dict()


def test_a_checkpoint_that_fills_the_model_is_accepted_in_every_spelling():
    from mmfisher.hooks.checkpoint_match import checkpoint_mismatch
    net = ToyNet()
    sd = _state()
    assert checkpoint_mismatch(net, net, {'state_dict': sd}) is None
    assert checkpoint_mismatch(net, net, sd) is None  # a bare state dict, as mmengine reads it
    assert checkpoint_mismatch(net, net, {'state_dict': {f'module.{k}': v for k, v in sd.items()}}) is None
    extra = dict(sd, **{'aux.weight': torch.zeros(3)})  # more than the model: nothing stays random
    assert checkpoint_mismatch(net, net, {'state_dict': extra}) is None
    old = {k: v for k, v in sd.items() if not k.endswith('num_batches_tracked')}  # an older checkpoint
    assert checkpoint_mismatch(net, net, {'state_dict': old}) is None


def test_a_distillers_student_is_matched_against_plain_and_prefixed_keys():
    from mmfisher.hooks.checkpoint_match import checkpoint_mismatch

    class Distiller(nn.Module):
        def __init__(self):
            super().__init__()
            self.student, self.teacher = ToyNet(), ToyNet()

    full = Distiller()
    sd = _state()
    assert checkpoint_mismatch(full, full.student, {'state_dict': sd}) is None
    run = {f'{side}.{k}': v for k, v in sd.items() for side in ('student', 'teacher')}
    assert checkpoint_mismatch(full, full.student, {'state_dict': run}) is None
    narrow = {f'student.{k}': v for k, v in _state(width=4).items()}
    assert 'other shapes (e.g. stem.weight (4, 3, 3, 3) in the checkpoint, (6, 3, 3, 3) in the model' in \
        checkpoint_mismatch(full, full.student, {'state_dict': narrow})


def test_missing_and_reshaped_tensors_are_counted_and_named():
    from mmfisher.hooks.checkpoint_match import checkpoint_mismatch
    net = ToyNet()
    sd = _state()
    n = len(net.state_dict())
    del sd['head.weight'], sd['head.bias']
    sd['mid.weight'] = sd['mid.weight'][:3]
    why = checkpoint_mismatch(net, net, {'state_dict': sd})
    assert why == (f'1 of {n} tensors have other shapes (e.g. mid.weight (3, 6, 1, 1) in the checkpoint, '
                   f'(6, 6, 1, 1) in the model); 2 of {n} tensors are missing (e.g. head.weight, head.bias)')
    assert checkpoint_mismatch(net, net, [1, 2]) == 'it holds no state_dict (list)'


def test_fisher_pruning_hook_refuses_a_checkpoint_of_another_width_unless_allowed(tmp_path):
    from mmfisher.hooks.checkpoint_match import CheckpointMismatch
    bad = str(tmp_path / 'narrow.pth')
    torch.save({'state_dict': _state(width=4)}, bad)
    hook = dict(interval=2, target=0.6, input_shape=(3, 12, 12))
    work = str(tmp_path / 'w')
    with pytest.raises(CheckpointMismatch, match=r'FisherPruningHook: the checkpoint does not fit the ToyNet it would '
                       r'prune: \d+ of \d+ tensors have other shapes.*Fix: set load_from to the trained checkpoint.*'
                       r'allow_partial_checkpoint=True'):
        toy_runner(work, hook, load_from=bad, max_iters=4).train()
    assert not osp.exists(osp.join(work, 'channels.json'))
    good = str(tmp_path / 'same.pth')
    torch.save({'state_dict': _state()}, good)
    toy_runner(str(tmp_path / 'w2'), hook, load_from=good, max_iters=2).train()  # a fitting checkpoint loads
    runner = toy_runner(str(tmp_path / 'w3'), dict(hook, allow_partial_checkpoint=True), load_from=bad, max_iters=2)
    runner.train()
    assert runner.iter == 2
    with pytest.raises(TypeError, match='allow_partial_checkpoint'):
        toy_runner(str(tmp_path / 'w4'), dict(hook, allow_partial_checkpoint=1))
