"""Group Fisher channel pruning during ordinary mmengine training (Liu et al., ICML 2021)."""
import fnmatch
import hashlib
import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ..core import ChannelGraph, ChannelMasks, CostModel, FisherTaps, analyze_fast, model_fingerprint
from ..models.target import pruned_module
from ..models.tracing import check_input_shape, make_trace_forward
from ..registry import HOOKS, MMENGINE_HOOKS
from . import selection
from .export import export_pruned

DATA_BATCH = Optional[Union[dict, tuple, list]]
STATE_KEY = 'fisher_pruning'
STATE_VERSION = 1


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _patterns(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise TypeError(f'skip={value!r} must be a sequence of fnmatch patterns over unit or layer names, e.g. '
                        "skip=('backbone.conv1', 'neck.*')")
    return tuple(value)


@HOOKS.register_module()
class FisherPruningHook(Hook):
    """Prune channels by Group Fisher importance while training, then write the pruned structure.

    Every iteration the hook adds each atom's group Fisher information ``sum_n (dL_n/dm)^2`` (``m``: a mask on
    all readers of the atom's channels, summed over every call of shared layers) to a running sum kept identical
    on every rank. Every ``interval`` iterations it masks the ``channels_per_step`` alive atoms with the lowest
    ``fisher / delta`` and resets the sum, until the model's remaining ``target_metric`` (FLOPs or activations at
    ``input_shape``, relative to the unpruned model) is ``<= target``. Then it writes, into ``runner.work_dir``,
    ``channels.json`` (the channel config for ``type='mmfisher.Pruned'``) and ``pruned.pth`` (the slimmed weights,
    ``{'meta', 'state_dict'}``, for ``load_from``) and stops training.

    Masking zeroes the readers' input weights of a masked atom after every optimizer step, so the model keeps its
    unpruned structure while pruning (checkpoints, EMA and the optimizer state stay valid) and computes exactly
    what the slimmed model computes.

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
            Layers that only read a unit do not protect it. Defaults to ().
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
            slimming still differs there). Costs one forward per export (three on a re-check). Defaults to True.

    Priority ``'LOW'``: after the optimizer step (inside ``train_step``), the logger and EMA hooks, and before
    ``CheckpointHook`` (``'VERY_LOW'``), so a checkpoint holds this iteration's masks and Fisher sums
    (``checkpoint['fisher_pruning']``) and ``--resume`` reproduces an uninterrupted run.
    """

    priority = 'LOW'
    DELTAS = ('acts', 'flops', 'none')
    METRICS = ('flops', 'acts', 'params')

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
                 verify_export: bool = True) -> None:
        if not _is_int(interval) or interval < 1:
            raise ValueError(f'interval={interval!r} must be an int >= 1 (iterations between pruning steps; the '
                             'paper uses 10 for detection, 25 for ImageNet)')
        if delta not in self.DELTAS:
            raise ValueError(f'delta={delta!r} is unknown: use one of {self.DELTAS} (acts = memory-normalised, '
                             'the paper default)')
        if not _is_number(target) or not 0 < float(target) < 1:
            raise ValueError(f'target={target!r} must be a number in (0, 1): the remaining share of '
                             f'{target_metric!r}, e.g. target=0.5 keeps half')
        if target_metric not in self.METRICS:
            raise ValueError(f'target_metric={target_metric!r} is unknown: use one of {self.METRICS}')
        if not _is_int(channels_per_step) or channels_per_step < 1:
            raise ValueError(f'channels_per_step={channels_per_step!r} must be an int >= 1 (atoms masked per '
                             'pruning step; 1 as in the paper)')
        if isinstance(save_thresholds, (int, float)) and not isinstance(save_thresholds, bool):
            save_thresholds = (save_thresholds,)
        if not isinstance(save_thresholds, (list, tuple)) or not all(_is_number(t) for t in save_thresholds):
            raise TypeError(f'save_thresholds={save_thresholds!r} must be a sequence of ratios, e.g. (0.75, 0.6)')
        bad = [t for t in save_thresholds if not float(target) < float(t) < 1]
        if bad:
            raise ValueError(f'save_thresholds={tuple(save_thresholds)!r}: {bad} not in (target={target}, 1); '
                             'every threshold must lie between the target and 1 to be reached before stopping')
        if not _is_int(divisor) or divisor < 1:
            raise ValueError(f'divisor={divisor!r} must be an int >= 1 (e.g. 8 to keep channel counts multiples '
                             'of 8)')
        if not _is_int(start_iter) or start_iter < 0:
            raise ValueError(f'start_iter={start_iter!r} must be an int >= 0')
        for name, value in (('prune_frozen', prune_frozen), ('stop_at_target', stop_at_target),
                            ('verify_export', verify_export)):
            if not isinstance(value, bool):
                raise TypeError(f'{name}={value!r} must be True or False')
        self.interval = int(interval)
        self.delta = delta
        self.target = float(target)
        self.target_metric = target_metric
        self.channels_per_step = int(channels_per_step)
        self.save_thresholds = tuple(sorted({float(t) for t in save_thresholds}, reverse=True))
        self.input_shape = check_input_shape(input_shape)
        self.skip = _patterns(skip)
        self.divisor = int(divisor)
        self.prune_frozen = prune_frozen
        self.stop_at_target = stop_at_target
        self.start_iter = int(start_iter)
        self.verify_export = verify_export

        self.graph: Optional[ChannelGraph] = None
        self.masks: Optional[ChannelMasks] = None
        self.taps: Optional[FisherTaps] = None
        self.costs: Optional[CostModel] = None
        self.fisher: Optional[torch.Tensor] = None  # (A,) float64, summed over ranks, same on every rank
        self.samples = 0
        self.order: List[int] = []                  # atoms in the order they were masked
        self.saved: List[float] = []                # save_thresholds already written
        self.done = False
        self.outputs: Dict[str, str] = {}           # 'channels' / 'weights' -> path, once the target is reached
        self._scale = 1.0
        self._pending: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ set-up
    def before_train(self, runner) -> None:
        """Trace the model, build masks/taps/costs, restore a resumed pruning state, log a summary."""
        if self.graph is None:
            self._setup(runner)
        if self._pending is not None:
            state, self._pending = self._pending, None
            self._restore(state)
            runner.logger.info(f'FisherPruningHook: resumed pruning state ({len(self.order)} atoms masked, '
                               f'done={self.done}); {self._ratio_text(self._ratios())}')
        if self.done:
            self._finish_taps()
            if self.stop_at_target:
                runner.logger.info('FisherPruningHook: the pruning target was already reached; stopping')
                runner.train_loop.stop_training = True

    def _setup(self, runner) -> None:
        model = pruned_module(runner.model)
        t0 = time.perf_counter()
        graph = analyze_fast(model, lambda m: make_trace_forward(m, self.input_shape))
        seconds = time.perf_counter() - t0
        if graph.num_atoms == 0:
            raise ValueError(self._nothing_prunable(type(model).__name__, graph, 'the model has no prunable '
                                                    'channels'))
        self.graph = graph
        self.fingerprint = model_fingerprint(model)
        self.digest = self._digest(graph)
        self.unit_atoms = [u.atoms for u in graph.units]
        self.unit_of = selection.unit_index(graph.num_atoms, self.unit_atoms)
        self.skipped_units = self._skipped(graph)
        eligible = np.ones(graph.num_atoms, dtype=bool)
        if not self.prune_frozen:
            eligible &= graph.trainable
        for i in self.skipped_units:
            eligible[self.unit_atoms[i]] = False
        sizes = np.array([a.size for a in self.unit_atoms])
        eligible &= sizes[self.unit_of] > self.min_keep
        if not eligible.any():
            raise ValueError(self._nothing_prunable(type(model).__name__, graph, 'no atom is eligible'))
        self.eligible = eligible
        self.masks = ChannelMasks(model, graph)
        self.taps = FisherTaps(model, graph, self.masks)
        self.costs = CostModel(graph)
        self.full = self.costs.totals(np.ones(graph.num_atoms, dtype=bool))
        self.fisher = torch.zeros(graph.num_atoms, dtype=torch.float64)
        self.samples = 0
        runner.logger.info(self._summary(type(model).__name__, seconds))

    def _skipped(self, graph: ChannelGraph) -> List[int]:
        """Units whose name, or the name of a layer producing their channels (conv/linear/norm outputs), matches
        a ``skip`` pattern."""
        if not self.skip:
            return []
        producers: Dict[int, set] = {}
        for layer, atoms in graph.out_atoms.items():
            if any(fnmatch.fnmatchcase(layer, p) for p in self.skip):
                for a in np.unique(atoms[atoms >= 0]).tolist():
                    producers.setdefault(a, set()).add(layer)
        return [i for i, u in enumerate(graph.units)
                if any(fnmatch.fnmatchcase(u.name, p) for p in self.skip) or any(int(a) in producers for a in u.atoms)]

    @property
    def min_keep(self) -> int:
        return max(1, self.divisor)

    def _nothing_prunable(self, name: str, graph: ChannelGraph, what: str) -> str:
        reasons = '; '.join(f'{k}: {v}' for k, v in list(graph.unprunable.items())[:6]) or 'none reported'
        return (f'FisherPruningHook: nothing to prune in {name} ({what}; {graph.num_atoms} atoms, '
                f'{int(graph.trainable.sum())} trainable, skip={self.skip}, prune_frozen={self.prune_frozen}, '
                f'divisor={self.divisor}). Unprunable layers: {reasons}. Fix: unfreeze stages or set '
                'prune_frozen=True, narrow `skip`, lower `divisor`, or check input_shape and that the model has '
                'conv/linear layers whose channels are read by other layers')

    @staticmethod
    def _digest(graph: ChannelGraph) -> str:
        h = hashlib.sha256(str(graph.num_atoms).encode())
        for name in sorted(graph.in_atoms):
            h.update(name.encode())
            h.update(np.ascontiguousarray(graph.in_atoms[name], dtype=np.int64).tobytes())
        return h.hexdigest()[:32]

    def _summary(self, name: str, seconds: float) -> str:
        g = self.graph
        s = g.summary()
        lines = [f'FisherPruningHook: traced {name} at input_shape {self.input_shape} in {seconds:.2f} s '
                 f'(on {g.device} tensors)',
                 f'  prunable: {s["units"]} units, {s["atoms"]} atoms, {s["channels_prunable"]}/'
                 f'{s["channels_total"]} conv/linear output channels; {int(self.eligible.sum())} atoms eligible',
                 f'  unpruned cost per image: {self.full["flops"] / 1e9:.3f} GFLOPs, '
                 f'{self.full["acts"] / 1e6:.3f} M acts, {self.full["params"] / 1e6:.3f} M params',
                 f'  schedule: {self.channels_per_step} atom(s) every {self.interval} iter(s) from iter '
                 f'{self.start_iter}, delta={self.delta}, until {self.target_metric} <= {self.target:g}'
                 + (f', saving at {self.save_thresholds}' if self.save_thresholds else '')
                 + (f', divisor={self.divisor}' if self.divisor > 1 else '')]
        frozen = [u.name for u in g.units if not g.trainable[u.atoms].any()]
        if frozen and not self.prune_frozen:
            lines.append(f'  frozen, kept ({len(frozen)} units, their activations get no gradient): '
                         + self._short(frozen))
        if self.skipped_units:
            lines.append(f'  skipped by skip={self.skip} ({len(self.skipped_units)} units): '
                         + self._short([g.units[i].name for i in self.skipped_units]))
        if g.unprunable:
            lines.append(f'  unprunable layers ({len(g.unprunable)}):')
            for layer, reason in list(g.unprunable.items())[:12]:
                lines.append(f'    {layer}: {reason}')
            if len(g.unprunable) > 12:
                lines.append(f'    ... {len(g.unprunable) - 12} more')
        return '\n'.join(lines)

    @staticmethod
    def _short(names: List[str], n: int = 8) -> str:
        return ', '.join(names[:n]) + (f', ... {len(names) - n} more' if len(names) > n else '')

    # ------------------------------------------------------------------ per iteration
    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        """Remember the AMP loss scale this iteration's backward uses (1.0 without AMP)."""
        if self.taps is None:
            return
        self.taps.enabled = not self.done and runner.iter >= self.start_iter
        scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
        self._scale = float(scaler.get_scale()) if scaler is not None and hasattr(scaler, 'get_scale') else 1.0
        if not self._scale > 0:  # a disabled scaler reports 1.0; guard against 0 anyway
            self._scale = 1.0

    def after_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        """Accumulate Fisher, re-apply the masks after the optimizer step, prune every ``interval`` iters."""
        if self.masks is None:
            return
        self.masks.apply()
        if self.done or runner.iter < self.start_iter:
            return
        ok = self.taps.accumulate(self._scale)
        if not ok:
            print_log(f'FisherPruningHook: iter {runner.iter + 1}: no finite Fisher this iteration (AMP overflow '
                      'or no backward); skipped', logger='current', level=logging.DEBUG)
        local = torch.cat([self.taps.fisher, torch.tensor([float(self.taps.samples)], dtype=torch.float64)])
        self.taps.reset()
        if get_world_size() > 1:
            all_reduce(local, op='sum')
        self.fisher += local[:-1]
        self.samples += int(round(float(local[-1])))
        if (runner.iter + 1 - self.start_iter) % self.interval == 0:
            self._prune_step(runner)

    # ------------------------------------------------------------------ pruning
    def _export_alive(self, alive: Optional[np.ndarray] = None, order: Optional[List[int]] = None) -> np.ndarray:
        """The structure that is written: ``alive`` (default: the current masks) rounded up by ``divisor``."""
        alive = self.masks.alive.numpy() if alive is None else alive
        return selection.round_up(alive, self.unit_atoms, self.divisor, self.order if order is None else order)

    def _ratios(self, alive: Optional[np.ndarray] = None, order: Optional[List[int]] = None) -> Dict[str, float]:
        """Remaining flops/acts/params of the written structure relative to the unpruned model."""
        tot = self.costs.totals(self._export_alive(alive, order))
        return {k: (tot[k] / self.full[k] if self.full[k] else 1.0) for k in ('flops', 'acts', 'params')}

    def _reached(self, alive: np.ndarray, chosen: List[int]) -> bool:
        return self._ratios(alive, self.order + list(chosen))[self.target_metric] <= self.target

    @staticmethod
    def _ratio_text(r: Dict[str, float]) -> str:
        return f'flops {r["flops"]:.4f}, acts {r["acts"]:.4f}, params {r["params"]:.4f} of the unpruned model'

    def _prune_step(self, runner) -> None:
        if self.samples == 0:
            runner.logger.warning(f'FisherPruningHook: iter {runner.iter + 1}: no Fisher information was collected '
                                  f'in the last {self.interval} iterations (every backward overflowed or none '
                                  'ran); pruning step skipped')
            return
        alive = self.masks.alive.numpy().copy()
        delta = (np.ones(self.graph.num_atoms) if self.delta == 'none'
                 else self.costs.deltas(alive)[self.delta])
        score = selection.scores(self.fisher.numpy(), delta)
        ranked = selection.rank(score, alive & self.eligible)
        chosen = selection.choose(ranked, alive, self.unit_of, self.min_keep, self.channels_per_step,
                                  self._reached)
        self.fisher.zero_()
        self.samples = 0
        if not chosen:
            runner.logger.warning(f'FisherPruningHook: no eligible atom is left before {self.target_metric} '
                                  f'reached {self.target:g} ({self._ratio_text(self._ratios())}); writing the '
                                  'current structure. Fix: relax skip/divisor or set prune_frozen=True')
            self._finish(runner)
            return
        self.masks.prune(chosen)
        self.order.extend(int(a) for a in chosen)
        ratios = self._ratios()
        it = runner.iter + 1
        for key, value in (('flops_ratio', ratios['flops']), ('acts_ratio', ratios['acts']),
                           ('params_ratio', ratios['params']), ('pruned_atoms', float(len(self.order)))):
            runner.message_hub.update_scalar(f'train/{key}', value)
        units = sorted({self.graph.units[self.unit_of[a]].name for a in chosen})
        runner.logger.info(f'FisherPruningHook: iter {it}: masked {len(chosen)} atom(s) in {self._short(units, 4)}'
                           f'; {len(self.order)}/{self.graph.num_atoms} masked; {self._ratio_text(ratios)}')
        for t in self.save_thresholds:
            if t not in self.saved and ratios[self.target_metric] <= t:
                self._write(runner, f'_{t:g}', ratios)
                self.saved.append(t)
        if ratios[self.target_metric] <= self.target:
            self._finish(runner)

    def after_train(self, runner) -> None:
        """Training ended (max_iters / max_epochs) before the target: write the structure reached so far, with
        ``meta.reached=False``, so a long run is never lost."""
        if self.masks is not None and not self.done and self.order:
            ratios = self._ratios()
            self._write(runner, '', ratios)  # the pruning state stays open: --resume with more iters continues
            runner.logger.warning(
                f'FisherPruningHook: training ended before the target ({self.target_metric} '
                f'{ratios[self.target_metric]:.4f}, target {self.target:g}); wrote the current structure to '
                f'{self.outputs.get("channels")} (meta.reached=false). Fix: raise max_iters (or channels_per_step) '
                'and --resume')

    def _finish(self, runner) -> None:
        ratios = self._ratios()
        self._write(runner, '', ratios)
        self.done = True
        self._finish_taps()
        what = ('target reached' if ratios[self.target_metric] <= self.target else 'stopped before the target')
        runner.logger.info(f'FisherPruningHook: {what} ({self.target_metric} {ratios[self.target_metric]:.4f}, '
                           f'target {self.target:g}); wrote {self.outputs.get("channels")} and '
                           f'{self.outputs.get("weights")}')
        if self.stop_at_target:
            runner.train_loop.stop_training = True

    def _finish_taps(self) -> None:
        if self.taps is not None:
            self.taps.remove()
            self.taps.enabled = False

    def _write(self, runner, suffix: str, ratios: Dict[str, float]) -> None:
        """rank 0: channels{suffix}.json + pruned{suffix}.pth in work_dir (paths recorded on every rank)."""
        self.outputs = {'channels': os.path.join(runner.work_dir, f'channels{suffix}.json'),
                        'weights': os.path.join(runner.work_dir, f'pruned{suffix}.pth')}
        if not is_main_process():
            return
        alive = self._export_alive()
        meta = {'mmfisher': 'FisherPruningHook', 'iter': runner.iter + 1, 'epoch': runner.epoch,
                'flops_ratio': ratios['flops'], 'acts_ratio': ratios['acts'], 'params_ratio': ratios['params'],
                'flops': self.costs.totals(alive)['flops'], 'flops_unpruned': self.full['flops'],
                'pruned_atoms': int((~alive).sum()), 'num_atoms': self.graph.num_atoms,
                'input_shape': list(self.input_shape), 'target': self.target, 'target_metric': self.target_metric,
                'delta': self.delta, 'divisor': self.divisor,
                'reached': bool(ratios[self.target_metric] <= self.target) if not suffix else True}
        try:
            meta['dataset_meta'] = runner.train_dataloader.dataset.metainfo
        except Exception:  # noqa: BLE001  (no dataset meta is fine: inferencers then use default names)
            pass
        model = pruned_module(runner.model)
        check = make_trace_forward(model, self.input_shape) if self.verify_export else None
        export_pruned(model, self.graph, alive, runner.work_dir, suffix, meta, forward=check,
                      make_forward=(lambda m: make_trace_forward(m, self.input_shape)) if self.verify_export else None)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """The pruning state: tensors and python scalars only (``torch.load(weights_only=True)`` safe)."""
        return {'version': STATE_VERSION, 'alive': self.masks.alive.clone(), 'fisher': self.fisher.clone(),
                'samples': int(self.samples), 'order': list(self.order), 'saved': list(self.saved),
                'done': bool(self.done), 'num_atoms': int(self.graph.num_atoms), 'fingerprint': self.fingerprint,
                'digest': self.digest, 'input_shape': list(self.input_shape)}

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.masks is not None:
            checkpoint[STATE_KEY] = self.state_dict()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get(STATE_KEY)
        if state is None:
            return
        if self.graph is None:  # runner.train() loads checkpoints before before_train: restore there
            self._pending = state
        else:
            self._restore(state)

    def _restore(self, state: Dict[str, Any]) -> None:
        fix = ('resume from a checkpoint of this pruning run, with the same model config and FisherPruningHook '
               'input_shape, or start pruning afresh (no --resume / load_from)')
        if not isinstance(state, dict) or state.get('version') != STATE_VERSION:
            raise ValueError(f'checkpoint["{STATE_KEY}"] is not a pruning state this mmfisher can read: {fix}')
        shape = tuple(state.get('input_shape', ()))
        if shape != self.input_shape:
            raise ValueError(f'checkpoint masks do not fit the model: they were traced at input_shape={shape}, '
                             f'this hook uses input_shape={self.input_shape}. Fix: set input_shape={shape} or '
                             'start pruning afresh')
        for key, mine in (('num_atoms', self.graph.num_atoms), ('fingerprint', self.fingerprint),
                          ('digest', self.digest)):
            if state.get(key) != mine:
                raise ValueError(f'checkpoint masks do not fit the model ({key}: checkpoint {state.get(key)!r}, '
                                 f'model {mine!r}): {fix}')
        alive = torch.as_tensor(state['alive'], dtype=torch.bool)
        fisher = torch.as_tensor(state['fisher'], dtype=torch.float64)
        if alive.shape != (self.graph.num_atoms,) or fisher.shape != (self.graph.num_atoms,):
            raise ValueError(f'checkpoint masks do not fit the model (alive {tuple(alive.shape)}, fisher '
                             f'{tuple(fisher.shape)}, model {self.graph.num_atoms} atoms): {fix}')
        self.masks.set_alive(alive)
        self.fisher = fisher.clone()
        self.samples = int(state['samples'])
        self.order = [int(a) for a in state['order']]
        self.saved = [float(t) for t in state['saved']]
        self.done = bool(state['done'])


MMENGINE_HOOKS.register_module(module=FisherPruningHook)
