"""Shared helpers for the FisherPruningHook / Pruned tests (not collected: no ``test_`` prefix)."""
from __future__ import annotations

import copy
import os.path as osp
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import nn
from torch.utils.data import Dataset

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


class ToyNet(BaseModel):
    """conv stem -> (a(x) + b(x): coupled residual channels) -> ``shared`` conv called twice -> 1x1 head.

    ``mask`` (optional, {module name: (C_in,) multiplier}) multiplies each reader's input: the brute-force
    reference for the group Fisher (``dL_n/dm``) uses it.
    """

    def __init__(self, width: int = 6, frozen_stem: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.a = nn.Conv2d(width, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 1)
        self.shared = nn.Conv2d(width, width, 3, padding=1)
        self.mid = nn.Conv2d(width, width, 1)
        self.head = nn.Conv2d(width, 2, 1)
        if frozen_stem:
            for p in [*self.stem.parameters(), *self.bn.parameters()]:
                p.requires_grad_(False)
        self.mask: Optional[Dict[str, torch.Tensor]] = None

    def _in(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.mask is not None and name in self.mask:
            return x * self.mask[name].view(1, -1, 1, 1)
        return x

    def _call(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, name)(self._in(name, x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self._call('stem', x)))
        y = F.relu(self._call('a', x)) + self._call('b', x)
        z = F.relu(self._call('shared', y))
        z = F.relu(self._call('shared', z)) + y
        z = F.relu(self._call('mid', z))
        return self._call('head', z)

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        if isinstance(inputs, (list, tuple)):
            inputs = torch.stack(inputs)
        out = self.features(inputs)
        if mode == 'loss':
            target = data_samples if isinstance(data_samples, torch.Tensor) else torch.stack(data_samples)
            return {'loss': per_sample_loss(out, target).sum()}
        return out


def per_sample_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((out - target) ** 2).flatten(1).mean(1)


class ToyData(Dataset):
    """``n`` deterministic (image, target) pairs of size ``hw``."""

    def __init__(self, n: int = 256, hw: int = 12, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, hw, hw, generator=g)
        self.y = torch.randn(n, 2, hw, hw, generator=g)
        self.metainfo = {'classes': ('a', 'b')}

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return {'inputs': self.x[i], 'data_samples': self.y[i]}


def toy_runner(work_dir: str, hook: Dict[str, Any], model: Optional[nn.Module] = None, max_iters: int = 20,
               lr: float = 0.01, batch_size: int = 4, ckpt_interval: int = 1000, resume: bool = False,
               load_from: Optional[str] = None, optim_wrapper: Optional[Dict[str, Any]] = None, shuffle: bool = True,
               **kwargs):
    """An mmengine Runner training ``ToyNet`` with ``FisherPruningHook(**hook)`` (iteration based, CPU)."""
    from mmengine.runner import Runner
    import mmfisher  # noqa: F401
    hook = dict(type='FisherPruningHook', **hook)
    if model is None:
        torch.manual_seed(0)  # the same initial weights in every runner built here
        model = ToyNet()
    return Runner(
        model=model,
        work_dir=work_dir,
        train_dataloader=dict(dataset=ToyData(), sampler=dict(type='DefaultSampler', shuffle=shuffle),
                              batch_size=batch_size, num_workers=0, collate_fn=dict(type='default_collate')),
        optim_wrapper=optim_wrapper or dict(optimizer=dict(type='SGD', lr=lr, momentum=0.9, weight_decay=1e-4)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        custom_hooks=[hook],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=ckpt_interval, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0),
        resume=resume, load_from=load_from,
        default_scope=None if 'default_scope' not in kwargs else kwargs.pop('default_scope'),
        **kwargs)


def get_hook(runner):
    from mmfisher.hooks import FisherPruningHook
    return next(h for h in runner.hooks if isinstance(h, FisherPruningHook))
