# Group Fisher pruning of ResNet-50 on ImageNet, step 2 of 2: fine-tune the slimmed model.
#
#   tools/dist_train.sh configs/classification/resnet50_fisher_finetune_in1k.py 8
#   python tools/test.py configs/classification/resnet50_fisher_finetune_in1k.py \
#       work_dirs/resnet50_fisher_finetune_in1k/epoch_100.pth
#
# Builds the classifier of the base config, slims it to the channels that resnet50_fisher_prune_in1k.py kept and
# loads the pruned weights, then trains it with the base config's standard schedule, as the paper does. The result
# is a plain, smaller ImageClassifier: test it, run it in mmpretrain's inferencer or export it like the unpruned
# one. The paths below are relative: run from the directory the pruning run was started in, or pass --cfg-options
# model.channels=... load_from=... for another work_dir.
_base_ = ['mmpretrain::resnet/resnet50_8xb32_in1k.py', 'mmfisher::_base_/fisher_finetune.py']

# mmfisher::_base_/fisher_finetune.py's pattern: replace the base model by the unpruned one slimmed to `channels`
model = dict(_delete_=True, type='mmfisher.Pruned', architecture={{_base_.model}},
             channels='work_dirs/resnet50_fisher_prune_in1k/channels.json')
load_from = 'work_dirs/resnet50_fisher_prune_in1k/pruned.pth'  # the slimmed weights: names and shapes match
