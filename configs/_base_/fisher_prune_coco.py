# The paper's recipe for Group Fisher pruning (Liu et al., ICML 2021) of a trained COCO detector: what the prune
# configs of configs/detection share (docs/model_zoo.md, "Settings"). A prune config reads it like this:
#
#   _base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', '../_base_/fisher_prune_coco.py']
#   load_from = '<the trained, unpruned checkpoint>'
#   model = _base_.fisher_prune_coco.model
#   custom_hooks = [_base_.fisher_prune_coco.hook]     # or [dict(_base_.fisher_prune_coco.hook, target=0.25)]
#   train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=141000, val_interval=141000)
#   optim_wrapper = _base_.fisher_prune_coco.optim_wrapper
#   param_scheduler = [_base_.param_scheduler[0]]     # the model base's warm-up, then a constant learning rate
#   default_hooks = _base_.fisher_prune_coco.default_hooks
#   log_processor = _base_.fisher_prune_coco.log_processor
#
# Why one dict instead of the keys themselves: mmengine refuses a key set by two _base_ files, and the model base
# sets every key the recipe changes. So this file sets a single helper key, `fisher_prune_coco` (it stays in the
# merged config; nothing reads it at run time), and the prune config assigns the real keys from it. Override the
# real keys (--cfg-options custom_hooks.0.target=0.4, train_cfg.max_iters=...): fisher_prune_coco has been read
# by the time --cfg-options apply. It sets no custom_hooks of its own either, so a model base with hooks of its own
# combines with it (list those hooks in custom_hooks next to the pruning hook if they should run).
#
# The configs in this tree name this file by its relative path, which leaves their model base's scopes as they
# are. A config elsewhere names it 'mmfisher::_base_/fisher_prune_coco.py'; mmengine then adds
# _scope_='mmfisher' to this file's dicts that have a type (the two hooks), and mmfisher's registries fall back
# to mmengine's, so the same hooks are built.
#
# The pruning phase trains at a constant small learning rate after the model base's warm-up (the official code's
# lr=0.002 for 8 GPUs x 2 images; the 1x step decay at epoch 8 is never reached before the target). The loop is
# iteration based so that it ends as soon as the target is reached (an epoch-based loop would finish its epoch);
# each prune config sets max_iters, only a bound that is never hit: interval x the model's prunable channel groups,
# one of which is masked per step (the paper's RetinaNet took about 2,300 steps). A run that ends before the target
# writes the structure reached so far (channels.json with meta.reached = false).
#
# The trained model to prune is each config's load_from: mmdet's released checkpoint of its base config (the base
# config's metafile.yml). To prune your own model, pass --cfg-options load_from=PATH. Never set None: mmengine then
# loads nothing, silently, and the hook would prune a randomly initialised detector.
fisher_prune_coco = dict(
    # As in the official code, every backbone stage trains and is pruned: the 1x recipe freezes the stem and stage
    # 1, whose channels then receive no gradient (their Fisher cannot be measured, so the hook would keep them all).
    # No ImageNet initialisation: load_from overwrites every weight (this also avoids a download).
    # The fine-tune configs make the same two changes to their architecture.
    model=dict(backbone=dict(frozen_stages=-1, init_cfg=None)),
    hook=dict(
        type='mmfisher.FisherPruningHook',
        interval=10,                 # the paper's interval for detection
        delta='acts',                # Fisher / activations saved (the paper's memory-normalised default)
        target=0.5,                  # stop at 50% of the unpruned FLOPs
        target_metric='flops',
        channels_per_step=1,         # one channel per step, as the paper (larger values prune faster, coarser)
        input_shape=(3, 800, 1333),  # FLOPs / activations counted at the 1x test resolution
    ),
    optim_wrapper=dict(optimizer=dict(lr=0.002)),
    # checkpoints hold the masks and Fisher sums: --resume continues the pruning exactly
    default_hooks=dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2000, max_keep_ckpts=3)),
    log_processor=dict(by_epoch=False),
)
