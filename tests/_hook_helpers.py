"""Shared helpers for the FisherPruningHook / Pruned tests (not collected: no ``test_`` prefix)."""
from __future__ import annotations

import os.path as osp
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
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
    import mmfisher  # noqa: F401  registers the hook
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


DET_CFG = osp.join(ROOT, 'configs', 'tiny', 'retinanet_tiny_shapes.py')
DET_SHAPE = (3, 128, 128)


def ensure_det_data() -> None:
    from mmfisher.data_gen import make_all
    make_all(osp.join(ROOT, 'data', 'generated'), which=['shapes_det'])


def smaller_detector(model_cfg) -> None:
    """Shrink the tiny RetinaNet config in place: ResNet-18 at base_channels=8, FPN/head of 16 channels."""
    model_cfg.backbone.update(base_channels=8, init_cfg=None)
    model_cfg.neck.update(in_channels=[8, 16, 32, 64], out_channels=16)
    model_cfg.bbox_head.update(in_channels=16, feat_channels=16)


def det_cfg(work_dir: str, hook: Optional[Dict[str, Any]] = None, max_iters: int = 40, batch_size: int = 2):
    """The tiny-shapes RetinaNet config, smaller, iteration based, no validation, optional pruning hook."""
    from mmengine.config import Config
    ensure_det_data()
    cfg = Config.fromfile(DET_CFG)
    smaller_detector(cfg.model)
    cfg.merge_from_dict({
        'work_dir': work_dir, 'train_dataloader.num_workers': 0, 'train_dataloader.persistent_workers': False,
        'train_dataloader.batch_size': batch_size, 'default_hooks.logger.interval': 1,
        'env_cfg.dist_cfg.backend': 'gloo'})
    cfg.data_root = osp.join(ROOT, 'data', 'generated', 'shapes_det') + '/'
    cfg.train_dataloader.dataset.data_root = cfg.data_root
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=100000)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=100000, by_epoch=False)
    cfg.param_scheduler = None
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.custom_hooks = [dict(type='mmfisher.FisherPruningHook', **hook)] if hook else []
    return cfg


def tensors(obj: Any) -> List[torch.Tensor]:
    """Every tensor in a model output, in order (the library's one walk over outputs)."""
    from mmfisher.core.outputs import output_tensors
    return output_tensors(obj)


def assert_same_outputs(a: nn.Module, b: nn.Module, forward) -> None:
    """``forward(a)`` and ``forward(b)`` give the same tensors (eval mode, no grad)."""
    a.eval()
    b.eval()
    with torch.no_grad():
        ta, tb = tensors(forward(a)), tensors(forward(b))
    assert len(ta) == len(tb) and ta
    for x, y in zip(ta, tb):
        assert x.shape == y.shape
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5 * max(1.0, float(x.abs().max())))


class _FakeScaler:
    """Stands in for ``torch.amp.GradScaler``: a scale per optimizer step."""

    def __init__(self, scales):
        self.scales, self.step = list(scales), 0

    def get_scale(self) -> float:
        return self.scales[min(self.step, len(self.scales) - 1)]


@OPTIM_WRAPPERS.register_module(force=True)
class FakeAmpOptimWrapper(OptimWrapper):
    """AmpOptimWrapper's contract on a CPU: backward of ``loss * scale``, unscale, skip non-finite steps."""

    def __init__(self, optimizer, scales=(1.0,), **kwargs):
        super().__init__(optimizer, **kwargs)
        self.loss_scaler = _FakeScaler(scales)

    def backward(self, loss, **kwargs):
        (loss * self.loss_scaler.get_scale()).backward(**kwargs)
        self._inner_count += 1

    def step(self, **kwargs):
        s = self.loss_scaler.get_scale()
        params = [p for grp in self.optimizer.param_groups for p in grp['params'] if p.grad is not None]
        if all(bool(torch.isfinite(p.grad).all()) for p in params):
            for p in params:
                p.grad.div_(s)
            self.optimizer.step(**kwargs)
        self.loss_scaler.step += 1


def dist_train_probes(cfg: str, work: str, timeout: float = 400):
    """Run ``tools/dist_train.sh cfg 2`` (2 CPU processes, gloo; a config with ``PruningProbeHook``) and return
    the two ranks' probes (what FisherPruningHook decided on each)."""
    import os
    import subprocess
    # no PORT: dist_train.sh then lets torchrun bind a free port itself (no race with parallel runs for one port)
    env = {k: v for k, v in os.environ.items() if k != 'PORT'}
    env.update(OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join([ROOT, osp.join(ROOT, 'tests')]))
    proc = subprocess.run(['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', work], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:]
    r0 = torch.load(osp.join(work, 'probe_rank0.pt'), weights_only=True)
    r1 = torch.load(osp.join(work, 'probe_rank1.pt'), weights_only=True)
    assert r0['world_size'] == r1['world_size'] == 2
    return r0, r1


def assert_ranks_agree(r0, r1, max_iters: int, min_masked: int, first_samples: List[int]) -> None:
    """Both ranks finished before ``max_iters`` with the same masking order and alive mask (more than
    ``min_masked`` atoms), their Fisher sample counts over both ranks starting with ``first_samples``."""
    assert r0['done'] and r1['done'] and r0['iter'] == r1['iter'] < max_iters
    assert r0['order'] == r1['order'] and len(r0['order']) > min_masked
    assert torch.equal(r0['alive'], r1['alive'])
    assert r0['samples'][:len(first_samples)] == r1['samples'][:len(first_samples)] == first_samples


def small_cls_cfg(cfg, work_dir: str, max_iters: int, data_root: str) -> None:
    """Make a tiny classification config short in place: ``max_iters`` iterations of batch 8 from ``data_root``
    (the bundled shapes set, generated if missing), no validation, no scheduler, no checkpoints, log every step."""
    from mmfisher.data_gen import make_all
    make_all(osp.join(ROOT, 'data', 'generated'), which=['shapes_cls'])
    cfg.merge_from_dict({'work_dir': work_dir, 'train_dataloader.num_workers': 0, 'train_dataloader.batch_size': 8,
                         'train_dataloader.persistent_workers': False, 'default_hooks.logger.interval': 1,
                         'train_dataloader.dataset.data_root': data_root})
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=100000)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=100000, by_epoch=False)
    cfg.param_scheduler = None
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None


def finetune_config(path: str, base: str, channels: str, load_from: Optional[str] = None):
    """Write and load the fine-tune config pattern users write after pruning: ``base`` + fisher_finetune.py with
    the model wrapped in ``mmfisher.Pruned(channels)`` (and ``load_from``)."""
    import textwrap
    from mmengine.config import Config
    tail = f'load_from = {load_from!r}\n' if load_from else ''
    with open(path, 'w') as f:
        f.write(textwrap.dedent(f"""\
            _base_ = [{base!r}, 'mmfisher::_base_/fisher_finetune.py']
            model = dict(_delete_=True, type='mmfisher.Pruned', architecture={{{{_base_.model}}}},
                         channels={channels!r})
            """) + tail)
    return Config.fromfile(path)

