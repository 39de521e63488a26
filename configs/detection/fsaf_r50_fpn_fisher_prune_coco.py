# Group Fisher pruning (Liu et al., ICML 2021) of FSAF R50-FPN on COCO, step 1 of 2: prune the trained model.
#
#   tools/dist_train.sh configs/detection/fsaf_r50_fpn_fisher_prune_coco.py 8
#
# Ordinary training of the trained detector with FisherPruningHook: every 10 iterations the channel with the least
# Fisher information per activation it produces is masked, until the FLOPs at 800x1333 are half of the unpruned
# model's (the paper: 37.4 -> 37.3 AP at about 50% FLOPs). The run then stops and writes
# work_dirs/fsaf_r50_fpn_fisher_prune_coco/channels.json (the pruned structure) and pruned.pth (the slimmed
# weights); step 2, fsaf_r50_fpn_fisher_finetune_coco.py, fine-tunes them with the standard 1x schedule.
# docs/model_zoo.md has the paper's figures and the commands for every model.
_base_ = ['mmdet::fsaf/fsaf_r50_fpn_1x_coco.py', 'mmfisher::_base_/fisher_pruning.py']

# The trained, unpruned model that is pruned: mmdet's released checkpoint of the base config (its metafile.yml),
# also the official Group Fisher code's starting point. To prune your own model, put its path here or pass
# --cfg-options load_from=PATH. Never set None: mmengine then loads nothing, silently, and the hook would prune a
# randomly initialised detector.
load_from = 'https://download.openmmlab.com/mmdetection/v2.0/fsaf/fsaf_r50_fpn_1x_coco/fsaf_r50_fpn_1x_coco-94ccc51f.pth'  # noqa: E501

# As in the official code, every backbone stage trains and is pruned: the 1x recipe freezes the stem and stage 1,
# whose channels then receive no gradient (their Fisher cannot be measured, so the hook would keep them all).
# No ImageNet initialisation: load_from overwrites every weight (this also avoids a download).
# fsaf_r50_fpn_fisher_finetune_coco.py makes the same two changes to its architecture.
model = dict(backbone=dict(frozen_stages=-1, init_cfg=None))

custom_hooks = [
    dict(
        type='mmfisher.FisherPruningHook',
        interval=10,                 # the paper's interval for detection
        delta='acts',                # Fisher / activations saved (the paper's memory-normalised default)
        target=0.5,                  # stop at 50% of the unpruned FLOPs
        target_metric='flops',
        channels_per_step=1,         # one channel per step, as the paper (larger values prune faster, coarser)
        input_shape=(3, 800, 1333),  # FLOPs / activations counted at the 1x test resolution
    ),
]

# The pruning phase trains at a constant small learning rate after the warm-up (the official code's lr=0.002 for 8
# GPUs x 2 images; the 1x step decay at epoch 8 is never reached before the target). The loop is iteration based so
# that it ends as soon as the target is reached (an epoch-based loop would finish its epoch). max_iters is only a
# bound that is never hit: interval x the model's 14,016 prunable channel groups, one of which is masked per step
# (the paper's RetinaNet took about 2,300 steps). A run that ends before the target
# writes the structure reached so far (channels.json with meta.reached = false).
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=141000, val_interval=141000)
optim_wrapper = dict(optimizer=dict(lr=0.002))
param_scheduler = [_base_.param_scheduler[0]]  # the base config's warm-up, then a constant learning rate
# checkpoints hold the masks and Fisher sums: --resume continues the pruning exactly
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2000, max_keep_ckpts=3))
log_processor = dict(by_epoch=False)
