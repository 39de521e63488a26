"""tools/dist_train.sh / dist_test.sh with 2 processes on the CPU (gloo): ranks stay in sync end to end."""
import os.path as osp

import pytest
import torch

import _foundation as F

N_TRAIN, N_VAL, EPOCHS = 32, 16, 2


@pytest.fixture(scope='module')
def dist_run(tmp_path_factory):
    F.ensure_data()
    tmp = tmp_path_factory.mktemp('dist')
    cfg = tmp / 'probe_cfg.py'
    cfg.write_text(f"_base_ = [{F.DET_CFG!r}]\n"
                   "custom_imports = dict(imports=['mmfisher', 'dist_probe'], allow_failed_imports=False)\n"
                   "custom_hooks = [dict(type='RankProbeHook')]\n")
    work = str(tmp / 'work')
    proc = F.run(['bash', osp.join(F.ROOT, 'tools', 'dist_train.sh'), str(cfg), '2', '--work-dir', work,
                  '--cfg-options', *F.small_det_options(N_TRAIN, N_VAL, EPOCHS)],
                 extra_env={'PORT': str(F.free_port())}, timeout=400)
    return cfg, work, proc.stdout, [F.read_json(osp.join(work, 'rank_probe', f'rank{r}.json')) for r in (0, 1)]


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (gloo) path')
def test_both_ranks_ran_on_gloo_with_ddp(dist_run):
    _, _, log, ranks = dist_run
    assert [r['rank'] for r in ranks] == [0, 1]
    for r in ranks:
        assert r['world_size'] == 2 and r['backend'] == 'gloo'
        assert r['wrapper'] == 'MMDistributedDataParallel' and r['device_ids'] is None
        assert r['iters'] == EPOCHS * N_TRAIN // 2 // 8
    assert 'coco/bbox_mAP' in log  # distributed validation (results collected over gloo) ran


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (gloo) path')
def test_ranks_end_with_identical_weights_from_different_data(dist_run):
    _, work, _, (r0, r1) = dist_run
    # each rank trained on its own shard of the data: equal weights come from gradient all-reduce, not equal inputs
    assert sorted(r0['img_ids']) == sorted(r1['img_ids']) == [str(e) for e in range(EPOCHS)]
    for epoch, ids0 in r0['img_ids'].items():
        ids1 = r1['img_ids'][epoch]
        assert set(ids0).isdisjoint(ids1)
        assert len(set(ids0) | set(ids1)) == N_TRAIN
    assert r0['initial'] == r1['initial']  # DDP broadcast rank 0's initial weights
    assert r0['final'] != r0['initial']  # training changed them...
    assert r0['final'] == r1['final']  # ...identically on both ranks
    # and rank 0's checkpoint holds exactly those weights
    from dist_probe import digest
    ckpt = torch.load(osp.join(work, f'epoch_{EPOCHS}.pth'), map_location='cpu')
    assert ckpt['meta']['iter'] == r0['iters']
    assert len(r0['param_names']) > 20
    assert digest((k, ckpt['state_dict'][k]) for k in r0['param_names']) == r0['final']


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (gloo) path')
def test_dist_test_matches_single_process(dist_run, tmp_path):
    cfg, work, _, _ = dist_run
    ckpt = osp.join(work, f'epoch_{EPOCHS}.pth')
    opts = ['--cfg-options', *F.small_det_options(N_TRAIN, N_VAL)]
    single, dist = str(tmp_path / 'single.json'), str(tmp_path / 'dist.json')
    F.run([F.PYTHON, osp.join(F.ROOT, 'tools', 'test.py'), str(cfg), ckpt, '--work-dir', str(tmp_path / 's'),
           '--metrics-json', single, *opts])
    F.run(['bash', osp.join(F.ROOT, 'tools', 'dist_test.sh'), str(cfg), ckpt, '2', '--work-dir',
           str(tmp_path / 'd'), '--metrics-json', dist, *opts], extra_env={'PORT': str(F.free_port())})
    a, b = F.read_json(single), F.read_json(dist)
    assert 'coco/bbox_mAP' in a
    assert a == b
