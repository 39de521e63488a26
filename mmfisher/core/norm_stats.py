"""Batch-norm statistics of a pruned model: measure with each batch's own statistics, re-estimate the stored ones.

Removing channels shifts the input distribution of every batch norm downstream, so the running statistics the
unpruned model stored no longer fit it: evaluated with them, a pruned candidate looks worse than it is after any
training (which re-estimates them in a few iterations), and its loss ranks candidates poorly. Evaluating a
candidate after re-estimating the statistics on a few training batches ("adaptive BN", Li et al., EagleEye,
ECCV 2020) predicts its accuracy after fine-tuning far better. Two tools, in plain PyTorch:

* :func:`batch_statistics`: for the block, the given norms normalise with each batch's own mean and variance
  (what the re-estimated statistics converge to) and leave their stored statistics untouched; the cost of a
  forward is unchanged.
* :func:`recalibrate`: re-estimates the stored statistics from calibration batches (every norm's batch mean and
  unbiased variance averaged over the batches, summed over ranks), e.g. for a pruned structure before it is
  saved.

Only the norms the training loop updates take part (:func:`trained_norms`): those ``model.train()`` puts in
training mode with trainable parameters, so a backbone frozen with ``norm_eval=True`` or ``frozen_stages`` and
a distiller's frozen teacher keep their stored statistics. ``SyncBatchNorm`` layers use this rank's batch (no
collective call, so ranks with different batch counts cannot hang).
"""
import contextlib
from typing import Any, Callable, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['trained_norms', 'batch_statistics', 'recalibrate']


def trained_norms(model: nn.Module) -> List[_BatchNorm]:
    """The batch norms with stored statistics that ``model.train()`` puts in training mode and whose affine
    parameters (if any) train, in module order (every module's train flag is restored after): a norm frozen by
    its block's ``train()`` or with ``requires_grad=False`` (a frozen stage, a teacher) is left alone."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.train()
        return [m for m in model.modules()
                if isinstance(m, _BatchNorm) and m.track_running_stats and m.training
                and m.running_mean is not None and all(p.requires_grad for p in m.parameters(recurse=False))]
    finally:
        for m, flag in flags:
            m.training = flag


def _batch_forward(norm: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    if x.numel() <= x.shape[1]:  # one value per channel (e.g. a BatchNorm1d on one sample): no batch statistics
        return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
    return F.batch_norm(x, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)


@contextlib.contextmanager
def batch_statistics(norms: Sequence[_BatchNorm]) -> Iterator[None]:
    """For the block, each of ``norms`` normalises with its input batch's own statistics (whatever its train
    flag; an input with one value per channel, which has none, uses the stored ones); stored statistics and
    ``num_batches_tracked`` are not changed."""
    patched = []
    try:
        for norm in norms:
            if 'forward' in norm.__dict__:
                raise RuntimeError(f'{type(norm).__name__} already has an instance forward; batch statistics '
                                   'cannot be applied to it twice')
            norm.forward = _batch_forward.__get__(norm)  # type: ignore[method-assign]
            patched.append(norm)
        yield
    finally:
        for norm in patched:
            del norm.forward


@torch.no_grad()
def recalibrate(norms: Sequence[_BatchNorm], batches: Sequence[Any], forward: Callable[[Any], Any],
                reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> int:
    """Re-estimate ``running_mean`` / ``running_var`` of ``norms`` from ``forward(batch)`` over ``batches``.

    During the passes every norm normalises with batch statistics (so a norm downstream sees the input it will
    see once re-estimated); each norm's new statistics are the average over the batches (of every rank:
    ``reduce`` sums a float64 tensor over ranks) of its input's per-channel mean and unbiased variance, as
    PyTorch's cumulative average (``momentum=None``) gives. A norm no batch reached keeps its statistics.

    Returns:
        the number of norms re-estimated.
    """
    reduce = reduce or (lambda t: t)
    norms = list(norms)
    sums = [None] * len(norms)  # per norm: (sum of means, sum of variances)
    counts = torch.zeros(len(norms), dtype=torch.float64)

    def observer(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().double()
            dims = [d for d in range(x.dim()) if d != 1]
            if x.numel() // max(x.shape[1], 1) <= 1:
                return  # one value per channel: no variance to estimate (this batch is not counted)
            mean = x.mean(dims)
            var = x.var(dims, unbiased=True)
            s = torch.stack([mean, var]).cpu()
            sums[i] = s if sums[i] is None else sums[i] + s
            counts[i] += 1
        return hook

    handles = [n.register_forward_pre_hook(observer(i)) for i, n in enumerate(norms)]
    try:
        with batch_statistics(norms):
            for batch in batches:
                forward(batch)
    finally:
        for h in handles:
            h.remove()
    flat = torch.cat([counts] + [(s if s is not None else torch.zeros(2, n.num_features, dtype=torch.float64))
                                 .flatten() for s, n in zip(sums, norms)])
    flat = reduce(flat)
    total = flat[:len(norms)]
    done, offset = 0, len(norms)
    for i, norm in enumerate(norms):
        c = norm.num_features
        mean, var = flat[offset:offset + c], flat[offset + c:offset + 2 * c]
        offset += 2 * c
        if float(total[i]) <= 0:
            continue
        norm.running_mean.copy_((mean / total[i]).to(norm.running_mean))
        norm.running_var.copy_((var / total[i]).to(norm.running_var))
        done += 1
    return done
