# Balanced one-shot pruning (seed 003) of the trained tiny RetinaNet to about half of its FLOPs, on the bundled
# shapes set: no training, 8 calibration batches of 8 images, then the run ends.
#
#   python tools/train.py configs/tiny/retinanet_tiny_shapes.py                 # the model to prune, once
#   python tools/train.py configs/tiny/retinanet_tiny_balanced_prune.py         # -> channels.json, pruned.pth,
#                                                                               #    balanced_curves.json / .png
#   python tools/train.py configs/tiny/retinanet_tiny_balanced_finetune.py      # the one fine-tune
#
# (tools/dist_train.sh configs/tiny/retinanet_tiny_balanced_prune.py 2 splits the batches over 2 processes.)
_base_ = ['./retinanet_tiny_shapes.py', '../_base_/balanced_pruning.py']

load_from = 'work_dirs/retinanet_tiny_shapes/epoch_24.pth'  # the trained, unpruned model

custom_hooks = [
    dict(
        type='mmfisher.BalancedPruningHook',
        target=0.5,                  # 50% of the unpruned FLOPs at 128x128
        target_metric='flops',
        mode='measured',
        calibration_batches=8,       # 8 batches of 8 images (the train dataloader's batch size)
        input_shape=(3, 128, 128)),  # the bundled images' size
]
