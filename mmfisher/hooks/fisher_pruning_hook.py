"""Group Fisher channel pruning during ordinary mmengine training (Liu et al., ICML 2021): the mm glue.

The method lives in :mod:`mmfisher.core` (pruning state, importance criteria, schedules, export); this hook
connects it to a runner, as mmengine's EMAHook connects its averaged model: it builds the parts, feeds them the
iterations (AMP loss scale, the ranks' sum), logs, checkpoints and writes the results.
"""
import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ..core import analyze_fast
from ..core.export import export_pruned
from ..core.importance import DELTAS, GroupFisher, Importance
from ..core.schedule import IntervalTopK, Schedule
from ..core.state import METRICS, PruningState, StateMismatch
from ..models.target import pruned_module
from ..models.tracing import check_input_shape, inexact_units_at, input_shape_note, make_trace_forward
from ..registry import HOOKS, IMPORTANCE, MMENGINE_HOOKS, SCHEDULES
from .args import build_part, is_int, is_number, patterns, ratio_text, short_list
from .checkpoint_match import refuse_mismatch

DATA_BATCH = Optional[Union[dict, tuple, list]]
STATE_KEY = 'fisher_pruning'
STATE_VERSION = 2


@HOOKS.register_module()
class FisherPruningHook(Hook):
    """Prune channels by Group Fisher importance while training, then write the pruned structure.

    Every iteration the hook adds each atom's group Fisher information ``sum_n (dL_n/dm)^2`` (``m``: a mask on
    all readers of the atom's channels, summed over every call of shared layers) to a running sum kept identical
    on every rank. Every ``interval`` iterations it masks the ``channels_per_step`` alive atoms with the lowest
    ``fisher / delta`` and resets the sum, until the model's remaining ``target_metric`` (FLOPs or activations at
    ``input_shape``, relative to the unpruned model) is ``<= target``. Then it writes, into ``runner.work_dir``,
    ``channels.json`` (the channel config for ``type='mmfisher.Pruned'``) and ``pruned.pth`` (the slimmed weights,
    ``{'meta', 'state_dict'}``, for ``load_from``; the pair carries one structure digest) and stops training.

    Masking zeroes the readers' input weights of a masked atom after every optimizer step, so the model keeps its
    unpruned structure while pruning (checkpoints, EMA and the optimizer state stay valid) and computes exactly
    what the slimmed model computes. A model holding a ``student`` and a ``teacher`` prunes the student
    (:func:`mmfisher.models.pruned_module`).

    Args:
        interval (int): iterations between two pruning steps (Fisher is accumulated over them). The paper uses 10
            for detection and 25 for ImageNet classification. Defaults to 10.
        delta (str): how Fisher is normalised by what removing an atom saves: ``'acts'`` (output activations of
            its producers, the paper's memory-normalised "-M" variant), ``'flops'`` (FLOPs saved in producers and
            readers, recomputed from the alive channels) or ``'none'``. Defaults to ``'acts'``.
        target (float): stop when the remaining ``target_metric`` ratio is ``<= target``; in (0, 1).
            Defaults to 0.5.
        target_metric (str): ``'flops'``, ``'acts'`` or ``'params'`` of conv/linear layers at ``input_shape``.
            Defaults to ``'flops'``.
        channels_per_step (int): atoms masked per pruning step (the paper: 1; larger values prune faster with
            slightly coarser decisions). A step ends early once the target is reached. Defaults to 1.
        save_thresholds (Sequence[float]): also write ``channels_<r>.json`` / ``pruned_<r>.pth`` when the ratio
            first drops to ``<= r``; every ``r`` in (target, 1). Defaults to ().
        input_shape (Sequence[int]): ``(C, H, W)`` of the fixed fake input used for tracing and costs (the same on
            every rank). Defaults to (3, 800, 1333); use (3, 224, 224) for ImageNet classifiers.
        skip (Sequence[str]): fnmatch patterns; a unit is never pruned when its name, or the name of a layer that
            produces its channels (a conv/linear/norm output, e.g. ``'backbone.conv1'``, ``'neck.*'``), matches.
            Layers that only read a unit do not protect it. A pattern that matches no layer is logged as a
            warning with the closest names. Defaults to ().
        skip_unmatched (str): ``'warn'`` (default) or ``'error'``: what a ``skip`` pattern matching no layer does.
        divisor (int): no unit is left with fewer than ``max(1, divisor)`` alive atoms, and when the results are
            written every unit's kept-atom count is rounded *up* to a multiple of ``divisor`` (at most the unit's
            size) by keeping its most recently masked atoms (their reader weights are zero, so the outputs do not
            change). The target and the logged ratios refer to the rounded structure. Use 8 or 16 for GPU-friendly
            channel counts; an atom is one channel except in GroupNorm groups and grouped convs. Defaults to 1.
        prune_frozen (bool): also prune atoms whose activations receive no gradient (channels inside and at the
            output of frozen stages: their Fisher cannot be measured, it stays 0, so they go first, in index
            order). Defaults to False: they are kept and listed in the log.
        stop_at_target (bool): set ``runner.train_loop.stop_training`` once the target is reached. An
            ``IterBasedTrainLoop`` stops at once; an ``EpochBasedTrainLoop`` only at the end of the current epoch
            (the masks no longer change in between). Defaults to True.
        start_iter (int): iteration from which Fisher is accumulated (pruning steps follow every ``interval``
            iterations after it). Defaults to 0.
        verify_export (bool): before writing results, run the masked model and its slimmed copy once on the
            trace input (eval mode) and refuse to write anything if they differ (relative 1e-3): a safety net
            against any layer or op the engine mapped wrongly. A float32 disagreement is re-checked once on float64
            copies (a top-k over near-equal scores, as in DINO, may pick other elements after rounding; a wrong
            slimming still differs there). Costs one forward per export (three on a re-check). The same check
            runs once before pruning, on a copy with half of every unit masked: units whose slimming it finds
            wrong are kept whole and listed (``mmfisher.core.verify.inexact_units``), so the export at the end
            does not fail. Defaults to True.
        importance (dict, optional): the importance criterion, built from mmfisher's ``IMPORTANCE`` registry,
            e.g. ``dict(type='GroupFisher', delta='flops')``, ``dict(type='L1Norm')``, ``dict(type='Taylor')``,
            ``dict(type='BNScale')``, ``dict(type='RandomImportance', seed=0)``. Defaults to
            ``GroupFisher(delta=delta)``; give ``delta`` inside it, not both.
        schedule (dict, optional): the pruning schedule, built from ``SCHEDULES``: ``dict(type='IntervalTopK',
            interval=10, k=1)`` (the default, from ``interval`` / ``channels_per_step`` / ``start_iter``) or
            ``dict(type='AdaptiveK', interval=10, share=0.01)`` (a share of the eligible atoms per step, so a
            large model needs few steps); give the flat arguments or this, not both.
        allow_partial_checkpoint (bool): go on (with a warning) when the ``load_from`` / ``--resume``
            checkpoint leaves tensors of the pruned model unloaded (missing, or of another shape: a ``pruned.pth``,
            a COCO detector's classifier for a new class count). Defaults to False: refused
            (:class:`~mmfisher.hooks.checkpoint_match.CheckpointMismatch`), since those weights would stay random.

    Priority ``'LOW'``: after the optimizer step (inside ``train_step``), the logger and EMA hooks, and before
    ``CheckpointHook`` (``'VERY_LOW'``), so a checkpoint holds this iteration's masks and Fisher sums
    (``checkpoint['fisher_pruning']``) and ``--resume`` reproduces an uninterrupted run. A resumed run whose
    ``target`` is lower than the one reached continues pruning from the saved state.
    """

    priority = 'LOW'
    DELTAS = DELTAS
    METRICS = METRICS

    def __init__(self,
                 interval: int = 10,
                 delta: str = 'acts',
                 target: float = 0.5,
                 target_metric: str = 'flops',
                 channels_per_step: int = 1,
                 save_thresholds: Sequence[float] = (),
                 input_shape: Sequence[int] = (3, 800, 1333),
                 skip: Sequence[str] = (),
                 divisor: int = 1,
                 prune_frozen: bool = False,
                 stop_at_target: bool = True,
                 start_iter: int = 0,
                 verify_export: bool = True,
                 importance: Optional[Union[dict, Importance]] = None,
                 schedule: Optional[Union[dict, Schedule]] = None,
                 skip_unmatched: str = 'warn',
                 allow_partial_checkpoint: bool = False) -> None:
        if not is_number(target) or not 0 < float(target) < 1:
            raise ValueError(f'target={target!r} must be a number in (0, 1): the remaining share of '
                             f'{target_metric!r}, e.g. target=0.5 keeps half')
        if target_metric not in self.METRICS:
            raise ValueError(f'target_metric={target_metric!r} is unknown: use one of {self.METRICS}')
        if not is_int(channels_per_step) or channels_per_step < 1:
            raise ValueError(f'channels_per_step={channels_per_step!r} must be an int >= 1 (atoms masked per '
                             'pruning step; 1 as in the paper)')
        if isinstance(save_thresholds, (int, float)) and not isinstance(save_thresholds, bool):
            save_thresholds = (save_thresholds,)
        if not isinstance(save_thresholds, (list, tuple)) or not all(is_number(t) for t in save_thresholds):
            raise TypeError(f'save_thresholds={save_thresholds!r} must be a sequence of ratios, e.g. (0.75, 0.6)')
        bad = [t for t in save_thresholds if not float(target) < float(t) < 1]
        if bad:
            raise ValueError(f'save_thresholds={tuple(save_thresholds)!r}: {bad} not in (target={target}, 1); '
                             'every threshold must lie between the target and 1 to be reached before stopping')
        if not is_int(divisor) or divisor < 1:
            raise ValueError(f'divisor={divisor!r} must be an int >= 1 (e.g. 8 to keep channel counts multiples '
                             'of 8)')
        for name, value in (('prune_frozen', prune_frozen), ('stop_at_target', stop_at_target),
                            ('verify_export', verify_export), ('allow_partial_checkpoint', allow_partial_checkpoint)):
            if not isinstance(value, bool):
                raise TypeError(f'{name}={value!r} must be True or False')
        if skip_unmatched not in ('warn', 'error'):
            raise ValueError(f"skip_unmatched={skip_unmatched!r} must be 'warn' or 'error'")
        if importance is not None and delta != 'acts':
            raise ValueError(f'delta={delta!r} and importance={importance!r} both given: put delta inside '
                             "importance, e.g. importance=dict(type='GroupFisher', delta='flops')")
        if schedule is not None and (interval != 10 or channels_per_step != 1 or start_iter != 0):
            raise ValueError('interval / channels_per_step / start_iter and schedule both given: set them inside '
                             "schedule, e.g. schedule=dict(type='IntervalTopK', interval=10, k=1, start_iter=0)")
        # the parts check their own arguments (interval, start_iter, delta), with the same messages
        self.importance = (GroupFisher(delta=delta) if importance is None
                           else build_part(IMPORTANCE, importance, 'importance criterion', Importance, 'importance'))
        self.schedule = (IntervalTopK(interval=interval, k=channels_per_step, start_iter=start_iter)
                         if schedule is None else build_part(SCHEDULES, schedule, 'schedule', Schedule, 'schedule'))
        self.interval = self.schedule.interval
        self.start_iter = self.schedule.start_iter
        self.channels_per_step = int(channels_per_step)
        self.delta = self.importance.delta
        self.target = float(target)
        self.target_metric = target_metric
        self.save_thresholds = tuple(sorted({float(t) for t in save_thresholds}, reverse=True))
        self.input_shape = check_input_shape(input_shape)
        self.skip = patterns(skip)
        self.skip_unmatched = skip_unmatched
        self.divisor = int(divisor)
        self.prune_frozen = prune_frozen
        self.stop_at_target = stop_at_target
        self.verify_export = verify_export
        self.allow_partial_checkpoint = allow_partial_checkpoint
        self._shape_checked = False

        self.state: Optional[PruningState] = None
        self.saved: List[float] = []                # save_thresholds already written
        self.done = False
        self.outputs: Dict[str, str] = {}           # 'channels' / 'weights' -> path, once written
        self._scale = 1.0
        self._pending: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ the parts, for tests and tools
    @property
    def graph(self):
        return self.state.graph if self.state is not None else None

    @property
    def masks(self):
        return self.state.masks if self.state is not None else None

    @property
    def order(self) -> List[int]:
        return self.state.order if self.state is not None else []

    @property
    def fisher(self) -> Optional[torch.Tensor]:
        """The accumulated importance sums (Group Fisher: ``sum_n (dL_n/dm)^2``), same on every rank."""
        return getattr(self.importance, 'sums', None)

    @property
    def samples(self) -> int:
        return int(getattr(self.importance, 'samples', 0))

    @property
    def skipped_units(self) -> List[int]:
        return self.state.skipped_units if self.state is not None else []

    @property
    def steps(self) -> int:
        """Pruning steps taken so far."""
        return len(self.state.step_sizes) if self.state is not None else 0

    @property
    def k_used(self) -> List[int]:
        """The k the schedule asked for at every step."""
        return list(self.schedule.history)

    def ratios(self, alive: Optional[np.ndarray] = None, order: Optional[Sequence[int]] = None) -> Dict[str, float]:
        """Remaining flops/acts/params of the structure that is written (after divisor rounding)."""
        return self.state.ratios(alive, order)

    # ------------------------------------------------------------------ set-up
    def before_train(self, runner) -> None:
        """Trace the model, build state, criterion and costs, restore a resumed pruning state, log a summary."""
        if getattr(runner, '_load_from', None) is None and not getattr(runner, '_resume', False):
            runner.logger.warning('FisherPruningHook: no load_from and no --resume: pruning a randomly initialised '
                                  'model. Fix: set load_from to the trained, unpruned checkpoint (the method prunes '
                                  'a trained model)')
        if self.state is None:
            self._setup(runner)
        if self._pending is not None:
            state, self._pending = self._pending, None
            runner.logger.info(f'FisherPruningHook: resumed pruning state ({len(self.order)} atoms masked, '
                               f'done={self.done}); {ratio_text(self.ratios())}')
            reached = self.ratios()[self.target_metric]
            if self.done and reached > self.target:
                self.done = False
                runner.logger.info(f'FisherPruningHook: the resumed run stopped at {self.target_metric} '
                                   f'{reached:.4f} (target {state.get("target")}); continuing to the new target '
                                   f'{self.target:g}')
            elif self.done and isinstance(state.get('target'), float) and state['target'] < self.target:
                runner.logger.warning(
                    f'FisherPruningHook: the resumed run was pruned to {self.target_metric} {reached:.4f} '
                    f'(target {state["target"]:g}), below the new target {self.target:g}; masks cannot be '
                    'undone, so its structure is kept. Fix: to prune to the new target, start afresh from the '
                    'unpruned checkpoint (load_from, no --resume), or use save_thresholds next time')
        if self.done:
            self.importance.detach()
            if self.stop_at_target:
                runner.logger.info('FisherPruningHook: the pruning target was already reached; stopping')
                runner.train_loop.stop_training = True

    def _setup(self, runner) -> None:
        model = pruned_module(runner.model)
        t0 = time.perf_counter()
        graph = analyze_fast(model, lambda m: make_trace_forward(m, self.input_shape))
        seconds = time.perf_counter() - t0
        inexact = inexact_units_at(model, graph, self.input_shape) if self.verify_export else {}
        self.state = PruningState(model, graph, skip=self.skip, prune_frozen=self.prune_frozen,
                                  divisor=self.divisor, input_shape=self.input_shape, owner='FisherPruningHook',
                                  inexact=inexact)
        if self.state.unmatched_skip:
            text = '; '.join(f'{p!r} (closest: {", ".join(c) if c else "none"})'
                             for p, c in self.state.unmatched_skip.items())
            msg = (f'FisherPruningHook: skip patterns that match no layer or unit of {type(model).__name__}: '
                   f'{text}. Those layers are not protected. Fix: correct the pattern (fnmatch over the layer names '
                   'in the log)')
            if self.skip_unmatched == 'error':
                raise ValueError(msg + ", or set skip_unmatched='warn'")
            runner.logger.warning(msg + ", or set skip_unmatched='error' to make this an error")
        self.importance.attach(model, graph, self.state.masks)
        runner.logger.info(self.summary(type(model).__name__, seconds))

    def summary(self, name: str, seconds: float) -> str:
        """The set-up log: what was traced, what is prunable, the schedule, what is kept and why."""
        s = self.state.graph.summary()
        full = self.state.full
        lines = [f'FisherPruningHook: traced {name} at input_shape {self.input_shape} in {seconds:.2f} s '
                 f'(on {self.state.graph.device} tensors)',
                 f'  prunable: {s["units"]} units, {s["atoms"]} atoms, {s["channels_prunable"]}/'
                 f'{s["channels_total"]} conv/linear output channels; {int(self.state.eligible.sum())} atoms eligible',
                 f'  unpruned cost per image: {full["flops"] / 1e9:.3f} GFLOPs, '
                 f'{full["acts"] / 1e6:.3f} M acts, {full["params"] / 1e6:.3f} M params',
                 f'  schedule: {self.schedule.describe()}, importance={self.importance!r}, until '
                 f'{self.target_metric} <= {self.target:g}'
                 + (f', saving at {self.save_thresholds}' if self.save_thresholds else '')
                 + (f', divisor={self.divisor}' if self.divisor > 1 else '')]
        return '\n'.join(lines + self.state.describe())

    # ------------------------------------------------------------------ per iteration
    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        """Remember the AMP loss scale this iteration's backward uses (1.0 without AMP); on the first one, warn
        when the images are far from ``input_shape``."""
        if self.state is None:
            return
        if not self._shape_checked and isinstance(data_batch, dict):
            self._shape_checked = True
            note = input_shape_note(self.input_shape, data_batch.get('inputs'), 'FisherPruningHook')
            if note:
                runner.logger.warning(note)
        self.importance.collecting = not self.done and self.schedule.collects(runner.iter)
        scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
        self._scale = float(scaler.get_scale()) if scaler is not None and hasattr(scaler, 'get_scale') else 1.0
        if not self._scale > 0:  # a disabled scaler reports 1.0; guard against 0 anyway
            self._scale = 1.0

    def after_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        """Accumulate importance, re-apply the masks after the optimizer step, prune when the schedule says."""
        if self.state is None:
            return
        self.state.masks.apply()
        if self.done or not self.schedule.collects(runner.iter):
            return
        if not self.importance.accumulate(self._scale):
            print_log(f'FisherPruningHook: iter {runner.iter + 1}: no finite Fisher this iteration (AMP overflow '
                      'or no backward); skipped', logger='current', level=logging.DEBUG)
        local = self.importance.collect()
        if local.numel() and get_world_size() > 1:
            all_reduce(local, op='sum')
        self.importance.add(local)
        if self.schedule.due(runner.iter + 1):
            self.prune_step(runner)

    # ------------------------------------------------------------------ pruning
    def prune_step(self, runner) -> None:
        """One pruning step: score, choose, mask, log; write results at thresholds and at the target."""
        if not self.importance.ready():
            runner.logger.warning(f'FisherPruningHook: iter {runner.iter + 1}: no Fisher information was collected '
                                  f'in the last {self.interval} iterations (every backward overflowed or none '
                                  'ran); pruning step skipped')
            return
        state = self.state
        score = self.importance.scores(state.alive, state.costs)
        chosen = state.choose(score, self.schedule.next_k(state), state.reaches(self.target_metric, self.target))
        self.importance.reset()
        if not chosen:
            runner.logger.warning(f'FisherPruningHook: no eligible atom is left before {self.target_metric} '
                                  f'reached {self.target:g} ({ratio_text(self.ratios())}); writing the '
                                  'current structure. Fix: relax skip/divisor or set prune_frozen=True')
            self._finish(runner)
            return
        state.prune(chosen)
        ratios = self.ratios()
        it = runner.iter + 1
        for key, value in (('flops_ratio', ratios['flops']), ('acts_ratio', ratios['acts']),
                           ('params_ratio', ratios['params']), ('pruned_atoms', float(len(state.order)))):
            runner.message_hub.update_scalar(f'train/{key}', value)
        runner.logger.info(f'FisherPruningHook: iter {it}: masked {len(chosen)} atom(s) in '
                           f'{short_list(state.unit_names(chosen), 4)}; {len(state.order)}/{state.num_atoms} masked; '
                           f'{ratio_text(ratios)}')
        for t in self.save_thresholds:
            if t not in self.saved and ratios[self.target_metric] <= t:
                self._write(runner, f'_{t:g}', ratios, it)
                self.saved.append(t)
        if ratios[self.target_metric] <= self.target:
            self._finish(runner)

    def after_train(self, runner) -> None:
        """Training ended (max_iters / max_epochs) before the target: write the structure reached so far, with
        ``meta.reached=False``, so a long run is never lost."""
        if self.state is not None and not self.done and self.order:
            ratios = self.ratios()
            self._write(runner, '', ratios, runner.iter)  # the pruning state stays open: --resume continues
            runner.logger.warning(
                f'FisherPruningHook: training ended before the target ({self.target_metric} '
                f'{ratios[self.target_metric]:.4f}, target {self.target:g}); wrote the current structure to '
                f'{self.outputs.get("channels")} (meta.reached=false). Fix: raise max_iters (or channels_per_step) '
                'and --resume')

    def _finish(self, runner) -> None:
        ratios = self.ratios()
        self._write(runner, '', ratios, runner.iter + 1)
        self.done = True
        self.importance.detach()
        what = ('target reached' if ratios[self.target_metric] <= self.target else 'stopped before the target')
        runner.logger.info(f'FisherPruningHook: {what} ({self.target_metric} {ratios[self.target_metric]:.4f}, '
                           f'target {self.target:g}); wrote {self.outputs.get("channels")} and '
                           f'{self.outputs.get("weights")}')
        if self.stop_at_target:
            runner.train_loop.stop_training = True

    def _write(self, runner, suffix: str, ratios: Dict[str, float], iters_done: int) -> None:
        """rank 0: channels{suffix}.json + pruned{suffix}.pth in work_dir (paths recorded on every rank)."""
        self.outputs = {'channels': os.path.join(runner.work_dir, f'channels{suffix}.json'),
                        'weights': os.path.join(runner.work_dir, f'pruned{suffix}.pth')}
        if not is_main_process():
            return
        alive = self.state.export_alive()
        meta = {'mmfisher': 'FisherPruningHook', 'iter': int(iters_done), 'epoch': runner.epoch,
                'flops_ratio': ratios['flops'], 'acts_ratio': ratios['acts'], 'params_ratio': ratios['params'],
                'flops': self.state.costs.totals(alive)['flops'], 'flops_unpruned': self.state.full['flops'],
                'pruned_atoms': int((~alive).sum()), 'num_atoms': self.state.num_atoms,
                'input_shape': list(self.input_shape), 'target': self.target, 'target_metric': self.target_metric,
                'delta': self.delta, 'divisor': self.divisor, 'importance': repr(self.importance),
                'schedule': repr(self.schedule),
                'reached': bool(ratios[self.target_metric] <= self.target) if not suffix else True}
        dataset = getattr(getattr(runner, 'train_dataloader', None), 'dataset', None)
        if isinstance(getattr(dataset, 'metainfo', None), dict):
            meta['dataset_meta'] = dataset.metainfo
        model = pruned_module(runner.model)
        make = (lambda m: make_trace_forward(m, self.input_shape)) if self.verify_export else None
        export_pruned(model, self.state.graph, alive, runner.work_dir, suffix, meta,
                      forward=make(model) if make else None, make_forward=make)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """The pruning state: tensors and python scalars only (``torch.load(weights_only=True)`` safe).

        One flat dict of the parts' states (the pruning state's ``alive``, ``order``, ``num_atoms``, ...; the
        criterion's, e.g. Group Fisher's ``sums`` and ``samples``; the schedule's ``history``) plus the hook's
        own ``saved``, ``done``, ``target``."""
        parts = [self.state.state_dict(), self.importance.state_dict(), self.schedule.state_dict()]
        out: Dict[str, Any] = {'version': STATE_VERSION, 'importance': type(self.importance).__name__,
                               'schedule': type(self.schedule).__name__, 'saved': list(self.saved),
                               'done': bool(self.done), 'target': self.target, 'target_metric': self.target_metric}
        for part in parts:
            clash = set(part) & set(out)
            if clash:
                raise RuntimeError(f'pruning state keys {sorted(clash)} are written by two parts')
            out.update(part)
        return out

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.state is not None:
            checkpoint[STATE_KEY] = self.state_dict()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Trace the model if needed and restore the pruning state. mmengine calls this before it loads the
        optimizer state, so a checkpoint of another model is refused here, with the fix, and not by torch's
        optimizer."""
        state = checkpoint.get(STATE_KEY)
        if state is not None:  # masks of another model are named as such first
            state = self._upgrade(state)
            if self.state is None:  # runner.train() loads checkpoints before before_train: trace now
                self._setup(runner)
            self._restore(state)
            self._pending = state  # before_train logs it and compares targets
        refuse_mismatch('FisherPruningHook', runner.model, checkpoint, self.allow_partial_checkpoint,
                        runner.logger.warning)

    @staticmethod
    def _upgrade(state: Any) -> Dict[str, Any]:
        """A version-1 state (Group Fisher's sums under ``fisher``) in the version-2 layout; anything else that
        is not a version-2 state is refused."""
        if isinstance(state, dict) and state.get('version') == 1:
            state = dict(state, version=STATE_VERSION, sums=state.get('fisher'), importance='GroupFisher',
                         schedule='IntervalTopK')
        if not isinstance(state, dict) or state.get('version') != STATE_VERSION:
            raise StateMismatch(f'checkpoint["{STATE_KEY}"] is not a pruning state this mmfisher can read: resume '
                                'from a checkpoint of this pruning run, with the same model config and '
                                'FisherPruningHook input_shape, or start pruning afresh (no --resume / load_from)')
        return state

    def _restore(self, state: Dict[str, Any]) -> None:
        self.state.load_state_dict(state, where=f'checkpoint["{STATE_KEY}"]')
        if state.get('importance') == type(self.importance).__name__:
            self.importance.load_state_dict(state)
        if state.get('schedule') == type(self.schedule).__name__:
            self.schedule.load_state_dict(state)
        self.saved = [float(t) for t in state.get('saved', ())]
        self.done = bool(state.get('done', False))


MMENGINE_HOOKS.register_module(module=FisherPruningHook)
