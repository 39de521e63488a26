# A ResNet-18 layout at 1/4 width (stem and base channels 16) for the bundled 64x64 shape classification set;
# trains on a CPU in about a minute. No pretrained weights (init_cfg=None).
_base_ = ['mmpretrain::_base_/default_runtime.py', '../_base_/datasets/shapes_cls.py']
custom_imports = dict(imports=['mmfisher'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ResNet', depth=18, stem_channels=16, base_channels=16, num_stages=4, out_indices=(3, ),
        style='pytorch', init_cfg=None),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead', num_classes=3, in_channels=128,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, )))

max_epochs = 30  # 570 iterations: about 1 min on 2 CPU cores (OMP_NUM_THREADS=1), top-1 ~90%
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict()
test_cfg = dict()
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=0.003, weight_decay=0.0001))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs, eta_min=1e-5,
         convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=32)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2))
env_cfg = dict(dist_cfg=dict(backend='nccl'))  # tools/train.py switches to gloo on a CPU-only machine
randomness = dict(seed=0)
