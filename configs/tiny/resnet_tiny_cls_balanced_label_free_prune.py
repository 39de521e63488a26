# Label-free balanced one-shot pruning (seed 003 with seed 002's loss) of the trained tiny ResNet classifier to about
# half of its FLOPs: every calibration forward's loss is the distillation loss against a frozen copy of the unpruned
# model (KL of the class distributions), on the bundled unlabeled images. No label is read; no training iteration.
#
#   python tools/train.py configs/tiny/resnet_tiny_shapes_cls.py                          # the model to prune, once
#   python tools/train.py configs/tiny/resnet_tiny_cls_balanced_label_free_prune.py       # -> channels.json, pruned.pth
#   python tools/train.py configs/tiny/resnet_tiny_cls_label_free_finetune.py \
#       --cfg-options model.architecture.channels=work_dirs/resnet_tiny_cls_balanced_label_free_prune/channels.json \
#       load_from=work_dirs/resnet_tiny_cls_balanced_label_free_prune/pruned.pth      # label-free fine-tune
#   (or resnet_tiny_cls_balanced_finetune.py with the same two paths: the labeled one)
#
# The distiller's student is pruned (its channels.json / pruned.pth are the plain classifier's, for mmfisher.Pruned).
# Output KL only (anchors=None): a unit's curve is then how far the pruned model's class distributions move from the
# unpruned model's. sample_targets=True (the pruning base's) keeps the Group Fisher ranking informative while the
# student equals the teacher (the exact KL's gradient is zero there); the sampled terms are zero-mean and drawn
# alike for every curve point (the generator is seeded by the iteration, 0 before training), so they do not bias
# the variations.
_base_ = ['./resnet_tiny_shapes_cls.py', '../_base_/label_free_pruning.py', '../_base_/balanced_pruning.py']

load_from = 'work_dirs/resnet_tiny_shapes_cls/epoch_30.pth'  # the trained, unpruned model (student and teacher)

model = dict(
    _base_.label_free_pruning.model,
    _delete_=True,
    architecture=_base_.model,
    anchors=None,                    # output KL only
    input_shape=(3, 64, 64))
custom_hooks = [
    dict(
        type='mmfisher.BalancedPruningHook',
        target=0.5,                  # 50% of the unpruned FLOPs at 64x64
        target_metric='flops',
        mode='measured',
        calibration_batches=8,
        input_shape=(3, 64, 64)),    # the bundled images' size
]

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
