"""Real latency of Fisher-pruned structures (~50% FLOPs) vs the unpruned model and a random-pruning control.

Per model (RetinaNet R50-FPN, FCOS R50, ResNet-50, MobileNetV2 from the mmdet / mmpretrain model zoo configs,
no pretrained weights):

1. **Fisher pruning runs** with FisherPruningHook through the mmengine Runner on the bundled data
   (detectors: shapes_det at 128x128, batch 2; classifiers: shapes_cls at 64x64, batch 8), delta ``acts`` and
   delta ``flops``, target FLOPs 0.5 counted at the realistic input shape (the hook's ``input_shape``:
   800x1333 / 224x224), a large k (3% of the eligible atoms per step, fixed at the first step) every iteration.
   Weights are not trained to convergence: the runs give the *structures* whose speed is measured.
2. **Rounding**: kept channels rounded up to multiples of 1, 8, 16 with the hook's own rule
   (``mmfisher.core.selection.round_up`` over the run's pruning order: the hook's ``divisor`` at export), applied
   to the divisor-1 run afterwards, so the rounded structures have slightly more than 50% FLOPs (reported).
3. **Random control**: ``mmfisher.core.random_alive`` (the same share of every unit) with the share bisected so
   that its FLOPs (our cost model at the realistic shape) match the Fisher 'acts' structure's.
4. **Timing** of each slimmed structure (fresh model, ``mmfisher.core.slim_model``) in eval mode under
   ``torch.inference_mode()``: detectors' tensor-mode forward (backbone, neck, head; no NMS post-processing) at
   1x3x800x1333, classifiers' logits at 64x3x224x224; torch on the CPU and onnxruntime's CPU provider on a
   ``torch.onnx.export`` of the same forward. Every structure is built and exported first, then timed
   round-robin (one warm-up round, then ``--repeats`` rounds) so that changes in machine load hit all structures
   alike; wall time and process CPU time (all threads) per run, medians reported.
   FLOPs of every structure by ``mmengine.analysis.FlopAnalyzer`` at the same input.

    nice .venv/bin/python benchmarks/speedup.py                       # all models (~40 min on 2 CPU cores)
    nice .venv/bin/python benchmarks/speedup.py --models resnet50     # one model, merged into the JSON
    nice .venv/bin/python benchmarks/speedup.py --quick --out /tmp/speedup.json
    # on a GPU machine (-> speedup_gpu.json), the structures saved by a CPU run re-timed in fp32 and fp16 at
    # batch 1 and 8 (each structure built once; benchmarks/gpu/run.sh is the whole prepared GPU check):
    python benchmarks/speedup.py --device cuda --dtype fp32 fp16 --det-batch 1 8 --no-mm-flops \
        --structures-dir work_dirs/bench/structures --models retinanet_r50_fpn fcos_r50
"""
import argparse
import copy
import gc
import json
import os
import os.path as osp
import statistics
import sys
import tempfile
import time

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import (CLS_CFG, DET_CFG, ROOT, Result, big_model_prune_cfg, build_runner,  # noqa: E402
                     pruning_hook)

MODELS = {
    'retinanet_r50_fpn': dict(spec='mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', kind='det'),
    'fcos_r50': dict(spec='mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', kind='det'),
    'resnet50': dict(spec='mmpretrain::resnet/resnet50_8xb32_in1k.py', kind='cls'),
    'mobilenet_v2': dict(spec='mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py', kind='cls'),
}
DTYPES = {'fp32': __import__('torch').float32, 'fp16': __import__('torch').float16,
          'bf16': __import__('torch').bfloat16}
QUICK = {
    'tiny_retinanet': dict(spec=DET_CFG, kind='det'),
    'tiny_resnet': dict(spec=CLS_CFG, kind='cls'),
}


def Wrapped(model, kind, shape):  # noqa: N802  (a module factory)
    """``forward(x)`` -> flat tuple of output tensors (``mmfisher.models.TensorMode``) for a batch of ``shape[0]``, in
    eval mode: for timing, FLOP counting and ONNX export."""
    from mmfisher.models import TensorMode
    from mmfisher.zoo import fake_batch
    _, samples = fake_batch(model, shape[1:]) if kind == 'det' else (None, None)
    if samples is not None:
        samples = samples * shape[0]
    return TensorMode(model, samples).eval()


def fisher_structure(name, info, delta, args, work):
    """One Fisher pruning run; returns the hook (graph, order, masks, costs) and the run's figures."""
    data_cfg = DET_CFG if info['kind'] == 'det' else CLS_CFG
    batch = 2 if info['kind'] == 'det' else 8
    cfg = big_model_prune_cfg(info['spec'], data_cfg, osp.join(work, f'{name}_{delta}'), args.prune_max_iters,
                              batch)
    runner = build_runner(cfg)
    hook = pruning_hook(frac=args.frac, fixed=True, interval=1, delta=delta, target=args.target,
                         target_metric='flops', input_shape=tuple(args.det_shape if info['kind'] == 'det'
                                                                  else args.cls_shape))
    runner.register_hook(hook, priority='LOW')
    t0 = time.perf_counter()
    runner.train()
    wall = time.perf_counter() - t0
    model = runner.model
    fig = dict(delta=delta, iters=runner.iter, wall_s=wall, steps=hook.steps, k_per_step=hook.k_used[:1],
               done=bool(hook.done), atoms_masked=len(hook.order), num_atoms=hook.graph.num_atoms,
               train_batch=batch, trace_input_shape=list(hook.input_shape))
    return hook, model, fig


def random_like(graph, costs, flops_ratio, seed=0):
    """``random_alive`` with the per-unit share bisected to ``flops_ratio`` of the unpruned FLOPs."""
    import numpy as np
    from mmfisher.core import random_alive
    full = costs.totals(np.ones(graph.num_atoms, dtype=bool))['flops']
    lo, hi = 0.0, 1.0
    best = None
    for _ in range(24):
        mid = (lo + hi) / 2
        alive = random_alive(graph, mid, seed)
        r = costs.totals(alive)['flops'] / full
        best = (alive, r, mid)
        if r > flops_ratio:
            lo = mid
        else:
            hi = mid
    return best


def environment():
    """The versions the timings depend on (torch, CUDA, cuDNN, mmcv and whether its compiled ops are real)."""
    import platform
    import torch
    try:
        import mmcv
        from mmcv import _ext  # noqa: F401
        ops = 'stub (no compiled kernels; the timed forwards call none)' if getattr(
            _ext, 'MMFISHER_STUB', False) else 'compiled'
        mmcv_version = mmcv.__version__
    except ImportError as exc:
        ops, mmcv_version = f'missing: {exc}', None
    return dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
                cudnn_allow_tf32=bool(torch.backends.cudnn.allow_tf32),
                matmul_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32), mmcv=mmcv_version, mmcv_ops=ops)


def run_torch(wrapped, x, inner=1):
    """``inner`` forwards: (wall s, process CPU s) per forward; on a GPU synchronised before and after."""
    import torch
    cuda = x.device.type == 'cuda'
    with torch.inference_mode():
        if cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(inner):
            wrapped(x)
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / inner, (time.process_time() - c0) / inner


def onnx_session(wrapped, x, threads, path):
    """``torch.onnx.export`` (TorchScript exporter, opset 17, fixed shape) + an onnxruntime CPU session."""
    import onnxruntime as ort
    import torch
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(wrapped, (x,), path, opset_version=17, dynamo=False, do_constant_folding=True)
    export_s = time.perf_counter() - t0
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=['CPUExecutionProvider'])
    return (sess, {sess.get_inputs()[0].name: x.numpy()}), export_s


def run_onnx(sess, feed):
    t0, c0 = time.perf_counter(), time.process_time()
    sess.run(None, feed)
    return time.perf_counter() - t0, time.process_time() - c0


def mm_flops(wrapped, x):
    try:
        from mmengine.analysis import FlopAnalyzer
        fa = FlopAnalyzer(wrapped, (x,))
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        return float(fa.total())
    except Exception as exc:  # noqa: BLE001
        return f'failed: {type(exc).__name__}: {exc}'


def make_structures(name, info, args, work, out):
    """Fisher pruning runs (one per delta), their rounded variants and the random control:
    (graph, costs, {structure name: alive atoms})."""
    import numpy as np
    from mmfisher.core import selection
    hooks = {}
    for delta in args.deltas:
        hook, _, fig = fisher_structure(name, info, delta, args, work)
        hooks[delta] = hook
        out.setdefault('pruning_runs', {})[delta] = fig
        print(name, 'pruning', fig, flush=True)
        gc.collect()
    ref = hooks[args.deltas[0]]
    graph, costs = ref.graph, ref.state.costs
    unit_atoms = [u.atoms for u in graph.units]
    full = costs.totals(np.ones(graph.num_atoms, dtype=bool))
    structures = {'unpruned': np.ones(graph.num_atoms, dtype=bool)}
    for delta, hook in hooks.items():
        alive = hook.masks.alive.numpy().copy()
        for d in args.divisors:
            if delta != args.deltas[0] and d != 1 and not args.all_divisors:
                continue
            structures[f'fisher_{delta}_d{d}'] = selection.round_up(alive, unit_atoms, d, hook.order)
    target_ratio = costs.totals(hooks[args.deltas[0]].masks.alive.numpy())['flops'] / full['flops']
    r_alive, r_ratio, r_share = random_like(graph, costs, target_ratio)
    rng = np.random.default_rng(0)
    r_order = rng.permutation(np.nonzero(~r_alive)[0]).tolist()
    for d in args.divisors:
        if d != 1 and not args.all_divisors:
            continue
        structures[f'random_d{d}'] = selection.round_up(r_alive, unit_atoms, d, r_order)
    out['random_share_per_unit'] = r_share
    return graph, costs, structures


def measure_model(name, info, args, res):
    import numpy as np
    import torch
    from mmfisher.core import slim_model
    from mmfisher.zoo import build_model, load_config
    work = tempfile.mkdtemp(prefix='speedup_')
    out = dict(spec=info['spec'], kind=info['kind'])
    saved = osp.join(args.structures_dir, f'{name}.json') if args.structures_dir else None
    cfg = load_config(info['spec'])
    if saved and osp.isfile(saved):  # the structures of an earlier invocation: re-time them, no pruning runs
        from mmfisher.core import CostModel, analyze_fast
        from mmfisher.models.tracing import make_trace_forward
        with open(saved) as f:
            old = json.load(f)
        trace_shape = tuple(old['trace_input_shape'])
        graph = analyze_fast(build_model(cfg), lambda m: make_trace_forward(m, trace_shape))
        if graph.num_atoms != old['num_atoms']:
            raise RuntimeError(f'{saved}: {old["num_atoms"]} atoms saved, the model traces to {graph.num_atoms}')
        costs = CostModel(graph)
        structures = {k: np.asarray(v, dtype=bool) for k, v in old['structures'].items()}
        out.update(old['figures'], structures_from=osp.relpath(saved, ROOT))
    else:
        graph, costs, structures = make_structures(name, info, args, work, out)
        if saved:
            os.makedirs(osp.dirname(saved), exist_ok=True)
            trace_shape = args.det_shape if info['kind'] == 'det' else args.cls_shape
            with open(saved, 'w') as f:
                json.dump(dict(num_atoms=graph.num_atoms, trace_input_shape=list(trace_shape),
                               structures={k: v.tolist() for k, v in structures.items()},
                               figures={k: out[k] for k in ('pruning_runs', 'random_share_per_unit')}), f)
    if args.prune_only:
        return
    full = costs.totals(np.ones(graph.num_atoms, dtype=bool))
    if args.structures:
        skipped = [n for n in structures if n not in args.structures and n != 'unpruned']
        structures = {n: a for n, a in structures.items() if n == 'unpruned' or n in args.structures}
        if skipped:
            out['structures_not_timed'] = dict(names=skipped, why='left out by --structures to fit the CPU budget')
    bases, counted = {}, {}
    for sname, alive in structures.items():  # every structure built once (fp32, CPU); timed per batch and dtype
        model = build_model(cfg)
        if sname != 'unpruned':
            slim_model(model, graph, alive)
        bases[sname] = model.eval()
        tot = costs.totals(alive)
        counted[sname] = dict(flops_ratio_ours=tot['flops'] / full['flops'], acts_ratio_ours=tot['acts'] / full['acts'],
                              params=int(sum(p.numel() for p in model.parameters())))
    batches = args.det_batch if info['kind'] == 'det' else args.cls_batch
    for batch in batches:
        for dtype_name in args.dtype:
            for fmt in args.memory_format:
                shape = tuple([batch, *(args.det_shape if info['kind'] == 'det' else args.cls_shape)])
                plain = 1 if info['kind'] == 'det' else (4 if args.quick else 64)  # the default batch: no suffix
                key = name if batch == plain else f'{name}_b{batch}'
                key += '' if dtype_name == 'fp32' else f'_{dtype_name}'
                key += '' if fmt == 'contiguous' else '_cl'
                res.data.setdefault('models', {})[key] = time_structures(
                    dict(copy.deepcopy(out), timed_input=list(shape)), bases, counted, info['kind'], shape,
                    dtype_name, args, name, fmt)
                res.save(final=False)
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()


def time_structures(out, bases, counted, kind, shape, dtype_name, args, name, fmt='contiguous'):
    """Time every structure of ``bases`` (name -> slimmed fp32 CPU model) at ``shape`` in ``dtype_name`` and
    memory format ``fmt`` on ``args.device`` (and in onnxruntime on the CPU, fp32 contiguous only); returns ``out``
    with the ``structures`` rows."""
    import torch
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    rows, models, sessions = {}, {}, {}
    tmpdir = tempfile.mkdtemp(prefix='speedup_onnx_')
    dtype = DTYPES[dtype_name]
    device = torch.device(args.device)
    cl = fmt == 'channels_last'
    for sname, model in bases.items():  # count and export every structure first
        wrapped = Wrapped(model, kind, shape)
        row = dict(counted[sname], torch_s=[], torch_cpu_s=[])
        row['mmengine_flops'] = mm_flops(wrapped, x) if args.mm_flops else 'not counted (--no-mm-flops)'
        if args.onnx and dtype == torch.float32 and device.type == 'cpu' and not cl:
            try:
                sessions[sname], row['onnx_export_s'] = onnx_session(wrapped, x, args.threads,
                                                                     osp.join(tmpdir, f'{sname}.onnx'))
                row['onnxruntime_s'], row['onnxruntime_cpu_s'] = [], []
            except Exception as exc:  # noqa: BLE001
                row['onnxruntime_error'] = f'{type(exc).__name__}: {exc}'[:500]
        if device.type != 'cpu' or dtype != torch.float32 or cl:  # timed as asked (counted fp32, CPU)
            wrapped = copy.deepcopy(wrapped).to(device, dtype)
            if cl:
                wrapped = wrapped.to(memory_format=torch.channels_last)
        models[sname] = wrapped
        rows[sname] = row
    x = x.to(device, dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    out['timed_on'] = dict(device=args.device, dtype=dtype_name, forwards_per_timing=args.inner,
                           gpu=torch.cuda.get_device_name(device) if device.type == 'cuda' else None)
    if cl:
        out['timed_on']['memory_format'] = fmt
    # round-robin over structures (one warm-up each, then --repeats rounds), so changing machine load hits all
    # structures alike; wall time and process CPU time (all threads) per run
    out['load_average_per_round'] = []
    for rep in range(args.repeats + 1):
        out['load_average_per_round'].append(os.getloadavg()[0])
        for sname, wrapped in models.items():
            row = rows[sname]
            t, c = run_torch(wrapped, x, args.inner)
            if rep:
                row['torch_s'].append(t)
                row['torch_cpu_s'].append(c)
            if sname in sessions:
                t, c = run_onnx(*sessions[sname])
                if rep:
                    row['onnxruntime_s'].append(t)
                    row['onnxruntime_cpu_s'].append(c)
        print(name, list(shape), dtype_name, fmt, f'round {rep}',
              {n: round(r['torch_s'][-1], 4) for n, r in rows.items() if r['torch_s']}, flush=True)
    for sname, row in rows.items():
        row['torch_median_s'] = statistics.median(row['torch_s'])
        row['torch_cpu_median_s'] = statistics.median(row['torch_cpu_s'])
        if row.get('onnxruntime_s'):
            row['onnxruntime_median_s'] = statistics.median(row['onnxruntime_s'])
            row['onnxruntime_cpu_median_s'] = statistics.median(row['onnxruntime_cpu_s'])
    del models, sessions
    import shutil
    shutil.rmtree(tmpdir, ignore_errors=True)
    base = rows['unpruned']
    for sname, row in rows.items():
        if isinstance(row['mmengine_flops'], float) and isinstance(base['mmengine_flops'], float):
            row['flops_ratio_mmengine'] = row['mmengine_flops'] / base['mmengine_flops']
        row['speedup_torch'] = base['torch_median_s'] / row['torch_median_s']
        row['speedup_torch_cpu_time'] = base['torch_cpu_median_s'] / row['torch_cpu_median_s']
        if 'onnxruntime_cpu_median_s' in row and 'onnxruntime_cpu_median_s' in base:
            row['speedup_onnxruntime_cpu_time'] = base['onnxruntime_cpu_median_s'] / row['onnxruntime_cpu_median_s']
        if 'onnxruntime_median_s' in row and 'onnxruntime_median_s' in base:
            row['speedup_onnxruntime'] = base['onnxruntime_median_s'] / row['onnxruntime_median_s']
    out['structures'] = rows
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='*', default=list(MODELS), choices=list(MODELS) + list(QUICK))
    p.add_argument('--deltas', nargs='+', default=['acts', 'flops'])
    p.add_argument('--divisors', nargs='+', type=int, default=[1, 8, 16])
    p.add_argument('--all-divisors', action='store_true',
                   help='round every structure (flops, random) to every divisor, not only Fisher acts')
    p.add_argument('--target', type=float, default=0.5)
    p.add_argument('--frac', type=float, default=0.03, help='atoms per step, share of the eligible atoms')
    p.add_argument('--prune-max-iters', type=int, default=200)
    p.add_argument('--det-shape', type=int, nargs=3, default=[3, 800, 1333])
    p.add_argument('--cls-shape', type=int, nargs=3, default=[3, 224, 224])
    p.add_argument('--det-batch', type=int, nargs='+', default=[1], help='one or more batch sizes, each timed')
    p.add_argument('--cls-batch', type=int, nargs='+', default=[64], help='one or more batch sizes, each timed')
    p.add_argument('--structures', nargs='+', help='time only these (plus unpruned), e.g. fisher_acts_d1 random_d1')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--no-onnx', dest='onnx', action='store_false')
    p.add_argument('--no-mm-flops', dest='mm_flops', action='store_false',
                   help='skip mmengine FlopAnalyzer (one more traced forward per structure)')
    p.add_argument('--merge-from', nargs='+', default=[],
                   help='speedup JSONs (e.g. from parallel runs with --out) whose models are merged into --out')
    p.add_argument('--structures-dir', help='save each model\'s structures (alive atoms) to DIR/<model>.json, or, if '
                   'that file exists, re-time those structures without new pruning runs (e.g. at another batch size)')
    p.add_argument('--device', default='cpu', help="where torch is timed: 'cpu' or 'cuda' (then --name speedup_gpu, "
                   'onnxruntime off: its CPU provider only)')
    p.add_argument('--dtype', choices=list(DTYPES), nargs='+', default=['fp32'],
                   help='dtype(s) of the timed torch forward, each timed (e.g. fp32 fp16)')
    p.add_argument('--memory-format', nargs='+', choices=['contiguous', 'channels_last'], default=['contiguous'],
                   help="the timed forward's memory format(s), each timed (channels_last: NHWC, as cuDNN's fp16 "
                        "kernels prefer; key suffix '_cl')")
    p.add_argument('--inner', type=int, default=None, help='forwards per timing (default 1 on CPU, 20 on a GPU)')
    p.add_argument('--prune-only', action='store_true',
                   help='only make and save the structures (needs --structures-dir); time them in a later call')
    p.add_argument('--name', default='speedup_cpu', help='result name (-> benchmarks/results/<name>.json)')
    p.add_argument('--quick', action='store_true', help='tiny models at small sizes (smoke test)')
    p.add_argument('--out')
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    if args.device.startswith('cuda'):
        if not torch.cuda.is_available():
            p.error('--device cuda: torch sees no CUDA device on this machine; time on the CPU (--device cpu)')
        args.onnx = False
        torch.backends.cudnn.benchmark = True  # each structure's own convolution algorithms (chosen in the warm-up)
        if args.name == 'speedup_cpu':
            args.name = 'speedup_gpu'
    if args.inner is None:
        args.inner = 20 if args.device.startswith('cuda') else 1
    if args.quick:
        if not set(args.models) <= set(QUICK):
            args.models = list(QUICK)
        args.det_shape, args.cls_shape = [3, 128, 128], [3, 64, 64]
        args.cls_batch = [4] if args.cls_batch == [64] else args.cls_batch
        args.repeats, args.target, args.frac, args.divisors = 1, 0.8, 0.1, [1, 8]
    if args.prune_only:
        if not args.structures_dir:
            p.error('--prune-only needs --structures-dir (where the structures are saved)')
        for name in args.models:
            measure_model(name, dict(MODELS, **QUICK)[name], args, None)
        print('saved structures under', args.structures_dir)
        return
    out = args.out or osp.join(ROOT, 'benchmarks', 'results', f'{args.name}.json')
    res = Result(args.name, out, args.quick)
    if osp.isfile(out) and not args.quick:  # merge: models measured by earlier invocations are kept
        with open(out) as f:
            old = json.load(f)
        res.data['models'] = old.get('models', {})
        res.data['earlier_commands'] = old.get('earlier_commands', []) + [
            dict(command=old.get('command'), started=old.get('started'), models=list(old.get('models', {})))]
    for extra in args.merge_from:
        with open(extra) as f:
            other = json.load(f)
        res.data.setdefault('models', {}).update(other.get('models', {}))
        res.data.setdefault('merged_runs', []).append(dict(file=osp.basename(extra), command=other.get('command'),
                                                           started=other.get('started'),
                                                           finished=other.get('finished'),
                                                           setup=other.get('setup'),
                                                           models=list(other.get('models', {}))))
    res['setup'] = dict(vars(args), timer='time.perf_counter, median of repeats after one warm-up',
                        mode='eval, torch.inference_mode (autograd off)', weights='random (structure only)',
                        gpu=(__import__('torch').cuda.get_device_name(0) if args.device.startswith('cuda') else
                             'not used (--device cpu)'), env=environment())
    catalog = dict(MODELS, **QUICK)
    for name in args.models:
        measure_model(name, catalog[name], args, res)
    print('wrote', res.save())


if __name__ == '__main__':
    main()
