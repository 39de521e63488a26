# make demo, step 2: Group Fisher pruning of the trained tiny RetinaNet on the bundled shapes set, to about half of
# its FLOPs (tools/demo.py passes load_from = the trained checkpoint and runs it on 2 processes via dist_train.sh).
_base_ = ['../tiny/retinanet_tiny_shapes.py', '../_base_/fisher_pruning.py']

custom_hooks = [
    dict(
        type='mmfisher.FisherPruningHook',
        interval=2,                  # short for the demo (the paper: 10 for detection)
        delta='acts',                # the paper's memory-normalised importance
        target=0.5,                  # stop at 50% of the unpruned FLOPs
        target_metric='flops',
        channels_per_step=4,         # seed 002's top-k: a few channels per step keeps the demo short
        save_thresholds=(0.75, ),    # also write channels_0.75.json / pruned_0.75.pth on the way
        input_shape=(3, 128, 128),   # the bundled images' size
    ),
]
# iteration based, so the run ends as soon as the target is reached; max_iters is only a bound
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=4000, val_interval=100000)
optim_wrapper = dict(optimizer=dict(lr=0.0005))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=4000)]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=100000, by_epoch=False),
                     logger=dict(type='LoggerHook', interval=10))
log_processor = dict(by_epoch=False)
