# Label-free Group Fisher pruning (seed 002's method, applied to a detector) of RetinaNet R50-FPN on COCO images
# without labels, step 1 of 2: prune the trained model.
#
#   tools/dist_train.sh configs/detection/retinanet_r50_fpn_label_free_prune_coco.py 8
#
# The loss is distillation from a frozen copy of the trained detector only (a binary KL of the sigmoid class scores,
# the box deltas weighted by the teacher's score, plus MSE at 5 anchor layers chosen by seed 002's rule;
# mmfisher.models.LabelFreeDistiller), on the training images read as plain files (mmfisher.UnlabeledImages; the
# annotation file is never read, LoadAnnotations leaves the pipeline). The base's backbone keeps its BN in eval mode,
# so the student starts exactly equal to its teacher: the sampled targets of configs/_base_/label_free_pruning.py are
# what make the Fisher informative from the first step. Seed 002's schedule: the 500 channels with the least Fisher
# per activation are masked every 25 iterations until the FLOPs at 800x1333 are 50% of the unpruned model's. The run
# writes work_dirs/retinanet_r50_fpn_label_free_prune_coco/channels.json and pruned.pth (the slimmed student, the same
# files as labeled pruning); step 2, retinanet_r50_fpn_label_free_finetune_coco.py, fine-tunes them label-free.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', '../_base_/label_free_pruning.py']

# the trained, unpruned model: mmdet's released checkpoint of the base config (student and frozen teacher). To
# prune your own model: --cfg-options load_from=PATH (never None: the teacher would be a random model).
load_from = 'https://download.openmmlab.com/mmdetection/v2.0/retinanet/retinanet_r50_fpn_1x_coco/retinanet_r50_fpn_1x_coco_20200130-c2398f9e.pth'  # noqa: E501

# as in the labeled recipe: every backbone stage trains and is pruned (frozen stages get no Fisher), no ImageNet
# initialisation (load_from sets every weight); the fine-tune config makes the same changes
model = dict(_base_.label_free_pruning.model, _delete_=True, architecture=_base_.model,
             anchor_weight=0.01)  # detectors: see configs/_base_/label_free_pruning.py
model['architecture']['backbone'].update(frozen_stages=-1, init_cfg=None)
custom_hooks = [dict(_base_.label_free_pruning.hook, target=0.5)]  # 500 atoms every 25 iterations, at (3, 800, 1333)

train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='mmfisher.UnlabeledImages',
        data_root='data/coco/',
        data_prefix=dict(img_path='train2017/'),
        pipeline=_base_.train_pipeline))

# max_iters is only a bound that is never hit: 25 x the model's 14,016 prunable channel groups / 500 per step
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=725, val_interval=725)
optim_wrapper = dict(optimizer=dict(lr=0.002))  # the labeled recipe's small learning rate while pruning
param_scheduler = [_base_.param_scheduler[0]]    # the base config's warm-up, then a constant learning rate
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=200, max_keep_ckpts=3))
log_processor = dict(by_epoch=False)
