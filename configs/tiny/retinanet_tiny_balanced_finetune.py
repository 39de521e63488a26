# Fine-tune the tiny RetinaNet that retinanet_tiny_balanced_prune.py slimmed (the mmfisher.Pruned pattern of
# configs/_base_/fisher_finetune.py; the same files FisherPruningHook writes).
#
#   python tools/train.py configs/tiny/retinanet_tiny_balanced_finetune.py
_base_ = ['./retinanet_tiny_shapes.py', '../_base_/fisher_finetune.py']

model = dict(
    _delete_=True,
    type='mmfisher.Pruned',
    architecture={{_base_.model}},
    channels='work_dirs/retinanet_tiny_balanced_prune/channels.json')
load_from = 'work_dirs/retinanet_tiny_balanced_prune/pruned.pth'

max_epochs = 8
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(optimizer=dict(lr=0.001))
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs, eta_min=1e-5,
         convert_to_iter_based=True),
]
