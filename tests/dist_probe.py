"""Test-only mmengine hook (imported via custom_imports in test_dist_cpu.py): each rank writes what it saw.

``<work_dir>/rank_probe/rank<r>.json``: rank, world size, backend, model wrapper and its device_ids, a digest of
the parameters before and after training, and the image ids the rank trained on, per epoch.
"""
import hashlib
import json
import os
import os.path as osp

import torch
import torch.distributed as torch_dist
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


def digest(named) -> str:
    """SHA-256 over (name, exact bytes) of named tensors, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def param_digest(model: torch.nn.Module) -> str:
    """Digest of every parameter (not buffers: mmengine's DDP has broadcast_buffers=False, so BN stats differ)."""
    return digest(model.named_parameters())


@HOOKS.register_module()
class RankProbeHook(Hook):
    priority = 'LOWEST'

    def __init__(self) -> None:
        self.record: dict = {}

    def _module(self, runner) -> torch.nn.Module:
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train(self, runner) -> None:
        self.record = dict(
            rank=get_rank(), world_size=get_world_size(),
            backend=torch_dist.get_backend() if torch_dist.is_initialized() else None,
            wrapper=type(runner.model).__name__, device_ids=getattr(runner.model, 'device_ids', 'n/a'),
            initial=param_digest(self._module(runner)), img_ids={}, iters=0,
            param_names=sorted(n for n, _ in self._module(runner).named_parameters()))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        ids = self.record['img_ids'].setdefault(str(runner.epoch), [])
        ids.extend(int(s.img_id) for s in data_batch['data_samples'])
        self.record['iters'] += 1

    def after_train(self, runner) -> None:
        self.record['final'] = param_digest(self._module(runner))
        out = osp.join(runner.work_dir, 'rank_probe')
        os.makedirs(out, exist_ok=True)
        with open(osp.join(out, f'rank{self.record["rank"]}.json'), 'w') as f:
            json.dump(self.record, f)
