# Group Fisher pruning (Liu et al., ICML 2021) of MobileNetV2 on ImageNet, step 1 of 2: prune the trained model.
#
#   tools/dist_train.sh configs/classification/mobilenet-v2_fisher_prune_in1k.py 8
#
# Ordinary training of the trained classifier with FisherPruningHook: every 25 iterations the channel with the least
# Fisher information per activation it produces is masked, until the FLOPs at 224x224 are half of the unpruned
# model's (the paper gives no figure for it here; 50% as for ResNet-50). The run then stops and writes
# work_dirs/mobilenet-v2_fisher_prune_in1k/channels.json (the pruned structure) and pruned.pth (the slimmed
# weights); step 2, mobilenet-v2_fisher_finetune_in1k.py, fine-tunes them with the base config's standard schedule.
# docs/model_zoo.md has the paper's figures and the commands for every model. The recipe (hook arguments, schedule) and
# why each value: configs/_base_/fisher_prune_in1k.py.
#
# A depthwise conv's channels are one unit with the expansion conv that produces them.
_base_ = ['mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py', '../_base_/fisher_prune_in1k.py']

# mmpretrain's released checkpoint of the base config (its metafile.yml). To prune your own model: --cfg-options
# load_from=PATH (never None).
load_from = 'https://download.openmmlab.com/mmclassification/v0/mobilenet_v2/mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth'  # noqa: E501

custom_hooks = [_base_.fisher_prune_in1k.hook]  # 50% of the FLOPs at (3, 224, 224), every 25 iterations
# max_iters = interval x the model's 9,128 prunable channel groups: a bound that is never hit
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=229000, val_interval=229000)
optim_wrapper = _base_.fisher_prune_in1k.optim_wrapper
param_scheduler = _base_.fisher_prune_in1k.param_scheduler
default_hooks = _base_.fisher_prune_in1k.default_hooks
log_processor = _base_.fisher_prune_in1k.log_processor
