"""Pruning cost vs channels per step: iterations and wall time to reach 50% FLOPs, and the metric afterwards.

The tiny RetinaNet (configs/tiny/retinanet_tiny_shapes.py) on the bundled shapes set:

1. a baseline trained from scratch for ``--base-iters`` iterations (cached under ``--work-dir``);
2. from it, FisherPruningHook pruning (delta 'acts', FLOPs target 0.5 at input_shape (3, 128, 128), the same
   ``--interval`` for every variant) with ``channels_per_step`` k = 1, 8, 32 and ``adaptive`` (k = 1% of the
   remaining eligible atoms at each step, at least 1: implemented here, in the benchmark only, by a
   FisherPruningHook subclass);
3. each slimmed result fine-tuned for the same ``--ft-iters`` iterations (same seed, same schedule) and scored
   by bbox mAP on the val set (mmdet CocoMetric through the Runner's ValLoop);
4. with ``--long-ft-iters N``, each result (and the baseline) is also fine-tuned for N iterations with the lr
   dropping 10x at 75%. The short fine-tune favours k=1, which trains for all its pruning iterations (920 at
   k=1 vs 28 at k=32 here) on an under-trained baseline;
5. with ``--equal-total``, each k != 1 is also fine-tuned for N + (k=1's pruning iterations - its own), so that
   every k has trained equally long in all: then the metric compares what each k pruned, not how long it
   trained. A user who prunes with a large k can spend the saved iterations on the fine-tune.

Cost = the pruning run's iterations (data, forward, backward and the hook) and its wall time. k=1 runs to the
target unless ``--k1-max-iters`` caps it; a capped run is reported as ``extrapolated`` (iterations per masked atom
x atoms needed, the atoms needed taken from the k=8 run) and gets no metric.

    nice .venv/bin/python benchmarks/cost.py                 # ~20 min on 2 CPU cores
    nice .venv/bin/python benchmarks/cost.py --quick --out /tmp/cost.json
    # the same pruned results, each also fine-tuned to convergence (see --long-ft-iters):
    .venv/bin/python benchmarks/cost.py --merge-from benchmarks/results/cost.json --skip-baseline-finetune \
        --long-ft-iters 960
    # then more seeds for k=1 and k=32, and every k != 1 at equal total training:
    .venv/bin/python benchmarks/cost.py --merge-from benchmarks/results/cost.json --skip-baseline-finetune \
        --long-ft-iters 960 --long-ft-ks 1 32 --long-ft-seeds 1 2 --equal-total --equal-total-ks 8 32 adaptive
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import (DET_CFG, ROOT, Result, pruning_hook, finetune_eval, run_hook_pruning,  # noqa: E402
                     train_baseline)


def make_hook(k, interval, target, shape, delta='acts'):
    """A counting FisherPruningHook (``_common.pruning_hook``); ``adaptive``: k = 1% of the eligible alive atoms,
    recomputed at every step."""
    kw = dict(interval=interval, delta=delta, target=target, target_metric='flops', input_shape=shape)
    if k == 'adaptive':
        return pruning_hook(k=1, frac=0.01, **kw)
    return pruning_hook(k=int(k), **kw)


def _summary(iters, per_seed, total):
    import statistics
    vals = [per_seed[sd] for sd in sorted(per_seed, key=int)]
    return dict(iters=iters, per_seed=per_seed, values=vals, mean=statistics.fmean(vals),
                std=statistics.stdev(vals) if len(vals) > 1 else 0.0, total_train_iters=total)


def run_long_finetunes(args, res, runs, base, merged):
    """``long_finetune``: each of ``--long-ft-ks`` fine-tuned ``--long-ft-iters`` with a decaying lr, per seed in
    ``--long-ft-seeds``. ``equal_total`` (``--equal-total``): each k != 1 fine-tuned so long that its pruning plus
    fine-tune iterations equal k=1's (``--long-ft-iters`` + k=1's pruning iterations - its own). Values of earlier
    invocations (``--merge-from``) are kept; a (k, seed) measured again replaces its old value."""
    ks = args.long_ft_ks or ['baseline'] + [k for k, r in runs.items() if r.get('done')]
    sources = {'baseline': (None, base)}
    sources.update({k: (r['channels'], r['weights']) for k, r in runs.items() if r.get('done')})
    pruning_iters = {k: (runs[k]['iters'] if k in runs else 0) for k in sources}
    plans = [('long_finetune', k, args.long_ft_iters) for k in ks]
    if args.equal_total:
        if '1' not in runs:
            raise SystemExit('--equal-total needs the k=1 run (merge it with --merge-from)')
        eq_ks = args.equal_total_ks or [k for k in sources if k not in ('1', 'baseline')]
        plans += [('equal_total', k, args.long_ft_iters + runs['1']['iters'] - runs[k]['iters'])
                  for k in eq_ks if k in runs and k != '1']
    for key in ('long_finetune', 'equal_total'):
        res[key] = {}
        for k, old in merged.get(key, {}).items():  # older files: 'seeds' + 'values' lists
            per_seed = old.get('per_seed') or {str(sd): v for sd, v in zip(old.get('seeds', []), old['values'])}
            res[key][k] = _summary(old['iters'], per_seed, old['total_train_iters'])
    for key, k, iters in plans:
        seeds = args.long_ft_seeds if key == 'long_finetune' else args.equal_total_seeds
        old = res[key].get(k, {})
        per_seed = dict(old.get('per_seed', {})) if old.get('iters') == iters else {}
        for seed in seeds:
            channels, weights = sources[k]
            f = finetune_eval(DET_CFG, channels, weights, osp.join(args.work_dir, f'{key}_{k}_s{seed}'), iters,
                              seed, decay=True)
            per_seed[str(seed)] = f['value']
            print(key, k, seed, f, flush=True)
            res[key][k] = _summary(iters, per_seed, args.base_iters + pruning_iters[k] + iters)
            res.save(final=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--ks', nargs='+', default=None, help='default: 1 8 32 adaptive (--quick: 8 adaptive)')
    p.add_argument('--interval', type=int, default=2)
    p.add_argument('--target', type=float, default=0.5)
    p.add_argument('--base-iters', type=int, default=600)
    p.add_argument('--ft-iters', type=int, default=240)
    p.add_argument('--k1-max-iters', type=int, default=0, help='cap the k=1 run (0: no cap)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'bench', 'cost'))
    p.add_argument('--quick', action='store_true', help='tiny budgets, target 0.9 (smoke test)')
    p.add_argument('--skip-baseline-finetune', action='store_true')
    p.add_argument('--merge-from', nargs='+', default=[],
                   help='cost JSONs of parallel runs (same baseline and settings, other ks) merged into this one')
    p.add_argument('--long-ft-iters', type=int, default=0,
                   help='also fine-tune every result (and the baseline) this long, the lr dropping 10x at 75%%: '
                        'long enough to converge, so the extra training k=1 gets while it prunes no longer '
                        'decides the metric (0: skip)')
    p.add_argument('--long-ft-seeds', type=int, nargs='+', default=[0])
    p.add_argument('--long-ft-ks', nargs='+', help="which results get the long fine-tune: ks and/or 'baseline' "
                   '(default: all)')
    p.add_argument('--equal-total', action='store_true',
                   help='also fine-tune each k != 1 for --long-ft-iters + (k=1 pruning iters - its own): every k '
                        'then trains equally long in all (pruning + fine-tune)')
    p.add_argument('--equal-total-seeds', type=int, nargs='+', default=[0])
    p.add_argument('--equal-total-ks', nargs='+', help='which ks get the equal-total fine-tune (default: all but 1)')
    p.add_argument('--out')
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    if args.quick:
        args.base_iters, args.ft_iters, args.target, args.interval = 4, 2, 0.97, 1
        args.ks = args.ks or ['8', 'adaptive']
        args.work_dir = args.work_dir + '_quick'
        args.long_ft_iters = min(args.long_ft_iters, 2)
    args.ks = args.ks or ['1', '8', '32', 'adaptive']
    res = Result('cost', args.out, args.quick)
    shape = (3, 128, 128)
    res['setup'] = dict(config=osp.relpath(DET_CFG, ROOT), base_iters=args.base_iters, interval=args.interval,
                        target_flops=args.target, delta='acts', input_shape=list(shape), ft_iters=args.ft_iters,
                        seed=args.seed, torch_threads=args.threads, batch_size=8,
                        adaptive='k = ceil(1% of eligible alive atoms) per step (benchmark-only hook subclass)',
                        metric='coco/bbox_mAP on the 96-image val set after the fine-tune')
    base = osp.join(args.work_dir, 'base.pth')
    res['baseline'] = train_baseline(DET_CFG, base, args.base_iters, args.seed)
    print('baseline', res['baseline'], flush=True)
    runs = {}
    merged_long = {'long_finetune': {}, 'equal_total': {}}
    for extra in args.merge_from:  # runs measured by a parallel invocation (same baseline / settings)
        import json
        with open(extra) as f:
            other = json.load(f)
        runs.update(other.get('runs', {}))
        for key in merged_long:
            merged_long[key].update(other.get(key, {}))
        if 'baseline_finetuned' in other:
            res['baseline_finetuned'] = other['baseline_finetuned']
        res.data.setdefault('merged_runs', []).append(dict(file=extra, command=other.get('command'),
                                                           started=other.get('started'),
                                                           updated=other.get('updated', other.get('finished')),
                                                           setup=other.get('setup'), ks=list(other.get('runs', {}))))
    if not args.skip_baseline_finetune and 'baseline_finetuned' not in res.data:
        res['baseline_finetuned'] = finetune_eval(DET_CFG, None, base, osp.join(args.work_dir, 'ft_base'),
                                                  args.ft_iters, args.seed)
        print('baseline + same fine-tune', res['baseline_finetuned'], flush=True)
    res.save(final=False)
    for k in args.ks:
        if k in runs:
            continue
        hook = make_hook(k, args.interval, args.target, shape)
        cap = args.k1_max_iters if (k == '1' and args.k1_max_iters) else 100000
        r = run_hook_pruning(DET_CFG, base, osp.join(args.work_dir, f'k{k}'), hook, args.seed, cap)
        r['k'] = k
        r['steps'] = hook.steps
        r['k_per_step'] = sorted(set(hook.k_used)) if k == 'adaptive' else int(k)
        if k == 'adaptive':
            r['k_schedule_first_last'] = [hook.k_used[:5], hook.k_used[-5:]]
        r['extrapolated'] = False
        if r['done']:
            r.update(finetune_eval(DET_CFG, r['channels'], r['weights'], osp.join(args.work_dir, f'ft_k{k}'),
                                   args.ft_iters, args.seed))
        runs[k] = r
        print(k, {kk: v for kk, v in r.items() if kk not in ('channels', 'weights')}, flush=True)
        res['runs'] = runs
        res.save(final=False)
    res['runs'] = runs
    if args.long_ft_iters:
        run_long_finetunes(args, res, runs, base, merged_long)
    # k=1 capped: extrapolate (clearly labelled)
    if '1' in runs and not runs['1']['done']:
        r1 = runs['1']
        ref = next((runs[k] for k in ('8', '32', 'adaptive') if k in runs and runs[k]['done']), None)
        if ref is not None and r1['atoms_masked']:
            needed = ref['atoms_masked']
            r1['extrapolated'] = True
            r1['extrapolated_iters'] = r1['iters'] / r1['atoms_masked'] * needed
            r1['extrapolated_wall_s'] = r1['wall_s'] / r1['atoms_masked'] * needed
            r1['extrapolation'] = (f'measured {r1["iters"]} iterations for {r1["atoms_masked"]} atoms; x '
                                   f'{needed} atoms needed (from the k={ref["k"]} run)')
    if '1' in runs:
        r1 = runs['1']
        it1 = r1['extrapolated_iters'] if r1['extrapolated'] else r1['iters']
        w1 = r1['extrapolated_wall_s'] if r1['extrapolated'] else r1['wall_s']
        res['cost_reduction_vs_k1'] = {
            k: dict(iters=it1 / r['iters'], wall=w1 / r['wall_s'], k1_extrapolated=r1['extrapolated'],
                    metric_delta_vs_k1=(r.get('value', float('nan')) - r1['value']) if 'value' in r1 else None,
                    long_finetune_metric_delta_vs_k1=(res['long_finetune'][k]['mean']
                                                      - res['long_finetune']['1']['mean'])
                    if k in res.data.get('long_finetune', {}) and '1' in res.data.get('long_finetune', {})
                    else None,
                    equal_total_metric_delta_vs_k1=(res['equal_total'][k]['mean'] - res['long_finetune']['1']['mean'])
                    if k in res.data.get('equal_total', {}) and '1' in res.data.get('long_finetune', {})
                    and res['long_finetune']['1']['iters'] == args.long_ft_iters else None)
            for k, r in runs.items() if k != '1' and r['done']}
    print('wrote', res.save())


if __name__ == '__main__':
    main()
