# Label-free fine-tuning (seed 002) of the tiny ResNet classifier slimmed by resnet_tiny_cls_label_free_prune.py:
# the student is the mmfisher.Pruned model, the teacher the unpruned trained classifier; distillation only, on the
# bundled unlabeled images. Validation (labeled shapes_cls val, for measuring only) runs the student.
#
#   python tools/train.py configs/tiny/resnet_tiny_cls_label_free_finetune.py
_base_ = ['./resnet_tiny_shapes_cls.py', '../_base_/label_free_finetune.py']

model = dict(
    _base_.label_free_finetune.model,
    _delete_=True,
    architecture=dict(
        type='mmfisher.Pruned',
        architecture=_base_.model,   # the unpruned tiny ResNet, exactly as it was pruned
        channels='work_dirs/resnet_tiny_cls_label_free_prune/channels.json'),
    teacher_checkpoint='work_dirs/resnet_tiny_shapes_cls/epoch_30.pth',  # the unpruned model: the teacher
    input_shape=(3, 64, 64))
load_from = 'work_dirs/resnet_tiny_cls_label_free_prune/pruned.pth'  # the slimmed weights: into the student

unlabeled_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='mmfisher.UnlabeledImages',
        data_root='data/generated/shapes_unlabeled/',
        data_prefix=dict(img_path='cls/'),
        pipeline=unlabeled_pipeline))

max_epochs = 15
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs, eta_min=1e-5,
         convert_to_iter_based=True),
]
