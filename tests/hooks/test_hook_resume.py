"""``--resume`` in the middle of pruning reproduces the uninterrupted run's masks, order and outputs."""
import io
import os.path as osp

import numpy as np
import torch

from _hook_helpers import get_hook, toy_runner


def _alone(obj) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


HOOK = dict(interval=2, input_shape=(3, 12, 12), target=0.3, channels_per_step=1, save_thresholds=(0.6,))


def test_resume_mid_pruning_matches_uninterrupted_run(tmp_path):
    full = toy_runner(str(tmp_path / 'full'), HOOK, max_iters=60, experiment_name='full')
    full.train()
    ref = get_hook(full)
    assert ref.done and len(ref.order) > 6, 'the uninterrupted run must prune for a while and reach the target'

    work = str(tmp_path / 'split')
    first = toy_runner(work, HOOK, max_iters=9, ckpt_interval=3, experiment_name='first')
    first.train()
    part = get_hook(first)
    assert not part.done and 0 < len(part.order) < len(ref.order)
    ckpt = osp.join(work, 'iter_9.pth')
    state = torch.load(ckpt, map_location='cpu', weights_only=True)['fisher_pruning']
    assert torch.serialization.get_unsafe_globals_in_checkpoint(_alone(state)) == []  # plain types only
    assert state['samples'] == 4 and state['order'] == part.order  # iter 9: one iteration since the last step
    assert torch.equal(state['alive'], part.masks.alive)

    second = toy_runner(work, HOOK, max_iters=60, resume=True, experiment_name='second')
    second.train()
    got = get_hook(second)
    assert got.done
    assert got.order == ref.order
    assert torch.equal(got.masks.alive, ref.masks.alive)
    assert second.iter == full.iter  # both stopped at the target, at the same iteration
    for name in ('channels.json', 'channels_0.6.json'):
        a = open(osp.join(str(tmp_path / 'full'), name)).read()
        b = open(osp.join(work, name)).read()
        assert a == b, name
    sd_a = torch.load(osp.join(str(tmp_path / 'full'), 'pruned.pth'), weights_only=True)['state_dict']
    sd_b = torch.load(osp.join(work, 'pruned.pth'), weights_only=True)['state_dict']
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        torch.testing.assert_close(sd_a[k], sd_b[k], rtol=0, atol=0, msg=k)
    assert np.isclose(get_hook(second).ratios()['flops'], ref.ratios()['flops'])
