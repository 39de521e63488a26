# Group Fisher pruning of the trained tiny ViT (configs/tiny/vit_tiny_shapes_cls.py) to 50% of its FLOPs on the
# bundled shapes classification set: embedding width, whole heads and MLP widths, with the slimmed model checked
# against the masked one before channels.json + pruned.pth are written.
#
#   python tools/train.py configs/tiny/vit_tiny_shapes_cls.py       # the model to prune, once
#   python tools/train.py configs/tiny/vit_tiny_cls_prune.py        # -> channels.json, pruned.pth
#   python tools/train.py configs/tiny/vit_tiny_cls_finetune.py     # fine-tune the slimmed ViT
_base_ = ['./vit_tiny_shapes_cls.py', '../_base_/fisher_pruning.py']

load_from = 'work_dirs/vit_tiny_shapes_cls/epoch_30.pth'  # the trained, unpruned model

custom_hooks = [
    dict(type='mmfisher.FisherPruningHook', interval=5, channels_per_step=16, target=0.5, delta='acts',
         input_shape=(3, 64, 64)),
]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=20000, val_interval=20000)
param_scheduler = []
