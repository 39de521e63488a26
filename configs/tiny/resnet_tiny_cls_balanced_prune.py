# Balanced one-shot pruning (seed 003) of the trained tiny ResNet classifier to about half of its FLOPs, on the
# bundled shapes classification set: no training, 8 calibration batches of 32 images, then the run ends.
#
#   python tools/train.py configs/tiny/resnet_tiny_shapes_cls.py                # the model to prune, once
#   python tools/train.py configs/tiny/resnet_tiny_cls_balanced_prune.py        # -> channels.json, pruned.pth, ...
#   python tools/train.py configs/tiny/resnet_tiny_cls_balanced_finetune.py     # the one fine-tune
_base_ = ['./resnet_tiny_shapes_cls.py', '../_base_/balanced_pruning.py']

load_from = 'work_dirs/resnet_tiny_shapes_cls/epoch_30.pth'  # the trained, unpruned model

custom_hooks = [
    dict(
        type='mmfisher.BalancedPruningHook',
        target=0.5,                  # 50% of the unpruned FLOPs at 64x64
        target_metric='flops',
        mode='measured',
        calibration_batches=8,
        input_shape=(3, 64, 64)),    # the bundled images' size
]
