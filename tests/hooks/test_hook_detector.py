"""FisherPruningHook end to end in a real mmengine Runner on an mmdet RetinaNet, and the Pruned model it feeds."""
import copy
import os
import os.path as osp

import numpy as np
import torch
from mmengine.registry import MODELS
from mmengine.runner import Runner

from _hook_helpers import DET_SHAPE, assert_same_outputs, det_cfg, get_hook

HOOK = dict(interval=1, channels_per_step=32, target=0.7, save_thresholds=(0.85,), input_shape=DET_SHAPE)


def test_pruning_a_retinanet_writes_a_pruned_model_equal_to_the_masked_one(tmp_path):
    work = str(tmp_path / 'prune')
    cfg = det_cfg(work, HOOK, max_iters=40)
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = get_hook(runner)

    # the schedule: FLOPs go down every step and training stopped at the target, before max_iters
    history = runner.message_hub.get_scalar('train/flops_ratio').data[0]
    assert len(history) >= 3 and np.all(np.diff(history) < 0) and history[0] < 1
    assert hook.done and history[-1] <= 0.7 < history[-2]
    assert runner.iter == len(history) < 40
    pruned = runner.message_hub.get_scalar('train/pruned_atoms').data[0]
    assert pruned[-1] == len(hook.order) and np.all(np.diff(pruned) > 0)
    assert hook.graph.trainable.all() and {'bbox_head.retina_cls', 'bbox_head.retina_reg'} <= set(
        hook.graph.unprunable)

    # outputs: atomically written, loadable with weights_only
    files = sorted(os.listdir(work))
    for name in ('channels.json', 'pruned.pth', 'channels_0.85.json', 'pruned_0.85.pth'):
        assert name in files
    assert not [f for f in files if f.endswith('.tmp')]
    ckpt = torch.load(osp.join(work, 'pruned.pth'), map_location='cpu', weights_only=True)
    assert ckpt['meta']['flops_ratio'] <= 0.7 and ckpt['meta']['channels'] == 'channels.json'
    assert ckpt['meta']['dataset_meta']['classes'] == ['circle', 'square', 'triangle']

    # the Pruned model: the same class, smaller, loads pruned.pth strictly, computes what the masked model computes
    masked = copy.deepcopy(runner.model)
    slim = MODELS.build(dict(type='mmfisher.Pruned', architecture=cfg.model,
                             channels=osp.join(work, 'channels.json')))
    assert type(slim) is type(masked)
    slim.load_state_dict(ckpt['state_dict'], strict=True)
    n_slim = sum(p.numel() for p in slim.parameters())
    n_full = sum(p.numel() for p in masked.parameters())
    assert n_slim < 0.8 * n_full
    batch = masked.data_preprocessor(next(iter(runner.train_dataloader)), False)
    assert_same_outputs(masked, slim, lambda m: m(batch['inputs'], batch['data_samples'], mode='tensor'))

    # the predictions (decoding + NMS) agree as well
    masked.eval()
    slim.eval()
    with torch.no_grad():
        pa = masked(batch['inputs'], copy.deepcopy(batch['data_samples']), mode='predict')
        pb = slim(batch['inputs'], copy.deepcopy(batch['data_samples']), mode='predict')
    for a, b in zip(pa, pb):
        torch.testing.assert_close(b.pred_instances.scores, a.pred_instances.scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b.pred_instances.bboxes, a.pred_instances.bboxes, rtol=1e-4, atol=1e-3)

    # the threshold snapshot is a valid, larger structure
    mid = MODELS.build(dict(type='mmfisher.Pruned', architecture=cfg.model,
                            channels=osp.join(work, 'channels_0.85.json')))
    mid.load_state_dict(torch.load(osp.join(work, 'pruned_0.85.pth'), weights_only=True)['state_dict'])
    assert n_slim < sum(p.numel() for p in mid.parameters()) < n_full
