# make demo, step 3: fine-tune the slimmed tiny RetinaNet (tools/demo.py sets model.channels and load_from to the
# pruning run's channels.json / pruned.pth).
_base_ = ['../tiny/retinanet_tiny_shapes.py', '../_base_/fisher_finetune.py']

model = dict(
    _delete_=True,
    type='mmfisher.Pruned',
    architecture={{_base_.model}},
    channels='work_dirs/demo/prune/channels.json')
load_from = 'work_dirs/demo/prune/pruned.pth'

max_epochs = 8
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(optimizer=dict(lr=0.001))
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs, eta_min=1e-5,
         convert_to_iter_based=True),
]
