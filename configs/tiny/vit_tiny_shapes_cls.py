# A 4-block ViT (embedding width 64, 4 heads of 16 channels, MLP 128, 8x8 patches of the 64x64 image: 64 tokens +
# the class token) for the bundled shape classification set; trains on a CPU in about two minutes. No pretrained
# weights. Pruned like any CNN (issue 11): the LayerNorm-normalised residual stream is one unit (with the patch
# embedding, the class token and the position embedding), each block's heads are one unit pruned by whole heads,
# each MLP's hidden width is one unit.
_base_ = ['mmpretrain::_base_/default_runtime.py', '../_base_/datasets/shapes_cls.py']
custom_imports = dict(imports=['mmfisher'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='VisionTransformer',
        arch=dict(embed_dims=64, num_layers=4, num_heads=4, feedforward_channels=128),
        img_size=64, patch_size=8, drop_rate=0.0, out_type='cls_token', init_cfg=None),
    neck=None,
    head=dict(
        type='VisionTransformerClsHead', num_classes=3, in_channels=64,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, )))

max_epochs = 30  # 570 iterations at batch 32
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict()
test_cfg = dict()
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=0.001, weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs, eta_min=1e-5,
         convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=32)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2))
env_cfg = dict(dist_cfg=dict(backend='nccl'))  # tools/train.py switches to gloo on a CPU-only machine
randomness = dict(seed=0)
