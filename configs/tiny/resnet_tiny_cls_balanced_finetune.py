# Fine-tune the tiny ResNet classifier that resnet_tiny_cls_balanced_prune.py slimmed (the mmfisher.Pruned pattern
# of configs/_base_/fisher_finetune.py).
#
#   python tools/train.py configs/tiny/resnet_tiny_cls_balanced_finetune.py
_base_ = ['./resnet_tiny_shapes_cls.py', '../_base_/fisher_finetune.py']

model = dict(
    _delete_=True,
    type='mmfisher.Pruned',
    architecture={{_base_.model}},
    channels='work_dirs/resnet_tiny_cls_balanced_prune/channels.json')
load_from = 'work_dirs/resnet_tiny_cls_balanced_prune/pruned.pth'

max_epochs = 10
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(optimizer=dict(lr=0.001))
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs, eta_min=1e-5,
         convert_to_iter_based=True),
]
