"""Config preparation shared by ``tools/train.py`` and ``tools/test.py`` (mmdet and mmpretrain configs alike)."""
from __future__ import annotations

import contextlib
import os
import os.path as osp
from typing import Iterator, Optional

from mmengine.config import Config

from .dist import default_backend, has_accelerator

SUPPORTED_SCOPES = ('mmdet', 'mmpretrain')


def detect_scope(cfg: Config) -> str:
    """The config's ``default_scope`` (``mmdet`` or ``mmpretrain``), which decides the task-specific parts."""
    scope = cfg.get('default_scope')
    if scope not in SUPPORTED_SCOPES:
        raise ValueError(f'config field default_scope={scope!r} is not supported; inherit a runtime that sets it '
                         f"(e.g. _base_ = ['mmdet::_base_/default_runtime.py']) or set one of {SUPPORTED_SCOPES}")
    return scope


def set_local_rank(local_rank: int) -> None:
    """torch.distributed.launch passes ``--local-rank``; torchrun sets ``LOCAL_RANK``. mmengine reads the env."""
    os.environ.setdefault('LOCAL_RANK', str(local_rank))


def set_work_dir(cfg: Config, config_path: str, work_dir: Optional[str]) -> None:
    """work_dir priority: CLI > config > ``./work_dirs/<config name>`` (as mmdet's tools)."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def set_launcher(cfg: Config, launcher: str) -> None:
    """Set ``cfg.launcher``; for a distributed launch without an accelerator use the ``gloo`` backend.

    The DDP ``device_ids`` problem on CPU is handled by :mod:`mmfisher.engine.dist` (active on import).
    """
    cfg.launcher = launcher
    if launcher != 'none' and not has_accelerator():
        env_cfg = cfg.setdefault('env_cfg', {})
        env_cfg.setdefault('dist_cfg', {})
        env_cfg['dist_cfg']['backend'] = default_backend()


def enable_amp(cfg: Config) -> None:
    """Switch the optimizer wrapper to mmengine's ``AmpOptimWrapper`` (needs a GPU)."""
    if not has_accelerator():
        raise RuntimeError('--amp needs a GPU (mmengine AmpOptimWrapper); drop --amp on a CPU-only machine')
    optim_wrapper = cfg.get('optim_wrapper')
    if optim_wrapper is None:
        raise ValueError('--amp: the config has no optim_wrapper field to switch to AmpOptimWrapper')
    optim_wrapper.type = 'AmpOptimWrapper'
    optim_wrapper.loss_scale = 'dynamic'


def enable_auto_scale_lr(cfg: Config) -> None:
    """Turn on ``auto_scale_lr`` (requires ``auto_scale_lr.base_batch_size`` in the config)."""
    asl = cfg.get('auto_scale_lr')
    if not asl or 'base_batch_size' not in asl:
        raise ValueError('--auto-scale-lr: the config needs auto_scale_lr = dict(base_batch_size=<batch size the '
                         'lr was tuned for>)')
    asl.enable = True


def set_resume(cfg: Config, resume: Optional[str]) -> None:
    """``--resume`` alone: latest checkpoint in work_dir; ``--resume PATH``: that checkpoint."""
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume


def enable_visualization(cfg: Config, scope: str, show_dir: str) -> None:
    """Save painted predictions under ``<work_dir>/<timestamp>/<show_dir>`` (mmdet / mmpretrain hook args)."""
    hooks = cfg.get('default_hooks') or {}
    if 'visualization' not in hooks:
        raise ValueError("--show-dir needs default_hooks.visualization in the config (e.g. inherit the scope's "
                         '_base_/default_runtime.py)')
    vis = hooks['visualization']
    if scope == 'mmdet':
        vis['draw'] = True
        vis['test_out_dir'] = show_dir
    else:
        vis['enable'] = True
        vis['out_dir'] = show_dir
        vis['interval'] = 1


def build_runner(cfg: Config):  # -> mmengine.runner.Runner
    """``Runner.from_cfg`` or the registered ``runner_type``."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)


def dump_metric(scope: str, out: str):  # -> mmengine.evaluator.BaseMetric
    """A metric that dumps the raw predictions to ``out`` (a .pkl) during ``runner.test()``."""
    if not out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out {out!r}: the dump file must end in .pkl or .pickle')
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        return DumpDetResults(out_file_path=out)
    from mmengine.evaluator import DumpResults
    return DumpResults(out_file_path=out)


@contextlib.contextmanager
def naming_checkpoint(path: Optional[str]) -> Iterator[None]:
    """Re-raise a :class:`mmfisher.core.WeightsMismatch` (a ``Pruned`` model refusing weights of another
    structure) with the checkpoint file that was being loaded named first."""
    from ..core.export import WeightsMismatch
    try:
        yield
    except WeightsMismatch as exc:
        if not path:
            raise
        raise WeightsMismatch(f'checkpoint "{path}": {exc}') from exc


def finish() -> None:
    """End a tool's process: in a distributed run, all ranks wait for each other, leave the process group, and
    the process exits at once (status 0) without the interpreter's teardown; outside one, return.

    Exiting with a live gloo group can abort the interpreter ("terminate called without an active exception",
    exit status -6 after every result was written): gloo's worker threads may still hold work objects whose
    tensors are freed during interpreter finalization. The barrier and ``destroy_process_group`` make every rank
    leave together; skipping the teardown (after flushing the logs and streams) removes the last window for
    that abort. Call it last, after every output is written.
    """
    import gc
    import logging
    import sys

    import torch.distributed as torch_dist
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return
    torch_dist.barrier()
    torch_dist.destroy_process_group()
    gc.collect()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
