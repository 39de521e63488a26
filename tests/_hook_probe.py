"""A hook for distributed tests: each rank saves what FisherPruningHook decided (imported via custom_imports)."""
import os.path as osp

import torch
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class PruningProbeHook(Hook):
    priority = 'LOWEST'

    def __init__(self) -> None:
        self.samples = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        hook = self._hook(runner)
        self.samples.append(int(hook.samples))

    def after_train(self, runner) -> None:
        hook = self._hook(runner)
        torch.save({'alive': hook.masks.alive.clone(), 'order': list(hook.order), 'iter': runner.iter,
                    'samples': self.samples, 'world_size': get_world_size(), 'done': hook.done},
                   osp.join(runner.work_dir, f'probe_rank{get_rank()}.pt'))

    @staticmethod
    def _hook(runner):
        from mmfisher.hooks import FisherPruningHook
        return next(h for h in runner.hooks if isinstance(h, FisherPruningHook))
