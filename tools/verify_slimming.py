#!/usr/bin/env python
"""Check exact slimming on a model zoo config.

    python tools/verify_slimming.py CONFIG [--ratio 0.3] [--seed 0] [--shape C H W]

Builds CONFIG's model (a path or ``mmdet::``/``mmpretrain::`` config) without pretrained weights, traces its
channel units, masks a random ``ratio`` of every prunable unit, slims a copy and compares masked vs slimmed
outputs on one random input in eval mode. The last stdout line is one JSON object with the figures (FLOPs/params
by mmengine's analysis).

Exit status: 0 every output matches (max abs diff <= 1e-4 of the outputs' scale); 1 a mismatch; 2 a bad
argument, or the model's forward fails on the ``--shape`` input; 3 the model has nothing prunable (nothing was
checked; the JSON line names why each layer is kept).
"""
import argparse
import json
import sys
import time

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='config path or mmdet::/mmpretrain:: path')
    p.add_argument('--ratio', type=float, default=0.3, help='share of every unit to mask (0 <= ratio < 1)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--shape', type=int, nargs=3, metavar=('C', 'H', 'W'), default=None,
                   help='input shape (default: 3 224 224 for classifiers, 3 320 320 for detectors)')
    p.add_argument('--tol', type=float, default=1e-4, help='allowed max abs diff relative to the output scale')
    args = p.parse_args(argv)
    if not 0 <= args.ratio < 1:
        p.error(f'--ratio must be in [0, 1), got {args.ratio}')
    if args.shape is not None:
        from mmfisher.models.tracing import check_input_shape
        try:
            args.shape = check_input_shape(tuple(args.shape), name='--shape')
        except ValueError as exc:
            p.error(str(exc))
    return args


def complexity(model, forward_inputs):
    """FLOPs and params from mmengine's analysis tools."""
    from mmengine.analysis import FlopAnalyzer, parameter_count
    params = parameter_count(model)['']
    try:
        flops = FlopAnalyzer(model, forward_inputs)
        flops.unsupported_ops_warnings(False)
        flops.uncalled_modules_warnings(False)
        return int(flops.total()), int(params)
    except Exception as exc:  # jit tracing of some detectors' post-processing fails: say so, don't invent
        print(f'warning: mmengine FlopAnalyzer failed ({type(exc).__name__}: {exc}); flops reported as null',
              file=sys.stderr)
        return None, int(params)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmfisher.core import analyze_fast, compare_masked_slimmed, random_alive
    from mmfisher.core.trace import TraceForwardError
    from mmfisher.models import TensorMode
    from mmfisher.models.tracing import det_data_samples, is_detector
    from mmfisher.zoo import build_model, load_config, tensor_forward
    torch.manual_seed(args.seed)
    cfg = load_config(args.config)
    model = build_model(cfg, init_weights=True)  # the model's own init: some forwards need it (learned proposals)
    model.eval()
    shape = args.shape or ((3, 320, 320) if is_detector(model) else (3, 224, 224))
    forward = tensor_forward(model, shape, seed=args.seed)
    t0 = time.perf_counter()
    try:
        graph = analyze_fast(model, lambda m: tensor_forward(m, shape, seed=args.seed), shape_name='--shape')
    except TraceForwardError as exc:
        print(f'error: {args.config}: {exc}', file=sys.stderr)
        return 2
    trace_s = time.perf_counter() - t0
    if graph.num_atoms == 0:
        return _nothing_prunable(args, shape, graph, trace_s)
    alive = random_alive(graph, args.ratio, args.seed)
    x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(args.seed))
    samples = det_data_samples(tuple(shape[1:])) if is_detector(model) else None
    flops_before, params_before = complexity(TensorMode(model, samples), (x,))
    result = compare_masked_slimmed(model, graph, forward, alive, rtol=args.tol,
                                    make_forward=lambda m: tensor_forward(m, shape, seed=args.seed))
    slim = result['slim']
    flops_after, params_after = complexity(TensorMode(slim, samples), (x,))
    summary = graph.summary()
    ok = bool(result['ok'])
    report = {
        'config': args.config, 'ok': ok, 'shape': list(shape), 'ratio': args.ratio, 'seed': args.seed,
        'units': summary['units'], 'atoms': summary['atoms'], 'channels_total': summary['channels_total'],
        'channels_prunable': summary['channels_prunable'],
        'channels_pruned': int(summary['channels_prunable'] - _alive_channels(graph, alive)),
        'max_abs_diff': result['max_abs_diff'], 'output_scale': result['scale'],
        'float64_max_abs_diff': result.get('float64_max_abs_diff'), 'float64_output_scale': result.get('float64_scale'),
        'flops_before': flops_before, 'flops_after': flops_after,
        'params_before': params_before, 'params_after': params_after,
        'trace_seconds': round(trace_s, 3), 'trace_device': graph.device, 'unprunable': summary['unprunable'],
    }
    print(f"{'OK' if ok else 'MISMATCH'}: {args.config}: {summary['channels_prunable']}/"
          f"{summary['channels_total']} channels prunable in {summary['units']} units; max abs diff "
          f"{result['max_abs_diff']:.3g} (scale {result['scale']:.3g})")
    print(json.dumps(report))
    return 0 if ok else 1


def _nothing_prunable(args, shape, graph, trace_s) -> int:
    """Nothing to check: say so (with why the layers are kept) instead of a vacuous OK."""
    summary = graph.summary()
    reasons = sorted(set(summary['unprunable'].values()))
    shown = '; '.join(reasons[:3]) + (f'; ... ({len(reasons)} reasons)' if len(reasons) > 3 else '')
    print(f"NOTHING PRUNABLE: {args.config}: 0/{summary['channels_total']} channels prunable, so slimming was not "
          f"checked ({shown or 'no conv/linear layer was traced'}). Fix: check the model and --shape; layers are "
          'kept when they reach the model output or meet an op the tracer cannot map (see "unprunable")')
    print(json.dumps({'config': args.config, 'ok': False, 'nothing_prunable': True, 'shape': list(shape),
                      'units': 0, 'atoms': 0, 'channels_total': summary['channels_total'], 'channels_prunable': 0,
                      'trace_seconds': round(trace_s, 3), 'trace_device': graph.device,
                      'unprunable': summary['unprunable']}))
    return 3


def _alive_channels(graph, alive) -> int:
    n = 0
    for name, atoms in graph.out_atoms.items():
        if graph.rules[name].is_weighted:
            valid = atoms[atoms >= 0]
            n += int(alive[valid].sum())
    return n


if __name__ == '__main__':
    sys.exit(main())
