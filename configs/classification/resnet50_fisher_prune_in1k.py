# Group Fisher pruning (Liu et al., ICML 2021) of ResNet-50 on ImageNet, step 1 of 2: prune the trained model.
#
#   tools/dist_train.sh configs/classification/resnet50_fisher_prune_in1k.py 8
#
# Ordinary training of the trained classifier with FisherPruningHook: every 25 iterations the channel with the least
# Fisher information per activation it produces is masked, until the FLOPs at 224x224 are half of the unpruned
# model's (the paper: 4.09 -> 2.04 GFLOPs, 76.79 -> 76.42 top-1 after fine-tuning). The run then stops and writes
# work_dirs/resnet50_fisher_prune_in1k/channels.json (the pruned structure) and pruned.pth (the slimmed weights);
# step 2, resnet50_fisher_finetune_in1k.py, fine-tunes them with the base config's standard schedule.
# docs/model_zoo.md has the paper's figures and the commands for every model.
_base_ = ['mmpretrain::resnet/resnet50_8xb32_in1k.py', 'mmfisher::_base_/fisher_pruning.py']

# The trained, unpruned model that is pruned: mmpretrain's released checkpoint of the base config (its
# metafile.yml). To prune your own model, put its path here or pass --cfg-options load_from=PATH. Never set None:
# mmengine then loads nothing, silently, and the hook would prune a randomly initialised model.
load_from = 'https://download.openmmlab.com/mmclassification/v0/resnet/resnet50_8xb32_in1k_20210831-ea4938fc.pth'  # noqa: E501

custom_hooks = [
    dict(
        type='mmfisher.FisherPruningHook',
        interval=25,                 # the paper's interval for ImageNet classification
        delta='acts',                # Fisher / activations saved (the paper's memory-normalised default)
        target=0.5,                  # stop at 50% of the unpruned FLOPs
        target_metric='flops',
        channels_per_step=1,         # one channel per step, as the paper (larger values prune faster, coarser)
        input_shape=(3, 224, 224),   # FLOPs / activations counted at the training / test crop
    ),
]

# The pruning phase trains at a small constant learning rate (0.004 for a total batch of 256 or more, as the public
# re-implementation FisherPruning-Pytorch prunes ResNet-50; the base schedule's decay is never reached before the
# target). The loop is iteration based so that it ends as soon as the target is reached (an epoch-based loop would
# finish its epoch). max_iters is only a bound that is never hit: interval x the model's 11,456 prunable channel
# groups, one of which is masked per step. A run that ends before the target
# writes the structure reached so far (channels.json with meta.reached = false).
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=287000, val_interval=287000)
optim_wrapper = dict(optimizer=dict(lr=0.004))
param_scheduler = []  # constant learning rate
# checkpoints hold the masks and Fisher sums: --resume continues the pruning exactly
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000, max_keep_ckpts=3))
log_processor = dict(by_epoch=False)
