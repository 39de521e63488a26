"""Shared helpers for the benchmark scripts: machine description, JSON output, mmengine runner set-up.

Not a benchmark itself (no figures). Every script writes ``benchmarks/results/<name>.json`` (or ``--out``) with
``machine``, ``command``, ``started`` / ``finished`` timestamps and its figures.
"""
import datetime
import json
import os
import os.path as osp
import platform
import shlex
import sys
import time
from typing import Any, Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RESULTS = osp.join(ROOT, 'benchmarks', 'results')
DET_CFG = osp.join(ROOT, 'configs', 'tiny', 'retinanet_tiny_shapes.py')
CLS_CFG = osp.join(ROOT, 'configs', 'tiny', 'resnet_tiny_shapes_cls.py')


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def _version(dist: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:  # noqa: BLE001
        return None


def machine() -> Dict[str, Any]:
    import torch
    info = {
        'cpu_count': os.cpu_count(),
        'sched_affinity': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None,
        'cpu_model': _cpu_model(),
        'platform': platform.platform(),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'torch_num_threads': torch.get_num_threads(),
        'cuda_available': torch.cuda.is_available(),
        'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        'load_average_at_start': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
    }
    for dist in ('mmengine', 'mmdet', 'mmpretrain', 'mmcv', 'torch-pruning', 'onnx', 'onnxruntime'):
        info[dist] = _version(dist)
    return info


def _cpu_model() -> Optional[str]:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return None


def command() -> str:
    return ' '.join(shlex.quote(a) for a in [osp.relpath(sys.executable, ROOT)] + sys.argv)


class Result:
    """Collects a benchmark's figures; ``save()`` writes them with machine, command and timestamps."""

    def __init__(self, name: str, out: Optional[str] = None, quick: bool = False) -> None:
        self.name = name
        self.path = out or osp.join(RESULTS, f'{name}.json')
        self.data: Dict[str, Any] = {'benchmark': name, 'quick': quick, 'command': command(), 'started': now(),
                                     'machine': machine()}
        self.t0 = time.perf_counter()

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def save(self, final: bool = True) -> str:
        self.data['finished' if final else 'updated'] = now()
        self.data['wall_s'] = round(time.perf_counter() - self.t0, 2)
        from mmfisher.core.files import atomic_write
        text = json.dumps(self.data, indent=1, default=_plain) + '\n'
        return atomic_write(self.path, lambda f: f.write(text.encode()))


def _plain(obj: Any) -> Any:
    import numpy as np
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def unite_runs(into: Dict[str, List[Dict[str, Any]]], runs: Dict[str, List[Dict[str, Any]]]) -> None:
    """Add ``runs`` (method -> its runs, each with a ``seed``) to ``into``, keeping the run already there for a
    (method, seed) both hold: how the benchmarks' ``--merge-from`` unites parallel invocations."""
    for method, rs in runs.items():
        have = into.setdefault(method, [])
        seeds = {r['seed'] for r in have}
        have.extend(r for r in rs if r['seed'] not in seeds)


def ensure_data() -> None:
    """Generate the bundled data sets if they are missing (idempotent, seconds): a fresh clone has none."""
    from mmfisher.data_gen import make_all
    make_all(osp.join(ROOT, 'data', 'generated'))


def tiny_runner_cfg(config: str, work_dir: str, max_iters: int, custom_hooks=(), seed: int = 0,
                    val: bool = False, batch_size: Optional[int] = None):
    """An mmengine config for a short IterBasedTrainLoop run of ``config`` on the bundled data: no checkpoints,
    quiet logger, no dataloader workers (fewer processes competing for the CPU)."""
    from mmengine.config import Config
    import mmfisher  # noqa: F401
    ensure_data()
    cfg = Config.fromfile(config)
    cfg.work_dir = work_dir
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10 ** 9, val_begin=10 ** 9)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20)]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10 ** 9, save_last=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=10 ** 6)
    cfg.custom_hooks = list(custom_hooks)
    cfg.randomness = dict(seed=seed)
    cfg.log_level = 'WARNING'
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dl = cfg.get(key)
        if dl is not None:
            dl.num_workers = 0
            dl.persistent_workers = False
            if batch_size is not None and key == 'train_dataloader':
                dl.batch_size = batch_size
    if not val:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None
    return cfg


def build_runner(cfg):
    from mmfisher.engine import launch
    launch.set_launcher(cfg, 'none')
    return launch.build_runner(cfg)


# ---------------------------------------------------------------------------------------------- pruning pipeline
def metric_key(cfg) -> str:
    return 'coco/bbox_mAP' if cfg.get('default_scope', 'mmdet') == 'mmdet' else 'accuracy/top1'


def train_baseline(config: str, path: str, iters: int, seed: int = 0) -> Dict[str, Any]:
    """Train ``config`` from scratch for ``iters`` iterations; save ``{'state_dict'}`` at ``path``; reuse it if
    it exists (same iters and seed recorded beside it)."""
    import torch
    info_path = path + '.json'
    if osp.isfile(path) and osp.isfile(info_path):
        with open(info_path) as f:
            info = json.load(f)
        if info.get('iters') == iters and info.get('seed') == seed and info.get('config') == osp.relpath(config, ROOT):
            info['reused'] = True
            return info
    work = osp.dirname(path)
    os.makedirs(work, exist_ok=True)
    cfg = tiny_runner_cfg(config, osp.join(work, 'base_run'), iters, seed=seed, val=True)
    runner = build_runner(cfg)
    t0 = time.perf_counter()
    runner.train()
    wall = time.perf_counter() - t0
    metrics = runner.val_loop.run() if runner.val_loop is not None else {}
    torch.save({'state_dict': runner.model.state_dict()}, path)
    info = dict(config=osp.relpath(config, ROOT), iters=iters, seed=seed, train_wall_s=wall,
                metric=metric_key(cfg), value=float(metrics.get(metric_key(cfg), 0.0)), reused=False)
    with open(info_path, 'w') as f:
        json.dump(info, f)
    return info


def run_hook_pruning(config: str, base: str, work_dir: str, hook, seed: int = 0, max_iters: int = 100000
                     ) -> Dict[str, Any]:
    """Train from ``base`` with ``hook`` (a FisherPruningHook instance) until it reaches its target (or
    ``max_iters``). Returns iterations, wall time, pruning steps and the written files."""
    cfg = tiny_runner_cfg(config, work_dir, max_iters, seed=seed)
    cfg.load_from = base
    runner = build_runner(cfg)
    runner.register_hook(hook, priority='LOW')
    t0 = time.perf_counter()
    runner.train()
    wall = time.perf_counter() - t0
    return dict(iters=runner.iter, wall_s=wall, done=bool(hook.done), atoms_masked=len(hook.order),
                num_atoms=hook.graph.num_atoms, steps=hook.steps,
                ratios=hook.ratios(), channels=hook.outputs.get('channels'), weights=hook.outputs.get('weights'))


def finetune_eval(config: str, channels: Optional[str], weights: str, work_dir: str, iters: int, seed: int = 0,
                  decay: bool = False, lr_scale: float = 1.0) -> Dict[str, Any]:
    """Fine-tune the slimmed model (``mmfisher.Pruned`` from ``channels`` + ``weights``; the unpruned model when
    ``channels`` is None) for ``iters`` iterations, then evaluate on the val set. ``decay``: the learning rate
    drops 10x after 75% of the iterations (a converging schedule), instead of staying constant. ``lr_scale``: the
    fine-tune's learning rate is the config's times this."""
    cfg = tiny_runner_cfg(config, work_dir, max(iters, 1), seed=seed, val=True)
    cfg.optim_wrapper.optimizer.lr = cfg.optim_wrapper.optimizer.lr * lr_scale
    if decay:
        cfg.param_scheduler = cfg.param_scheduler + [
            dict(type='MultiStepLR', milestones=[int(0.75 * iters)], gamma=0.1, by_epoch=False)]
    if channels is not None:
        arch = cfg.model
        cfg.model = dict(type='mmfisher.Pruned', architecture=arch, channels=channels)
    cfg.load_from = weights
    if iters == 0:
        cfg.optim_wrapper.optimizer.lr = 0.0
    runner = build_runner(cfg)
    t0 = time.perf_counter()
    if iters > 0:
        runner.train()
    else:
        runner.load_or_resume()
    wall = time.perf_counter() - t0
    metrics = runner.val_loop.run()
    key = metric_key(cfg)
    # CocoMetric returns {} when the model detects nothing: that is an mAP of 0
    return dict(metric=key, value=float(metrics.get(key, 0.0)), no_predictions=key not in metrics,
                finetune_iters=iters, finetune_wall_s=wall, finetune_lr_decay=decay, finetune_lr_scale=lr_scale)


def pruning_hook(k=1, frac=None, fixed=False, **kw):
    """A FisherPruningHook with ``k`` atoms per step, or with the library's adaptive schedule: ``frac``: k =
    ceil(frac x eligible alive atoms), recomputed at every step (``fixed=False``, 'adaptive') or once at the first
    step (``fixed=True``). ``hook.steps`` / ``hook.k_used`` count its steps."""
    from mmfisher.hooks import FisherPruningHook
    if frac is None:
        return FisherPruningHook(channels_per_step=int(k), **kw)
    interval = kw.pop('interval', 10)
    start_iter = kw.pop('start_iter', 0)
    return FisherPruningHook(schedule=dict(type='AdaptiveK', interval=interval, share=frac, recompute=not fixed,
                                           start_iter=start_iter), **kw)


def big_model_prune_cfg(spec: str, data_config: str, work_dir: str, max_iters: int, batch_size: int,
                        seed: int = 0):
    """``spec``'s model (no pretrained weights) trained on the bundled data of ``data_config`` (its
    train_dataloader), plain SGD, no validation/checkpoints: for Fisher pruning runs on big models."""
    from mmengine.config import Config
    from mmfisher.zoo import load_config, strip_pretrained
    ensure_data()
    cfg = load_config(spec)
    data = Config.fromfile(data_config)
    cfg.model = strip_pretrained(cfg.model)
    cfg.work_dir = work_dir
    cfg.train_dataloader = data.train_dataloader
    cfg.train_dataloader.batch_size = batch_size
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10 ** 9, val_begin=10 ** 9)
    for key in ('val_cfg', 'val_dataloader', 'val_evaluator', 'test_cfg', 'test_dataloader', 'test_evaluator'):
        cfg[key] = None
    cfg.optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=1e-3, momentum=0.9),
                             clip_grad=dict(max_norm=10, norm_type=2))
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10 ** 9, save_last=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=10 ** 6)
    cfg.custom_hooks = []
    cfg.randomness = dict(seed=seed)
    cfg.log_level = 'WARNING'
    cfg.custom_imports = dict(imports=['mmfisher'], allow_failed_imports=False)
    return cfg
