"""Balanced one-shot pruning (seed 003) through the mm tools: the mm glue over :mod:`mmfisher.core.balanced`.

``tools/train.py CONFIG`` (or ``tools/dist_train.sh CONFIG N``) with this hook and ``load_from`` = the trained
model: in ``before_train`` the hook takes ``calibration_batches`` batches of the training dataloader (or of
``calibration_dataloader``, e.g. a held-out split; split over the ranks), ranks every unit's atoms, measures the per-unit loss-variation curves, searches the threshold that
meets the target, prunes every unit at once, writes ``channels.json`` + ``pruned.pth`` (the same verified pair
FisherPruningHook writes: fine-tune it with ``type='mmfisher.Pruned'``), ``balanced_curves.json``,
``balanced_curves.png`` and ``kept_channels.png``, and stops: the run ends without a training iteration.
"""
import io
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.dist import all_reduce, broadcast, get_rank, get_world_size, is_main_process
from mmengine.hooks import Hook

from ..core import analyze_fast
from ..core.balanced import DEFAULT_GRID, BalancedPruning, BalancedResult
from ..core.export import export_pruned, plain
from ..core.files import atomic_write_all
from ..core.importance import GroupFisher, Importance
from ..core.state import PruningState
from ..models.invariant import invariant_methods
from ..models.target import pruned_module, unwrap
from ..models.tracing import check_input_shape, inexact_units_at, input_shape_note, make_trace_forward
from ..registry import HOOKS, IMPORTANCE, MMENGINE_HOOKS
from .args import build_part, is_int, patterns, ratio_text, short_list
from .checkpoint_match import refuse_mismatch

CURVES_FILE = 'balanced_curves.json'
OVERFIT_LOSS = 1e-3  # an unpruned training loss below this: the hook suggests held-out calibration data
CURVES_PLOT = 'balanced_curves.png'
KEPT_PLOT = 'kept_channels.png'


def _total_loss(model: torch.nn.Module, losses: Any) -> torch.Tensor:
    """The scalar the model trains on: ``parse_losses`` of an mmengine model, else the sum of the loss terms."""
    if isinstance(losses, torch.Tensor):
        return losses.sum()
    if hasattr(model, 'parse_losses') and isinstance(losses, dict):
        return model.parse_losses(losses)[0]
    if isinstance(losses, dict):
        terms = [v for k, v in losses.items() if 'loss' in k]
        flat = [t for v in terms for t in (v if isinstance(v, (list, tuple)) else [v])]
        if flat:
            return sum(t.sum() for t in flat)
    raise TypeError(f"the model's loss (mode='loss') gave {type(losses).__name__}; expected a dict of loss terms "
                    'or a tensor')


@HOOKS.register_module()
class BalancedPruningHook(Hook):
    """Prune a trained model in one shot to a global target, then stop (seed 003; Li et al., ACCV 2020).

    Every unit (coupled channels: residual streams, FPN levels with the shared head) ranks its atoms by
    ``importance``; the loss variation of masking a unit's lowest share ``r`` alone is measured on the
    calibration batches for ``r`` on ``grid`` (``mode='measured'``) or estimated from the Fisher sums
    (``mode='estimated'``); the threshold ``tau`` that meets ``target`` is found by bisection over the cached
    curves; every unit is pruned at its rate at ``tau`` at once. See :mod:`mmfisher.core.balanced`.

    The loss is the runner model's own ``mode='loss'`` loss on the calibration batches (training mode, so heads that
    branch on ``self.training`` give their training loss, with dropout and drop-path frozen and the batch norms
    that train using each batch's statistics, stored ones untouched: ``norm_stats``;
    :func:`mmfisher.core.balanced.loss_mode`): the task loss, or the
    distillation loss when the model is a label-free distiller (its student is pruned:
    :func:`mmfisher.models.pruned_module`; the Fisher ranking uses its sampled terms, the measured variations its
    exact ones: :meth:`~mmfisher.models.LabelFreeDistiller.exact_targets`).

    Args:
        target (float): the remaining ``target_metric`` ratio, in (0, 1). Defaults to 0.5.
        target_metric (str): ``'flops'``, ``'acts'`` or ``'params'`` at ``input_shape`` (after ``divisor``
            rounding). Defaults to ``'flops'``.
        mode (str): ``'measured'`` (real forwards: units x grid points x batches) or ``'estimated'``
            (second order from the Fisher sums: one forward + backward per batch). Defaults to ``'measured'``.
        calibration_batches (int): batches of the calibration data, in total over all ranks (each rank takes
            its share); losses and gradients are summed over ranks, so every rank picks the same structure.
            Defaults to 8.
        calibration_dataloader (dict, optional): the dataloader the calibration batches come from, as a config
            (``dict(dataset=..., sampler=dict(type='DefaultSampler', shuffle=True), batch_size=...)``, built with
            :meth:`mmengine.runner.Runner.build_dataloader`, so a ``DefaultSampler`` shards it over the ranks) or
            a built ``DataLoader``. Defaults to None: the runner's ``train_dataloader``. Use it for a held-out
            split when the model fits its training images almost exactly: its training loss then barely moves
            whatever is masked, and the curves measure that fit rather than what the channels do on unseen images
            (the hook warns when the unpruned training loss is below ``1e-3``; benchmarks/README.md, cls_hard).
            The other fix there: a label-free distiller's loss with feature anchors (``anchors='auto'``), which
            still moves when the task loss is ~0.
        grid (Sequence[float]): shares of a unit's atoms at which the curve is measured (the unit's limit is
            always added). Defaults to 0.1, ..., 0.9.
        max_share (float): the largest share of a unit's channels that may be pruned. Defaults to 1.0.
        norm_stats (str): the statistics the trained batch norms use in the calibration forwards: ``'running'``
            (the unpruned model's stored ones) or ``'batch'`` (each batch's own: how a candidate does once its
            statistics are re-estimated; same cost). Defaults to ``'batch'``: the combined structure's loss
            variation is then close to the sum of the units' (the method's additivity assumption; see
            benchmarks/README.md) and the metric right after pruning higher. Norms that do not train
            (``norm_eval=True``, ``frozen_stages``, ``requires_grad=False``, a teacher) keep their statistics.
        recalibrate_norms (bool): re-estimate the trained batch norms' statistics of the pruned structure on
            the calibration batches before it is written (``pruned.pth`` then fits the structure as it is).
            Defaults to True.
        allocation (str): what the one threshold ``tau`` bounds in every unit: ``'variation'`` (the loss
            variation: every unit pruned to the same loss rise, the seed's rule) or ``'variation_per_cost'`` (the
            loss variation per share of ``target_metric`` the unit's channels free: the same rise per FLOP saved,
            so units whose channels cost more, e.g. residual streams, are pruned further). Defaults to
            ``'variation'``.
        full_curves (bool): measure every grid point of every unit. Defaults to False: a unit is not measured
            past the first point above the largest threshold the target can need (the same structure, fewer
            forwards; ``balanced_curves.json`` lists the skipped points as ``unmeasured_k``).
        replay_mb (float): memory (MiB, per rank) for the recorded activations the curve points replay: a point's
            forward skips the module calls (the stem, stages, blocks, the backbone) its unit cannot change that run
            before the unit's first changed layer, and a dense head's batch-only target assignment, answering them
            from the record of that call seen unchanged in an earlier point (no extra pass; bit-identical values;
            modules with hooks inside, RNG draws, writes into their inputs or non-tensor outputs are always
            computed). 0 turns it off. Defaults to 1024.
        repair_rounds (int): ``mode='estimated'`` only: the structure the estimate chose is measured once (one
            forward per batch); when its real loss rise exceeds the estimates tenfold, every unit is measured at
            its rate, its curve raised to that and tau searched again, at most this many rounds (each at most one
            point per unit). 0 only warns. Defaults to 3.
        importance (dict, optional): the ranking criterion from ``IMPORTANCE`` (``dict(type='L1Norm')``,
            ``dict(type='GroupMagnitude')``, ``dict(type='BNScale')``, ...). Defaults to
            ``GroupFisher(delta='none')`` on the calibration batches.
        input_shape (Sequence[int]): ``(C, H, W)`` of the trace and of the cost counts. Defaults to (3, 800, 1333).
        skip, skip_unmatched, divisor, prune_frozen, verify_export: as :class:`FisherPruningHook`.
        allow_random_init (bool): prune without ``load_from`` (a randomly initialised model). Defaults to False:
            refused, since the curves of an untrained model mean nothing.
        allow_partial_checkpoint (bool): go on (with a warning) when ``load_from`` leaves tensors of the model
            unloaded (missing, or of another shape: a ``pruned.pth``, another depth or class count). Defaults to
            False: refused (:class:`~mmfisher.hooks.checkpoint_match.CheckpointMismatch`), since those weights
            would stay random.
        seed (int): torch's RNG is seeded per calibration batch while measuring (restored after). Defaults to 0.
        tolerance (float): warn when the structure lies more than this below the target. Defaults to 0.01.
        plot (bool): write ``balanced_curves.png`` and ``kept_channels.png`` (matplotlib). Defaults to True.
    """

    priority = 'NORMAL'

    def __init__(self,
                 target: float = 0.5,
                 target_metric: str = 'flops',
                 mode: str = 'measured',
                 calibration_batches: int = 8,
                 calibration_dataloader: Optional[Union[dict, Any]] = None,
                 grid: Sequence[float] = DEFAULT_GRID,
                 full_curves: bool = False,
                 max_share: float = 1.0,
                 norm_stats: str = 'batch',
                 recalibrate_norms: bool = True,
                 allocation: str = 'variation',
                 replay_mb: float = 1024,
                 repair_rounds: int = 3,
                 importance: Optional[Union[dict, Importance]] = None,
                 input_shape: Sequence[int] = (3, 800, 1333),
                 skip: Sequence[str] = (),
                 skip_unmatched: str = 'warn',
                 divisor: int = 1,
                 prune_frozen: bool = False,
                 verify_export: bool = True,
                 allow_random_init: bool = False,
                 allow_partial_checkpoint: bool = False,
                 seed: int = 0,
                 tolerance: float = 0.01,
                 plot: bool = True) -> None:
        if not is_int(calibration_batches) or calibration_batches < 1:
            raise ValueError(f'calibration_batches={calibration_batches!r} must be an int >= 1: the batches of the '
                             'training dataloader the curves are measured on (in total over all ranks), e.g. '
                             'calibration_batches=8')
        if calibration_dataloader is not None and not isinstance(calibration_dataloader, dict) and (
                isinstance(calibration_dataloader, (str, bytes)) or not hasattr(calibration_dataloader, '__iter__')):
            raise TypeError(f'calibration_dataloader={type(calibration_dataloader).__name__} must be a dataloader '
                            'config dict (with a dataset), a DataLoader, or None (the training dataloader)')
        if isinstance(calibration_dataloader, dict) and 'dataset' not in calibration_dataloader:
            raise ValueError('calibration_dataloader has no "dataset": give a full dataloader config, e.g. '
                             "dict(dataset=dict(type='CocoDataset', data_root=..., ann_file=..., "
                             "pipeline=train_pipeline), sampler=dict(type='DefaultSampler', shuffle=True), "
                             'batch_size=2, num_workers=2)')
        if not is_int(divisor) or divisor < 1:
            raise ValueError(f'divisor={divisor!r} must be an int >= 1 (e.g. 8 to keep channel counts multiples '
                             'of 8)')
        for name, value in (('prune_frozen', prune_frozen), ('verify_export', verify_export),
                            ('allow_random_init', allow_random_init),
                            ('allow_partial_checkpoint', allow_partial_checkpoint), ('plot', plot)):
            if not isinstance(value, bool):
                raise TypeError(f'{name}={value!r} must be True or False')
        if skip_unmatched not in ('warn', 'error'):
            raise ValueError(f"skip_unmatched={skip_unmatched!r} must be 'warn' or 'error'")
        crit = (GroupFisher(delta='none') if importance is None
                else build_part(IMPORTANCE, importance, 'importance criterion', Importance, 'importance'))
        if isinstance(grid, list):
            grid = tuple(grid)
        # the method checks target, target_metric, mode, grid, tolerance, seed with messages naming them
        self.method = BalancedPruning(target=target, target_metric=target_metric, mode=mode, grid=grid,
                                      importance=crit, tolerance=tolerance, seed=seed, full_curves=full_curves,
                                      max_share=max_share, norm_stats=norm_stats,
                                      recalibrate_norms=recalibrate_norms, allocation=allocation,
                                      replay_mb=replay_mb, repair_rounds=repair_rounds)
        self.target, self.target_metric, self.mode = float(target), target_metric, mode
        self.calibration_batches = int(calibration_batches)
        self.calibration_dataloader = calibration_dataloader
        self.input_shape = check_input_shape(input_shape)
        self.skip = patterns(skip)
        self.skip_unmatched = skip_unmatched
        self.divisor = int(divisor)
        self.prune_frozen = prune_frozen
        self.verify_export = verify_export
        self.allow_random_init = allow_random_init
        self.allow_partial_checkpoint = allow_partial_checkpoint
        self.plot = plot
        self.state: Optional[PruningState] = None
        self.result: Optional[BalancedResult] = None
        self.outputs: Dict[str, str] = {}
        self.wall: Dict[str, float] = {}

    @property
    def calibration_data(self) -> str:
        """Which loader the calibration batches come from: ``'calibration_dataloader'`` or
        ``'train_dataloader'`` (written in ``balanced_curves.json`` and ``channels.json``)."""
        return 'train_dataloader' if self.calibration_dataloader is None else 'calibration_dataloader'

    # ------------------------------------------------------------------ checks before anything is computed
    def before_run(self, runner) -> None:
        if getattr(runner, '_load_from', None) is None and not getattr(runner, '_resume', False) \
                and not self.allow_random_init:
            raise ValueError('BalancedPruningHook: load_from is not set: the method prunes a trained model (its '
                             'loss-variation curves of a randomly initialised model mean nothing). Fix: set '
                             'load_from to the trained, unpruned checkpoint (--cfg-options load_from=PATH), or '
                             'set allow_random_init=True in the hook to prune a random model on purpose')

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Refuse a checkpoint that leaves weights of the pruned model random (mmengine calls this before it
        loads the checkpoint, non-strictly)."""
        refuse_mismatch('BalancedPruningHook', runner.model, checkpoint, self.allow_partial_checkpoint,
                        runner.logger.warning)

    # ------------------------------------------------------------------ the method
    def before_train(self, runner) -> None:
        t_start = time.perf_counter()
        model = pruned_module(runner.model)
        full = unwrap(runner.model)  # a distiller stays whole: its loss is the loss
        t0 = time.perf_counter()
        graph = analyze_fast(model, lambda m: make_trace_forward(m, self.input_shape))
        self.wall['trace'] = time.perf_counter() - t0
        t0 = time.perf_counter()
        inexact = inexact_units_at(model, graph, self.input_shape) if self.verify_export else {}
        self.wall['precheck'] = time.perf_counter() - t0
        self.state = state = PruningState(model, graph, skip=self.skip, prune_frozen=self.prune_frozen,
                                          divisor=self.divisor, input_shape=self.input_shape,
                                          owner='BalancedPruningHook', inexact=inexact)
        if state.unmatched_skip:
            text = '; '.join(f'{p!r} (closest: {", ".join(c) if c else "none"})'
                             for p, c in state.unmatched_skip.items())
            msg = (f'BalancedPruningHook: skip patterns that match no layer or unit of {type(model).__name__}: '
                   f'{text}. Those layers are not protected. Fix: correct the pattern')
            if self.skip_unmatched == 'error':
                raise ValueError(msg + ", or set skip_unmatched='warn'")
            runner.logger.warning(msg + ", or set skip_unmatched='error' to make this an error")
        s = graph.summary()
        runner.logger.info('\n'.join(
            [f'BalancedPruningHook: traced {type(model).__name__} at input_shape {self.input_shape} in '
             f'{self.wall["trace"]:.2f} s: {s["units"]} units, {s["atoms"]} atoms, {int(state.eligible.sum())} '
             f'eligible; {self.method!r}, {self.calibration_batches} calibration batches over '
             f'{get_world_size()} rank(s)'] + state.describe()))

        t0 = time.perf_counter()
        batches = self._calibration(runner, full)
        self.wall['data'] = time.perf_counter() - t0
        note = input_shape_note(self.input_shape, batches[0].get('inputs'), 'BalancedPruningHook') \
            if batches and isinstance(batches[0], dict) else None
        if note:
            runner.logger.warning(note)
        world = get_world_size()

        def reduce(t: torch.Tensor) -> torch.Tensor:
            if world > 1:
                all_reduce(t, op='sum')
            return t

        def loss_fn(data: Dict[str, Any]) -> torch.Tensor:
            return _total_loss(full, full(**data, mode='loss'))

        measure_fn = None
        exact = getattr(full, 'exact_targets', None)  # a label-free distiller: sampled terms for the Fisher pass,
        if callable(exact) and getattr(full, 'sample_targets', False):  # the exact ones for the measurements

            def measure_fn(data: Dict[str, Any]) -> torch.Tensor:
                with exact():
                    return loss_fn(data)

        device = next((p.device for p in model.parameters()), torch.device('cpu'))
        self.result = res = self.method.run(state, model, batches, loss_fn, model=full, reduce=reduce,
                                            log=runner.logger.info, device=device, measure_fn=measure_fn,
                                            invariant=invariant_methods(full))
        self._same_on_every_rank(state, world)
        self.wall['prune'] = time.perf_counter() - t_start
        for w in res.warnings:
            runner.logger.warning(f'BalancedPruningHook: {w}')
        if res.batches < self.calibration_batches:
            runner.logger.warning(
                f'BalancedPruningHook: calibration_batches={self.calibration_batches} but the '
                f'{self.calibration_data} gave {res.batches} batch(es) in total (its dataset is smaller): the curves '
                f'were measured on {res.batches}. Fix: a larger calibration set, or calibration_batches <= '
                f'{res.batches} to silence this')
        if self.calibration_dataloader is None and measure_fn is None and 0 <= res.base_loss < OVERFIT_LOSS:
            runner.logger.warning(
                f'BalancedPruningHook: the unpruned model\'s loss on its training batches is {res.base_loss:.3g} '
                f'(< {OVERFIT_LOSS:g}): it fits them almost exactly, so the measured variations reflect that fit '
                'more than what the channels do on unseen images. Fix, if the result fine-tunes poorly: calibrate '
                'on held-out images (calibration_dataloader=dict(dataset=..., ...)), or measure the distillation '
                'loss against the unpruned model with feature anchors (model=dict(type=\'mmfisher.'
                'LabelFreeDistiller\', architecture=<this model>, anchors=\'auto\'): e.g. '
                'configs/tiny/resnet_tiny_cls_balanced_label_free_prune.py with model.anchors=auto)')
        self._write(runner, model, res)
        self.wall['total'] = time.perf_counter() - t_start
        runner.logger.info(self.summary())
        runner.train_loop.stop_training = True

    def _calibration(self, runner, full: torch.nn.Module) -> List[Dict[str, Any]]:
        """This rank's share of ``calibration_batches`` training batches, preprocessed once (training=True:
        the training pipeline's padding / batch augments) and cached, so every measurement sees the same data."""
        world, rank = get_world_size(), get_rank()
        mine = self.calibration_batches // world + (1 if rank < self.calibration_batches % world else 0)
        out: List[Dict[str, Any]] = []
        if mine == 0:
            return out
        loader = self._calibration_loader(runner)
        preprocess = getattr(full, 'data_preprocessor', None)
        with torch.no_grad():
            for batch in loader:
                data = preprocess(batch, True) if preprocess is not None else batch
                if isinstance(data, (list, tuple)):
                    data = dict(inputs=data[0], data_samples=data[1] if len(data) > 1 else None)
                out.append(data)
                if len(out) >= mine:
                    break
        return out

    def _calibration_loader(self, runner):
        """``calibration_dataloader`` built (a config dict) or as given, else the runner's training dataloader."""
        cfg = self.calibration_dataloader
        if cfg is None:
            return runner.train_dataloader
        if isinstance(cfg, dict):
            import copy
            from mmengine.runner import Runner
            return Runner.build_dataloader(copy.deepcopy(cfg), seed=getattr(runner, 'seed', None))
        return cfg

    def _same_on_every_rank(self, state: PruningState, world: int) -> None:
        """Every rank computed the structure from the same sums; refuse to go on if one differs from rank 0's."""
        if world <= 1:
            return
        mine = state.masks.alive.to(torch.uint8)
        theirs = mine.clone()
        broadcast(theirs, src=0)
        if not torch.equal(mine, theirs):
            raise RuntimeError(f'BalancedPruningHook: rank {get_rank()} chose another structure than rank 0 '
                               f'({int((mine != theirs).sum())} atoms differ): the calibration sums were not '
                               'identical on every rank. Please report this (model config, world size)')

    # ------------------------------------------------------------------ outputs
    def _write(self, runner, model: torch.nn.Module, res: BalancedResult) -> None:
        wd = runner.work_dir
        self.outputs = {'channels': os.path.join(wd, 'channels.json'), 'weights': os.path.join(wd, 'pruned.pth'),
                        'curves': os.path.join(wd, CURVES_FILE)}
        if self.plot:
            self.outputs.update(curves_plot=os.path.join(wd, CURVES_PLOT), kept_plot=os.path.join(wd, KEPT_PLOT))
        if not is_main_process():
            return
        state = self.state
        alive = state.export_alive()
        meta = {'mmfisher': 'BalancedPruningHook', 'iter': 0, 'epoch': runner.epoch,
                'flops_ratio': res.ratios['flops'], 'acts_ratio': res.ratios['acts'],
                'params_ratio': res.ratios['params'], 'flops': state.costs.totals(alive)['flops'],
                'flops_unpruned': state.full['flops'], 'pruned_atoms': int((~alive).sum()),
                'num_atoms': state.num_atoms, 'input_shape': list(self.input_shape), 'target': self.target,
                'target_metric': self.target_metric, 'divisor': self.divisor, 'mode': self.mode,
                'tau': res.tau, 'importance': res.importance, 'calibration_batches': res.batches,
                'calibration_data': self.calibration_data,
                'base_loss': res.base_loss, 'combined_loss': res.combined_loss, 'reached': True}
        dataset = getattr(getattr(runner, 'train_dataloader', None), 'dataset', None)
        if isinstance(getattr(dataset, 'metainfo', None), dict):
            meta['dataset_meta'] = dataset.metainfo
        # everything besides the pair is rendered in memory first: a failing plot writes nothing
        report = res.to_json()
        report.update(wall_s=dict(report['wall_s'], **self.wall), world_size=get_world_size(),
                      input_shape=list(self.input_shape), divisor=self.divisor,
                      calibration_data=self.calibration_data,
                      full={k: float(v) for k, v in state.full.items()})
        files = [(self.outputs['curves'], json.dumps(plain(report), indent=1).encode())]
        if self.plot:
            files.append((self.outputs['curves_plot'], _curves_png(res)))
            files.append((self.outputs['kept_plot'], _kept_png(state, alive)))
        make = (lambda m: make_trace_forward(m, self.input_shape)) if self.verify_export else None
        export_pruned(model, state.graph, alive, wd, '', meta, forward=make(model) if make else None,
                      make_forward=make)
        atomic_write_all([(path, (lambda data: lambda f: f.write(data))(data)) for path, data in files])

    def summary(self) -> str:
        res = self.result
        n = len(res.curves)
        pruned_units = sorted(res.curves, key=lambda c: -c.chosen / c.size)
        points = f' ({res.points} of {res.grid_points} grid points measured)' if self.mode == 'measured' else ''
        lines = [f'BalancedPruningHook: pruned in one shot ({self.mode}) to {ratio_text(res.ratios)} '
                 f'(target {self.target_metric} <= {self.target:g}); tau={res.tau:.6g} after {res.search_steps} '
                 f'search steps',
                 f'  calibration: {res.batches} batches, {res.forwards} forwards on rank 0{points}; loss '
                 f'{res.base_loss:.5g} '
                 f'-> {res.combined_loss:.5g} (combined variation {res.combined_variation:.5g}, sum of the units\' '
                 f'variations {res.sum_variations:.5g})',
                 *([f'  gap filled from tau={res.tau_before_fill:.6g} (the crossing atom overshot the target); '
                    'stopped below their rate at tau: ' + short_list(res.fill_stopped, 6)]
                   if res.fill_stopped else []),
                 f'  {n} units measured; most pruned: ' + short_list(
                     [f'{c.name} {c.chosen}/{c.size}' for c in pruned_units], 6),
                 f'  wall: ' + ', '.join(f'{k} {v:.1f} s' for k, v in {**res.wall, **self.wall}.items()),
                 f'  wrote ' + ', '.join(self.outputs.values())]
        return '\n'.join(lines)


def _group_color(name: str) -> str:
    return ('tab:blue' if name.startswith('backbone') else 'tab:orange' if name.startswith('neck') else
            'tab:green' if 'head' in name else 'tab:gray')


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return buf.getvalue()


def _curves_png(res: BalancedResult) -> bytes:
    """Per-unit loss variation against the share masked (monotone curves), tau and every unit's rate."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5))
    for c in res.curves:
        share = np.concatenate([[0.0], c.ks / c.size])
        mono = np.concatenate([[0.0], np.where(np.isfinite(c.monotone), c.monotone, np.nan)])
        color = _group_color(c.name)
        ax.plot(share, mono, '-', color=color, lw=0.8, alpha=0.7)
        ax.plot([c.chosen / c.size], [c.at(c.chosen)], 'o', color=color, ms=3)
    ax.axhline(res.tau, color='k', ls='--', lw=0.8, label=f'tau = {res.tau:.4g}')
    ax.set_yscale('symlog', linthresh=max(abs(res.tau) / 10, 1e-6))
    ax.set_xlabel("share of the unit's atoms masked (lowest-ranked first)")
    ax.set_ylabel('calibration loss variation' + (' (estimated)' if res.mode == 'estimated' else ''))
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)  # the curves are monotone from V(0) = 0
    ax.set_title(f'balanced pruning: {len(res.curves)} units (blue backbone, orange neck, green head); dots: '
                 f'chosen rates; {res.target_metric} {res.ratios.get(res.target_metric, float("nan")):.3f}',
                 fontsize=9)
    ax.legend(loc='upper left', fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _kept_png(state: PruningState, alive: np.ndarray) -> bytes:
    """Kept output channels per conv/linear layer (share)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    g = state.graph
    names, kept = [], []
    for name, atoms in g.out_atoms.items():
        if not g.rules[name].is_weighted or atoms.size == 0:
            continue
        names.append(name)
        kept.append(float(((atoms < 0) | alive[np.clip(atoms, 0, None)]).sum()) / atoms.size)
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.22), 4.5))
    ax.bar(range(len(names)), kept, color=[_group_color(n) for n in names])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel('kept output channels (share)')
    ax.set_ylim(0, 1.05)
    ax.set_title('balanced one-shot pruning: kept channels per conv/linear layer (blue backbone, orange neck, '
                 'green head)', fontsize=9)
    fig.tight_layout()
    return _png(fig)


MMENGINE_HOOKS.register_module(module=BalancedPruningHook)
