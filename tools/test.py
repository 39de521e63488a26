#!/usr/bin/env python
"""Test (and evaluate) a checkpoint of an mmdet or mmpretrain config; flags follow mmdet's tools/test.py.

    python tools/test.py configs/tiny/retinanet_tiny_shapes.py work_dirs/tiny/epoch_12.pth
    tools/dist_test.sh CONFIG CHECKPOINT 2 --out results.pkl
"""
import argparse
import json
import os

from mmengine.config import DictAction
from mmengine.dist import is_main_process

import mmfisher  # noqa: F401  registers mmfisher and applies its runtime patches before anything is built
from mmfisher.engine import launch, load_config
from mmfisher.hooks.checkpoint_match import CheckpointFitHook


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model (mmdet or mmpretrain config)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the directory to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str, help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument('--show-dir', help='save painted predictions to work_dir/<timestamp>/<show-dir>')
    parser.add_argument('--metrics-json', help='also write the final metrics to this JSON file (rank 0)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, xxx=yyy format, e.g. test_dataloader.batch_size=4')
    parser.add_argument('--allow-partial-checkpoint', action='store_true',
                        help='test a checkpoint that leaves tensors of the model unloaded (refused by default: '
                        'mmengine would keep them randomly initialised)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    launch.set_local_rank(args.local_rank)
    return args


def main() -> None:
    args = parse_args()
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist; pass a .pth written by train.py')
    cfg = load_config(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    scope = launch.detect_scope(cfg)
    if scope == 'mmdet':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
    launch.set_launcher(cfg, args.launcher)
    launch.set_work_dir(cfg, args.config, args.work_dir)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        launch.enable_visualization(cfg, scope, args.show_dir)
    dump = launch.dump_metric(scope, args.out) if args.out else None
    runner = launch.build_runner(cfg)
    runner.register_hook(CheckpointFitHook(args.allow_partial_checkpoint))  # a checkpoint that leaves weights random is refused, not tested
    if dump is not None:
        runner.test_evaluator.metrics.append(dump)
    with launch.naming_checkpoint(cfg.get('load_from')):
        metrics = runner.test()
    if args.metrics_json and is_main_process():
        os.makedirs(os.path.dirname(os.path.abspath(args.metrics_json)), exist_ok=True)
        with open(args.metrics_json, 'w') as f:
            json.dump({k: float(v) if isinstance(v, (int, float)) else str(v) for k, v in metrics.items()}, f,
                      indent=1)
    launch.finish()


if __name__ == '__main__':
    main()
