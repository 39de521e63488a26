# Label-free Group Fisher pruning (seed 002: Lee & Moon, BMVC 2022) of DenseNet-121 on ImageNet images without labels,
# step 1 of 2: prune the trained model.
#
#   tools/dist_train.sh configs/classification/densenet121_label_free_prune_in1k.py 8
#
# The loss is distillation from a frozen copy of the trained model only (KL(teacher || student) of the class
# distributions + MSE at 5 anchor layers chosen by seed 002's rule; configs/_base_/label_free_pruning.py), on the
# training images read as plain files (mmfisher.UnlabeledImages; ImageNet's labels are never loaded). Seed 002's
# schedule: the 500 channels with the least Fisher per activation are masked every 25 iterations until the FLOPs at
# 224x224 are half of the unpruned model's. The paper reports 70.52 top-1 at 1.69 GFLOPs from 74.76 at 2.85 (GFP:
# 67.13). The run writes work_dirs/densenet121_label_free_prune_in1k/channels.json and pruned.pth (the slimmed
# student, the same files as labeled pruning); step 2, densenet121_label_free_finetune_in1k.py, fine-tunes them
# label-free.
_base_ = ['mmpretrain::densenet/densenet121_4xb256_in1k.py', '../_base_/label_free_pruning.py']

# the trained, unpruned model: mmpretrain's released checkpoint of the base config (student and frozen teacher).
# To prune your own model: --cfg-options load_from=PATH (never None: the teacher would be a random model).
load_from = 'https://download.openmmlab.com/mmclassification/v0/densenet/densenet121_4xb256_in1k_20220426-07450f99.pth'  # noqa: E501

model = dict(
    _base_.label_free_pruning.model,
    _delete_=True,
    architecture=_base_.model,
    input_shape=(3, 224, 224))
custom_hooks = [dict(_base_.label_free_pruning.hook, input_shape=(3, 224, 224))]  # 500 atoms every 25 iterations

# the training images without labels (the folder is scanned once; ann_file='meta/train.txt' also works: its class
# indices are dropped)
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='mmfisher.UnlabeledImages',
        data_root='data/imagenet/',
        data_prefix=dict(img_path='train/'),
        pipeline=_base_.train_pipeline))

# max_iters is only a bound that is never hit: 25 x the model's 10,240 prunable channel groups / 500 per step
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=525, val_interval=525)
optim_wrapper = dict(optimizer=dict(lr=0.004))  # a small constant learning rate while pruning
param_scheduler = []
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=200, max_keep_ckpts=3))
log_processor = dict(by_epoch=False)
