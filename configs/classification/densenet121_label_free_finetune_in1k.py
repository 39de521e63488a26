# Label-free Group Fisher pruning (seed 002) of DenseNet-121 on ImageNet images without labels, step 2 of 2: fine-tune
# the slimmed model label-free.
#
#   tools/dist_train.sh configs/classification/densenet121_label_free_finetune_in1k.py 8
#
# The student is the mmfisher.Pruned model that densenet121_label_free_prune_in1k.py wrote (a real, smaller
# ImageClassifier), the teacher the unpruned trained model from its released checkpoint; the loss is the same
# distillation, scaled by 0.1 as in seed 002 (configs/_base_/label_free_finetune.py), on the training images without
# labels, with the base config's schedule. Validation (ImageNet val, with labels, for measuring only) and
# tools/test.py run the student. Run from the directory the pruning run was started in, or pass --cfg-options
# model.architecture.channels=... load_from=... for another work_dir.
_base_ = ['mmpretrain::densenet/densenet121_4xb256_in1k.py', '../_base_/label_free_finetune.py']

model = dict(
    _base_.label_free_finetune.model,
    _delete_=True,
    architecture=dict(
        type='mmfisher.Pruned',
        architecture=_base_.model,   # the unpruned model of the base config, exactly as it was pruned
        channels='work_dirs/densenet121_label_free_prune_in1k/channels.json'),
    teacher_checkpoint='https://download.openmmlab.com/mmclassification/v0/densenet/densenet121_4xb256_in1k_20220426-07450f99.pth',  # noqa: E501
    input_shape=(3, 224, 224))
load_from = 'work_dirs/densenet121_label_free_prune_in1k/pruned.pth'  # the slimmed weights: into the student

train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='mmfisher.UnlabeledImages',
        data_root='data/imagenet/',
        data_prefix=dict(img_path='train/'),
        pipeline=_base_.train_pipeline))
