# The paper's recipe for Group Fisher pruning (Liu et al., ICML 2021) of a trained ImageNet classifier: what the
# prune configs of configs/classification share (docs/model_zoo.md, "Settings"). A prune config reads it like this:
#
#   _base_ = ['mmpretrain::resnet/resnet50_8xb32_in1k.py', '../_base_/fisher_prune_in1k.py']
#   load_from = '<the trained, unpruned checkpoint>'
#   custom_hooks = [_base_.fisher_prune_in1k.hook]     # or [dict(_base_.fisher_prune_in1k.hook, target=0.3)]
#   train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=287000, val_interval=287000)
#   optim_wrapper = _base_.fisher_prune_in1k.optim_wrapper
#   param_scheduler = _base_.fisher_prune_in1k.param_scheduler
#   default_hooks = _base_.fisher_prune_in1k.default_hooks
#   log_processor = _base_.fisher_prune_in1k.log_processor
#
# Why one dict instead of the keys themselves: mmengine refuses a key set by two _base_ files, and the model base
# sets every key the recipe changes. So this file sets a single helper key, `fisher_prune_in1k` (it stays in the
# merged config; nothing reads it at run time), and the prune config assigns the real keys from it. Override the
# real keys (--cfg-options custom_hooks.0.target=0.4, train_cfg.max_iters=...): fisher_prune_in1k has been read
# by the time --cfg-options apply. It sets no custom_hooks of its own either, so a model base with hooks of its own
# (RegNet's PreciseBNHook) combines with it; the prune config's custom_hooks decide which of them run.
#
# The configs in this tree name this file by its relative path, which leaves their model base's scopes as they
# are. A config elsewhere names it 'mmfisher::_base_/fisher_prune_in1k.py'; mmengine then adds
# _scope_='mmfisher' to this file's dicts that have a type (the two hooks), and mmfisher's registries fall back
# to mmengine's, so the same hooks are built.
#
# The pruning phase trains at a small constant learning rate (0.004 for a total batch of 256 or more, as the public
# re-implementation FisherPruning-Pytorch prunes ResNet-50; the base schedule's decay is never reached before the
# target). The loop is iteration based so that it ends as soon as the target is reached (an epoch-based loop would
# finish its epoch); each prune config sets max_iters, only a bound that is never hit: interval x the model's
# prunable channel groups, one of which is masked per step. A run that ends before the target writes the structure
# reached so far (channels.json with meta.reached = false).
#
# The trained model to prune is each config's load_from: mmpretrain's released checkpoint of its base config (the
# base config's metafile.yml). To prune your own model, pass --cfg-options load_from=PATH. Never set None: mmengine
# then loads nothing, silently, and the hook would prune a randomly initialised model.
fisher_prune_in1k = dict(
    hook=dict(
        type='mmfisher.FisherPruningHook',
        interval=25,                 # the paper's interval for ImageNet classification
        delta='acts',                # Fisher / activations saved (the paper's memory-normalised default)
        target=0.5,                  # stop at 50% of the unpruned FLOPs
        target_metric='flops',
        channels_per_step=1,         # one channel per step, as the paper (larger values prune faster, coarser)
        input_shape=(3, 224, 224),   # FLOPs / activations counted at the training / test crop
    ),
    optim_wrapper=dict(optimizer=dict(lr=0.004)),
    param_scheduler=[],  # constant learning rate
    # checkpoints hold the masks and Fisher sums: --resume continues the pruning exactly
    default_hooks=dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000, max_keep_ckpts=3)),
    log_processor=dict(by_epoch=False),
)
