# Balanced one-shot pruning (seed 003; Li et al., ACCV 2020) of FCOS R50-caffe-FPN (GN head) on COCO, step 1 of 2: prune the
# trained model in one shot, without training.
#
#   tools/dist_train.sh configs/detection/fcos_r50-caffe_fpn_gn-head_balanced_prune_coco.py 8
#
# Before the first iteration BalancedPruningHook takes 64 training batches (8 per rank x 2 images), ranks every
# unit's channels by Group Fisher on them, measures each unit's loss-variation curve (units x 9 grid points x 8
# batches forwards per rank), finds the threshold that meets 50% of the FLOPs at 800x1333 and prunes every unit
# at once. It writes work_dirs/fcos_r50-caffe_fpn_gn-head_balanced_prune_coco/channels.json + pruned.pth and
# balanced_curves.json / .png, and the run ends; step 2, fcos_r50-caffe_fpn_gn-head_balanced_finetune_coco.py, fine-tunes them with the
# standard 1x schedule. On a CPU or for a quick look, --cfg-options custom_hooks.0.mode=estimated (one forward +
# backward per batch, no curve forwards). Arguments: configs/_base_/balanced_pruning.py.
# The head's GroupNorm layers are pruned by whole groups (a GN group is one atom), so the remaining groups keep
# their statistics.
_base_ = ['mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', '../_base_/balanced_pruning.py']

# mmdet's released checkpoint of the base config (its metafile.yml). To prune your own model: --cfg-options
# load_from=PATH (required: the hook refuses a model without it).
load_from = 'https://download.openmmlab.com/mmdetection/v2.0/fcos/fcos_r50_caffe_fpn_gn-head_1x_coco/fcos_r50_caffe_fpn_gn-head_1x_coco-821213aa.pth'  # noqa: E501

# every backbone stage is ranked (its channels get gradients) and may be pruned; no ImageNet initialisation
# (load_from overwrites every weight). The fine-tune config makes the same two changes.
model = dict(backbone=dict(frozen_stages=-1, init_cfg=None))
custom_hooks = [
    dict(
        type='mmfisher.BalancedPruningHook',
        target=0.5,
        target_metric='flops',
        mode='measured',
        calibration_batches=64,      # in total: 8 per rank on 8 GPUs
        input_shape=(3, 800, 1333)),  # FLOPs / activations counted at the 1x test resolution
]
