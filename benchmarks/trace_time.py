"""Grouping time and grouping result: mmfisher's trace vs Torch-Pruning's DependencyGraph, same model, same input.

Model: mmdet's ``retinanet/retinanet_r50_fpn_1x_coco.py`` built without pretrained weights (PyTorch default
initialisation), eval-free (train mode, as during pruning), one 800x1333 input.

* ``ours``: ``mmfisher.core.analyze_fast`` (what FisherPruningHook runs: the traced forward on a meta-device copy
  of the model, shapes without arithmetic; real tensors only if the forward needs values), trace + units;
  ``ours_real``: the same trace on real tensors (``analyze``), forward arithmetic included;
* ``torch_pruning``: ``tp.DependencyGraph().build_dependency(wrapper, example_inputs=x)`` where ``wrapper(x)``
  runs the detector's tensor-mode forward on the same tensor, followed by ``get_all_groups`` (the groups are
  what pruning needs; timed separately as ``torch_pruning_groups_s``), the class/box output convs ignored;
* ``forward``: the plain tensor-mode forward, with autograd (what both tracers run) and without.

Each is timed ``--repeats`` times, interleaved; the figure is the median. ``ratio = ours_s / torch_pruning_s``
(build_dependency only; ``ratio_with_groups`` includes get_all_groups).

Grouping comparison: every coupled set of out-channels. Ours: for each atom, the (conv/linear layer, channel)
pairs whose output it is. Torch-Pruning: for each group and each channel of its root, the (layer, channel) pairs
that its out-channel dependencies prune. Both are reduced to sets of layers (``coupled layer sets``) and compared;
the differences are listed, plus a channel-level equality check.

    nice .venv/bin/python benchmarks/trace_time.py                 # ~3 min on 2 CPU cores
    nice .venv/bin/python benchmarks/trace_time.py --quick --out /tmp/trace_time.json
"""
import argparse
import gc
import os.path as osp
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import Result  # noqa: E402

MODEL = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'


def build(spec: str):
    from mmfisher.zoo import build_model, load_config
    model = build_model(load_config(spec))
    model.train()
    return model


def ours(model, shape):
    """What FisherPruningHook runs: ``analyze_fast`` (the forward on a meta-device copy, falling back to real)."""
    from mmfisher.core import analyze_fast
    from mmfisher.zoo import tensor_forward
    t0 = time.perf_counter()
    graph = analyze_fast(model, lambda m: tensor_forward(m, shape))
    return time.perf_counter() - t0, graph


def ours_real(model, shape):
    """The same trace on real tensors (``analyze``): the forward's arithmetic included."""
    from mmfisher.core import analyze
    from mmfisher.zoo import tensor_forward
    t0 = time.perf_counter()
    graph = analyze(model, tensor_forward(model, shape))
    return time.perf_counter() - t0, graph


def torch_pruning(model, shape, output_names):
    import torch_pruning as tp
    from mmfisher.models import TensorMode
    from mmfisher.zoo import fake_batch
    x, samples = fake_batch(model, shape)
    wrapper = TensorMode(model, samples)
    was_training = model.training
    t0 = time.perf_counter()
    dg = tp.DependencyGraph().build_dependency(wrapper, example_inputs=x, verbose=False)
    t_build = time.perf_counter() - t0
    modules = dict(wrapper.named_modules())
    ignored = [modules['m.' + n] for n in output_names if 'm.' + n in modules]
    t1 = time.perf_counter()
    groups = list(dg.get_all_groups(ignored_layers=ignored))
    t_groups = time.perf_counter() - t1
    mode_after = wrapper.training
    model.train(was_training)
    return t_build, t_groups, dg, groups, modules, mode_after


def forward_time(model, shape, grad: bool):
    import torch
    from mmfisher.zoo import tensor_forward
    fwd = tensor_forward(model, shape)
    with torch.set_grad_enabled(grad):
        t0 = time.perf_counter()
        out = fwd(model)
        t = time.perf_counter() - t0
    del out
    return t


def our_sets(graph):
    """Coupled (layer, channel) sets per atom over conv/linear producers, and the layer-level sets."""
    import numpy as np
    per_atom = {}
    for layer, atoms in graph.out_atoms.items():
        if not graph.rules[layer].is_weighted:
            continue
        for c in np.nonzero(atoms >= 0)[0].tolist():
            per_atom.setdefault(int(atoms[c]), set()).add((layer, c))
    chans = {frozenset(s) for s in per_atom.values()}
    layer_sets = {frozenset(layer for layer, _ in s) for s in chans}
    return chans, layer_sets


def tp_sets(groups, modules):
    import torch
    names = {m: n[len('m.'):] for n, m in modules.items()}
    chans, layer_sets = set(), set()
    for g in groups:
        per_pos = {}
        for dep, idxs in g:
            m = dep.target.module
            if not isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)):
                continue
            if 'out' not in getattr(dep.handler, '__name__', str(dep.handler)):
                continue
            for pos, i in enumerate(idxs):
                per_pos.setdefault(pos, set()).add((names[m], int(getattr(i, 'idx', i))))
        for s in per_pos.values():
            chans.add(frozenset(s))
            layer_sets.add(frozenset(layer for layer, _ in s))
    return chans, layer_sets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default=MODEL)
    p.add_argument('--shape', type=int, nargs=3, default=(3, 800, 1333))
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--quick', action='store_true', help='the tiny RetinaNet at 128x128, one repeat (smoke)')
    p.add_argument('--out')
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    if args.quick:
        args.model = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs', 'tiny',
                              'retinanet_tiny_shapes.py')
        args.shape, args.repeats = (3, 128, 128), 1
    res = Result('trace_time', args.out, args.quick)
    shape = tuple(args.shape)
    res['setup'] = dict(model=args.model, input_shape=list(shape), batch=1, repeats=args.repeats,
                        torch_threads=args.threads, pretrained=False, mode='train',
                        timer='time.perf_counter around the call; median over repeats (interleaved)')
    model = build(args.model)
    output_names = [n for n in ('bbox_head.retina_cls', 'bbox_head.retina_reg', 'bbox_head.conv_cls',
                                'bbox_head.conv_reg', 'bbox_head.conv_centerness') if n in dict(model.named_modules())]
    times = {'ours': [], 'ours_real': [], 'tp_build': [], 'tp_groups': [], 'fwd_grad': [], 'fwd_nograd': []}
    graph = groups = modules = None
    tp_mode_after = None
    for r in range(args.repeats):
        times['fwd_nograd'].append(forward_time(model, shape, False))
        gc.collect()
        times['fwd_grad'].append(forward_time(model, shape, True))
        gc.collect()
        t, graph = ours(model, shape)
        times['ours'].append(t)
        gc.collect()
        t, real_graph = ours_real(model, shape)
        times['ours_real'].append(t)
        gc.collect()
        tb, tg, dg, groups, modules, tp_mode_after = torch_pruning(model, shape, output_names)
        times['tp_build'].append(tb)
        times['tp_groups'].append(tg)
        del dg
        gc.collect()
        print(f'repeat {r}: ' + ', '.join(f'{k} {v[-1]:.2f}s' for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    res['ours_s'] = med['ours']
    res['ours_trace_device'] = graph.device
    res['ours_real_s'] = med['ours_real']
    res['ours_meta_equals_real'] = bool(graph.num_atoms == real_graph.num_atoms and
                                        graph.unprunable == real_graph.unprunable and all(
        (graph.in_atoms[k] == real_graph.in_atoms[k]).all() for k in real_graph.in_atoms))
    res['torch_pruning_s'] = med['tp_build']
    res['torch_pruning_groups_s'] = med['tp_groups']
    res['ratio'] = med['ours'] / med['tp_build']
    res['ratio_with_groups'] = med['ours'] / (med['tp_build'] + med['tp_groups'])
    res['forward_grad_s'] = med['fwd_grad']
    res['forward_nograd_s'] = med['fwd_nograd']
    res['raw_times_s'] = times
    res['torch_pruning_left_model_in_train_mode'] = bool(tp_mode_after)

    o_chans, o_layers = our_sets(graph)
    t_chans, t_layers = tp_sets(groups, modules)
    fmt = lambda s: sorted(s)  # noqa: E731
    only_ours = sorted((fmt(s) for s in o_layers - t_layers), key=lambda s: s[0])
    only_tp = sorted((fmt(s) for s in t_layers - o_layers), key=lambda s: s[0])
    summary = graph.summary()
    res['grouping'] = dict(
        ours_units=len(graph.units), ours_atoms=graph.num_atoms,
        ours_prunable_out_channels=summary['channels_prunable'], ours_total_out_channels=summary['channels_total'],
        ours_unprunable_layers=summary['unprunable'],
        torch_pruning_groups=len(groups),
        torch_pruning_prunable_out_channels=sum(len(s) for s in t_chans),
        ours_coupled_layer_sets=len(o_layers), torch_pruning_coupled_layer_sets=len(t_layers),
        identical_layer_sets=o_layers == t_layers, identical_channel_sets=o_chans == t_chans,
        channel_sets_only_ours=len(o_chans - t_chans), channel_sets_only_torch_pruning=len(t_chans - o_chans),
        layer_sets_only_ours=only_ours, layer_sets_only_torch_pruning=only_tp,
        ignored_output_layers_for_torch_pruning=output_names)
    print({k: res[k] for k in ('ours_s', 'torch_pruning_s', 'ratio', 'forward_grad_s')})
    print({k: v for k, v in res['grouping'].items() if not k.startswith('layer_sets')})
    print('wrote', res.save())


if __name__ == '__main__':
    main()
