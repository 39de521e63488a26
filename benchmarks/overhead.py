"""Training-time overhead of FisherPruningHook: iteration time and memory with the hook vs without.

Same config, data, seed and iterations in every variant, mmengine Runner, IterBasedTrainLoop, on the bundled
shapes set: ``--model tiny`` (default) the tiny RetinaNet, batch 8 of 128x128; ``--model retinanet_r50`` mmdet's
RetinaNet R50-FPN (random init, plain SGD) at a realistic size, batch 2 of 800x800 (the images upscaled), where
the taps' fixed Python cost per reader call weighs as it does for a user:

* ``off``         no hook;
* ``accumulate``  the hook active, accumulating group Fisher every iteration, no pruning step in the window
                  (``interval`` larger than the run);
* ``pruning``     the hook pruning with the paper's schedule (``interval=10``, one atom per step), target far away;
* ``prune_every_iter``  worst case: a pruning step (score, rank, mask, cost re-count) after every iteration.

Each variant runs in its own fresh process; the variants are interleaved over ``--rounds`` rounds so machine
load affects them alike, and every figure is the median over rounds of the per-run median iteration time.

Time: between consecutive ends of training iterations (data loading, forward, backward, optimizer step and every
hook included), over ``--iters`` iterations after ``--warmup``. ``time_ratio`` uses the process's CPU time
(``time.process_time``; torch runs single-threaded, no dataloader workers), which other jobs on a shared machine
barely disturb; ``wall_time_ratio`` uses wall time.
Memory, two measures:

* ``peak_rss``: peak resident set size of the training process sampled every 2 ms by a thread during the
  measured iterations (psutil), i.e. the whole process (Python, libraries, model, activations);
* ``saved_bytes``: bytes of the distinct tensor storages autograd saves for backward during one training
  iteration (``torch.autograd.graph.saved_tensors_hooks``), i.e. activation memory, where the taps would show
  up if they kept extra tensors.

``memory_ratio`` is the peak-RSS ratio; ``saved_bytes_ratio`` is reported beside it.

    nice .venv/bin/python benchmarks/overhead.py            # ~5 min on 2 CPU cores
    nice .venv/bin/python benchmarks/overhead.py --model retinanet_r50 --iters 4 --warmup 2 --rounds 2 \
        --variants accumulate pruning                                      # -> overhead_retinanet_r50.json
    nice .venv/bin/python benchmarks/overhead.py --quick --out /tmp/overhead.json
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import DET_CFG, ROOT, Result, big_model_prune_cfg, build_runner, tiny_runner_cfg  # noqa: E402

# model -> (how to build its training config, batch size, image size); 'tiny' is the default
MODELS = {
    'tiny': dict(batch_size=8, image_size=(128, 128)),
    'retinanet_r50': dict(spec='mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', batch_size=2, image_size=(800, 800)),
}

VARIANTS = {
    'off': None,
    'accumulate': dict(interval=10 ** 6, channels_per_step=1),
    'pruning': dict(interval=10, channels_per_step=1),
    'prune_every_iter': dict(interval=1, channels_per_step=1),
}


def train_cfg(model: str, work_dir: str, total: int, hooks):
    """The training config of ``model`` on the bundled detection set (see MODELS)."""
    spec = MODELS[model]
    if model == 'tiny':
        return tiny_runner_cfg(DET_CFG, work_dir, total, hooks)
    cfg = big_model_prune_cfg(spec['spec'], DET_CFG, work_dir, total, spec['batch_size'])
    h, w = spec['image_size']
    for step in cfg.train_dataloader.dataset.pipeline:
        if step['type'] == 'Resize':
            step['scale'] = (w, h)  # the 128x128 images upscaled: the realistic input size
        if step['type'] == 'RandomFlip':
            step['prob'] = 0.0
    cfg.custom_hooks = list(hooks)
    return cfg


def worker(variant: str, iters: int, warmup: int, out: str, threads: int, model: str = 'tiny') -> None:
    import psutil
    import torch
    from mmengine.hooks import Hook
    torch.set_num_threads(threads)
    hooks = []
    if VARIANTS[variant] is not None:
        hooks.append(dict(type='mmfisher.FisherPruningHook', input_shape=(3, *MODELS[model]['image_size']), target=0.05,
                          delta='acts', **VARIANTS[variant]))
    total = warmup + iters + 1
    proc = psutil.Process()

    class Probe(Hook):
        def __init__(self):
            self.ends = []
            self.cpu_ends = []
            self.first_iter = None
            self.peak = 0
            self.base = None
            self._stop = threading.Event()
            self._thread = None
            self.saved = {}
            self._ctx = None

        def _sample(self):
            while not self._stop.is_set():
                self.peak = max(self.peak, proc.memory_info().rss)
                time.sleep(0.002)

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            if self.first_iter is None:
                self.first_iter = time.perf_counter()
            if runner.iter == warmup:
                self.base = proc.memory_info().rss
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
            if runner.iter == total - 1:  # the last iteration (not timed): count saved tensors
                self._stop.set()

                def pack(t):
                    s = t.untyped_storage()
                    self.saved[(s.data_ptr(), s.device.type)] = s.nbytes()
                    return t
                self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
                self._ctx.__enter__()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())
            if self._ctx is not None:
                self._ctx.__exit__(None, None, None)
                self._ctx = None

    cfg = train_cfg(model, tempfile.mkdtemp(prefix=f'overhead_{variant}_'), total, hooks)
    runner = build_runner(cfg)
    probe = Probe()
    runner.register_hook(probe, priority='LOWEST')
    t0 = time.perf_counter()
    runner.train()
    probe._stop.set()
    ends = probe.ends
    times = [b - a for a, b in zip(ends[warmup:warmup + iters], ends[warmup + 1:warmup + iters + 1])]
    ce = probe.cpu_ends
    cpu = [b - a for a, b in zip(ce[warmup:warmup + iters], ce[warmup + 1:warmup + iters + 1])]
    pruned = None
    for h in runner.hooks:
        if type(h).__name__ == 'FisherPruningHook':
            pruned = len(h.order)
    res = dict(variant=variant, iter_times_s=times, median_iter_s=statistics.median(times),
               mean_iter_s=statistics.fmean(times), iter_cpu_s=cpu, median_cpu_s=statistics.median(cpu),
               setup_s=probe.first_iter - t0,
               peak_rss_bytes=probe.peak, rss_before_measured_bytes=probe.base,
               saved_bytes=int(sum(probe.saved.values())), saved_storages=len(probe.saved),
               atoms_masked=pruned, ru_maxrss_kb=__import__('resource').getrusage(0).ru_maxrss)
    with open(out, 'w') as f:
        json.dump(res, f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--iters', type=int, default=40)
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--threads', type=int, default=1, help='torch threads per run (default 1: shared CPU)')
    p.add_argument('--model', choices=list(MODELS), default='tiny',
                   help="tiny: the tiny RetinaNet at 128x128, batch 8; retinanet_r50: mmdet's RetinaNet R50-FPN "
                        '(random init) at 800x800, batch 2 (-> overhead_retinanet_r50.json)')
    p.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=list(VARIANTS),
                   help="which to run ('off' is always run)")
    p.add_argument('--quick', action='store_true', help='3 iterations, 1 warm-up, 1 round (smoke test)')
    p.add_argument('--out', help='JSON path (default benchmarks/results/overhead.json)')
    p.add_argument('--worker', choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument('--worker-out', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.iters, args.warmup, args.rounds = 3, 1, 1
    if args.worker:
        worker(args.worker, args.iters, args.warmup, args.worker_out, args.threads, args.model)
        return
    variants = ['off'] + [v for v in VARIANTS if v != 'off' and v in args.variants]
    spec = MODELS[args.model]
    res = Result('overhead' if args.model == 'tiny' else f'overhead_{args.model}', args.out, args.quick)
    res['setup'] = dict(model=args.model, config=spec.get('spec', osp.relpath(DET_CFG, ROOT)),
                        data='bundled shapes_det train set', batch_size=spec['batch_size'],
                        image_size=list(spec['image_size']),
                        iters=args.iters, warmup=args.warmup, rounds=args.rounds, torch_threads=args.threads,
                        hook_args={k: v for k, v in VARIANTS.items()},
                        hook_common=dict(input_shape=[3, *spec['image_size']], target=0.05, delta='acts'),
                        time='time_ratio: CPU time of the (single-threaded) training process per iteration '
                             '(time.process_time between consecutive iteration ends), median over rounds of the '
                             'per-run median; wall_time_ratio: the same with wall time (sensitive to other jobs '
                             'on the shared CPU)',
                        memory='peak RSS of the training process (psutil, sampled every 2 ms during the measured '
                               'iterations); saved_bytes: distinct storages saved by autograd in one iteration')
    runs = {v: [] for v in variants}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for v in variants:
                path = osp.join(tmp, f'{v}_{r}.json')
                cmd = [sys.executable, osp.abspath(__file__), '--worker', v, '--worker-out', path, '--model', args.model,
                       '--iters', str(args.iters), '--warmup', str(args.warmup), '--threads', str(args.threads)]
                subprocess.run(cmd, check=True, cwd=ROOT, env=env)
                with open(path) as f:
                    runs[v].append(json.load(f))
                print(f'round {r} {v}: {runs[v][-1]["median_iter_s"]:.4f} s/iter, '
                      f'peak RSS {runs[v][-1]["peak_rss_bytes"] / 2 ** 20:.1f} MiB', flush=True)
    summary = {}
    for v, rs in runs.items():
        summary[v] = dict(
            median_iter_s=statistics.median(r['median_iter_s'] for r in rs),
            median_cpu_s=statistics.median(r['median_cpu_s'] for r in rs),
            per_round_median_cpu_s=[r['median_cpu_s'] for r in rs],
            per_round_median_iter_s=[r['median_iter_s'] for r in rs],
            peak_rss_mib=statistics.median(r['peak_rss_bytes'] for r in rs) / 2 ** 20,
            saved_mib=statistics.median(r['saved_bytes'] for r in rs) / 2 ** 20,
            setup_s=statistics.median(r['setup_s'] for r in rs),
            atoms_masked_at_end=[r['atoms_masked'] for r in rs])
    off = summary['off']
    for v in variants:
        if v == 'off':
            continue
        s = summary[v]
        s['time_ratio'] = s['median_cpu_s'] / off['median_cpu_s']
        s['wall_time_ratio'] = s['median_iter_s'] / off['median_iter_s']
        s['memory_ratio'] = s['peak_rss_mib'] / off['peak_rss_mib']
        s['saved_bytes_ratio'] = s['saved_mib'] / off['saved_mib'] if off['saved_mib'] else None
    res['variants'] = summary
    # headline: the worse of "hook active, not yet pruning" and "pruning on the paper's schedule"
    head = [summary[v] for v in ('accumulate', 'pruning') if v in summary]
    res['time_ratio'] = max(s['time_ratio'] for s in head)
    res['wall_time_ratio'] = max(s['wall_time_ratio'] for s in head)
    res['memory_ratio'] = max(s['memory_ratio'] for s in head)
    res['saved_bytes_ratio'] = max(s['saved_bytes_ratio'] or 0 for s in head)
    res['goal'] = dict(time_ratio='<= 1.10', memory_ratio='<= 1.15',
                       met=bool(res['time_ratio'] <= 1.10 and res['memory_ratio'] <= 1.15))
    res['raw_runs'] = runs
    print(json.dumps({k: res[k] for k in ('time_ratio', 'wall_time_ratio', 'memory_ratio', 'saved_bytes_ratio')}))
    print('wrote', res.save())


if __name__ == '__main__':
    main()
