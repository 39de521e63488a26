"""Balanced one-shot pruning on models outside the tests (random weights): the measured mode with the replay of
unchanged activations on and off (the curves and the structure must be identical), the estimated mode (one repair
round), the target met within 1% and each structure's slimmed model equal to the masked one.

Per model: two calibration inputs, loss = the mean square of the model's outputs, target 0.8 FLOPs, grid 0.25 and
0.5. Writes one row per model (``ok`` = every check held) to ``--out``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/balanced_models.py --out benchmarks/results/balanced_models.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/balanced_models.py --models detr tv_squeezenet1_0 --out /tmp/m.json
"""
import argparse
import copy
import json
import os.path as osp
import sys
import time
import traceback

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import Result  # noqa: E402
from mmfisher.model_sweep import build, forward_maker, compare_maker, MM_FAMILIES, TORCHVISION, TIMM  # noqa: E402
from mmfisher.core import analyze_fast, compare_masked_slimmed  # noqa: E402
from mmfisher.core.state import PruningState  # noqa: E402
from mmfisher.core.balanced import BalancedPruning  # noqa: E402
from mmfisher.core.outputs import output_tensors  # noqa: E402


def loss_of(out):
    """The mean over the output tensors of each one's mean square: a loss with gradients for any model."""
    ts = [t for t in output_tensors(out) if t.is_floating_point()]
    return sum(t.float().pow(2).mean() for t in ts) / len(ts)


def one(source, name, shape, ov):
    """Every check on one model (module docstring); the row without ``ok``."""
    model = build(source, name, shape, ov)
    model.eval()
    make = forward_maker(source, shape, 1, 0)
    graph = analyze_fast(model, make)
    fwds = [forward_maker(source, shape, 1, s)(model) for s in (1, 2)]
    out = {}
    alive = {}
    for key, kw in (('replay', dict(replay_mb=1024)), ('noreplay', dict(replay_mb=0)),
                    ('estimated', dict(mode='estimated', repair_rounds=1))):
        m = copy.deepcopy(model)
        st = PruningState(m, graph, input_shape=shape)
        # the loss is of the inference outputs (tensor mode): model_mode='eval' (DINO's training forward, say,
        # needs its denoising queries' targets)
        meth = BalancedPruning(target=0.8, grid=(0.25, 0.5), model_mode='eval', **dict(dict(mode='measured'), **kw))
        t0 = time.perf_counter()
        res = meth.run(st, m, [0, 1], lambda i, m=m: loss_of(fwds[i](m)))
        out[key] = dict(s=round(time.perf_counter() - t0, 1), flops=round(res.ratios['flops'], 4), tau=res.tau,
                        points=res.points, warnings=len(res.warnings))
        alive[key] = res.alive.copy()
        if key != 'estimated':
            out[key]['curves'] = [c.variation.tolist() for c in res.curves]
    same = out['replay']['curves'] == out['noreplay']['curves'] and (alive['replay'] == alive['noreplay']).all()
    for k in ('replay', 'noreplay'):
        out[k].pop('curves')
    cm = compare_maker(source, name, shape, 1 if source == 'mm' else 2, 0)
    r = compare_masked_slimmed(copy.deepcopy(model), graph, cm(model), alive['replay'], make_forward=cm)
    r2 = compare_masked_slimmed(copy.deepcopy(model), graph, cm(model), alive['estimated'], make_forward=cm)
    return dict(out, units=len(graph.units), replay_same=bool(same), slim_ok=bool(r['ok']),
                slim_ok_est=bool(r2['ok']), diff=float(r['max_abs_diff']))


# mm zoo models beside model_sweep.MM_FAMILIES
EXTRA_MM = {
    'yolox': ('mm', 'mmdet::yolox/yolox_s_8xb8-300e_coco.py', (3, 128, 128), {}),
    'ssd': ('mm', 'mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py', (3, 128, 128), {}),
    'gfl': ('mm', 'mmdet::gfl/gfl_r50_fpn_1x_coco.py', (3, 128, 128), {}),
    'centernet': ('mm', 'mmdet::centernet/centernet_r18_8xb16-crop512-140e_coco.py', (3, 128, 128), {}),
    'mask_rcnn': ('mm', 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', (3, 128, 128), {}),
    'cascade': ('mm', 'mmdet::cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py', (3, 128, 128), {}),
    'tood': ('mm', 'mmdet::tood/tood_r50_fpn_1x_coco.py', (3, 128, 128), {}),
    'rtmdet': ('mm', 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py', (3, 128, 128), {}),
    'shufflenetv2': ('mm', 'mmpretrain::shufflenet_v2/shufflenet-v2-1x_16xb64_in1k.py', (3, 64, 64), {}),
    'mobilenetv3': ('mm', 'mmpretrain::mobilenet_v3/mobilenet-v3-small_8xb128_in1k.py', (3, 64, 64), {}),
    'efficientnet': ('mm', 'mmpretrain::efficientnet/efficientnet-b0_8xb32_in1k.py', (3, 64, 64), {}),
    'regnet': ('mm', 'mmpretrain::regnet/regnetx-400mf_8xb128_in1k.py', (3, 64, 64), {}),
    'res2net': ('mm', 'mmpretrain::res2net/res2net50-w14-s8_8xb32_in1k.py', (3, 64, 64), {}),
    'hrnet': ('mm', 'mmpretrain::hrnet/hrnet-w18_4xb32_in1k.py', (3, 64, 64), {}),
}


def cases():
    out = list(EXTRA_MM.items()) + list(MM_FAMILIES.items())
    for n in ('mobilenet_v3_small', 'shufflenet_v2_x0_5', 'densenet121', 'googlenet', 'regnet_y_400mf',
              'efficientnet_b0', 'squeezenet1_0'):
        out.append(('tv_' + n, ('torchvision', n, TORCHVISION[n], {})))
    for n in ('ghostnet_100', 'rexnet_100', 'mixnet_s', 'dla34', 'cspresnet50', 'repvgg_a0', 'convnext_atto',
              'mobilevit_xxs', 'efficientvit_b0', 'hgnetv2_b0', 'dpn68', 'vovnet39a'):
        out.append(('timm_' + n, ('timm', n, TIMM[n], {})))
    return out


def main() -> None:
    every = dict(cases())
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', choices=sorted(every), default=None,
                   help='default: all but mask_rcnn, cascade and mask_rcnn_swin (about 1.8 s a forward at 128 px)')
    p.add_argument('--out', help='default: benchmarks/results/balanced_models.json')
    args = p.parse_args()
    torch.set_num_threads(1)
    names = args.models or [k for k in every if k not in ('mask_rcnn', 'cascade', 'mask_rcnn_swin')]
    res = Result('balanced_models', args.out)
    rows = res.data.setdefault('models', {})
    for k in names:
        src, name, shape, ov = every[k]
        t0 = time.perf_counter()
        try:
            r = one(src, name, shape, ov)
            r['ok'] = bool(r['replay_same'] and r['slim_ok'] and r['slim_ok_est']
                           and abs(r['replay']['flops'] - 0.8) <= 0.01 and abs(r['estimated']['flops'] - 0.8) <= 0.01)
        except Exception as e:  # a model the engine fails on is a row, not the end of the sweep
            r = dict(ok=False, error=f'{type(e).__name__}: {str(e)[:600]}')
            traceback.print_exc(limit=4)
        r['wall_s'] = round(time.perf_counter() - t0, 1)
        rows[k] = dict(r, source=src, name=name, shape=list(shape))
        print('OK' if r['ok'] else 'BAD', k, json.dumps(r), flush=True)
        res['ok'], res['total'] = sum(v['ok'] for v in rows.values()), len(rows)
        res.save(final=False)  # atomically, after every model
    print(f"{res['ok']} of {res['total']} ok; wrote {res.save()}")


if __name__ == '__main__':
    main()
