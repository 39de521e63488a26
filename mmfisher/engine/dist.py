"""Distributed training on CPU-only machines (gloo) with mmengine 0.10.7.

mmengine assumes an accelerator in two places, both of which crash a ``--launcher pytorch`` run without CUDA:

1. ``mmengine.dist.utils._init_dist_pytorch`` calls ``torch.cuda.set_device(local_rank)`` before
   ``init_process_group`` ("Found no NVIDIA driver"), and configs default to the ``nccl`` backend.
2. ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to ``MMDistributedDataParallel``; torch's DDP
   rejects ``device_ids`` for a CPU module (ValueError).

:func:`patch_cpu_distributed` wraps exactly those two functions. Each wrapper only changes behaviour when the
original would certainly fail (no CUDA/NPU/MLU/MUSA device; a module whose parameters are all on the CPU), so
GPU runs are untouched. The patches are applied by ``import mmfisher``, hence also for mmdet's / mmpretrain's
own tools when a config has ``custom_imports = dict(imports=['mmfisher'])``.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
import torch.distributed as torch_dist
from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
from mmengine.logging import print_log

_PATCHED = '_mmfisher_cpu_patch'


def has_accelerator() -> bool:
    """True when mmengine would use a CUDA / NPU / MLU / MUSA device."""
    return is_cuda_available() or is_npu_available() or is_mlu_available() or is_musa_available()


def default_backend() -> str:
    """The process-group backend for this machine: ``nccl`` with CUDA, ``gloo`` on CPU."""
    return 'nccl' if is_cuda_available() else 'gloo'


def _cpu_init_dist_pytorch(original: Any) -> Any:

    @functools.wraps(original)
    def _init_dist_pytorch(backend: str, init_backend: str = 'torch', **kwargs: Any) -> None:
        if has_accelerator():
            return original(backend, init_backend=init_backend, **kwargs)
        if init_backend != 'torch':
            raise ValueError(f'env_cfg.dist_cfg.init_backend={init_backend!r} needs a GPU; on a CPU-only machine '
                             "use init_backend='torch' (the default)")
        if backend != 'gloo':
            print_log(f"no accelerator: using the 'gloo' backend instead of {backend!r} (set "
                      "env_cfg.dist_cfg.backend='gloo' to silence this)", logger='current')
            backend = 'gloo'
        torch_dist.init_process_group(backend=backend, **kwargs)

    setattr(_init_dist_pytorch, _PATCHED, True)
    return _init_dist_pytorch


def _cpu_ddp_init(original: Any) -> Any:

    @functools.wraps(original)
    def __init__(self: Any, module: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        params = list(module.parameters())
        if params and all(p.device.type == 'cpu' for p in params):
            # torch DDP: "device_ids and output_device arguments only work with single-device GPU modules".
            kwargs['device_ids'] = None
            kwargs['output_device'] = None
        original(self, module, *args, **kwargs)

    setattr(__init__, _PATCHED, True)
    return __init__


def patch_cpu_distributed() -> None:
    """Apply both patches (idempotent)."""
    from mmengine.dist import utils as dist_utils
    from mmengine.model.wrappers import MMDistributedDataParallel

    if not getattr(dist_utils._init_dist_pytorch, _PATCHED, False):
        dist_utils._init_dist_pytorch = _cpu_init_dist_pytorch(dist_utils._init_dist_pytorch)
    if not getattr(MMDistributedDataParallel.__init__, _PATCHED, False):
        MMDistributedDataParallel.__init__ = _cpu_ddp_init(MMDistributedDataParallel.__init__)
