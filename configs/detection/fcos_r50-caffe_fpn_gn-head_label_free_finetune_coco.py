# Label-free Group Fisher pruning of FCOS R50-caffe-FPN (GN head) on COCO images without labels, step 2 of 2:
# fine-tune the slimmed model label-free.
#
#   tools/dist_train.sh configs/detection/fcos_r50-caffe_fpn_gn-head_label_free_finetune_coco.py 8
#
# The student is the mmfisher.Pruned model that fcos_r50-caffe_fpn_gn-head_label_free_prune_coco.py wrote (a real,
# smaller detector of the base config's class), the teacher the unpruned trained detector from its released
# checkpoint; the loss is the same distillation with soft targets, scaled by 0.1 as in seed 002
# (configs/_base_/label_free_finetune.py), on the training images without labels, with the base config's 1x schedule.
# Validation (COCO val, with labels, for measuring only) and tools/test.py run the student. Run from the directory the
# pruning run was started in, or pass --cfg-options model.architecture.channels=... load_from=... for another
# work_dir.
_base_ = ['mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', '../_base_/label_free_finetune.py']

model = dict(
    _base_.label_free_finetune.model,
    _delete_=True,
    anchors=None,  # detectors: output terms only (anchors hurt the fine-tune: configs/_base_/label_free_finetune.py)
    architecture=dict(
        type='mmfisher.Pruned',
        architecture=_base_.model,  # the unpruned detector of the base config, changed below as when pruning
        channels='work_dirs/fcos_r50-caffe_fpn_gn-head_label_free_prune_coco/channels.json'),
    teacher_checkpoint='https://download.openmmlab.com/mmdetection/v2.0/fcos/fcos_r50_caffe_fpn_gn-head_1x_coco/fcos_r50_caffe_fpn_gn-head_1x_coco-821213aa.pth')  # noqa: E501
# the pruning config's changes: all stages train; no ImageNet download (load_from sets every weight)
model['architecture']['architecture']['backbone'].update(frozen_stages=-1, init_cfg=None)
load_from = 'work_dirs/fcos_r50-caffe_fpn_gn-head_label_free_prune_coco/pruned.pth'  # slimmed weights: the student's

train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='mmfisher.UnlabeledImages',
        data_root='data/coco/',
        data_prefix=dict(img_path='train2017/'),
        pipeline=_base_.train_pipeline))
