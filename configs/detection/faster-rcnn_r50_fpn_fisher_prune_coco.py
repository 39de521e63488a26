# Group Fisher pruning (Liu et al., ICML 2021) of Faster R-CNN R50-FPN on COCO, step 1 of 2: prune the trained
# model.
#
#   tools/dist_train.sh configs/detection/faster-rcnn_r50_fpn_fisher_prune_coco.py 8
#
# Ordinary training of the trained detector with FisherPruningHook: every 10 iterations the channel with the least
# Fisher information per activation it produces is masked, until the FLOPs at 800x1333 are a quarter of the unpruned
# model's (the paper: 199.3 -> 49.8 GFLOPs, 37.4 -> 36.6 AP). The run then stops and writes
# work_dirs/faster-rcnn_r50_fpn_fisher_prune_coco/channels.json (the pruned structure) and pruned.pth (the slimmed
# weights); step 2, faster-rcnn_r50_fpn_fisher_finetune_coco.py, fine-tunes them with the standard 1x schedule.
# docs/model_zoo.md has the paper's figures and the commands for every model. The recipe (hook arguments, schedule,
# backbone changes) and why each value: configs/_base_/fisher_prune_coco.py.
#
# Two-stage: the RoI head is traced on fixed proposals, as many as the RPN keeps at test time (1,000), so its cost
# is counted at that number of RoIs. The FPN output channels are read by both the RPN conv and the RoI head's first
# FC (each channel owns its 7x7 RoI features), so they are one unit and are pruned together.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', '../_base_/fisher_prune_coco.py']

# mmdet's released checkpoint of the base config (its metafile.yml), also the official Group Fisher code's starting
# point. To prune your own model: --cfg-options load_from=PATH (never None).
load_from = 'https://download.openmmlab.com/mmdetection/v2.0/faster_rcnn/faster_rcnn_r50_fpn_1x_coco/faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth'  # noqa: E501

model = _base_.fisher_prune_coco.model  # every backbone stage trains and is pruned; no ImageNet initialisation
# stop at 25% of the unpruned FLOPs: the paper's 49.8 of 199.3 GFLOPs
custom_hooks = [dict(_base_.fisher_prune_coco.hook, target=0.25)]
# max_iters = interval x the model's 14,272 prunable channel groups: a bound that is never hit
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=143000, val_interval=143000)
optim_wrapper = _base_.fisher_prune_coco.optim_wrapper
param_scheduler = [_base_.param_scheduler[0]]  # the base config's warm-up, then a constant learning rate
default_hooks = _base_.fisher_prune_coco.default_hooks
log_processor = _base_.fisher_prune_coco.log_processor
