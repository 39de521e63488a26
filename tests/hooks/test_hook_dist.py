"""FisherPruningHook under DDP (2 CPU processes, gloo, tools/dist_train.sh): every rank takes the same decisions
from the Fisher information summed over ranks, and rank 0 writes the results."""
import os
import os.path as osp
import textwrap

from _hook_helpers import DET_CFG, ROOT, assert_ranks_agree, dist_train_probes, ensure_det_data


def test_ddp_ranks_prune_identically(tmp_path):
    ensure_det_data()
    data_root = osp.join(ROOT, 'data', 'generated', 'shapes_det') + '/'
    cfg = str(tmp_path / 'prune_ddp.py')
    with open(cfg, 'w') as f:
        f.write(textwrap.dedent(f"""\
            _base_ = [{DET_CFG!r}, 'mmfisher::_base_/fisher_pruning.py']
            custom_imports = dict(imports=['mmfisher', '_hook_probe'], allow_failed_imports=False)
            custom_hooks = [dict(type='mmfisher.FisherPruningHook', interval=2, channels_per_step=48, target=0.75,
                                 input_shape=(3, 128, 128)),
                            dict(type='PruningProbeHook')]
            model = dict(backbone=dict(base_channels=8), neck=dict(in_channels=[8, 16, 32, 64], out_channels=16),
                         bbox_head=dict(in_channels=16, feat_channels=16))
            train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=30, val_interval=100)
            param_scheduler = None
            default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=100, by_epoch=False))
            train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                                    dataset=dict(data_root={data_root!r}))
            val_dataloader = None
            val_cfg = None
            val_evaluator = None
            """))
    work = str(tmp_path / 'work')
    r0, r1 = dist_train_probes(cfg, work)
    # the Fisher sums are over both ranks: 2 ranks x batch 2 per iteration, reset at every pruning step
    assert_ranks_agree(r0, r1, max_iters=30, min_masked=48, first_samples=[4, 0])
    assert sorted(f for f in os.listdir(work) if f.startswith(('channels', 'pruned'))) == [
        'channels.json', 'pruned.pth']
