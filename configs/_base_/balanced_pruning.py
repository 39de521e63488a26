# Balanced one-shot pruning (BalancedPruningHook; seed 003, Li et al., ACCV 2020) for any mmdet / mmpretrain config.
#
#   _base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', 'mmfisher::_base_/balanced_pruning.py']
#   load_from = '<the trained, unpruned checkpoint>'        # required: a random model is refused
#   custom_hooks = [dict(type='mmfisher.BalancedPruningHook', target=0.5, input_shape=(3, 800, 1333))]
#
#   tools/train.py my_config.py            # or tools/dist_train.sh my_config.py 8 (the batches are split over ranks)
#
# No training happens: before the first iteration the hook takes `calibration_batches` batches of the training
# dataloader (or of `calibration_dataloader`: a held-out split for a model that fits its training images almost
# exactly; in total over all ranks), ranks every unit's channels (Group Fisher from those batches by default),
# measures for each unit alone the loss variation of masking its lowest share r (r on `grid`, real forwards of the
# training loss in training mode with dropout / drop-path frozen; the batch norms that train normalise with each
# batch's own statistics: norm_stats='batch'), searches the
# threshold tau whose per-unit rates meet `target` (bisection over the cached curves), prunes every unit at its rate
# at once, re-estimates the trained batch norms' statistics for that structure (recalibrate_norms; norms frozen by
# norm_eval=True, frozen_stages or requires_grad=False, as in the zoo detectors' backbones, keep their stored
# statistics in both) and writes, into work_dir, channels.json + pruned.pth (fine-tune them with
# mmfisher::_base_/fisher_finetune.py, as after FisherPruningHook), balanced_curves.json (the curves, tau, the search
# steps, the combined loss beside the sum of the units' variations), balanced_curves.png and kept_channels.png. Then
# the run ends. Arguments and defaults: mmfisher.hooks.BalancedPruningHook's docstring.
#
# Cost: mode='measured' runs at most units x grid points x batches forwards (no backward besides one Fisher pass;
# a unit is not measured past the first point above the largest threshold the target can need: full_curves=True);
# mode='estimated' replaces the measured curves with the second-order estimate 0.5 * sum F / N from the Fisher pass
# (one forward + backward per batch, whatever the model): use it when the measured curves take too long (a large
# detector on a CPU). The loss is the model's own mode='loss' loss: a label-free distiller's distillation loss when
# the model is one.
#
# This file only sets custom_hooks, and mmengine refuses a key set by two _base_ files: with a model base that sets
# hooks of its own (SSD, YOLOX, RTMDet, ...; mmfisher's tools/train.py names the key and both bases), leave this
# file out and list every hook in your config, the model base's first:
#   _base_ = ['mmdet::yolox/yolox_tiny_8xb8-300e_coco.py']
#   custom_hooks = _base_.custom_hooks + [dict(type='mmfisher.BalancedPruningHook', target=0.5, ...)]
# Keep input_shape (C, H, W) close to the training resolution: FLOPs and activations are counted there
# (classification: (3, 224, 224)).
custom_hooks = [
    dict(
        type='mmfisher.BalancedPruningHook',
        target=0.5,                  # remaining FLOPs (or acts / params) ratio of the written structure
        target_metric='flops',       # 'flops' | 'acts' | 'params'
        mode='measured',             # 'measured' (real loss variations) | 'estimated' (0.5 * sum F / N)
        calibration_batches=8,       # calibration batches in total over all ranks
        calibration_dataloader=None,  # None: the training dataloader; or a dataloader dict (a held-out split)
        grid=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),  # shares of a unit's channels measured
        norm_stats='batch',          # BN statistics in the calibration forwards: 'batch' (each batch's) | 'running'
        recalibrate_norms=True,      # re-estimate BN statistics of the pruned structure before writing it
        allocation='variation',      # tau bounds each unit's loss variation | 'variation_per_cost': per FLOP freed
        replay_mb=1024,              # MiB for replaying the unchanged module calls in the curve points; 0: off
        repair_rounds=3,             # estimated mode: measure the units at their rates when its structure's real
                                     # loss rise is 10x the estimates, search again (at most 3 rounds); 0: warn
        importance=None,             # None: GroupFisher(delta='none'); or dict(type='L1Norm'), GroupMagnitude, BNScale
        input_shape=(3, 800, 1333),  # (C, H, W) of the trace and of the FLOPs / activation counts
        skip=(),                     # fnmatch patterns of units / layers never pruned
        skip_unmatched='warn',       # a `skip` pattern that matches no layer: 'warn' | 'error'
        divisor=1,                   # e.g. 8: kept channel counts rounded up to multiples of 8
        prune_frozen=False,          # leave channels of frozen stages alone
        verify_export=True,          # refuse to write a slimmed model that differs from the masked one
        allow_random_init=False,     # refuse to prune without load_from
        allow_partial_checkpoint=False,  # refuse a load_from that leaves tensors of the model random
        seed=0,                      # torch's RNG seeded per calibration batch while measuring (stochastic losses)
        tolerance=0.01,              # warn when the structure lies more than this below the target
        plot=True),                  # balanced_curves.png and kept_channels.png
]
