"""Share of conv/linear output channels prunable, and exact slimming, on the "beyond plain CNNs" families (issue 11).

For each family: build the zoo model without pretrained weights (small input; ViT's ``img_size`` set to it), trace
it with ``analyze_fast`` (what FisherPruningHook runs), mask a random ``--ratio`` of every unit, slim a copy and
compare masked and slimmed outputs (``compare_masked_slimmed``, float64 re-check on a mismatch). Reports per
family ``channels_total``, ``channels_prunable``, ``share``, ``ok``, ``max_abs_diff`` and the most common
reasons channels are kept.

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/prunable_share.py [--only convnext swin ...] [--no-check]
        [--out benchmarks/results/prunable_share.json]

To measure another checkout (e.g. the commit before a change), run this file with ``PYTHONPATH`` pointing there:
``PYTHONPATH=/tmp/base python benchmarks/prunable_share.py --out /tmp/base.json``, then add it as ``--before
/tmp/base.json`` to a run of this checkout. ``channels_total`` counts the conv/linear layers the trace records:
before issue 11 ``nn.MultiheadAttention``'s projections were not recorded (nor prunable), so the totals of DETR,
Deformable DETR and DINO grew.
"""
import argparse
import json
import os
import sys
import time
import traceback
from collections import Counter

FAMILIES = {
    # name: (config, input shape (C, H, W), config overrides as {dotted key: value})
    'convnext': ('mmpretrain::convnext/convnext-tiny_32xb128_in1k.py', (3, 64, 64), {}),
    'swin': ('mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py', (3, 64, 64),
             {'model.backbone.img_size': 64, 'model.backbone.pad_small_map': True}),
    'vit': ('mmpretrain::vision_transformer/vit-base-p16_64xb64_in1k.py', (3, 64, 64),
            {'model.backbone.img_size': 64}),
    'resnest': ('mmpretrain::resnest/resnest50_32xb64_in1k.py', (3, 64, 64), {}),
    'detr': ('mmdet::detr/detr_r50_8xb2-150e_coco.py', (3, 128, 128), {}),
    'deformable_detr': ('mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py', (3, 128, 128), {}),
    'dino': ('mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py', (3, 128, 128), {'model.num_queries': 100}),
    'mask_rcnn_swin': ('mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', (3, 128, 128), {}),
}


def build(name):
    import torch
    from mmfisher.zoo import build_model, load_config
    spec, shape, overrides = FAMILIES[name]
    cfg = load_config(spec)
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split('.')
        for k in path:
            node = node[k]
        node[last] = value
    model = build_model(cfg, init_weights=True)
    model.eval()
    # zero-initialised weights (ViT's classifier, deformable attention's weights, ResNeSt's last BN of each block)
    # would make outputs constant or blind to pruned channels, the comparison vacuous: give them random values
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, prm in model.named_parameters():
            if prm.dim() >= 2 and not bool(prm.any()):
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.02)
            elif prm.dim() == 1 and pname.endswith('weight') and not bool(prm.any()):  # zero-init residual BN
                prm.copy_(1 + 0.1 * torch.randn(prm.shape, generator=g))
    return model, shape


def share(graph):
    s = graph.summary()
    total, prunable = s['channels_total'], s['channels_prunable']
    reasons = Counter()
    for layer, why in graph.unprunable.items():
        reasons[why.split(' (')[0] if 'channels)' in why else why] += 1
    return total, prunable, reasons


def measure(name, check=True, ratio=0.3, seed=0):
    import torch
    from mmfisher.core import analyze_fast, compare_masked_slimmed, random_alive
    from mmfisher.zoo import tensor_forward
    torch.manual_seed(seed)
    model, shape = build(name)
    t0 = time.perf_counter()
    graph = analyze_fast(model, lambda m: tensor_forward(m, shape, seed=seed))
    trace_s = time.perf_counter() - t0
    total, prunable, reasons = share(graph)
    out = {'config': FAMILIES[name][0], 'shape': list(shape), 'channels_total': total,
           'channels_prunable': prunable, 'share': round(prunable / max(total, 1), 4), 'units': len(graph.units),
           'trace_seconds': round(trace_s, 2), 'trace_device': graph.device,
           'top_reasons': reasons.most_common(8)}
    if check and graph.num_atoms:
        alive = random_alive(graph, ratio, seed)
        res = compare_masked_slimmed(model, graph, tensor_forward(model, shape, seed=seed), alive,
                                     make_forward=lambda m: tensor_forward(m, shape, seed=seed))
        out.update(ok=bool(res['ok']), max_abs_diff=res['max_abs_diff'], output_scale=res['scale'],
                   float64_max_abs_diff=res.get('float64_max_abs_diff'))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--only', nargs='*', default=None, choices=sorted(FAMILIES))
    p.add_argument('--no-check', action='store_true', help='only trace (no masked/slimmed comparison)')
    p.add_argument('--ratio', type=float, default=0.3)
    p.add_argument('--out', default=None, help='write the JSON here (default: print only)')
    p.add_argument('--before', default=None,
                   help="this script's JSON from another checkout: its shares are added as before_* fields")
    args = p.parse_args(argv)
    before = {}
    if args.before:
        with open(args.before) as f:
            before = json.load(f)
    results = {}
    for name in args.only or list(FAMILIES):
        t0 = time.perf_counter()
        try:
            results[name] = measure(name, check=not args.no_check, ratio=args.ratio)
        except Exception as exc:  # noqa: BLE001  a failing family is a result, not the end of the run
            results[name] = {'config': FAMILIES[name][0], 'error': f'{type(exc).__name__}: {exc}',
                             'traceback': traceback.format_exc()[-3000:]}
        results[name]['seconds'] = round(time.perf_counter() - t0, 1)
        if name in before:
            for key in ('channels_total', 'channels_prunable', 'share', 'top_reasons', 'ok'):
                results[name][f'before_{key}'] = before[name].get(key)
        r = results[name]
        print(f"{name}: {r.get('channels_prunable')}/{r.get('channels_total')} = {r.get('share')} "
              f"ok={r.get('ok')} diff={r.get('max_abs_diff')} {r.get('error', '')}", file=sys.stderr, flush=True)
    text = json.dumps(results, indent=1)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
