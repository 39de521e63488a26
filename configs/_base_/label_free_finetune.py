# Label-free fine-tuning (seed 002) of a slimmed model: the student is the mmfisher.Pruned model built from the
# pruning run's channels.json, the teacher the unpruned model from its own checkpoint; the loss is the same
# distillation as while pruning (mmfisher.models.LabelFreeDistiller), no label is read.
#
#   _base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', 'mmfisher::_base_/label_free_finetune.py']
#   model = dict(
#       _base_.label_free_finetune.model, _delete_=True,
#       architecture=dict(type='mmfisher.Pruned', architecture=_base_.model,       # the student: slimmed
#                         channels='work_dirs/my_label_free_prune/channels.json'),
#       teacher_checkpoint='<the trained, unpruned checkpoint>')                  # the teacher: unpruned, frozen
#   load_from = 'work_dirs/my_label_free_prune/pruned.pth'    # the slimmed weights: they load into the student
#   train_dataloader = dict(dataset=dict(_delete_=True, type='mmfisher.UnlabeledImages', ...))
#
# The teacher defaults to the student's unpruned `architecture`; it must get its weights from teacher_checkpoint
# (load_from is the slimmed student's). Seed 002 scales the distillation terms by 0.1 when fine-tuning (its task
# loss is off); with an Adam-type optimizer a global scale changes nothing, with SGD it acts as a 10x smaller
# learning rate. Targets are soft here (sample_targets=False): no Fisher is measured, and the teacher's full
# distribution is the less noisy training signal. Anchors: 'auto' here (classifiers), None in the detection
# fine-tune configs: with the tiny RetinaNet pruned to 50% FLOPs (benchmarks/label_free.py's set-up, 120 iterations)
# the label-free fine-tune reached bbox mAP 0.767 without anchors, 0.739 / 0.707 / 0.678 with anchors weighted
# 0.001 / 0.01 / 0.1 (the teacher: 0.793): a slimmed detector's kept channels matched to the teacher's same channels
# cannot make up for the removed ones, while its dense outputs already carry a rich target; for the tiny ResNet
# classifier (3 classes: little in the outputs) anchors helped, top-1 97.3 vs 94.0. The trained student is a plain, smaller model of the
# architecture's class inside the wrapper's checkpoint (keys student.*): tools/test.py with this config runs the
# student; for a plain checkpoint (the mmfisher.Pruned config of fisher_finetune.py, deployment) write it out with
#   python -c "from mmfisher.models.distiller import extract_student; extract_student('epoch_12.pth', 'slim.pth')"
#
# Like label_free_pruning.py this file sets one helper key, `label_free_finetune`, because mmengine refuses a key
# set by two _base_ files. If your fine-tune config inherits the pruning config instead of the model config, also
# set custom_hooks = [] so FisherPruningHook does not run again.
label_free_finetune = dict(
    model=dict(
        type='mmfisher.LabelFreeDistiller',
        teacher=None,                # None: the Pruned student's unpruned architecture
        anchors='auto',
        num_partitions=5,
        temperature=1.0,
        output_weight=0.1,           # seed 002: distillation terms x 0.1 when fine-tuning
        anchor_weight=0.1,
        sample_targets=False,        # soft targets: the better training signal; no Fisher is needed
        input_shape=None,
        seed=0),
)
