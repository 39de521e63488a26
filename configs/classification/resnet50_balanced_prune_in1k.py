# Balanced one-shot pruning (seed 003; Li et al., ACCV 2020) of ResNet-50 on ImageNet, step 1 of 2: prune the
# trained model in one shot, without training.
#
#   tools/dist_train.sh configs/classification/resnet50_balanced_prune_in1k.py 8
#
# Before the first iteration BalancedPruningHook takes 32 training batches (4 per rank x 32 images), ranks every
# unit's channels by Group Fisher on them, measures each unit's loss-variation curve, finds the threshold that
# meets 50% of the FLOPs at 224x224 and prunes every unit at once. It writes
# work_dirs/resnet50_balanced_prune_in1k/channels.json + pruned.pth and balanced_curves.json / .png, and the run ends;
# step 2, resnet50_balanced_finetune_in1k.py, fine-tunes them with the base config's standard schedule. Arguments:
# configs/_base_/balanced_pruning.py.
_base_ = ['mmpretrain::resnet/resnet50_8xb32_in1k.py', '../_base_/balanced_pruning.py']

# mmpretrain's released checkpoint of the base config (its metafile.yml). To prune your own model: --cfg-options
# load_from=PATH (required: the hook refuses a model without it).
load_from = 'https://download.openmmlab.com/mmclassification/v0/resnet/resnet50_8xb32_in1k_20210831-ea4938fc.pth'  # noqa: E501

custom_hooks = [
    dict(
        type='mmfisher.BalancedPruningHook',
        target=0.5,
        target_metric='flops',
        mode='measured',
        calibration_batches=32,      # in total: 4 per rank on 8 GPUs
        input_shape=(3, 224, 224)),  # FLOPs / activations counted at the training / test crop
]
