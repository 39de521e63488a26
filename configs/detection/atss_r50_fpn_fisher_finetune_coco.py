# Group Fisher pruning of ATSS R50-FPN on COCO, step 2 of 2: fine-tune the slimmed model.
#
#   tools/dist_train.sh configs/detection/atss_r50_fpn_fisher_finetune_coco.py 8
#   python tools/test.py configs/detection/atss_r50_fpn_fisher_finetune_coco.py \
#       work_dirs/atss_r50_fpn_fisher_finetune_coco/epoch_12.pth
#
# Builds the ATSS of the base config, slims it to the channels that atss_r50_fpn_fisher_prune_coco.py kept and loads
# the pruned weights, then trains it with the base config's standard 1x schedule, as the paper does. The result is a
# plain, smaller ATSS: test it, run it in mmdet's inferencer or export it like the unpruned one. The paths below are
# relative: run from the directory the pruning run was started in, or pass --cfg-options model.channels=...
# load_from=... for another work_dir.
_base_ = ['mmdet::atss/atss_r50_fpn_1x_coco.py', 'mmfisher::_base_/fisher_finetune.py']

# mmfisher::_base_/fisher_finetune.py's pattern: replace the base model by the unpruned one slimmed to `channels`
model = dict(_delete_=True, type='mmfisher.Pruned', architecture=_base_.model,
             channels='work_dirs/atss_r50_fpn_fisher_prune_coco/channels.json')
# the prune config's two backbone changes (fisher_prune_coco.py): every stage trains; no ImageNet download
model['architecture']['backbone'].update(frozen_stages=-1, init_cfg=None)
load_from = 'work_dirs/atss_r50_fpn_fisher_prune_coco/pruned.pth'  # the slimmed weights: names and shapes match
