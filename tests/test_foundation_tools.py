"""tools/train.py and tools/test.py end to end (subprocesses, a few iterations each)."""
import glob
import os.path as osp
import pickle

import pytest
import torch

import _foundation as F
from mmfisher.data_gen import ClsSpec

TRAIN = osp.join(F.ROOT, 'tools', 'train.py')
TEST = osp.join(F.ROOT, 'tools', 'test.py')


@pytest.fixture(scope='module')
def det_run(tmp_path_factory):
    """Train the tiny detector for 1 epoch (2 iterations), then resume it to epoch 2."""
    F.ensure_data()
    work = str(tmp_path_factory.mktemp('det') / 'work')
    first = F.run([F.PYTHON, TRAIN, F.DET_CFG, '--work-dir', work, '--cfg-options', *F.small_det_options(epochs=1)])
    resumed = F.run([F.PYTHON, TRAIN, F.DET_CFG, '--work-dir', work, '--resume',
                     '--cfg-options', *F.small_det_options(epochs=2)])
    return work, first.stdout, resumed.stdout


def test_train_writes_checkpoints_and_validates(det_run):
    work, log, _ = det_run
    assert 'Epoch(train) [1][2/2]' in log
    assert 'coco/bbox_mAP' in log  # validation ran at the end of the epoch, through CocoMetric
    assert osp.isfile(osp.join(work, 'epoch_1.pth'))


def test_train_resume_auto_continues_from_latest(det_run):
    work, _, log = det_run
    assert 'resumed epoch: 1, iter: 2' in log.replace('\n', ' ') or 'Auto resumed from the latest checkpoint' in log
    assert 'Epoch(train) [2][2/2]' in log and 'Epoch(train) [1][' not in log
    ckpt = torch.load(osp.join(work, 'epoch_2.pth'), map_location='cpu')
    assert ckpt['meta']['epoch'] == 2 and ckpt['meta']['iter'] == 4
    assert ckpt['meta']['dataset_meta']['classes'] == ('circle', 'square', 'triangle')


def test_test_tool_dumps_predictions_and_metrics(det_run, tmp_path):
    work = det_run[0]
    out, metrics = str(tmp_path / 'preds.pkl'), str(tmp_path / 'metrics.json')
    show = 'vis'
    F.run([F.PYTHON, TEST, F.DET_CFG, osp.join(work, 'epoch_2.pth'), '--work-dir', str(tmp_path / 'test'),
           '--out', out, '--metrics-json', metrics, '--show-dir', show,
           '--cfg-options', *F.small_det_options(), 'default_hooks.visualization.interval=1'])
    m = F.read_json(metrics)
    assert {'coco/bbox_mAP', 'coco/bbox_mAP_50'} <= set(m)
    assert all(-1 <= v <= 1 for v in m.values())
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 8 and {'img_id', 'pred_instances'} <= set(preds[0])
    assert preds[0]['pred_instances']['bboxes'].shape[-1] == 4
    assert len(glob.glob(str(tmp_path / 'test' / '*' / show / '*.png'))) == 8


def test_test_tool_errors_name_the_fix(det_run, tmp_path):
    proc = F.run([F.PYTHON, TEST, F.DET_CFG, str(tmp_path / 'missing.pth')], check=False)
    assert proc.returncode != 0 and 'missing.pth' in proc.stdout and 'does not exist' in proc.stdout
    proc = F.run([F.PYTHON, TEST, F.DET_CFG, osp.join(det_run[0], 'epoch_2.pth'), '--out', 'x.json'],
                 check=False)
    assert proc.returncode != 0 and '.pkl' in proc.stdout


def test_classifier_train_and_test(tmp_path):
    F.ensure_data()
    work = str(tmp_path / 'cls')
    opts = ['train_dataloader.dataset.indices=32', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
            'default_hooks.logger.interval=1', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
            'val_dataloader.persistent_workers=False', 'test_dataloader.num_workers=0',
            'test_dataloader.persistent_workers=False']
    log = F.run([F.PYTHON, TRAIN, F.CLS_CFG, '--work-dir', work, '--cfg-options', *opts]).stdout
    assert 'accuracy/top1' in log
    metrics, out = str(tmp_path / 'm.json'), str(tmp_path / 'p.pkl')
    F.run([F.PYTHON, TEST, F.CLS_CFG, osp.join(work, 'epoch_1.pth'), '--work-dir', str(tmp_path / 't'),
           '--metrics-json', metrics, '--out', out, '--cfg-options', *opts])
    m = F.read_json(metrics)
    assert 0 <= m['accuracy/top1'] <= 100
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == ClsSpec().val_per_class * 3 and preds[0]['pred_score'].shape == (3, )
