# Label-free Group Fisher pruning (seed 002: Lee & Moon, BMVC 2022) for any mmdet / mmpretrain model config: the
# loss whose mask gradients give each channel's Fisher importance, and which trains the model while it is pruned,
# is a distillation loss against a frozen copy of the unpruned model (the teacher) on the same images. No label is
# read; plain image folders work (mmfisher.UnlabeledImages), and labels a data set happens to carry are ignored.
#
#   _base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', 'mmfisher::_base_/label_free_pruning.py']
#   load_from = '<the trained, unpruned checkpoint>'      # loads into the student and the frozen teacher
#   model = dict(_base_.label_free_pruning.model, _delete_=True, architecture=_base_.model)
#   custom_hooks = [_base_.label_free_pruning.hook]       # or [dict(_base_.label_free_pruning.hook, target=0.4)]
#   train_dataloader = dict(dataset=dict(
#       _delete_=True, type='mmfisher.UnlabeledImages', data_root='my_images/', data_prefix=dict(img_path=''),
#       pipeline=_base_.train_pipeline))                  # annotation loaders are dropped from the pipeline
#   train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=10000, val_interval=10000)
#
# The result is the same pair of files as labeled pruning: channels.json and pruned.pth of the student, for
# type='mmfisher.Pruned' (fine-tune it label-free with label_free_finetune.py beside this file, or with labels
# with fisher_finetune.py). Validation and tools/test.py see the student.
#
# Why one helper key: mmengine refuses a key set by two _base_ files and model configs set model, the data and the
# schedule, so this file sets only `label_free_pruning` (it stays in the merged config; nothing reads it at run
# time) and your config assigns the real keys from it, as above. Override the real keys afterwards
# (--cfg-options model.num_partitions=3 custom_hooks.0.target=0.4). It sets no custom_hooks, so a model base's
# own hooks combine with it (list them next to the pruning hook if they should run).
#
# The distiller (mmfisher.models.LabelFreeDistiller; every term and choice is documented there):
#   outputs  classifiers: KL(teacher || student) of the class distributions, T = 1; dense detectors: binary KL
#            of the sigmoid class scores, box / centerness / objectness terms weighted by the teacher's score;
#            Faster R-CNN: the RPN as a dense head + the RoI head's class / box outputs on the teacher's proposals
#   anchors  MSE at intermediate outputs chosen by seed 002's rule (`num_partitions` partitions of the channel
#            units, default 5), on the channels still alive; 'all', a list of module names, or None instead
#   sampled  sample_targets=True makes each term a one-sample estimate of itself (labels drawn from the teacher,
#            Gaussian noise for the squared errors): same expected loss and gradient, but the Fisher is informative
#            from the first iteration even while the student still equals the teacher (eval-mode norms, GroupNorm)
#
# The hook: seed 002's schedule, top-k per step (its code: 500 channels every 25 iterations; the paper's GFP
# baseline masks 1 channel every 10-25 iterations), at the target of 50% of the FLOPs. Set `input_shape` to your
# training resolution ((3, 224, 224) for ImageNet classifiers).
# Anchor weight: 1 (the seed's) here, 0.01 in the detection configs. Measured on the tiny RetinaNet
# (benchmarks/label_free.py, 50% FLOPs, 2 seeds): at weight 1 the anchors' gradients dwarf the output terms', the
# channels no anchor follows (the head's last tower layers) get the least Fisher and are cut to one channel: bbox
# mAP 0.145 / 0.079 right after pruning and 0.719 / 0.648 after the label-free fine-tune, against 0.338 / 0.286 and
# 0.794 / 0.786 with the output terms only; the tiny ResNet classifier prunes well at 1 (top-1 95-96 after fine-tune).
label_free_pruning = dict(
    model=dict(
        type='mmfisher.LabelFreeDistiller',
        teacher=None,                # None: the student's own architecture
        teacher_checkpoint=None,     # None: the teacher gets load_from's weights, like the student
        anchors='auto',              # 'auto' (seed 002's rule) | 'all' | ['backbone.layer2.0.bn1', ...] | None
        num_partitions=5,            # P: automatic anchors (one per partition of the channel units)
        temperature=1.0,             # softmax temperature of the class KL terms
        output_weight=1.0,           # seed 002: all weights 1 while pruning
        anchor_weight=1.0,
        sample_targets=True,         # informative Fisher while student == teacher (see above)
        input_shape=None,            # (C, H, W) of the trace that chooses anchors; None: a default, then the batch
        seed=0),
    hook=dict(
        type='mmfisher.FisherPruningHook',
        interval=25,                 # seed 002: 25 iterations between pruning steps
        delta='acts',                # Fisher / activations saved (the paper's memory-normalised default)
        target=0.5,                  # stop at 50% of the unpruned FLOPs
        target_metric='flops',
        channels_per_step=500,       # seed 002's top-k (lower it for small models)
        input_shape=(3, 800, 1333),  # (C, H, W) of the FLOPs / activation counts
    ),
)
