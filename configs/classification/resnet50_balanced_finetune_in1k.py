# Balanced one-shot pruning of ResNet-50 on ImageNet, step 2 of 2: fine-tune the slimmed model.
#
#   tools/dist_train.sh configs/classification/resnet50_balanced_finetune_in1k.py 8
#
# Builds the classifier of the base config, slims it to the channels that resnet50_balanced_prune_in1k.py kept and
# loads the pruned weights (the mmfisher.Pruned pattern of configs/_base_/fisher_finetune.py), then trains it with
# the base config's standard schedule. The paths below are relative: run from the directory the pruning run was
# started in, or pass --cfg-options model.channels=... load_from=... for another work_dir.
_base_ = ['mmpretrain::resnet/resnet50_8xb32_in1k.py', 'mmfisher::_base_/fisher_finetune.py']

model = dict(_delete_=True, type='mmfisher.Pruned', architecture={{_base_.model}},
             channels='work_dirs/resnet50_balanced_prune_in1k/channels.json')
load_from = 'work_dirs/resnet50_balanced_prune_in1k/pruned.pth'  # the slimmed weights: names and shapes match
