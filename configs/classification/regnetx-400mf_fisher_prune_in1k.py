# Group Fisher pruning (Liu et al., ICML 2021) of RegNetX-400MF on ImageNet, step 1 of 2: prune the trained model.
#
#   tools/dist_train.sh configs/classification/regnetx-400mf_fisher_prune_in1k.py 8
#
# Ordinary training of the trained classifier with FisherPruningHook: every 25 iterations the channel with the least
# Fisher information per activation it produces is masked, until the FLOPs at 224x224 are half of the unpruned
# model's (the paper gives no figure for it here; 50% as for ResNet-50). The run then stops and writes
# work_dirs/regnetx-400mf_fisher_prune_in1k/channels.json (the pruned structure) and pruned.pth (the slimmed
# weights); step 2, regnetx-400mf_fisher_finetune_in1k.py, fine-tunes them with the base config's standard schedule.
# docs/model_zoo.md has the paper's figures and the commands for every model.
#
# Grouped convs are pruned by whole groups (an atom is one group of 16 channels). The base config's PreciseBNHook is
# left out of the pruning run (with an iteration-based loop it would run every iteration) and therefore so is
# mmfisher::_base_/fisher_pruning.py (mmengine refuses custom_hooks set by two base files); the fine-tune config
# keeps it.
_base_ = ['mmpretrain::regnet/regnetx-400mf_8xb128_in1k.py']  # not fisher_pruning.py: see above

# The trained, unpruned model that is pruned: mmpretrain's released checkpoint of the base config (its
# metafile.yml). To prune your own model, put its path here or pass --cfg-options load_from=PATH. Never set None:
# mmengine then loads nothing, silently, and the hook would prune a randomly initialised model.
load_from = 'https://download.openmmlab.com/mmclassification/v0/regnet/regnetx-400mf_8xb128_in1k_20211213-89bfc226.pth'  # noqa: E501

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
# finish its epoch). max_iters is only a bound that is never hit: interval x the model's 1,040 prunable channel
# groups, one of which is masked per step. A run that ends before the target
# writes the structure reached so far (channels.json with meta.reached = false).
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=26000, val_interval=26000)
optim_wrapper = dict(optimizer=dict(lr=0.004))
param_scheduler = []  # constant learning rate
# checkpoints hold the masks and Fisher sums: --resume continues the pruning exactly
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000, max_keep_ckpts=3))
log_processor = dict(by_epoch=False)
