# Group Fisher pruning (Liu et al., ICML 2021) of ATSS R50-FPN on COCO, step 1 of 2: prune the trained model.
#
#   tools/dist_train.sh configs/detection/atss_r50_fpn_fisher_prune_coco.py 8
#
# Ordinary training of the trained detector with FisherPruningHook: every 10 iterations the channel with the least
# Fisher information per activation it produces is masked, until the FLOPs at 800x1333 are half of the unpruned
# model's (the paper: ATSS* 38.1 -> 38.0 AP at about 50% FLOPs). The run then stops and writes
# work_dirs/atss_r50_fpn_fisher_prune_coco/channels.json (the pruned structure) and pruned.pth (the slimmed
# weights); step 2, atss_r50_fpn_fisher_finetune_coco.py, fine-tunes them with the standard 1x schedule.
# docs/model_zoo.md has the paper's figures and the commands for every model. The recipe (hook arguments, schedule,
# backbone changes) and why each value: configs/_base_/fisher_prune_coco.py.
#
# The paper's ATSS* has no GroupNorm in its head; mmdet's ATSS (this base config) has, so the baseline differs from
# the paper's. GN is pruned by whole groups (a GN group is one atom), so the remaining groups keep their statistics.
_base_ = ['mmdet::atss/atss_r50_fpn_1x_coco.py', '../_base_/fisher_prune_coco.py']

# mmdet's released checkpoint of the base config (its metafile.yml). To prune your own model: --cfg-options
# load_from=PATH (never None).
load_from = 'https://download.openmmlab.com/mmdetection/v2.0/atss/atss_r50_fpn_1x_coco/atss_r50_fpn_1x_coco_20200209-985f7bd0.pth'  # noqa: E501

model = _base_.fisher_prune_coco.model  # every backbone stage trains and is pruned; no ImageNet initialisation
custom_hooks = [_base_.fisher_prune_coco.hook]  # 50% of the FLOPs at (3, 800, 1333), every 10 iterations
# max_iters = interval x the model's 12,224 prunable channel groups: a bound that is never hit
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=123000, val_interval=123000)
optim_wrapper = _base_.fisher_prune_coco.optim_wrapper
param_scheduler = [_base_.param_scheduler[0]]  # the base config's warm-up, then a constant learning rate
default_hooks = _base_.fisher_prune_coco.default_hooks
log_processor = _base_.fisher_prune_coco.log_processor
