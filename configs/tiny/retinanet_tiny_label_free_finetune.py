# Label-free fine-tuning (seed 002) of the tiny RetinaNet slimmed by retinanet_tiny_label_free_prune.py: the student
# is the mmfisher.Pruned model (a real, smaller RetinaNet), the teacher the unpruned trained model; distillation
# only, on the bundled unlabeled images. Validation (labeled shapes_det val, for measuring only) runs the student.
#
#   python tools/train.py configs/tiny/retinanet_tiny_label_free_finetune.py
#   python tools/test.py configs/tiny/retinanet_tiny_label_free_finetune.py \
#       work_dirs/retinanet_tiny_label_free_finetune/epoch_12.pth
_base_ = ['./retinanet_tiny_shapes.py', '../_base_/label_free_finetune.py']

model = dict(
    _base_.label_free_finetune.model,
    _delete_=True,
    anchors=None,  # detectors: output terms only (anchors hurt the fine-tune: configs/_base_/label_free_finetune.py)
    architecture=dict(
        type='mmfisher.Pruned',
        architecture=_base_.model,   # the unpruned tiny RetinaNet, exactly as it was pruned
        channels='work_dirs/retinanet_tiny_label_free_prune/channels.json'),
    teacher_checkpoint='work_dirs/retinanet_tiny_shapes/epoch_24.pth',  # the unpruned model: the teacher
    input_shape=(3, 128, 128))
load_from = 'work_dirs/retinanet_tiny_label_free_prune/pruned.pth'  # the slimmed weights: into the student

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

max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs, eta_min=1e-5,
         convert_to_iter_based=True),
]
optim_wrapper = dict(optimizer=dict(lr=0.001))
