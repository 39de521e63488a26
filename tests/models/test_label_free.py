"""LabelFreeDistiller (mmfisher.models.distiller): the wrapper's structure (a student the hook prunes, a frozen
teacher), weight loading, the distillation terms of classifiers, dense and two-stage detectors, sampled targets,
and what an anchor compares while channels are masked. All in-process on tiny models."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _label_free_helpers import (build, cls_arch, cls_batch, det_arch, det_batch, frcnn_arch, set_iter,
                                    tensors)


@pytest.fixture(scope='module')
def det():
    return build(det_arch())


@pytest.fixture(scope='module')
def cls():
    return build(cls_arch(), 'mmpretrain')


def test_student_is_pruned_teacher_frozen_and_in_eval(det):
    from mmfisher.models import pruned_module
    assert pruned_module(det) is det.student
    assert det.data_preprocessor is det.student.data_preprocessor
    assert all(not p.requires_grad for p in det.teacher.parameters())
    assert all(p.requires_grad for p in det.student.parameters())
    det.train()
    assert det.student.training and not det.teacher.training
    assert not any(m.training for m in det.teacher.modules())
    for a, b in zip(det.student.state_dict().values(), det.teacher.state_dict().values()):
        assert torch.equal(a, b)  # without a checkpoint the teacher is a copy of the student


def test_predict_and_tensor_modes_run_the_student(det):
    inputs, samples = det_batch()
    det.eval()
    with torch.no_grad():
        det.student.bbox_head.retina_cls.bias.add_(0.5)  # make the student differ from the teacher
        got = tensors(det(inputs, samples, mode='tensor'))
        want = tensors(det.student(inputs, samples, mode='tensor'))
        preds = det(inputs, samples, mode='predict')
        det.student.bbox_head.retina_cls.bias.sub_(0.5)
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))
    assert len(preds) == 2 and hasattr(preds[0], 'pred_instances')


def test_plain_checkpoint_loads_into_student_and_teacher(tmp_path, det):
    from mmengine.runner.checkpoint import load_checkpoint
    m = copy.deepcopy(det)
    plain = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in m.student.state_dict().items()}
    path = str(tmp_path / 'plain.pth')
    torch.save({'state_dict': plain, 'meta': {}}, path)
    load_checkpoint(m, path, map_location='cpu', strict=True)  # what load_from does (non-strict there)
    for k, v in plain.items():
        assert torch.equal(m.student.state_dict()[k], v), k
        assert torch.equal(m.teacher.state_dict()[k], v), k
    # the wrapper's own checkpoint (student.* / teacher.*) round-trips as it is
    m2 = copy.deepcopy(det)
    m2.load_state_dict(m.state_dict(), strict=True)
    assert torch.equal(m2.teacher.bbox_head.retina_cls.weight, plain['bbox_head.retina_cls.weight'])


def test_teacher_checkpoint_loads_strictly_and_load_from_goes_to_the_student(tmp_path, det):
    teacher_sd = {k: v + 1.0 if v.is_floating_point() else v for k, v in det.student.state_dict().items()}
    path = str(tmp_path / 'teacher.pth')
    torch.save({'state_dict': teacher_sd}, path)
    m = build(det_arch(), teacher_checkpoint=path)
    assert torch.equal(m.teacher.backbone.conv1.weight, teacher_sd['backbone.conv1.weight'])
    student_sd = {k: v - 1.0 if v.is_floating_point() else v for k, v in det.student.state_dict().items()}
    m.load_state_dict(student_sd, strict=True)
    assert torch.equal(m.student.backbone.conv1.weight, student_sd['backbone.conv1.weight'])
    assert torch.equal(m.teacher.backbone.conv1.weight, teacher_sd['backbone.conv1.weight'])  # untouched
    m.init_weights()  # the Runner's initialisation never overwrites a teacher checkpoint
    assert torch.equal(m.teacher.backbone.conv1.weight, teacher_sd['backbone.conv1.weight'])
    # a label-free run's own checkpoint (student.* / teacher.*) gives its teacher
    wrapped = str(tmp_path / 'wrapped.pth')
    torch.save({'state_dict': m.state_dict()}, wrapped)
    m3 = build(det_arch(), teacher_checkpoint=wrapped)
    assert torch.equal(m3.teacher.backbone.conv1.weight, teacher_sd['backbone.conv1.weight'])


def test_dense_detector_terms_and_gradients(det):
    m = copy.deepcopy(det).train()
    set_iter(3)
    losses = m(*det_batch(), mode='loss')
    assert {'loss_kd_cls', 'loss_kd_bbox', 'loss_anchor', 'kd_cls', 'kd_bbox', 'kd_anchor'} <= set(losses)
    assert all(torch.isfinite(v).all() for v in losses.values())
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert all(p.grad is not None for p in m.student.parameters())
    assert all(p.grad is None for p in m.teacher.parameters())


def test_classifier_kl_is_teacher_to_student_with_temperature(cls):
    m = copy.deepcopy(cls).train()
    m.student.eval()  # deterministic, to recompute the outputs
    with torch.no_grad():
        m.student.head.fc.weight.mul_(1.3)
    m.sample_targets, m.temperature = False, 2.0
    inputs, _ = cls_batch()
    losses = m(inputs, None, mode='loss')
    with torch.no_grad():
        s, t = m.student(inputs, mode='tensor'), m.teacher(inputs, mode='tensor')
    p_t = F.softmax(t / 2, 1)
    want = 4.0 * (p_t * (F.log_softmax(t / 2, 1) - F.log_softmax(s / 2, 1))).sum(1).mean()
    torch.testing.assert_close(losses['loss_kd_cls'], want)
    assert set(losses) == {'loss_kd_cls', 'loss_anchor'}  # soft targets: no sampled parts to log apart


@pytest.mark.parametrize('kind', ['cls', 'det'])
def test_sampled_targets_give_fisher_while_the_student_equals_the_teacher(kind, cls, det):
    """A deterministic student equal to its teacher (eval-mode norms): the soft loss has zero gradient, so every
    channel's Fisher would be 0; the sampled targets' loss has the same value but informative gradients."""
    base = cls if kind == 'cls' else det
    inputs, samples = cls_batch() if kind == 'cls' else det_batch()
    grads = {}
    for sample in (False, True):
        m = copy.deepcopy(base).train()
        m.student.eval()
        m.sample_targets = sample
        set_iter(0)
        losses = m(inputs, samples, mode='loss')
        total = sum(v for k, v in losses.items() if 'loss' in k)
        exact = [v for k, v in losses.items() if k.startswith('kd_')] if sample else [total]
        assert all(abs(float(v)) < 1e-5 for v in exact)  # student == teacher: the soft loss is zero either way
        total.backward()
        grads[sample] = sum(float(p.grad.abs().sum()) for p in m.student.parameters() if p.grad is not None)
    assert grads[False] < 1e-6 * max(grads[True], 1e-12) or grads[False] == 0.0
    assert grads[True] > 0


def test_sampling_is_seeded_by_iteration_not_by_the_global_rng(cls):
    m = copy.deepcopy(cls).train()
    inputs, _ = cls_batch()
    set_iter(7)
    a = m(inputs, None, mode='loss')['loss_kd_cls']
    torch.manual_seed(123)
    set_iter(7)
    b = m(inputs, None, mode='loss')['loss_kd_cls']
    set_iter(8)
    c = m(inputs, None, mode='loss')['loss_kd_cls']
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize('kind', ['cls', 'det'])
def test_labels_never_reach_the_loss(kind, cls, det, monkeypatch):
    """The same images with and without labels give identical losses; labels are said once in the log."""
    import mmfisher.models.distiller as D
    said = []
    monkeypatch.setattr(D, 'print_log', lambda msg, **kw: said.append(msg))
    m = copy.deepcopy(cls if kind == 'cls' else det).train()
    batch = cls_batch if kind == 'cls' else det_batch
    out = {}
    for labels in (False, True, True):
        inputs, samples = batch(labels=labels)
        set_iter(5)
        out.setdefault(labels, []).append({k: v.detach() for k, v in m(inputs, samples, mode='loss').items()})
    for k, v in out[False][0].items():
        assert torch.equal(v, out[True][0][k]) and torch.equal(v, out[True][1][k]), k
    assert len([s for s in said if 'carries labels' in s and 'ignored' in s]) == 1


def test_dense_heads_with_quality_outputs():
    """FCOS (GroupNorm head, centerness): every output paired, every student parameter trained."""
    from mmfisher.zoo import load_config, strip_pretrained
    arch = strip_pretrained(load_config('mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py').model)
    arch.backbone.update(depth=18, base_channels=8, init_cfg=None, norm_eval=False)
    arch.neck.update(in_channels=[8, 16, 32, 64], out_channels=16)
    arch.bbox_head.update(in_channels=16, feat_channels=16, stacked_convs=2, num_classes=3,
                          norm_cfg=dict(type='GN', num_groups=4, requires_grad=True))
    m = build(arch, anchors='all').train()
    set_iter(0)
    losses = m(*det_batch(), mode='loss')
    assert {'loss_kd_cls', 'loss_kd_bbox', 'loss_kd_centerness', 'loss_anchor'} <= set(losses)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    missing = [n for n, p in m.student.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert any('gn' in a for a in m.anchor_names)


def test_two_stage_rpn_and_roi_head_on_the_teachers_proposals():
    m = build(frcnn_arch()).train()
    seen = {}
    for who in ('student', 'teacher'):
        roi_head = getattr(m, who).roi_head
        orig = roi_head._bbox_forward

        def spy(x, rois, who=who, orig=orig):
            seen[who] = rois.detach().clone()
            return orig(x, rois)
        roi_head._bbox_forward = spy
    set_iter(0)
    losses = m(*det_batch(), mode='loss')
    assert {'loss_kd_rpn_cls', 'loss_kd_rpn_bbox', 'loss_kd_roi_cls', 'loss_kd_roi_bbox'} <= set(losses)
    assert torch.equal(seen['student'], seen['teacher']) and len(seen['teacher']) > 0
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert all(p.grad is not None for n, p in m.student.named_parameters() if 'roi_head' in n or 'rpn' in n)


def test_anchor_terms_of_a_masked_student_equal_its_slimmed_copy(tmp_path, cls):
    """While channels are masked the anchors compare the alive channels only: the masked student's loss equals
    that of the slimmed (Pruned) student with the same teacher, output and anchor terms alike."""
    from mmfisher.core import ChannelMasks, analyze_fast, channel_config, random_alive
    from mmfisher.models.tracing import make_trace_forward
    m = copy.deepcopy(cls).train()
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.student.eval()  # same arithmetic in the masked and the slimmed model (no batch statistics)
    m.sample_targets = False
    graph = analyze_fast(m.student, lambda x: make_trace_forward(x, (3, 64, 64)))
    alive = random_alive(graph, 0.4, seed=1)
    masks = ChannelMasks(m.student, graph)
    masks.set_alive(alive)
    inputs, _ = cls_batch()
    masked = m(inputs, None, mode='loss')
    assert any(A is not None for A in [_alive(m, n) for n in m.anchor_names]), 'some anchor must be masked'

    cfg = channel_config(m.student, graph, alive)
    teacher = str(tmp_path / 'teacher.pth')
    torch.save({'state_dict': m.teacher.state_dict()}, teacher)
    pruned_arch = dict(type='mmfisher.Pruned', architecture=cls_arch(), channels=cfg)
    s = build(pruned_arch, 'mmpretrain', teacher_checkpoint=teacher, sample_targets=False).train()
    from mmfisher.core import apply_channel_config
    slim = copy.deepcopy(m.student)
    apply_channel_config(slim, cfg)
    s.student.load_state_dict(slim.state_dict(), strict=True)
    s.student.eval()
    assert s.anchor_names == m.anchor_names
    slimmed = s(inputs, None, mode='loss')
    for k in masked:
        torch.testing.assert_close(slimmed[k], masked[k], rtol=1e-4, atol=1e-6, msg=k)
    assert float(masked['loss_anchor']) > 0


def _alive(m, name):
    from mmfisher.core import anchors as A
    return A.alive_positions(m._graph, m.student, name)


def test_anchor_choices_are_logged(monkeypatch):
    import mmfisher.models.distiller as D
    said = []
    monkeypatch.setattr(D, 'print_log', lambda msg, **kw: said.append(msg))
    m = build(cls_arch(), 'mmpretrain', num_partitions=3)
    assert len(m.anchor_names) == 3
    text = '\n'.join(said)
    assert 'seed 002 rule, 3 partitions' in text and all(a in text for a in m.anchor_names)
    named = build(cls_arch(), 'mmpretrain', anchors=['backbone.layer2.0.bn1', 'neck'])
    assert named.anchor_names == ['backbone.layer2.0.bn1', 'neck']
    losses = named(cls_batch()[0], None, mode='loss')
    assert torch.isfinite(losses['loss_anchor'])
    none = build(cls_arch(), 'mmpretrain', anchors=None)
    assert none.anchor_names == [] and 'loss_anchor' not in none(cls_batch()[0], None, mode='loss')
    np.testing.assert_equal(len(build(cls_arch(), 'mmpretrain', anchors='all').anchor_names) > 5, True)
