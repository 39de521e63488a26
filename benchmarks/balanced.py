"""Balanced one-shot pruning (seed 003) against iterative Group Fisher, uniform L1 and Torch-Pruning one-shot, at
equal FLOPs, the same baseline and the same fine-tune; and the calibration cost of RetinaNet R50-FPN at 800x1333.

Tasks (``--tasks``): ``cls`` (the tiny ResNet on the bundled 3-class shapes set, top-1) and ``det`` (the tiny
RetinaNet on the bundled detection set, bbox mAP); ``cls_hard`` (smaller shapes, 1,200 val images) and
``cls_fine`` (six classes, 2,400 train / 1,800 val images), the same tiny ResNet. Per task, identical for every
method except the choice of channels:

1. one baseline trained from scratch: by default benchmarks/label_free.py's (the config's schedule x3 for cls,
   x2 for det; the same cached ``work_dirs/bench/label_free/<task>/base.pth``, trained when missing); with
   ``--base-x TASK=N`` one trained for the config's schedule x N (cached at
   ``work_dirs/bench/balanced_base_xN/TASK/base.pth``: longer, so that the iterative runs' training while they
   prune cannot by itself put them ahead); ``--baseline-from DIR``'s; or with ``--quality-baseline``
   benchmarks/quality.py's (far from converged);
2. pruning to ``--target`` (0.5) of the baseline's conv/linear FLOPs (mmfisher's cost model at the data's size):

   * ``balanced``: BalancedPruningHook, ``mode='measured'`` (``--calibration-batches`` training batches, the
     default grid), through an mmengine Runner (no training iteration);
   * ``balanced_estimated``: the same with ``mode='estimated'`` (the Fisher pass only);
   * ``balanced_per_cost``: the measured mode with ``allocation='variation_per_cost'`` (the threshold on the loss
     variation per FLOPs share freed instead of on the variation);
   * ``balanced_label_free``: the measured mode with the label-free loss (a ``LabelFreeDistiller`` around the
     task's model: output KL against the frozen baseline, no anchors, the training images' labels unread; the
     Fisher ranking from its sampled terms, the curves from its exact ones);
   * ``fisher_k1``: FisherPruningHook, one atom every ``--fisher-interval`` iterations (the paper's k=1 and
     interval 10, the hook's defaults), the model training meanwhile;
   * ``fisher_adaptive``: FisherPruningHook with the AdaptiveK schedule (``--adaptive-share`` of the eligible
     atoms per step);
   * ``l1``: Li et al.'s uniform L1 (the same share of every unit, bisected to the target);
   * ``tp_magnitude`` / ``tp_taylor``: Torch-Pruning's one-shot global magnitude (L2) / Taylor pruning
     (``benchmarks/quality.py``'s implementations, mapped onto mmfisher's atoms);
   * ``balanced_widths``: a reference, not a method: the per-unit widths of another run
     (``--widths-from``'s channels.json, e.g. fisher_k1's), each unit's channels chosen by balanced's Group
     Fisher ranking on the same calibration batches (the estimated mode's single gradient pass, its search
     replaced by those widths): with ``balanced`` beside it, it tells how much of a method's lead is its
     structure (the widths) and how much its training while it prunes;
   * ``unpruned``: no pruning, a reference: the baseline through the same fine-tune (a fine-tune that lowers it
     disturbs a trained model more than it restores a pruned one, and the comparison then measures recovery from
     that disturbance rather than the structures);

3. the slimmed model evaluated as it is (``before_finetune``), then fine-tuned ``--ft-iters`` (the same for
   every method: the iterative runs' pruning iterations are not added; ``--ft-lr-scale`` times the config's lr)
   and evaluated; ``metric_mean`` /
   ``metric_std`` over ``--seeds``. ``prune_wall_s``: the pruning run's wall time (Runner set-up excluded for the
   hook runs' model building; the iterative runs include their training iterations, the method's cost).

Goals checked into ``goals``: at least 20x less pruning wall time than Group Fisher k=1 with the metric after
fine-tuning within its noise (the two seed spreads), better than uniform L1 and Torch-Pruning one-shot, and the
tau search within 1% of the FLOPs target.

``--r50`` also times the calibration of RetinaNet R50-FPN (mmdet's config, no pretrained weights) at 800x1333
with 8 calibration images on this CPU: the trace, the Fisher pass (one forward + backward per image), the
estimated mode end to end, and a few measured curve points, from which the measured mode's cost is extrapolated
(units x grid points x batches forwards). ``--r50-device cuda`` times it on a GPU, ``--r50-measured`` there also
runs the measured mode end to end (``benchmarks/gpu/run.sh`` is the prepared GPU check).

    nice .venv/bin/python benchmarks/balanced.py                       # cls + det, every method x 3 seeds, R50 timing
    nice .venv/bin/python benchmarks/balanced.py --tasks cls --no-r50
    nice .venv/bin/python benchmarks/balanced.py --quick --out /tmp/balanced.json
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys
import time
import types

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import (ROOT, Result, build_runner, finetune_eval, pruning_hook, run_hook_pruning,  # noqa: E402
                     tiny_runner_cfg, train_baseline, unite_runs)
from quality import TASKS as QUALITY_TASKS, prune_core  # noqa: E402

# the quality benchmarks' tasks, and the harder classification set (shapes 24-48 px, 1,200 val images): on
# shapes_cls a converged baseline scores about 99% top-1 on 150 images, so the methods tie there
TASKS = dict(QUALITY_TASKS, cls_hard=dict(config=osp.join(ROOT, 'configs', 'tiny', 'resnet_tiny_shapes_cls_hard.py'),
                                          shape=(3, 64, 64), base_iters=240),
             # six classes of small shapes, 2,400 train / 1,800 val images: its converged baseline (x16, 2 cycles)
             # scores 97.4% where cls_hard's x36 one scores 99.1%, leaving the pruned structures room to differ
             cls_fine=dict(config=osp.join(ROOT, 'configs', 'tiny', 'resnet_tiny_shapes_cls_fine.py'),
                           shape=(3, 64, 64), base_iters=240))
# the baseline's schedule (x the config's) per task, unless --base-x: label_free.py's for cls / det (its cached
# baseline is shared), for cls_hard x9 and cls_fine x16 (its schedule is 600 iterations)
BASE_X = {'cls': 3, 'det': 2, 'cls_hard': 9, 'cls_fine': 16}

METHODS = ['balanced', 'balanced_estimated', 'balanced_per_cost', 'balanced_label_free', 'fisher_k1', 'fisher_adaptive',
           'l1', 'tp_magnitude', 'tp_taylor', 'balanced_widths', 'unpruned']
# 'unpruned': the baseline itself through the same fine-tune, a reference (not pruned, not in the goals): a
# fine-tune that lowers it disturbs a trained model more than it recovers a pruned one
# settings that only the balanced methods read
BALANCED_ONLY = ('calibration_batches', 'grid', 'max_share', 'norm_stats', 'recalibrate_norms', 'importance')
# ... that only balanced_widths reads
WIDTHS_ONLY = ('widths_from',)
# ... that only balanced_label_free reads
LABEL_FREE_ONLY = ('lf_temperature', 'lf_anchors')
# settings that change the pruning time only, never a result: mergeable (the replay gives the same curves bit for
# bit, tests/core/test_replay.py); a merged file's prune_wall_s then mixes them (each run records its own replay)
SPEED_ONLY = ('replay_mb',)
# ... that only balanced_estimated reads, with the value files written before it existed stand for
ESTIMATED_ONLY = {'repair_rounds': 0}


def run_balanced(config, base, work, target, shape, seed, mode, batches, grid=None, max_share=None,
                 norm_stats=None, recalibrate_norms=None, allocation=None, label_free=False,
                 lf_temperature=1.0, lf_anchors=None, calibration_root=None, importance=None, replay_mb=None,
                 repair_rounds=None, widths=None):
    """BalancedPruningHook through a Runner on the baseline: (result dict, the hook). ``label_free``: the
    model is a LabelFreeDistiller around the config's (``lf_anchors``: None = output KL only, 'auto' = seed
    002's anchors too; the class KL at ``lf_temperature``), its student pruned. ``calibration_root``: the
    calibration batches come from this dataset root (same layout as the config's) instead of the training set.
    ``importance``: the hook's ranking criterion type (``'L1Norm'``, ``'BNScale'``; None = its Group Fisher).
    ``widths``: {unit name: channels kept}: the search is replaced by these widths, each unit masking its
    lowest-ranked ``channels - width`` atoms (``balanced_widths``)."""
    from mmfisher.hooks import BalancedPruningHook
    cfg = tiny_runner_cfg(config, work, 1, seed=seed)
    cfg.load_from = base
    if calibration_root:  # the pruning run never trains: its train_dataloader is the calibration data
        cfg.train_dataloader.dataset.data_root = calibration_root
    if label_free:
        cfg.model = dict(type='mmfisher.LabelFreeDistiller', architecture=cfg.model, anchors=lf_anchors,
                         temperature=lf_temperature, input_shape=shape, seed=seed)
    runner = build_runner(cfg)
    kw = dict(grid=tuple(grid)) if grid else {}
    if max_share is not None:
        kw['max_share'] = max_share
    if norm_stats is not None:
        kw['norm_stats'] = norm_stats
    if recalibrate_norms is not None:
        kw['recalibrate_norms'] = recalibrate_norms
    if allocation is not None:
        kw['allocation'] = allocation
    if importance is not None:
        kw['importance'] = dict(type=importance)
    if replay_mb is not None:
        kw['replay_mb'] = replay_mb
    if repair_rounds is not None:
        kw['repair_rounds'] = repair_rounds
    hook = BalancedPruningHook(target=target, mode=mode, calibration_batches=batches, input_shape=shape, **kw)
    if widths is not None:
        hook.method._search = types.MethodType(_fixed_widths(widths), hook.method)
    runner.register_hook(hook, priority='NORMAL')
    t0 = time.perf_counter()
    runner.train()
    wall = time.perf_counter() - t0
    res = hook.result
    return dict(pruning_iters=int(runner.iter), pruning_wall_s=wall, method_wall_s=hook.wall.get('prune'),
                ratios=res.ratios, atoms_masked=len(res.pruned), tau=res.tau, search_steps=res.search_steps,
                forwards=res.forwards, points_measured=res.points, grid_points=res.grid_points,
                base_loss=res.base_loss, combined_loss=res.combined_loss,
                sum_unit_variations=res.sum_variations, units=len(res.curves), method_wall=dict(res.wall),
                hook_wall=dict(hook.wall),
                replay=res.replay,
                calibration_batches=res.batches, channels=hook.outputs['channels'],
                weights=hook.outputs['weights'])


def _fixed_widths(widths):
    """A ``BalancedPruning._search`` that returns the atoms leaving each unit ``widths[unit name]`` channels
    (its lowest-ranked first), tau 0."""
    def search(self, state, curves, res):
        atoms = []
        for c in curves:
            if c.name not in widths:
                raise SystemExit(f'--widths-from: the structure has no unit {c.name!r}: it is not of this model')
            n = c.size - widths[c.name]
            if not 0 <= n <= c.k_max:
                raise SystemExit(f'--widths-from: unit {c.name!r} keeps {widths[c.name]} of {c.size} channels; this '
                                 f'run can mask 0..{c.k_max} of them')
            atoms += c.ranked[:n].tolist()
        return atoms, 0.0
    return search


def read_widths(pattern, seed):
    """{unit name: kept channels} of ``pattern.format(seed=seed)`` (a channels.json)."""
    path = pattern.format(seed=seed)
    if not osp.isfile(path):
        raise SystemExit(f'--widths-from: {path} not found (the pattern takes {{seed}}, e.g. '
                         'work_dirs/bench/balanced_cls_fine_fk1/fisher_k1_s{seed}/channels.json)')
    with open(path) as f:
        return {u['name']: len(u['kept']) for u in json.load(f)['units']}


def prune(method, task, base, work, args, seed):
    t = TASKS[task]
    if method == 'unpruned':
        return dict(pruning_iters=0, pruning_wall_s=0.0, ratios=dict(flops=1.0, acts=1.0, params=1.0),
                    atoms_masked=0, channels=None, weights=base)
    if method == 'balanced_widths':
        return run_balanced(t['config'], base, work, args.target, t['shape'], seed, 'estimated',
                            args.calibration_batches, repair_rounds=0, calibration_root=args.calibration_root,
                            importance=args.importance, widths=read_widths(args.widths_from, seed))
    if method.startswith('balanced'):
        return run_balanced(t['config'], base, work, args.target, t['shape'], seed,
                            'estimated' if method == 'balanced_estimated' else 'measured',
                            args.calibration_batches, args.grid, args.max_share, args.norm_stats,
                            args.recalibrate_norms,
                            'variation_per_cost' if method == 'balanced_per_cost' else 'variation',
                            label_free=method == 'balanced_label_free',
                            lf_temperature=args.lf_temperature, lf_anchors=args.lf_anchors,
                            calibration_root=args.calibration_root, importance=args.importance,
                            replay_mb=args.replay_mb, repair_rounds=args.repair_rounds)
    if method.startswith('fisher'):
        hook = (pruning_hook(k=1, interval=args.fisher_interval, target=args.target, input_shape=t['shape'])
                if method == 'fisher_k1' else
                pruning_hook(frac=args.adaptive_share, interval=args.fisher_interval, target=args.target,
                             input_shape=t['shape']))
        r = run_hook_pruning(t['config'], base, work, hook, seed)
        return dict(pruning_iters=r['iters'], pruning_wall_s=r['wall_s'], ratios=r['ratios'], steps=r['steps'],
                    atoms_masked=r['atoms_masked'], channels=r['channels'], weights=r['weights'], done=r['done'])
    return prune_core(method, t['config'], base, work, args.target, t['shape'], seed, args.taylor_batches,
                      data_root=args.calibration_root)


def summarise(runs, target):
    out = {}
    for method, rs in runs.items():
        vals = [r['value'] for r in rs]
        out[method] = dict(
            n=len(vals), metric_mean=statistics.fmean(vals), metric_std=statistics.stdev(vals) if len(vals) > 1
            else 0.0, values=vals, before_finetune_mean=statistics.fmean(r['value_before_finetune'] for r in rs),
            prune_wall_s=statistics.fmean(r['pruning_wall_s'] for r in rs),
            flops_ratio=statistics.fmean(r['ratios']['flops'] for r in rs),
            flops_ratio_max_error=max(abs(r['ratios']['flops'] - target) for r in rs),
            pruning_iters_mean=statistics.fmean(r['pruning_iters'] for r in rs))
        for key in ('tau', 'search_steps', 'forwards', 'points_measured', 'grid_points'):
            if all(key in r for r in rs):
                out[method][key + ('_mean' if key != 'tau' else 's')] = (
                    [r[key] for r in rs] if key == 'tau' else statistics.fmean(r[key] for r in rs))
    return out


def goals(summary, target):
    """The issue's goals, each with the figures it compares, for each mode (``balanced`` = measured; keys of
    ``balanced_estimated`` / ``balanced_per_cost`` prefixed with it)."""
    g = {}
    fk1 = summary.get('fisher_k1')
    for m in ('balanced', 'balanced_estimated', 'balanced_per_cost', 'balanced_label_free'):
        bal = summary.get(m)
        if not bal:
            continue
        pre = '' if m == 'balanced' else m + '_'
        if fk1:
            speed = fk1['prune_wall_s'] / bal['prune_wall_s']
            noise = max(fk1['metric_std'], bal['metric_std'])
            g[pre + 'wall_20x_less_than_fisher_k1'] = dict(ok=speed >= 20, ratio=speed)
            g[pre + 'metric_within_fisher_k1_noise'] = dict(
                ok=abs(bal['metric_mean'] - fk1['metric_mean']) <= 2 * noise,
                diff=bal['metric_mean'] - fk1['metric_mean'], noise_2std=2 * noise)
        for other in ('l1', 'tp_magnitude', 'tp_taylor'):
            if other in summary:
                g[f'{pre}better_than_{other}'] = dict(ok=bal['metric_mean'] > summary[other]['metric_mean'],
                                                      diff=bal['metric_mean'] - summary[other]['metric_mean'])
        g[f'{m}_tau_search_within_1pct'] = dict(ok=bal['flops_ratio_max_error'] <= 0.01,
                                                max_error=bal['flops_ratio_max_error'])
    return g


def markdown(tasks) -> str:
    """The result table of every task (benchmarks/README.md's)."""
    lines = []
    for task, entry in tasks.items():
        base = entry.get('baseline') or {}
        lines += [f"**{task}** (baseline {base.get('metric')} {base.get('value', float('nan')):.4g}, "
                  f"{base.get('schedule', '')})", '',
                  '| method | after fine-tune (mean ± std) | seeds | right after pruning | pruning wall s | flops | '
                  'points measured / grid |', '|---|---|---|---|---|---|---|']
        for m, r in entry.get('methods', {}).items():
            pts = (f"{r['points_measured_mean']:.0f} / {r['grid_points_mean']:.0f}"
                   if r.get('grid_points_mean') else '')
            lines.append(f"| {m} | {r['metric_mean']:.4g} ± {r['metric_std']:.2g} | {r['n']} | "
                         f"{r['before_finetune_mean']:.4g} | {r['prune_wall_s']:.1f} | {r['flops_ratio']:.4f} | "
                         f"{pts} |")
        ok = [k for k, v in entry.get('goals', {}).items() if v['ok']]
        bad = [k for k, v in entry.get('goals', {}).items() if not v['ok']]
        lines += ['', f"goals met: {', '.join(ok) or 'none'}; not met: {', '.join(bad) or 'none'}", '']
    return '\n'.join(lines)


def time_r50(images, batch, grid_points_timed, threads, device='cpu', measured=False, hw=(800, 1333), grid=None):
    """Calibration cost of RetinaNet R50-FPN at ``hw`` (random weights: timing only), on ``device``.

    ``measured``: also run the measured mode end to end on a fresh model (every unit's curve measured on the
    calibration batches): on a GPU, where it is affordable, instead of only extrapolating it from a few points."""
    import numpy as np
    import torch
    from mmengine.structures import InstanceData
    from mmfisher.core import PruningState, analyze_fast
    from mmfisher.core.balanced import DEFAULT_GRID, BalancedPruning
    from mmfisher.models.tracing import det_data_samples, make_trace_forward
    from mmfisher.zoo import build_model, load_config
    torch.set_num_threads(threads)
    device = torch.device(device)
    cuda = device.type == 'cuda'
    if cuda:
        torch.backends.cudnn.benchmark = True

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    cfg = load_config('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
    cfg.model.backbone.frozen_stages = -1
    shape = (3, *hw)

    def fresh():
        """(model, graph, state, trace s): the same seeded weights every call; traced on the CPU, then moved."""
        torch.manual_seed(0)
        model = build_model(cfg)
        t0 = time.perf_counter()
        graph = analyze_fast(model, lambda m: make_trace_forward(m, shape))
        trace_s = time.perf_counter() - t0
        model.to(device)
        return model, graph, PruningState(model, graph, input_shape=shape), trace_s

    model, graph, state, trace_s = fresh()
    gen = torch.Generator().manual_seed(0)
    batches = []
    for b in range(images // batch):
        x = torch.randn((batch, *shape), generator=gen)
        samples = det_data_samples(shape[1:], batch)
        for s in samples:
            xy = torch.rand((4, 2), generator=gen) * torch.tensor([1000.0 * hw[1] / 1333, 600.0 * hw[0] / 800])
            s.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + 150.0 * hw[0] / 800], 1),
                                          labels=torch.randint(0, 80, (4,), generator=gen))
        batches.append(dict(inputs=x.to(device), data_samples=[s.to(device) for s in samples]))

    def loss_fn(data):
        return model.parse_losses(model(**data, mode='loss'))[0]

    grid = tuple(grid or DEFAULT_GRID)
    method = BalancedPruning(target=0.5, mode='estimated', grid=grid)
    limits = method._limits(state)
    ks = [c.grid_ks for c in limits]
    units, points = len(limits), int(sum(k.size for k in ks))
    # a few measured curve points on the unpruned model first (each: every calibration batch forward, no grad;
    # the masks are undone exactly), then the estimated mode end to end, which prunes the model
    per_point = []
    with torch.no_grad():
        model.eval()
        for data in batches[:1]:  # warm-up (CUDA context, cuDNN's algorithm choice): not timed
            loss_fn(data)
        sync()
        for c, k in list(zip(limits, ks))[:grid_points_timed]:
            alive = np.ones(graph.num_atoms, dtype=bool)
            alive[c.ranked[:int(k[len(k) // 2])]] = False
            t0 = time.perf_counter()
            with state.masks.trial(alive):
                for data in batches:
                    loss_fn(data)
                sync()
            per_point.append(time.perf_counter() - t0)
    point_s = statistics.fmean(per_point)
    # the same with the replay the measured mode uses (replay_mb, the head's batch-only target methods): an
    # unchanged pass records every call (in the method the points record them as they go, at no extra forward),
    # then points on units spread from the stem to the head, each computed from its unit on
    from mmfisher.core.replay import ActivationReplay
    from mmfisher.models.invariant import invariant_methods
    replay = ActivationReplay(model, 2 ** 30 * 8, invariant_methods(model))
    spread = sorted({int(round(i * (units - 1) / max(grid_points_timed - 1, 1))) for i in range(grid_points_timed)})
    replayed = []
    with torch.no_grad(), replay.installed():
        t0 = time.perf_counter()
        for i, data in enumerate(batches):
            with replay.replay(i, ()):
                loss_fn(data)
        sync()
        record_s = time.perf_counter() - t0
        for u in spread:
            c, k = limits[u], ks[u]
            alive = np.ones(graph.num_atoms, dtype=bool)
            alive[c.ranked[:int(k[len(k) // 2])]] = False
            t0 = time.perf_counter()
            with state.masks.trial(alive) as masks:
                for i, data in enumerate(batches):
                    with replay.replay(i, masks.changed_modules, masks.changed_tensors):
                        loss_fn(data)
                sync()
            replayed.append(dict(unit=c.name, position=u, point_s=time.perf_counter() - t0))
    replay_stats = replay.stats()
    del replay
    replay_point_s = statistics.fmean(r['point_s'] for r in replayed)
    t0 = time.perf_counter()
    res = method.run(state, model, batches, loss_fn, log=lambda m: print('   ', m, flush=True))
    sync()
    est_s = time.perf_counter() - t0
    out = dict(
        model='mmdet::retinanet/retinanet_r50_fpn_1x_coco.py (random weights, frozen_stages=-1)',
        device=str(device), gpu=torch.cuda.get_device_name(device) if cuda else None, torch=torch.__version__,
        input_shape=list(shape), images=images, batch=batch, threads=threads, trace_s=trace_s,
        units=units, atoms=int(graph.num_atoms), grid=list(grid), grid_points_per_unit_mean=points / units,
        curve_points=points, estimated_mode_s=est_s, estimated_wall=res.wall, estimated_forwards=res.forwards,
        estimated_ratios=dict(res.ratios),
        estimated_repair=None if res.repair is None else dict(
            {k: v for k, v in res.repair.items() if k != 'points'}, points=len(res.repair['points'])),
        measured_point_s=point_s, measured_points_timed=len(per_point),
        measured_mode_s_extrapolated=res.wall['ranking'] + points * point_s + res.wall['combined'],
        replay=dict(record_s=record_s, points=replayed, point_s_mean=replay_point_s,
                    stored_mb=replay_stats['stored_mb'], invariant_methods=replay_stats['invariant_methods'],
                    measured_mode_s_extrapolated=res.wall['ranking'] + record_s + points * replay_point_s
                    + res.wall['combined'],
                    note='points on units spread evenly from the first to the last (their mean stands for every '
                         "unit's); each forward runs from its unit's first changed layer on"),
        scaling=('measured: trace + Fisher pass (batches x (forward + backward)) + units x grid points x batches '
                 f'forwards ({units} x {points / units:.1f} x {len(batches)} = {points * len(batches)} forwards of '
                 f'{batch} image(s), {point_s / len(batches):.3g} s each here) + one combined pass; estimated: '
                 'trace + Fisher pass + the check of its structure (one pass; when it contradicts the estimates, '
                 'at most one point per unit and repair round) + one combined pass, whatever the grid'))
    if measured:
        del model, state, res
        if cuda:
            torch.cuda.empty_cache()
        model, graph, state, _ = fresh()
        method = BalancedPruning(target=0.5, mode='measured', grid=grid)
        t0 = time.perf_counter()
        res = method.run(state, model, batches, loss_fn, log=lambda m: print('   ', m, flush=True))
        sync()
        wall, j = time.perf_counter() - t0, res.to_json()
        out.update(measured_mode_s=wall, measured_wall=j['wall_s'], measured_forwards=j['forwards'],
                   measured_ratios=j['ratios'], measured_tau=j['tau'], measured_points=j['points_measured'],
                   measured_grid_points=j['grid_points'], measured_search_steps=j['search_steps'])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--tasks', nargs='*', choices=list(TASKS), default=['cls', 'det'],
                   help='none with --merge-from: only merge the given result files into --out')
    p.add_argument('--methods', nargs='+', choices=METHODS, default=None)
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--k1-seeds', nargs='+', type=int, default=None,
                   help='seeds of fisher_k1 only (default: --seeds): its interval-10 runs are the long ones')
    p.add_argument('--target', type=float, default=0.5)
    p.add_argument('--ft-iters', type=int, default=480)
    p.add_argument('--no-ft-decay', dest='ft_decay', action='store_false',
                   help='fine-tune at a constant lr (default: 10x drop at 75%%, as benchmarks/label_free.py)')
    p.add_argument('--ft-lr-scale', type=float, default=1.0,
                   help="the fine-tune's learning rate: the config's times this (default 1)")
    p.add_argument('--base-x', nargs='+', default=[], metavar='TASK=N',
                   help="train (or reuse) the baseline of TASK with the config's schedule x N, cached at "
                        'work_dirs/bench/balanced_base_xN/TASK/base.pth, instead of label_free.py\'s (cls x3, '
                        'det x2)')
    p.add_argument('--base-cycles', nargs='+', default=[], metavar='TASK=C',
                   help="with --base-x: run TASK's baseline schedule C times, each cycle a warm restart from the "
                        'previous one\'s weights (cached at work_dirs/bench/balanced_base_xNcC/TASK/base.pth): for '
                        'a model that a longer single schedule no longer improves but a restart does')
    p.add_argument('--calibration-batches', type=int, default=8)
    p.add_argument('--grid', nargs='+', type=float, default=None, help='default: the hook default (0.1 ... 0.9)')
    p.add_argument('--max-share', type=float, default=None, help="balanced: the hook's max_share (default: its own)")
    p.add_argument('--calibration-root', default=None, metavar='DIR',
                   help="balanced (and Torch-Pruning Taylor's batches): take the calibration batches from this "
                        'dataset root (e.g. a held-out draw: tools/make_data.py --seed 1) instead of the training set')
    p.add_argument('--lf-temperature', type=float, default=1.0,
                   help='balanced_label_free: the class KL temperature T (T^2 KL at T; default 1)')
    p.add_argument('--lf-anchors', choices=['auto', 'all'], default=None,
                   help="balanced_label_free: the distiller's anchors (default: none, output terms only)")
    p.add_argument('--importance', choices=['L1Norm', 'GroupMagnitude', 'BNScale'], default=None,
                   help="balanced: the hook's ranking criterion (default: its Group Fisher on the calibration batches)")
    p.add_argument('--norm-stats', choices=['running', 'batch'], default=None,
                   help="balanced: the hook's norm_stats (default: its own)")
    p.add_argument('--recalibrate-norms', type=lambda v: {'true': True, 'false': False}[v.lower()], default=None,
                   metavar='{true,false}', help="balanced: the hook's recalibrate_norms (default: its own)")
    p.add_argument('--replay-mb', type=float, default=None,
                   help="balanced: the hook's replay_mb (MiB for replaying the unchanged containers in the curve "
                        'points; 0 turns it off; default: its own)')
    p.add_argument('--repair-rounds', type=int, default=None,
                   help="balanced_estimated: the hook's repair_rounds (0: the estimate alone, only a warning; "
                        'default: its own)')
    p.add_argument('--widths-from', default=None, metavar='PATTERN',
                   help="balanced_widths: the channels.json whose per-unit widths it applies, with {seed} for the "
                        'seed, e.g. work_dirs/bench/balanced_cls_fine_fk1/fisher_k1_s{seed}/channels.json')
    p.add_argument('--fisher-interval', type=int, default=10,
                   help="iterations between Group Fisher steps (default 10: the paper's and the hook's default)")
    p.add_argument('--adaptive-share', type=float, default=0.02)
    p.add_argument('--taylor-batches', type=int, default=4)
    p.add_argument('--no-r50', dest='r50', action='store_false')
    p.add_argument('--r50-images', type=int, default=8)
    p.add_argument('--r50-from', default=None, metavar='JSON',
                   help="carry the R50 timing over from an earlier result file instead of timing it again")
    p.add_argument('--r50-points', type=int, default=2, help='measured curve points timed on R50')
    p.add_argument('--r50-device', default='cpu', help="where the R50 calibration is timed: 'cpu' or 'cuda'")
    p.add_argument('--r50-shape', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'),
                   help='the R50 input size (default 800 1333; smaller only to smoke-test)')
    p.add_argument('--r50-measured', action='store_true',
                   help='also run the measured mode end to end on R50 (affordable on a GPU), not only extrapolate it')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--quick', action='store_true', help='tiny budgets, 1 seed (smoke test)')
    p.add_argument('--baseline-from', default=None, metavar='DIR',
                   help='take DIR/<task>/base.pth (+ .json) as the baseline instead of training one: e.g. '
                        "work_dirs/bench/label_free, benchmarks/label_free.py's converged (3x / 2x schedule) ones")
    p.add_argument('--quality-baseline', action='store_true',
                   help="benchmarks/quality.py's baseline (the config's schedule at quality's iterations: not "
                        "converged) instead of the default, label_free.py's converged one (trained and cached "
                        'at work_dirs/bench/label_free/<task>/base.pth when missing)')
    p.add_argument('--merge-from', nargs='+', default=[], metavar='JSON',
                   help='result files of this setup (other tasks run in parallel): their tasks are merged in')
    p.add_argument('--equal-training', default=None, metavar='JSON',
                   help="fine-tune every run --ft-iters + (that result file's fisher_k1 pruning iterations of the "
                        "same task and seed - its own): equal total training, as benchmarks/label_free.py")
    p.add_argument('--work-suffix', default='', help='work_dirs/bench/balanced_<task>_<suffix>: for invocations '
                   'run in parallel on the same task')
    p.add_argument('--out')
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    methods = args.methods or [m for m in METHODS if m != 'balanced_widths']  # a reference needing --widths-from
    base_x, base_cycles = {}, {}
    for flag, items, into, example in (('--base-x', args.base_x, base_x, 'det=6'),
                                       ('--base-cycles', args.base_cycles, base_cycles, 'det=2')):
        for item in items:
            task_, _, n = item.partition('=')
            if task_ not in TASKS or not n.isdigit() or int(n) < 1:
                raise SystemExit(f'{flag} {item!r}: expected TASK=N with TASK in {sorted(TASKS)} and N >= 1, e.g. '
                                 f'{example}')
            into[task_] = int(n)
    if stray := sorted(set(base_cycles) - set(base_x)):
        raise SystemExit(f'--base-cycles {stray}: give the schedule of these tasks with --base-x too, e.g. '
                         f'--base-x {stray[0]}=6 --base-cycles {stray[0]}=2')
    if 'balanced_widths' in methods and not args.widths_from:
        raise SystemExit('--methods balanced_widths: give the structure it applies with --widths-from PATTERN '
                         '({seed} in it), e.g. work_dirs/bench/balanced_cls_fine_fk1/fisher_k1_s{seed}/channels.json')
    if args.quick:
        args.seeds, args.ft_iters, args.target, args.calibration_batches = [0], 2, 0.8, 2
        args.grid = args.grid or [0.5]
        args.fisher_interval, args.adaptive_share, args.taylor_batches = 1, 0.2, 1
        args.r50_images, args.r50_points = 2, 1
    import inspect
    from mmfisher.hooks import BalancedPruningHook
    hook_default = inspect.signature(BalancedPruningHook).parameters
    for key in ('norm_stats', 'recalibrate_norms', 'replay_mb', 'repair_rounds'):  # recorded as the values used
        if getattr(args, key) is None:
            setattr(args, key, hook_default[key].default)
    res = Result('balanced', args.out, args.quick)
    # (the baseline, --base-x's or not, is recorded and compared per task)
    same = {k: v for k, v in vars(args).items() if k not in ('tasks', 'out', 'merge_from', 'r50', 'r50_from',
                                                                  'r50_device', 'r50_measured', 'r50_shape',
                                                                  'work_suffix', 'base_x', 'base_cycles')}
    res['setup'] = dict(same, methods=methods,
                        flops='mmfisher CostModel (conv/linear multiply-adds) at the data input size',
                        finetune='the same --ft-iters for every method (20-iteration warm-up, then the config lr'
                                 + (f' x {args.ft_lr_scale:g}' if args.ft_lr_scale != 1 else '') + ', '
                                 + ('10x lower after 75% of the iterations)' if args.ft_decay else 'constant)'))
    for task in args.tasks:
        t = TASKS[task]
        work = osp.join(ROOT, 'work_dirs', 'bench', f'balanced_{task}' + ('_quick' if args.quick else '')
                        + (f'_{args.work_suffix}' if args.work_suffix else ''))
        # the baseline benchmarks/quality.py trains (same path, iterations and seed: reused when cached)
        base_work = osp.join(ROOT, 'work_dirs', 'bench', f'quality_{task}' + ('_quick' if args.quick else ''))
        base = osp.join(base_work, 'base.pth')
        if not args.baseline_from and not args.quality_baseline and not args.quick:
            # the converged baseline benchmarks/label_free.py trains and caches (config schedule x3 cls, x2 det),
            # or with --base-x a longer one of its own
            from label_free import TASKS as LF_TASKS, train_converged_baseline
            x, cycles = base_x.get(task, BASE_X[task]), base_cycles.get(task, 1)
            if task in LF_TASKS and x == LF_TASKS[task]['base_x'] and cycles == 1:
                base = osp.join(ROOT, 'work_dirs', 'bench', 'label_free', task, 'base.pth')
            else:
                name = f'balanced_base_x{x}' + (f'c{cycles}' if cycles > 1 else '')
                base = osp.join(ROOT, 'work_dirs', 'bench', name, task, 'base.pth')
            info = dict(train_converged_baseline(t['config'], base, 0, x, cycles), path=osp.relpath(base, ROOT))
        elif args.baseline_from:  # a converged baseline trained elsewhere (benchmarks/label_free.py's cached ones)
            base = osp.join(args.baseline_from, task, 'base.pth')
            if not osp.isfile(base) or not osp.isfile(base + '.json'):
                raise SystemExit(f'--baseline-from: {base} (and its .json) not found; run benchmarks/label_free.py '
                                 f'--tasks {task} first, or leave --baseline-from out')
            with open(base + '.json') as f:
                info = dict(json.load(f), path=osp.relpath(base, ROOT), reused=True)
        else:
            info = train_baseline(t['config'], base, 4 if args.quick else t['base_iters'], 0)
        entry = res.data.setdefault('tasks', {}).setdefault(task, {})
        entry['baseline'] = info
        print(task, 'baseline', info, flush=True)
        runs = {}
        k1_iters = None
        if args.equal_training:
            with open(args.equal_training) as f:
                k1_runs = json.load(f).get('tasks', {}).get(task, {}).get('runs', {}).get('fisher_k1', [])
            k1_iters = {r['seed']: r['pruning_iters'] for r in k1_runs}
            if missing := [s_ for s_ in args.seeds if s_ not in k1_iters]:
                raise SystemExit(f'--equal-training: {args.equal_training} has no fisher_k1 run of task {task!r} '
                                 f'for seeds {missing}')
        for method in methods:
            for seed in (args.k1_seeds or args.seeds) if method == 'fisher_k1' else args.seeds:
                mwork = osp.join(work, f'{method}_s{seed}')
                t0 = time.perf_counter()
                r = prune(method, task, base, mwork, args, seed)
                before = finetune_eval(t['config'], r['channels'], r['weights'], osp.join(mwork, 'no_ft'), 0, seed)
                r['value_before_finetune'] = before['value']
                ft_iters = args.ft_iters
                if k1_iters is not None:  # equal total training: pruning + fine-tune iterations = k=1's
                    ft_iters = max(args.ft_iters + k1_iters[seed] - r['pruning_iters'], 0)
                r.update(finetune_eval(t['config'], r['channels'], r['weights'], osp.join(mwork, 'ft'),
                                       ft_iters, seed, decay=args.ft_decay, lr_scale=args.ft_lr_scale))
                r['seed'] = seed
                r['total_wall_s'] = time.perf_counter() - t0
                runs.setdefault(method, []).append({k: v for k, v in r.items() if k not in ('channels', 'weights')})
                print(task, method, seed, {k: v for k, v in runs[method][-1].items() if k != 'ratios'},
                      r['ratios'], flush=True)
                entry['runs'] = runs
                res.save(final=False)
        entry['methods'] = summarise(runs, args.target)
        entry['goals'] = goals(entry['methods'], args.target)
        for m, s in entry['methods'].items():
            print(f'{task} {m:20s} {s["metric_mean"]:.4f} +- {s["metric_std"]:.4f}  before ft '
                  f'{s["before_finetune_mean"]:.4f}  flops {s["flops_ratio"]:.4f}  prune {s["prune_wall_s"]:.1f} s',
                  flush=True)
        print(task, 'goals', entry['goals'], flush=True)
        res.save(final=False)
    # runs of other invocations with the same setup (other tasks, or other methods / seeds of a task, run in
    # parallel) are united by (task, method, seed), the first one kept; summaries and goals are recomputed
    free = ('methods', 'seeds', 'k1_seeds')
    mine_setup = json.loads(json.dumps(res['setup']))
    for other_path in args.merge_from:
        with open(other_path) as f:
            other = json.load(f)
        theirs = other.get('setup', {})
        # a method's own settings matter only if a run of that method in that file is kept (not one this
        # invocation, or a file merged before, has for the same task and seed)
        kept = {m for task, e in other.get('tasks', {}).items() for m, rs in e.get('runs', {}).items()
                if any(r['seed'] not in {x['seed'] for x in res.data.get('tasks', {}).get(task, {})
                                         .get('runs', {}).get(m, [])} for r in rs)}
        ignore = free + SPEED_ONLY + (() if any(m.startswith('balanced') for m in kept) else BALANCED_ONLY) + \
            (() if 'balanced_label_free' in kept else LABEL_FREE_ONLY) + \
            (() if 'balanced_widths' in kept else WIDTHS_ONLY) + \
            (() if 'balanced_estimated' in kept else tuple(ESTIMATED_ONLY))
        differ = sorted(k for k in set(mine_setup) | set(theirs)
                        if k not in ignore and mine_setup.get(k, ESTIMATED_ONLY.get(k))
                        != theirs.get(k, ESTIMATED_ONLY.get(k)))
        if differ:
            raise SystemExit(f'--merge-from: {other_path} was written with another setup ({", ".join(differ)}); '
                             'rerun it with this one')
        for task, entry in other.get('tasks', {}).items():
            have = res.data.setdefault('tasks', {}).setdefault(task, {'baseline': entry.get('baseline'), 'runs': {}})
            if have.get('baseline', {}).get('path') != entry.get('baseline', {}).get('path') or \
                    have.get('baseline', {}).get('value') != entry.get('baseline', {}).get('value'):
                raise SystemExit(f'--merge-from: task {task!r} of {other_path} has another baseline')
            have.setdefault('merged_from', []).append(osp.relpath(osp.abspath(other_path), ROOT))
            unite_runs(have.setdefault('runs', {}), entry.get('runs', {}))
            have['runs'] = {m: sorted(have['runs'][m], key=lambda r: r['seed']) for m in METHODS if m in have['runs']}
            have['methods'] = summarise(have['runs'], args.target)
            have['goals'] = goals(have['methods'], args.target)
    if args.r50_from:  # the R50 timing does not depend on the tasks' runs: carried from an earlier result file
        with open(args.r50_from) as f:
            old = json.load(f)
        if 'retinanet_r50_calibration' not in old:
            raise SystemExit(f'--r50-from: {args.r50_from} has no retinanet_r50_calibration entry')
        res['retinanet_r50_calibration'] = dict(old['retinanet_r50_calibration'], carried_from=dict(
            file=osp.relpath(osp.abspath(args.r50_from), ROOT), command=old.get('command'),
            finished=old.get('finished')))
    elif args.r50:
        print('RetinaNet R50-FPN calibration timing at {}x{} on {}'.format(*args.r50_shape, args.r50_device),
              flush=True)
        res['retinanet_r50_calibration'] = time_r50(args.r50_images, 1, args.r50_points, max(args.threads, 1),
                                                    args.r50_device, args.r50_measured, tuple(args.r50_shape),
                                                    args.grid)
        print(res['retinanet_r50_calibration'], flush=True)
    print(markdown(res.data.get('tasks', {})), flush=True)
    print('wrote', res.save())


if __name__ == '__main__':
    main()
