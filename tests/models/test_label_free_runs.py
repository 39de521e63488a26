"""Label-free pruning and fine-tuning end to end (mmengine Runner, tiny models, unlabeled images, a few
iterations): the hook prunes the student only, its channels.json / pruned.pth load into mmfisher.Pruned unchanged,
--resume mid-pruning gives the uninterrupted run's channels, the slimmed student fine-tunes label-free against the
unpruned teacher, and a labeled data set is allowed (labels ignored, said once)."""
import json
import os.path as osp

import pytest
import torch

from _label_free_helpers import (cls_arch, cls_batch, det_arch, det_batch, fisher_hook, prune_cfg, run,
                                    tensors)


def _pruned(arch, channels, scope):
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(scope)
    return MODELS.build(dict(type='mmfisher.Pruned', architecture=arch, channels=channels))


@pytest.fixture(scope='module')
def det_run(tmp_path_factory):
    work = str(tmp_path_factory.mktemp('det_prune'))
    runner = run(prune_cfg('det', work))
    return runner, work


def test_detector_prunes_the_student_and_writes_pruned_files(det_run):
    runner, work = det_run
    hook = fisher_hook(runner)
    assert hook.done and runner.iter < 30
    model = runner.model
    assert type(model).__name__ == 'LabelFreeDistiller'
    # the teacher was never masked: all its weights are as they were (a copy of the initial student)
    zeroed = [n for n, p in model.teacher.named_parameters() if p.dim() > 1 and (p.flatten(1).abs().sum(1) == 0).any()]
    assert not zeroed
    assert osp.isfile(osp.join(work, 'channels.json')) and osp.isfile(osp.join(work, 'pruned.pth'))
    cfg = json.load(open(osp.join(work, 'channels.json')))
    assert cfg['format'].startswith('mmfisher-channels') and cfg['meta']['flops_ratio'] <= 0.5
    # the same files as labeled pruning: they load into mmfisher.Pruned unchanged, strictly
    slim = _pruned(det_arch(), osp.join(work, 'channels.json'), 'mmdet')
    sd = torch.load(osp.join(work, 'pruned.pth'), map_location='cpu', weights_only=True)['state_dict']
    slim.load_state_dict(sd, strict=True)
    assert not any(k.startswith(('student.', 'teacher.')) for k in sd)
    inputs, samples = det_batch()
    slim.eval()
    model.student.eval()
    with torch.no_grad():
        a = tensors(slim(inputs, samples, mode='tensor'))
        b = tensors(model.student(inputs, samples, mode='tensor'))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.student.parameters())


def test_classifier_resume_mid_pruning_gives_the_same_channels(tmp_path):
    full_dir, split_dir = str(tmp_path / 'full'), str(tmp_path / 'split')
    kw = dict(max_iters=40, interval=2, k=48, images=32)
    full = run(prune_cfg('cls', full_dir, **kw))
    ref = fisher_hook(full)
    assert ref.done and full.iter > 6, 'the run must prune for several steps'

    cfg = prune_cfg('cls', split_dir, **dict(kw, max_iters=5))
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=5, by_epoch=False)
    first = run(cfg)
    assert not fisher_hook(first).done and osp.isfile(osp.join(split_dir, 'iter_5.pth'))
    cfg = prune_cfg('cls', split_dir, **kw)
    second = run(cfg, resume=True)
    got = fisher_hook(second)
    assert got.done and second.iter == full.iter
    assert list(got.order) == list(ref.order)
    assert open(osp.join(full_dir, 'channels.json')).read() == open(osp.join(split_dir, 'channels.json')).read()
    a = torch.load(osp.join(full_dir, 'pruned.pth'), weights_only=True)['state_dict']
    b = torch.load(osp.join(split_dir, 'pruned.pth'), weights_only=True)['state_dict']
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_label_free_finetune_of_the_slimmed_student(tmp_path):
    """Prune, then fine-tune the Pruned student against the unpruned teacher (its own checkpoint)."""
    from mmengine.config import Config

    from _label_free_helpers import CLS_FINETUNE, UNLABELED
    prune_dir = str(tmp_path / 'prune')
    runner = run(prune_cfg('cls', prune_dir, max_iters=30, interval=2, k=64, images=16))
    assert fisher_hook(runner).done
    teacher = str(tmp_path / 'unpruned.pth')
    torch.save({'state_dict': runner.model.teacher.state_dict()}, teacher)

    cfg = Config.fromfile(CLS_FINETUNE)
    cfg.model.architecture.channels = osp.join(prune_dir, 'channels.json')
    cfg.model.teacher_checkpoint = teacher
    cfg.load_from = osp.join(prune_dir, 'pruned.pth')
    cfg.work_dir = str(tmp_path / 'finetune')
    cfg.train_dataloader.update(num_workers=0, persistent_workers=False, batch_size=8)
    cfg.train_dataloader.dataset.update(data_root=UNLABELED, indices=16)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=1)
    cfg.param_scheduler = None
    cfg.optim_wrapper = dict(optimizer=dict(type='AdamW', lr=0.0))  # no step: check what was loaded
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1, by_epoch=True)
    cfg.default_hooks.logger.interval = 1
    ft = run(cfg)
    model = ft.model
    assert ft.iter == 2 and type(model.student).__name__ == 'ImageClassifier'
    slim = torch.load(cfg.load_from, weights_only=True)['state_dict']
    for k, v in model.student.state_dict().items():
        if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked')):
            assert torch.equal(v, slim[k]), k  # the slimmed weights went into the student ...
    unpruned = torch.load(teacher, weights_only=True)['state_dict']
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, unpruned[k]), k  # ... and the teacher is the unpruned model, untouched
    assert model.student.backbone.layer1[0].conv1.out_channels < model.teacher.backbone.layer1[0].conv1.out_channels
    model.eval()
    with torch.no_grad():
        out = model(cls_batch()[0], None, mode='tensor')
    assert out.shape == (4, 3)
    # the fine-tuned student as a plain checkpoint, for the mmfisher.Pruned config of the same channels.json
    from mmfisher.models.distiller import extract_student
    plain = extract_student(osp.join(cfg.work_dir, 'epoch_1.pth'), str(tmp_path / 'student.pth'))
    slim_model = _pruned(cls_arch(), osp.join(prune_dir, 'channels.json'), 'mmpretrain')
    slim_model.load_state_dict(torch.load(plain, weights_only=True)['state_dict'], strict=True)
    slim_model.eval()
    inputs = cls_batch()[0]
    with torch.no_grad():
        torch.testing.assert_close(slim_model(inputs, mode='tensor'), model.student(inputs, mode='tensor'))


def test_a_labeled_data_set_is_allowed_and_its_labels_ignored(tmp_path, monkeypatch):
    """The tiny detector's labeled COCO set under the label-free config: it runs, and the log says once that the
    labels are ignored."""
    import mmfisher.models.distiller as D
    from _label_free_helpers import DATA, ensure_data
    ensure_data('shapes_det')
    said = []
    real = D.print_log
    monkeypatch.setattr(D, 'print_log', lambda msg, **kw: (said.append(msg), real(msg, **kw)))
    cfg = prune_cfg('det', str(tmp_path), max_iters=3, interval=100)
    from mmengine.config import Config
    labeled = Config.fromfile(osp.join(osp.dirname(D.__file__), '..', '..', 'configs', 'tiny',
                                       'retinanet_tiny_shapes.py')).train_dataloader.dataset
    labeled.data_root = osp.join(DATA, 'shapes_det') + '/'
    labeled.indices = 8
    cfg.train_dataloader.dataset = labeled
    runner = run(cfg)
    assert runner.iter == 3
    assert len([s for s in said if 'carries labels' in s]) == 1


def test_label_free_pruning_under_amp_loss_scaling_takes_the_same_decisions(tmp_path):
    """AMP: the loss scale of an AMP optimizer wrapper (AmpOptimWrapper's contract, on a CPU) is divided out of
    the distillation loss's mask gradients, so label-free pruning masks the same channels in the same order."""
    from _hook_helpers import FakeAmpOptimWrapper  # noqa: F401  registers the wrapper
    kw = dict(max_iters=12, interval=2, k=16, images=16)
    plain = run(prune_cfg('cls', str(tmp_path / 'plain'), **kw))
    cfg = prune_cfg('cls', str(tmp_path / 'amp'), **kw)
    cfg.optim_wrapper = dict(type='FakeAmpOptimWrapper', optimizer=cfg.optim_wrapper.optimizer,
                             scales=(1024.0, 65536.0, 512.0))
    amp = run(cfg)
    a, b = fisher_hook(plain), fisher_hook(amp)
    assert a.steps == b.steps > 3 and len(a.order) == len(b.order) > 48
    assert list(a.order) == list(b.order)


def test_label_free_ddp_ranks_prune_identically(tmp_path):
    """tools/dist_train.sh, 2 CPU processes on gloo: every rank masks the same channels in the same order (the
    distillation loss's Fisher summed over ranks), rank 0 writes the files."""
    import textwrap
    from _hook_helpers import assert_ranks_agree, dist_train_probes
    from _label_free_helpers import CLS_PRUNE, UNLABELED, ensure_data
    ensure_data()
    cfg = str(tmp_path / 'lf_ddp.py')
    with open(cfg, 'w') as f:
        f.write(textwrap.dedent(f"""\
            _base_ = [{CLS_PRUNE!r}]
            custom_imports = dict(imports=['mmfisher', '_hook_probe'], allow_failed_imports=False)
            load_from = None
            custom_hooks = [dict(type='mmfisher.FisherPruningHook', interval=2, channels_per_step=16, target=0.75,
                                 input_shape=(3, 64, 64)),
                            dict(type='PruningProbeHook')]
            train_cfg = dict(max_iters=30)
            train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                                    dataset=dict(data_root={UNLABELED!r}, indices=16))
            val_dataloader = None
            val_cfg = None
            val_evaluator = None
            """))
    work = str(tmp_path / 'work')
    r0, r1 = dist_train_probes(cfg, work)
    assert_ranks_agree(r0, r1, max_iters=30, min_masked=16, first_samples=[8, 0])  # 2 ranks x 4 images
    assert osp.isfile(osp.join(work, 'channels.json')) and osp.isfile(osp.join(work, 'pruned.pth'))
