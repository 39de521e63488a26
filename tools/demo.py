#!/usr/bin/env python
"""The project's main job (``make demo``): generate the bundled data, train the tiny RetinaNet with
tools/train.py, test its last checkpoint with tools/test.py, and print the results.

    python tools/demo.py [--epochs N] [--work-dir work_dirs/demo] [--gpus N]

Runs on the CPU in a few minutes; with ``--gpus N`` (N >= 2) it trains through tools/dist_train.sh instead.
(The pruning pipeline will replace the train/test job here.)
"""
import argparse
import glob
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import time
from typing import Dict, List

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
from mmfisher.data_gen import make_all  # noqa: E402

CONFIG = osp.join(ROOT, 'configs', 'tiny', 'retinanet_tiny_shapes.py')


def run(cmd: List[str]) -> float:
    """Run ``cmd`` from the repo root, streaming its output; returns the wall time; raises on failure.

    Unless OMP_NUM_THREADS is set, each process uses one intra-op thread: for a model this small, 2 threads on a
    2-core CPU were 5-10x slower per iteration than 1 (thread synchronisation dominates the tiny convolutions).
    """
    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', '1')
    print(f'\n$ OMP_NUM_THREADS={env["OMP_NUM_THREADS"]} ' + ' '.join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)
    return time.time() - t0


def read_scalars(work_dir: str) -> List[Dict]:
    """The newest run's ``vis_data/scalars.json`` lines (mmengine LocalVisBackend)."""
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not files:
        raise FileNotFoundError(f'no vis_data/scalars.json under {work_dir}; did training log anything?')
    with open(files[-1]) as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--epochs', type=int, default=None, help='default: the config\'s max_epochs')
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'demo'))
    parser.add_argument('--gpus', type=int, default=1, help='processes for tools/dist_train.sh (1: plain train.py)')
    args = parser.parse_args()

    t0 = time.time()
    made = make_all(osp.join(ROOT, 'data', 'generated'))
    print('[demo] data: ' + ', '.join(f'{k} {"generated" if v else "up to date"}' for k, v in made.items()))

    train_dir, test_dir = osp.join(args.work_dir, 'train'), osp.join(args.work_dir, 'test')
    shutil.rmtree(args.work_dir, ignore_errors=True)  # every demo trains from scratch
    opts = (['--cfg-options', f'train_cfg.max_epochs={args.epochs}', f'train_cfg.val_interval={args.epochs}']
            if args.epochs else [])
    if args.gpus > 1:
        train_cmd = ['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), CONFIG, str(args.gpus)]
    else:
        train_cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), CONFIG]
    t_train = run(train_cmd + ['--work-dir', train_dir] + opts)

    ckpts = glob.glob(osp.join(train_dir, 'epoch_*.pth'))
    if not ckpts:
        raise FileNotFoundError(f'training wrote no checkpoint into {train_dir}')
    ckpt = max(ckpts, key=lambda p: int(osp.basename(p)[6:-4]))
    metrics_file = osp.join(test_dir, 'metrics.json')
    t_test = run([sys.executable, osp.join(ROOT, 'tools', 'test.py'), CONFIG, ckpt, '--work-dir', test_dir,
                  '--out', osp.join(test_dir, 'predictions.pkl'), '--metrics-json', metrics_file])

    scalars = read_scalars(train_dir)
    train_logs = [s for s in scalars if 'loss' in s]
    with open(metrics_file) as f:
        test_metrics = json.load(f)
    first, last = train_logs[0], train_logs[-1]
    print('\n' + '=' * 72)
    print(f'[demo] tiny RetinaNet on shapes_det: {osp.relpath(CONFIG, ROOT)}')
    print(f'[demo] train: {last["epoch"]} epochs, {last["iter"]} iterations in {t_train:.0f} s; '
          f'loss {first["loss"]:.3f} (iter {first["iter"]}) -> {last["loss"]:.3f} (iter {last["iter"]}); '
          f'loss_cls {last["loss_cls"]:.3f}, loss_bbox {last["loss_bbox"]:.3f}')
    print(f'[demo] test ({t_test:.0f} s) on the val split, checkpoint {osp.relpath(ckpt, ROOT)}:')
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75', 'coco/bbox_mAP_s', 'coco/bbox_mAP_m'):
        if key in test_metrics:
            print(f'         {key:20s} {test_metrics[key]:.3f}')
    print(f'[demo] outputs: {osp.relpath(args.work_dir, ROOT)}/ (train logs, checkpoints, predictions.pkl, '
          f'metrics.json); total {time.time() - t0:.0f} s')
    print('=' * 72)


if __name__ == '__main__':
    main()
