# Bundled toy classification set (tools/make_data.py -> data/generated/shapes_cls) in mmpretrain's folder
# format (train/<class>/*.png, val/<class>/*.png): 600 train / 150 val 64x64 images, 3 classes, one shape of
# 28-56 px each. Read by mmpretrain's CustomDataset, scored by Accuracy.
dataset_type = 'CustomDataset'
data_root = 'data/generated/shapes_cls/'
metainfo = dict(classes=('circle', 'square', 'triangle'))
data_preprocessor = dict(
    num_classes=3, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=32,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type, data_root=data_root, data_prefix='train', metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type, data_root=data_root, data_prefix='val', metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
