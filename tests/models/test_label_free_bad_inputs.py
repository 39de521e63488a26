"""Bad label-free settings: each is a clear error naming the field and the fix (an exception, never an assert), a
non-zero exit from tools/train.py with no file half-written, and a labeled data set is allowed (labels ignored)."""
import copy
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from mmfisher.core.anchors import AnchorError
from mmfisher.models.distiller import LabelFreeError, PairingError, TeacherCheckpointError
from _label_free_helpers import DET_PRUNE, ROOT, build, cls_arch, det_arch, frcnn_arch


@pytest.fixture(scope='module')
def slimmed_checkpoint(tmp_path_factory):
    """A pruned.pth-like checkpoint: the tiny classifier slimmed to a random 60% of its channels."""
    from mmfisher.core import analyze_fast, channel_config, random_alive
    from mmfisher.models.tracing import make_trace_forward
    model = build(cls_arch(), 'mmpretrain', anchors=None).student
    graph = analyze_fast(model, lambda m: make_trace_forward(m, (3, 64, 64)))
    cfg = channel_config(model, graph, random_alive(graph, 0.4, seed=0))
    from mmfisher.core import apply_channel_config
    slim = apply_channel_config(copy.deepcopy(model), cfg)
    path = str(tmp_path_factory.mktemp('slim') / 'pruned.pth')
    torch.save({'state_dict': slim.state_dict()}, path)
    return path, cfg


def test_teacher_checkpoint_missing(tmp_path):
    path = str(tmp_path / 'nope.pth')
    with pytest.raises(TeacherCheckpointError, match=r'teacher_checkpoint ".*nope.pth" does not exist\. Fix: set '
                                                     'teacher_checkpoint to the unpruned'):
        build(cls_arch(), 'mmpretrain', teacher_checkpoint=path)


def test_teacher_checkpoint_of_a_slimmed_model(slimmed_checkpoint):
    path, _ = slimmed_checkpoint
    with pytest.raises(TeacherCheckpointError) as info:
        build(cls_arch(), 'mmpretrain', teacher_checkpoint=path)
    msg = str(info.value)
    assert path in msg and 'does not match the teacher' in msg and 'shape mismatches' in msg
    assert 'slimmed model (pruned.pth)' in msg and 'Fix: the teacher is the unpruned model' in msg


def test_teacher_checkpoint_of_another_architecture(tmp_path):
    other = build(det_arch(), anchors=None).student
    path = str(tmp_path / 'retinanet.pth')
    torch.save({'state_dict': other.state_dict()}, path)
    with pytest.raises(TeacherCheckpointError, match='missing keys .* unexpected keys'):
        build(cls_arch(), 'mmpretrain', teacher_checkpoint=path)


def test_teacher_checkpoint_unreadable(tmp_path):
    path = tmp_path / 'broken.pth'
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(TeacherCheckpointError, match=r'broken.pth" cannot be read .* Fix'):
        build(cls_arch(), 'mmpretrain', teacher_checkpoint=str(path))


def test_pruned_student_needs_a_teacher_checkpoint(slimmed_checkpoint):
    _, cfg = slimmed_checkpoint
    arch = dict(type='mmfisher.Pruned', architecture=cls_arch(), channels=cfg)
    with pytest.raises(TeacherCheckpointError, match='Fix: set teacher_checkpoint'):
        build(arch, 'mmpretrain')


@pytest.mark.parametrize('anchors, match', [
    (['backbone.layer2.0.bn1', 'backbone.nope'], r"anchors: \['backbone.nope'\] is not a module of ImageClassifier"),
    (3, 'anchors=3 must be "auto"'),
    ('every', 'anchors=.every. must be "auto"'),
])
def test_anchor_names(anchors, match):
    with pytest.raises(AnchorError, match=match):
        build(cls_arch(), 'mmpretrain', anchors=anchors)


@pytest.mark.parametrize('p, match', [
    (0, r'num_partitions=0 must be an int >= 1'),
    (-2, r'num_partitions=-2 must be an int >= 1'),
    ('5', r"num_partitions='5' must be an int >= 1"),
    (13, r'num_partitions=13 is more than the model\'s 12 channel units: use 1 <= num_partitions <= 12'),
])
def test_partitions(p, match):
    with pytest.raises(AnchorError, match=match):
        build(cls_arch(), 'mmpretrain', num_partitions=p)


@pytest.mark.parametrize('field, value', [('temperature', 0), ('output_weight', -1.0), ('anchor_weight', 'x'),
                                          ('sample_targets', 'yes'), ('seed', 1.5)])
def test_bad_numbers(field, value):
    with pytest.raises(LabelFreeError, match=field):
        build(cls_arch(), 'mmpretrain', **{field: value})


def test_mask_head_cannot_be_paired():
    with pytest.raises(PairingError, match=r'cannot pair output roi_head.mask_head \(FCNMaskHead\).*Fix'):
        build(frcnn_arch(mask=True))


def test_head_less_classifier_cannot_be_paired():
    arch = cls_arch()
    arch.pop('head')
    with pytest.raises(PairingError, match='has no head'):
        build(arch, 'mmpretrain')


def test_unknown_dense_output_cannot_be_paired():
    from mmdet.models.dense_heads import RetinaHead
    from mmdet.registry import MODELS

    class EmbeddingRetinaHead(RetinaHead):
        def loss_by_feat(self, cls_scores, bbox_preds, embeddings, batch_gt_instances, batch_img_metas,
                         batch_gt_instances_ignore=None):
            raise NotImplementedError

    MODELS.register_module(name='EmbeddingRetinaHead', module=EmbeddingRetinaHead, force=True)
    arch = det_arch()
    arch.bbox_head.type = 'EmbeddingRetinaHead'
    with pytest.raises(PairingError, match=r'cannot pair output bbox_head.embeddings of EmbeddingRetinaHead'):
        build(arch)


def test_unpairable_shapes_at_run_time_name_the_output():
    """A student whose class output does not have the teacher's shape (another teacher config)."""
    m = build(det_arch(), anchors=None)
    from _label_free_helpers import det_batch
    import types

    def bad_forward(self, x):
        cls, box = type(self).forward(self, x)
        return [c[:, :-1] for c in cls], box
    m.student.bbox_head.forward = types.MethodType(bad_forward, m.student.bbox_head)
    with pytest.raises(PairingError, match=r'cannot pair output bbox_head.cls_scores \(level 0\)'):
        m(*det_batch(), mode='loss')


def test_train_tool_exits_non_zero_and_writes_nothing(tmp_path):
    """tools/train.py on a label-free config with a missing teacher checkpoint: the error and its fix on stderr, a
    non-zero exit, and no channels.json / pruned.pth / checkpoint in the work dir."""
    work = tmp_path / 'work'
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'train.py'), DET_PRUNE, '--work-dir', str(work), '--cfg-options',
         f'model.teacher_checkpoint={tmp_path}/missing.pth', 'load_from=None'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert 'TeacherCheckpointError' in out and 'missing.pth" does not exist. Fix' in out
    written = [osp.join(d, f) for d, _, files in os.walk(work) for f in files]
    assert not [f for f in written if f.endswith(('.pth', '.json')) and not f.endswith('vis_data/config.py')
                and 'scalars' not in f], written
