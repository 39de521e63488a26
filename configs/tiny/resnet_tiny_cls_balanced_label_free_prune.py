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
# The label-free Group Fisher config with the balanced hook in place of the iterative one (its distiller, unlabeled
# data and load_from). The distiller's student is pruned (channels.json / pruned.pth are the plain classifier's,
# for mmfisher.Pruned). Output KL only (anchors=None): a unit's curve is then how far the pruned model's class
# distributions move from the unpruned model's. The hook ranks with the distiller's sampled terms (informative
# while the student equals the teacher, where the exact KL's gradient is zero) and measures the curves with its
# exact ones (no sampling noise).
_base_ = ['./resnet_tiny_cls_label_free_prune.py']

model = dict(anchors=None)           # output KL only
custom_hooks = [
    dict(
        type='mmfisher.BalancedPruningHook',
        target=0.5,                  # 50% of the unpruned FLOPs at 64x64
        target_metric='flops',
        mode='measured',
        calibration_batches=8,
        input_shape=(3, 64, 64)),    # the bundled images' size
]
