# Group Fisher pruning (Liu et al., ICML 2021) of RetinaNet R50-FPN on COCO, step 1 of 2: prune the trained model.
#
#   tools/dist_train.sh configs/detection/retinanet_r50_fpn_fisher_prune_coco.py 8
#
# Ordinary training of the trained detector with FisherPruningHook: every 10 iterations the channel with the least
# Fisher information per activation it produces is masked, until the FLOPs at 800x1333 are half of the unpruned
# model's (the paper: 238.5 -> 119.2 GFLOPs, 36.5 AP before and after fine-tuning). The run then stops and writes
# work_dirs/retinanet_r50_fpn_fisher_prune_coco/channels.json (the pruned structure) and pruned.pth (the slimmed
# weights); step 2, retinanet_r50_fpn_fisher_finetune_coco.py, fine-tunes them with the standard 1x schedule.
# docs/model_zoo.md has the paper's figures and the commands for every model. The recipe (hook arguments, schedule,
# backbone changes) and why each value: configs/_base_/fisher_prune_coco.py.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', '../_base_/fisher_prune_coco.py']

# mmdet's released checkpoint of the base config (its metafile.yml), also the official Group Fisher code's starting
# point. To prune your own model: --cfg-options load_from=PATH (never None).
load_from = 'https://download.openmmlab.com/mmdetection/v2.0/retinanet/retinanet_r50_fpn_1x_coco/retinanet_r50_fpn_1x_coco_20200130-c2398f9e.pth'  # noqa: E501

model = _base_.fisher_prune_coco.model  # every backbone stage trains and is pruned; no ImageNet initialisation
custom_hooks = [_base_.fisher_prune_coco.hook]  # 50% of the FLOPs at (3, 800, 1333), every 10 iterations
# max_iters = interval x the model's 14,016 prunable channel groups: a bound that is never hit
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=141000, val_interval=141000)
optim_wrapper = _base_.fisher_prune_coco.optim_wrapper
param_scheduler = [_base_.param_scheduler[0]]  # the base config's warm-up, then a constant learning rate
default_hooks = _base_.fisher_prune_coco.default_hooks
log_processor = _base_.fisher_prune_coco.log_processor
