# Label-free Group Fisher pruning (seed 002) of the trained tiny RetinaNet to about half of its FLOPs, on the bundled
# unlabeled images (tools/make_data.py -> data/generated/shapes_unlabeled/det: 480 128x128 images, no annotation).
# The student is pruned by FisherPruningHook; the loss is distillation from the frozen unpruned model only.
#
#   python tools/train.py configs/tiny/retinanet_tiny_shapes.py                     # the model to prune, once
#   python tools/train.py configs/tiny/retinanet_tiny_label_free_prune.py           # -> channels.json, pruned.pth
#
# Validation (the labeled shapes_det val set, for measuring only) runs the student.
_base_ = ['./retinanet_tiny_shapes.py', '../_base_/label_free_pruning.py']

load_from = 'work_dirs/retinanet_tiny_shapes/epoch_24.pth'  # the trained, unpruned model (student and teacher)

model = dict(
    _base_.label_free_pruning.model,
    _delete_=True,
    architecture=_base_.model,
    anchor_weight=0.01,  # detectors: see configs/_base_/label_free_pruning.py
    input_shape=(3, 128, 128))
custom_hooks = [
    dict(
        _base_.label_free_pruning.hook,
        interval=5,                  # short for the tiny model (seed 002: 25)
        channels_per_step=16,        # top-k per step: a few steps to 50% of the FLOPs (seed 002: 500 on ImageNet)
        input_shape=(3, 128, 128)),  # the bundled images' size
]

unlabeled_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='mmfisher.UnlabeledImages',
        data_root='data/generated/shapes_unlabeled/',
        data_prefix=dict(img_path='det/'),
        pipeline=unlabeled_pipeline))

# iteration based, so the run ends as soon as the target is reached; max_iters is only a bound
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2000, val_interval=100000)
optim_wrapper = dict(optimizer=dict(lr=0.0005))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=2000)]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=100000, by_epoch=False),
                     logger=dict(type='LoggerHook', interval=10))
log_processor = dict(by_epoch=False)
