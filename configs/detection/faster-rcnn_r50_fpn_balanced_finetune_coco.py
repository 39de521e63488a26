# Balanced one-shot pruning of Faster R-CNN R50-FPN on COCO, step 2 of 2: fine-tune the slimmed model.
#
#   tools/dist_train.sh configs/detection/faster-rcnn_r50_fpn_balanced_finetune_coco.py 8
#
# Builds the detector of the base config, slims it to the channels that faster-rcnn_r50_fpn_balanced_prune_coco.py kept and loads
# the pruned weights (the mmfisher.Pruned pattern of configs/_base_/fisher_finetune.py), then trains it with the base
# config's standard 1x schedule. The paths below are relative: run from the directory the pruning run was started
# in, or pass --cfg-options model.channels=... load_from=... for another work_dir.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', 'mmfisher::_base_/fisher_finetune.py']

model = dict(_delete_=True, type='mmfisher.Pruned', architecture=_base_.model,
             channels='work_dirs/faster-rcnn_r50_fpn_balanced_prune_coco/channels.json')
# the prune config's two backbone changes: every stage trains; no ImageNet download
model['architecture']['backbone'].update(frozen_stages=-1, init_cfg=None)
load_from = 'work_dirs/faster-rcnn_r50_fpn_balanced_prune_coco/pruned.pth'  # the slimmed weights: names and shapes match
