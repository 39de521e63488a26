"""tools/train.py and tools/test.py end to end (subprocesses, a few iterations each)."""
import glob
import os.path as osp
import pickle
import re

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
    # --resume without a path: mmengine finds the latest checkpoint of the work dir, loads it and says both
    assert f'Auto resumed from the latest checkpoint {osp.join(work, "epoch_1.pth")}' in log
    assert 'resumed epoch: 1, iter: 2' in log
    assert 'Epoch(train) [2][2/2]' in log and 'Epoch(train) [1][' not in log
    ckpt = torch.load(osp.join(work, 'epoch_2.pth'), map_location='cpu')
    assert ckpt['meta']['epoch'] == 2 and ckpt['meta']['iter'] == 4
    assert ckpt['meta']['dataset_meta']['classes'] == ('circle', 'square', 'triangle')


def test_test_tool_dumps_predictions_and_metrics(det_run, tmp_path):
    work = det_run[0]
    out, metrics = str(tmp_path / 'preds.pkl'), str(tmp_path / 'metrics.json')
    show = 'vis'
    log = F.run([F.PYTHON, TEST, F.DET_CFG, osp.join(work, 'epoch_2.pth'), '--work-dir', str(tmp_path / 'test'),
                 '--out', out, '--metrics-json', metrics, '--show-dir', show,
                 '--cfg-options', *F.small_det_options(), 'default_hooks.visualization.interval=1']).stdout
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 8 and {'img_id', 'pred_instances'} <= set(preds[0])
    m = F.read_json(metrics)
    assert set(m) == {f'coco/bbox_mAP{s}' for s in ('', '_50', '_75', '_s', '_m', '_l')}
    # the file holds the metrics the test run logged (4 decimals there)
    logged = dict(re.findall(r'(coco/bbox_mAP\w*): (-?[\d.]+)', log.split('Epoch(test)')[-1]))
    assert set(logged) == set(m) and all(abs(m[k] - float(v)) <= 1e-4 for k, v in logged.items()), (m, logged)
    # an AP in [0, 1] where the 8 images hold ground truth of that size, COCO's -1 where they hold none (the shapes
    # are never large, area >= 96^2: bbox_mAP_l is -1)
    ann = F.read_json(osp.join(F.DATA_ROOT, 'shapes_det', 'annotations', 'val.json'))
    areas = [a['area'] for a in ann['annotations'] if a['image_id'] in {p['img_id'] for p in preds}]
    sizes = {'_s': (0, 32 ** 2), '_m': (32 ** 2, 96 ** 2), '_l': (96 ** 2, float('inf'))}
    for key, v in m.items():
        lo, hi = sizes.get(key[len('coco/bbox_mAP'):], (0, float('inf')))
        assert (0 <= v <= 1) if any(lo <= a < hi for a in areas) else v == -1, (key, v, areas)
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
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == ClsSpec().val_per_class * 3 and preds[0]['pred_score'].shape == (3, )
    # top-1 accuracy is the share of the dumped predictions whose label is the ground truth's
    assert set(m) == {'accuracy/top1'}
    correct = sum(int(p['pred_label'].item() == p['gt_label'].item()) for p in preds)
    assert m['accuracy/top1'] == pytest.approx(100 * correct / len(preds), abs=1e-4)
