"""Accuracy at equal remaining FLOPs (or acts): Fisher ('acts', 'flops') vs L1-norm, random and Torch-Pruning.

Task ``cls`` (default): the tiny ResNet (configs/tiny/resnet_tiny_shapes_cls.py) on the bundled 3-class shapes
set, top-1 accuracy on its val split. Task ``det``: the tiny RetinaNet on the bundled detection set, bbox mAP.

Pipeline, identical for every method except the choice of channels:

1. one baseline trained from scratch (``--base-iters``, seed 0, cached), shared by every method and seed;
2. pruning to ``--target`` of the baseline's conv/linear FLOPs (``--budget flops``) or activation elements of the
   conv/linear outputs (``--budget acts``), mmfisher's cost model at the data's input size, every method measured by
   the same count; the FLOPs and acts each result actually has are recorded:

   * ``fisher_acts`` / ``fisher_flops``: FisherPruningHook (``channels_per_step=--fisher-k`` every
     ``--fisher-interval`` iterations; the model trains meanwhile, as in the method; those iterations are
     recorded as ``pruning_iters``);
   * ``l1``: Li et al.'s L1-norm filter pruning: the same share of every unit's atoms, those with the smallest
     L1 norm of their producers' filters (summed over coupled producers) first, the share bisected to meet the
     target (``l1_global``, not run by default: one global L1 ranking; on the detector it cuts the head towers to
     one channel and scores 0 mAP, a strawman);
   * ``random``: atoms removed in a random order;
   * ``tp_taylor`` / ``tp_magnitude``: Torch-Pruning 1.6.1 ``MetaPruner`` with ``TaylorImportance`` (gradients
     of the training loss summed over ``--taylor-batches`` batches) / ``MagnitudeImportance`` (L2), global
     pruning, the class head ignored; its ``pruning_ratio`` bisected so the FLOPs match the target. The channels
     it removes are mapped onto mmfisher's atoms (identical grouping, see trace_time.json) and the result goes
     through the same slimming and fine-tune;

   l1 / random / TP stop at the first atom that reaches the target; every unit keeps at least one atom;
3. the slimmed model (``mmfisher.Pruned`` + weights) evaluated as it is (``value_before_finetune``), then
   fine-tuned and evaluated. Every method trains equally long: Fisher runs train ``pruning_iters`` while they
   prune, so the one-shot methods fine-tune for ``--ft-iters`` + the Fisher runs' ``pruning_iters`` of the same
   seed (``--no-match-iters``: all fine-tune ``--ft-iters``). ``metric_mean`` / ``metric_std`` (sample std)
   over ``--seeds``.

    nice .venv/bin/python benchmarks/quality.py                         # cls, 6 methods x 3 seeds
    nice .venv/bin/python benchmarks/quality.py --task det                   # -> quality_det.json
    nice .venv/bin/python benchmarks/quality.py --budget acts               # -> quality_acts.json
    nice .venv/bin/python benchmarks/quality.py --quick --out /tmp/quality.json
"""
import argparse
import copy
import os
import os.path as osp
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import (CLS_CFG, DET_CFG, ROOT, Result, build_runner, pruning_hook, finetune_eval,  # noqa: E402
                     metric_key, run_hook_pruning, tiny_runner_cfg, train_baseline)

METHODS = ['fisher_acts', 'fisher_flops', 'l1', 'random', 'tp_taylor', 'tp_magnitude']
EXTRA_METHODS = ['l1_global']
TASKS = {'cls': dict(config=CLS_CFG, shape=(3, 64, 64), base_iters=240),
         'det': dict(config=DET_CFG, shape=(3, 128, 128), base_iters=600)}


def load_base_model(config, base, seed, data_root=None):
    """(runner, model) with the baseline weights loaded, in train mode (as the hook sees it); ``data_root``: the
    runner's train_dataloader reads this dataset root instead (calibration data for the one-shot criteria)."""
    import torch
    cfg = tiny_runner_cfg(config, osp.join(osp.dirname(base), 'tmp_runner'), 1, seed=seed)
    if data_root:
        cfg.train_dataloader.dataset.data_root = data_root
    runner = build_runner(cfg)
    state = torch.load(base, map_location='cpu', weights_only=True)['state_dict']
    runner.model.load_state_dict(state)
    runner.model.train()
    return runner, runner.model


def greedy(graph, costs, order, target, budget='flops'):
    """Mask atoms in ``order`` (keeping >= 1 per unit) until ``budget`` (FLOPs or acts) <= target x unpruned
    (selection.choose)."""
    import numpy as np
    from mmfisher.core import selection
    unit_of = selection.unit_index(graph.num_atoms, [u.atoms for u in graph.units])
    alive = np.ones(graph.num_atoms, dtype=bool)
    full = costs.totals(alive)[budget]

    def reached(a, chosen):
        return costs.totals(a)[budget] / full <= target
    chosen = selection.choose(np.asarray(order), alive, unit_of, 1, graph.num_atoms, reached)
    alive[chosen] = False
    return alive


def uniform(graph, costs, score, target, budget='flops'):
    """Li et al.'s layer-wise L1 pruning: the same share ``r`` of every unit's atoms (its lowest ``score`` first,
    at least one kept), ``r`` bisected to the smallest value whose ``budget`` ratio is <= ``target``.
    Returns (alive, r)."""
    import numpy as np
    full = costs.totals(np.ones(graph.num_atoms, dtype=bool))[budget]
    orders = [u.atoms[np.argsort(score[u.atoms], kind='stable')] for u in graph.units]

    def at(r):
        alive = np.ones(graph.num_atoms, dtype=bool)
        for atoms in orders:
            alive[atoms[:min(int(r * atoms.size), atoms.size - 1)]] = False
        return alive, costs.totals(alive)[budget] / full

    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if at(mid)[1] <= target:
            hi = mid
        else:
            lo = mid
    return at(hi)[0], hi


def l1_scores(model, graph):
    """Per-atom L1 norms of the producers' filters: the library criterion ``mmfisher.core.L1Norm``."""
    from mmfisher.core import L1Norm
    crit = L1Norm(layerwise=False)
    crit.attach(model, graph)
    return crit.norms()


def tp_alive(model, graph, costs, data_batches, kind, target, shape, budget='flops'):
    """Torch-Pruning (global) at the bisected pruning_ratio whose removed channels, as mmfisher atoms, reach the
    ``budget`` (FLOPs or acts) target. Returns (alive, pruning_ratio)."""
    import numpy as np
    import torch
    import torch_pruning as tp
    from mmfisher.zoo import fake_batch
    from mmfisher.models.tracing import is_detector

    if kind == 'tp_taylor':
        model.zero_grad()
        for data in data_batches:
            data = model.data_preprocessor(data, True)
            losses = model(**data, mode='loss')
            loss, _ = model.parse_losses(losses)
            loss.backward()
    grads = {n: q.grad.detach().clone() for n, q in model.named_parameters() if q.grad is not None}
    x, samples = fake_batch(model, shape)

    outputs = ['head.fc', 'bbox_head.retina_cls', 'bbox_head.retina_reg']
    full = costs.totals(np.ones(graph.num_atoms, dtype=bool))[budget]

    from mmfisher.models import TensorMode

    def attempt(ratio):
        m = copy.deepcopy(model)
        w = TensorMode(m, samples)
        mods = dict(w.named_modules())
        names = {v: k[2:] for k, v in mods.items()}
        ignored = [mods['m.' + n] for n in outputs if 'm.' + n in mods]
        imp = tp.importance.TaylorImportance() if kind == 'tp_taylor' else tp.importance.MagnitudeImportance(p=2)
        pruner = tp.pruner.MetaPruner(w, x, importance=imp, global_pruning=True, pruning_ratio=ratio,
                                      max_pruning_ratio=0.95, ignored_layers=ignored)
        for n, q in m.named_parameters():  # building the graph clears .grad: restore the Taylor gradients
            q.grad = grads[n].clone() if n in grads else None
        alive = np.ones(graph.num_atoms, dtype=bool)
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                mod = dep.target.module
                if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)) and 'out' in dep.handler.__name__:
                    name = names[mod]
                    if name in graph.out_atoms:
                        atoms = graph.out_atoms[name][[int(getattr(i, 'idx', i)) for i in idxs]]
                        alive[atoms[atoms >= 0]] = False
            group.prune()
        del m, w, pruner
        return alive, costs.totals(alive)[budget] / full

    lo, hi, best = 0.0, 0.95, None
    for _ in range(10):
        mid = (lo + hi) / 2
        alive, r = attempt(mid)
        if r <= target:
            best = (alive, mid, r)
            hi = mid
        else:
            lo = mid
    if best is None:
        alive, r = attempt(hi)
        best = (alive, hi, r)
    model.zero_grad()
    return best[0], best[1]


def prune_core(method, config, base, work, target, shape, seed, taylor_batches, budget='flops', data_root=None):
    """l1 / random / TP: choose atoms on the baseline model, write channels.json + pruned.pth (``data_root``:
    Taylor's batches from this dataset root instead of the training set)."""
    import numpy as np
    from mmfisher.core import CostModel, analyze
    from mmfisher.core.export import export_pruned
    from mmfisher.models.tracing import make_trace_forward
    runner, model = load_base_model(config, base, seed, data_root)
    graph = analyze(model, make_trace_forward(model, shape))
    costs = CostModel(graph)
    t0 = time.perf_counter()
    extra = {}
    if method == 'l1':
        alive, extra['l1_unit_share'] = uniform(graph, costs, l1_scores(model, graph), target, budget)
    elif method == 'l1_global':
        score = l1_scores(model, graph)
        idx = np.arange(graph.num_atoms)
        alive = greedy(graph, costs, idx[np.lexsort((idx, score))], target, budget)
    elif method == 'random':
        alive = greedy(graph, costs, np.random.default_rng(seed).permutation(graph.num_atoms), target, budget)
    else:
        import itertools
        batches = list(itertools.islice(iter(runner.train_dataloader), taylor_batches))
        alive, ratio = tp_alive(model, graph, costs, batches, method, target, shape, budget)
        extra['tp_pruning_ratio'] = ratio
    wall = time.perf_counter() - t0
    os.makedirs(work, exist_ok=True)
    full = costs.totals(np.ones(graph.num_atoms, dtype=bool))
    tot = costs.totals(alive)
    ratios = {k: tot[k] / full[k] for k in ('flops', 'acts', 'params')}
    channels, weights = export_pruned(model, graph, alive, work, '', dict(method=method, flops_ratio=ratios['flops']))
    return dict(extra, pruning_iters=0, pruning_wall_s=wall, ratios=ratios, atoms_masked=int((~alive).sum()),
                channels=channels, weights=weights)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--task', choices=list(TASKS), default='cls')
    p.add_argument('--methods', nargs='+', default=None, choices=METHODS + EXTRA_METHODS,
                   help='default: ' + ' '.join(METHODS))
    p.add_argument('--budget', choices=['flops', 'acts'], default='flops',
                   help='what every method prunes to --target of: FLOPs or activation memory (acts)')
    p.add_argument('--no-match-iters', dest='match_iters', action='store_false',
                   help='give one-shot methods only --ft-iters (default: --ft-iters + the iterations the Fisher '
                        'runs of the same seed trained while pruning, so every method trains equally long)')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--target', type=float, default=0.5)
    p.add_argument('--base-iters', type=int, default=None, help='default: 240 (cls), 600 (det)')
    p.add_argument('--ft-iters', type=int, default=120)
    p.add_argument('--fisher-k', type=int, default=8)
    p.add_argument('--fisher-interval', type=int, default=2)
    p.add_argument('--taylor-batches', type=int, default=4)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--work-dir', default=None)
    p.add_argument('--quick', action='store_true', help='tiny budgets, 1 seed, 3 methods (smoke test)')
    p.add_argument('--out')
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    task = TASKS[args.task]
    if args.base_iters is None:
        args.base_iters = task['base_iters']
    if args.methods is None and not args.quick:
        args.methods = list(METHODS)
    work = args.work_dir or osp.join(ROOT, 'work_dirs', 'bench', f'quality_{args.task}' + ('_quick' if args.quick
                                                                                            else ''))
    base_work = work
    if args.budget != 'flops':
        work = work + f'_{args.budget}'
    if args.quick:
        args.base_iters, args.ft_iters, args.seeds, args.target = 4, 2, [0], 0.8
        args.methods = args.methods or ['fisher_acts', 'l1', 'tp_taylor']
        args.fisher_k, args.fisher_interval, args.taylor_batches = 64, 1, 1
    name = ('quality' if args.task == 'cls' else f'quality_{args.task}') + ('_acts' if args.budget == 'acts' else '')
    res = Result(name, args.out, args.quick)
    res['setup'] = dict(vars(args), config=osp.relpath(task['config'], ROOT), input_shape=list(task['shape']),
                        flops='mmfisher CostModel (conv/linear multiply-adds) at input_shape')
    base = osp.join(base_work, 'base.pth')
    res['baseline'] = train_baseline(task['config'], base, args.base_iters, 0)
    res['baseline_finetuned'] = finetune_eval(task['config'], None, base, osp.join(base_work, 'ft_base'),
                                              args.ft_iters, 0)
    print('baseline', res['baseline'], res['baseline_finetuned'], flush=True)
    res.save(final=False)
    runs = {}
    fisher_iters = {}  # seed -> iterations a Fisher run trained while pruning (the longest, if several)
    order = sorted(args.methods, key=lambda m: not m.startswith('fisher'))  # Fisher first: it sets the budget
    for method in order:
        for seed in args.seeds:
            mwork = osp.join(work, f'{method}_s{seed}')
            t0 = time.perf_counter()
            ft_iters = args.ft_iters
            if method.startswith('fisher'):
                hook = pruning_hook(k=args.fisher_k, interval=args.fisher_interval, delta=method.split('_')[1],
                                     target=args.target, target_metric=args.budget, input_shape=task['shape'])
                r = run_hook_pruning(task['config'], base, mwork, hook, seed)
                r = dict(pruning_iters=r['iters'], pruning_wall_s=r['wall_s'], ratios=r['ratios'],
                         atoms_masked=r['atoms_masked'], channels=r['channels'], weights=r['weights'],
                         done=r['done'])
                fisher_iters[seed] = max(fisher_iters.get(seed, 0), r['pruning_iters'])
            else:
                r = prune_core(method, task['config'], base, mwork, args.target, task['shape'], seed,
                               args.taylor_batches, args.budget)
                if args.match_iters:
                    ft_iters += fisher_iters.get(seed, 0)
            oneshot = finetune_eval(task['config'], r['channels'], r['weights'], osp.join(mwork, 'no_ft'), 0, seed)
            r['value_before_finetune'] = oneshot['value']
            r.update(finetune_eval(task['config'], r['channels'], r['weights'], osp.join(mwork, 'ft'), ft_iters,
                                   seed))
            r['train_iters_total'] = r['pruning_iters'] + ft_iters
            r['seed'] = seed
            r['total_wall_s'] = time.perf_counter() - t0
            runs.setdefault(method, []).append({k: v for k, v in r.items() if k not in ('channels', 'weights')})
            print(method, seed, runs[method][-1], flush=True)
            res['runs'] = runs
            res.save(final=False)
    summary = {}
    for method, rs in runs.items():
        vals = [r['value'] for r in rs]
        summary[method] = dict(metric=metric_key_of(args.task), n=len(vals), metric_mean=statistics.fmean(vals),
                               metric_std=statistics.stdev(vals) if len(vals) > 1 else 0.0, values=vals,
                               before_finetune_mean=statistics.fmean(r['value_before_finetune'] for r in rs),
                               train_iters_mean=statistics.fmean(r['train_iters_total'] for r in rs),
                               flops_ratio_mean=statistics.fmean(r['ratios']['flops'] for r in rs),
                               acts_ratio_mean=statistics.fmean(r['ratios']['acts'] for r in rs))
    res['methods'] = summary
    for m, s in summary.items():
        print(f'{m:14s} {s["metric_mean"]:.4f} +- {s["metric_std"]:.4f}  before ft {s["before_finetune_mean"]:.4f}'
              f'  flops {s["flops_ratio_mean"]:.3f}  acts {s["acts_ratio_mean"]:.3f}')
    print('wrote', res.save())


def metric_key_of(task):
    return 'accuracy/top1' if task == 'cls' else 'coco/bbox_mAP'


if __name__ == '__main__':
    main()
