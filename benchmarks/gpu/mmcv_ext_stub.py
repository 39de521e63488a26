"""A stand-in for mmcv's compiled ``mmcv._ext``, for the GPU check alone (installed as ``mmcv/_ext.py`` there).

mmcv 2.1.0 has no build for the GPU machine's torch and Python, and building its CUDA ops there would take most of
the device time. The timed forwards (backbone, neck, head in tensor mode) call no mmcv op; the balanced
calibration's loss calls one, the sigmoid focal loss, which is written here in torch with the kernel's semantics
(target == num_classes is background; log clamped at the smallest float). Every other op raises, naming itself, so
nothing silently runs something else. ``speedup.py`` records ``mmcv_ops: stub`` when this module is in place.
"""
from typing import Any, Callable

import torch

MMFISHER_STUB = True


def _focal(input: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """Elementwise sigmoid focal loss of ``input`` (N, C) against class indices ``target`` (N,)."""
    p = input.sigmoid()
    pos = target.unsqueeze(1) == torch.arange(input.size(1), device=input.device).unsqueeze(0)
    tiny = torch.finfo(input.dtype).tiny
    loss_pos = -alpha * (1 - p).pow(gamma) * p.clamp_min(tiny).log()
    loss_neg = -(1 - alpha) * p.pow(gamma) * (1 - p).clamp_min(tiny).log()
    return torch.where(pos, loss_pos, loss_neg)


def _check_weight(weight: torch.Tensor) -> None:
    if weight.numel():
        raise NotImplementedError('mmcv._ext stub (benchmarks/gpu): sigmoid focal loss with class weights')


def sigmoid_focal_loss_forward(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                               output: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25) -> None:
    _check_weight(weight)
    with torch.no_grad():
        output.copy_(_focal(input, target, gamma, alpha))


def sigmoid_focal_loss_backward(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                                grad_input: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25) -> None:
    _check_weight(weight)
    with torch.enable_grad():
        x = input.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(_focal(x, target, gamma, alpha).sum(), x)
    grad_input.copy_(grad)


def __getattr__(name: str) -> Callable[..., Any]:
    if name.startswith('__'):
        raise AttributeError(name)

    def missing(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f'mmcv op {name!r} is not available: mmcv._ext is the GPU check\'s stub '
                           '(benchmarks/gpu/mmcv_ext_stub.py), which has no compiled kernels')
    return missing
