#!/usr/bin/env python
"""Train a detector (mmdet) or classifier (mmpretrain) from an mmengine config; the task is the config's
``default_scope``. Flags follow mmdet's tools/train.py.

    python tools/train.py configs/tiny/retinanet_tiny_shapes.py --work-dir work_dirs/tiny
    tools/dist_train.sh configs/tiny/retinanet_tiny_shapes.py 2      # 2 processes (nccl on GPUs, gloo on CPU)
"""
import argparse

from mmengine.config import DictAction

import mmfisher  # noqa: F401  registers mmfisher and applies its runtime patches before anything is built
from mmfisher.engine import launch, load_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model (mmdet or mmpretrain config)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', help='enable automatic-mixed-precision training (GPU)')
    parser.add_argument('--auto-scale-lr', action='store_true', help='enable automatically scaling LR')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint; without a path, from the latest checkpoint in the work dir')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, xxx=yyy format, e.g. train_cfg.max_epochs=2 key="[a,b]"')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    launch.set_local_rank(args.local_rank)
    return args


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    scope = launch.detect_scope(cfg)
    if scope == 'mmdet':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
    launch.set_launcher(cfg, args.launcher)
    launch.set_work_dir(cfg, args.config, args.work_dir)
    if args.amp:
        launch.enable_amp(cfg)
    if args.auto_scale_lr:
        launch.enable_auto_scale_lr(cfg)
    launch.set_resume(cfg, args.resume)
    runner = launch.build_runner(cfg)
    with launch.naming_checkpoint(args.resume if args.resume not in (None, 'auto') else cfg.get('load_from')):
        runner.train()
    launch.finish()


if __name__ == '__main__':
    main()
