# Group Fisher pruning (FisherPruningHook) for any mmdet / mmpretrain model config.
#
#   _base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', 'mmfisher::_base_/fisher_pruning.py']
#   load_from = '<the trained, unpruned checkpoint>'        # prune a trained model (as the paper does)
#   train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=40000, val_interval=40000)
#
# The hook traces the model at `input_shape`, accumulates the group Fisher information of every channel during
# ordinary training and every `interval` iterations masks the `channels_per_step` least important channels
# (Fisher / activations saved), until FLOPs <= `target` x the unpruned model. It then writes, into work_dir,
# channels.json (the pruned structure) and pruned.pth (the slimmed weights) and stops training: fine-tune them with
# mmfisher::_base_/fisher_finetune.py. Arguments and defaults: mmfisher.hooks.FisherPruningHook's docstring.
#
# Use an IterBasedTrainLoop as above: with an EpochBasedTrainLoop training stops only at the end of the epoch in
# which the target is reached. Keep `input_shape` (C, H, W) close to the training resolution: FLOPs and
# activations are counted there (classification: (3, 224, 224)).
#
# The paper's settings for COCO detectors and ImageNet classifiers, schedule included, are in fisher_prune_coco.py
# and fisher_prune_in1k.py beside this file (what configs/detection and configs/classification use).
#
# Override arguments with --cfg-options custom_hooks.0.target=0.4, or redefine the list in your config:
#   custom_hooks = [dict(type='mmfisher.FisherPruningHook', target=0.4, input_shape=(3, 640, 640))]
# The 'mmfisher.' prefix makes mmengine import mmfisher by itself, so this file sets no custom_imports (mmengine
# refuses a key set by two _base_ files; many model configs set custom_imports). It does set custom_hooks: with a
# base that sets them too (e.g. an EMAHook; mmfisher's tools/train.py names the key and both bases), leave this file
# out and list all hooks in your config:
#   custom_hooks = _base_.custom_hooks + [dict(type='mmfisher.FisherPruningHook', ...)]
# (With mmdet's / mmpretrain's own tools and distributed training on CPUs, add
#  custom_imports = dict(imports=['mmfisher']) to your config so mmfisher's CPU patches load before dist init;
#  mmfisher's tools/train.py imports it anyway.)
custom_hooks = [
    dict(
        type='mmfisher.FisherPruningHook',
        interval=10,                 # iterations between pruning steps (paper: 10 detection, 25 ImageNet)
        delta='acts',                # 'acts' (paper default) | 'flops' | 'none'
        target=0.5,                  # stop when FLOPs <= 50% of the unpruned model
        target_metric='flops',       # 'flops' | 'acts' | 'params'
        channels_per_step=1,         # channels (atoms) masked per step
        save_thresholds=(),          # e.g. (0.75, 0.6): also write channels_0.75.json / pruned_0.75.pth
        input_shape=(3, 800, 1333),  # (C, H, W) of the trace and of the FLOPs / activation counts
        skip=(),                     # fnmatch patterns of units / layers never pruned
        divisor=1,                   # e.g. 8: kept channel counts rounded up to multiples of 8
        prune_frozen=False,          # leave channels read only by frozen stages alone
        stop_at_target=True,
        start_iter=0,
        verify_export=True,          # refuse to write a slimmed model that differs from the masked one
        importance=None,             # None: GroupFisher(delta=delta); or a criterion, e.g. dict(type='Taylor')
        schedule=None,               # None: IntervalTopK(interval, k=channels_per_step); or dict(type='AdaptiveK')
        skip_unmatched='warn',       # a `skip` pattern that matches no layer: 'warn' | 'error'
        allow_partial_checkpoint=False),  # refuse a load_from / resume checkpoint that leaves tensors random
]
