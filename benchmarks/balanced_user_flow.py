"""Balanced one-shot pruning as a user runs it, on mmdet and mmpretrain zoo configs the tests do not use: each
config's model (3 classes, no pretrained init) on the bundled shapes sets (detection at 128 px, classification at
64 px), its own initial weights saved as the "trained" checkpoint; then ``tools/train.py`` with
BalancedPruningHook (2 calibration batches of 2 images) -> channels.json + pruned.pth, ``tools/train.py`` of a
``mmfisher.Pruned`` fine-tune config (4 iterations, then its validation), ``tools/test.py`` of the fine-tuned
checkpoint, and its export: reloaded strictly as the architecture's own class, FLOPs by mmengine's counter beside
the unpruned model's, both exported to ONNX (opset 17) and checked against torch with onnxruntime (the largest
difference relative to the output's largest value; ok below 1e-4). A model base that sets custom_hooks
(SSD, YOLOX, RTMDet, ConvNeXt, RegNet) takes the recipe ``custom_hooks = _base_.custom_hooks + [BalancedPruningHook]``;
the others inherit ``mmfisher::_base_/balanced_pruning.py``. One row per model: each step's exit code and
seconds, the pruned FLOPs ratio, the unprunable layers the hook named, and the last error line of a failed step.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/balanced_user_flow.py --out benchmarks/results/balanced_user_flow.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/balanced_user_flow.py --models vfnet --work-dir /tmp/flow
"""
import argparse
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import Result  # noqa: E402

CLS3 = "model['head']['num_classes'] = 3\ndata_preprocessor = dict(num_classes=3)"
# name: (model config, the statement that sets 3 classes, mode, whether the model base sets custom_hooks)
MODELS = {
    'yolox_tiny': ('mmdet::yolox/yolox_tiny_8xb8-300e_coco.py', "model['bbox_head']['num_classes'] = 3",
                   'estimated', True),
    'rtmdet_tiny': ('mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py', "model['bbox_head']['num_classes'] = 3",
                    'estimated', True),
    'ssdlite_mobilenetv2': ('mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py',
                            "model['bbox_head']['num_classes'] = 3", 'measured', True),
    'yolov3_mobilenetv2': ('mmdet::yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py',
                           "model['bbox_head']['num_classes'] = 3", 'measured', False),
    'centernet_r18': ('mmdet::centernet/centernet_r18_8xb16-crop512-140e_coco.py',
                      "model['bbox_head']['num_classes'] = 3", 'measured', False),
    'gfl_r50': ('mmdet::gfl/gfl_r50_fpn_1x_coco.py', "model['bbox_head']['num_classes'] = 3", 'estimated', False),
    'vfnet_r50': ('mmdet::vfnet/vfnet_r50_fpn_1x_coco.py', "model['bbox_head']['num_classes'] = 3", 'estimated',
                  False),
    'cascade_rcnn_r50': ('mmdet::cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py',
                         "for _h in model['roi_head']['bbox_head']:\n    _h['num_classes'] = 3", 'estimated', False),
    # mmpretrain: 3 classes, 64 px (the ViT / Swin position embeddings at 64 px)
    'mobilenet_v3_small': ('mmpretrain::mobilenet_v3/mobilenet-v3-small_8xb128_in1k.py', CLS3, 'measured', False),
    'efficientnet_b0': ('mmpretrain::efficientnet/efficientnet-b0_8xb32_in1k.py', CLS3, 'measured', False),
    'shufflenet_v2': ('mmpretrain::shufflenet_v2/shufflenet-v2-1x_16xb64_in1k.py', CLS3, 'measured', False),
    'regnetx_400mf': ('mmpretrain::regnet/regnetx-400mf_8xb128_in1k.py', CLS3, 'measured', True),  # PreciseBNHook
    'convnext_tiny': ('mmpretrain::convnext/convnext-tiny_32xb128_in1k.py', CLS3, 'estimated', True),
    'vit_base_p16': ('mmpretrain::vision_transformer/vit-base-p16_64xb64_in1k.py',
                     CLS3 + "\nmodel['backbone']['img_size'] = 64", 'estimated', False),
    'swin_tiny': ('mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py',
                  CLS3 + "\nmodel['backbone'].update(img_size=64, pad_small_map=True)", 'estimated', False),
}
DET3 = "model['bbox_head']['num_classes'] = 3"
RCNN3 = "model['roi_head']['bbox_head']['num_classes'] = 3"
# LeViT's and EfficientFormer's configs build the distilled head, which mmpretrain cannot train: the plain one
NO_DISTILL = "\nmodel['head']['distillation'] = False"
# a second set (``--set more``, ``benchmarks/results/balanced_user_flow_more.json``): 14 mmdet and 20 mmpretrain
# configs beyond the first 15 and beyond every test and other benchmark; LeViT, EfficientFormer and VGG at 224 px (their
# attention biases and VGG's classifier are sized for it)
MORE = {
    'yolof_r50': ('mmdet::yolof/yolof_r50-c5_8xb8-1x_coco.py', DET3, 'measured', False),
    'faster_rcnn_r50_c4': ('mmdet::faster_rcnn/faster-rcnn_r50-caffe_c4-1x_coco.py', RCNN3, 'estimated', False),
    'retinanet_nasfpn': ('mmdet::nas_fpn/retinanet_r50_nasfpn_crop640-50e_coco.py', DET3, 'estimated', False),
    'faster_rcnn_pafpn': ('mmdet::pafpn/faster-rcnn_r50_pafpn_1x_coco.py', RCNN3, 'estimated', False),
    'fovea_r50': ('mmdet::foveabox/fovea_r50_fpn_4xb4-1x_coco.py', DET3, 'estimated', False),
    'autoassign_r50': ('mmdet::autoassign/autoassign_r50-caffe_fpn_1x_coco.py', DET3, 'estimated', False),
    'libra_retinanet': ('mmdet::libra_rcnn/libra-retinanet_r50_fpn_1x_coco.py', DET3, 'estimated', False),
    'retinanet_regnetx_800mf': ('mmdet::regnet/retinanet_regnetx-800MF_fpn_1x_coco.py', DET3, 'estimated', False),
    'fcos_hrnet_w18': ('mmdet::hrnet/fcos_hrnetv2p-w18-gn-head_4xb4-1x_coco.py', DET3, 'estimated', False),
    'atss_dyhead': ('mmdet::dyhead/atss_r50_fpn_dyhead_1x_coco.py', DET3, 'estimated', False),
    'faster_rcnn_resnest50': ('mmdet::resnest/faster-rcnn_s50_fpn_syncbn-backbone+head_ms-range-1x_coco.py', RCNN3,
                              'estimated', False),
    'double_heads_r50': ('mmdet::double_heads/dh-faster-rcnn_r50_fpn_1x_coco.py', RCNN3, 'estimated', False),
    'sabl_retinanet': ('mmdet::sabl/sabl-retinanet_r50_fpn_1x_coco.py', DET3, 'estimated', False),
    'ghm_retinanet': ('mmdet::ghm/retinanet_r50_fpn_ghm-1x_coco.py', DET3, 'estimated', False),
    'seresnet50': ('mmpretrain::seresnet/seresnet50_8xb32_in1k.py', CLS3, 'measured', False),
    'mobileone_s0': ('mmpretrain::mobileone/mobileone-s0_8xb32_in1k.py', CLS3, 'measured', True),
    'repvgg_a0': ('mmpretrain::repvgg/repvgg-A0_8xb32_in1k.py', CLS3, 'measured', False),
    'efficientnetv2_b0': ('mmpretrain::efficientnet_v2/efficientnetv2-b0_8xb32_in1k.py', CLS3, 'measured', False),
    'mobilevit_xxsmall': ('mmpretrain::mobilevit/mobilevit-xxsmall_8xb128_in1k.py', CLS3, 'measured', False),
    'poolformer_s12': ('mmpretrain::poolformer/poolformer-s12_32xb128_in1k.py', CLS3, 'measured', False),
    'deit_tiny': ('mmpretrain::deit/deit-tiny_4xb256_in1k.py', CLS3 + "\nmodel['backbone']['img_size'] = 64",
                  'measured', False),
    'twins_pcpvt_small': ('mmpretrain::twins/twins-pcpvt-small_8xb128_in1k.py', CLS3, 'estimated', False),
    'van_tiny': ('mmpretrain::van/van-tiny_8xb128_in1k.py', CLS3, 'measured', False),
    'edgenext_xxsmall': ('mmpretrain::edgenext/edgenext-xxsmall_8xb256_in1k.py', CLS3, 'measured', True),
    'levit_128s': ('mmpretrain::levit/levit-128s_8xb256_in1k.py', CLS3 + NO_DISTILL, 'measured', False),
    'tinyvit_5m': ('mmpretrain::tinyvit/tinyvit-5m_8xb256_in1k.py', CLS3 + "\nmodel['backbone']['img_size'] = (64, 64)",
                   'measured', False),
    'convnext_v2_atto': ('mmpretrain::convnext_v2/convnext-v2-atto_32xb32_in1k.py', CLS3, 'measured', True),
    'riformer_s12': ('mmpretrain::riformer/riformer-s12_8xb128_in1k.py', CLS3, 'measured', False),
    'efficientformer_l1': ('mmpretrain::efficientformer/efficientformer-l1_8xb128_in1k.py', CLS3 + NO_DISTILL,
                           'measured', False),
    'hornet_tiny': ('mmpretrain::hornet/hornet-tiny_8xb128_in1k.py', CLS3, 'estimated', True),
    'conformer_tiny': ('mmpretrain::conformer/conformer-tiny-p16_8xb128_in1k.py', CLS3, 'estimated', False),
    'davit_tiny': ('mmpretrain::davit/davit-tiny_4xb256_in1k.py',
                   CLS3 + "\nmodel['backbone']['pad_small_map'] = True", 'estimated', False),
    'cspdarknet50': ('mmpretrain::cspnet/cspdarknet50_8xb32_in1k.py', CLS3, 'measured', False),
    'vgg11': ('mmpretrain::vgg/vgg11_8xb32_in1k.py',
              "model['backbone']['num_classes'] = 3\ndata_preprocessor = dict(num_classes=3)", 'estimated', False),
}
FIRST = list(MODELS)
MODELS.update(MORE)

DATA = '''
_data_root = '{root}/data/generated/shapes_det/'
_metainfo = dict(classes=('circle', 'square', 'triangle'))
_train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                   dict(type='Resize', scale=(128, 128), keep_ratio=True), dict(type='PackDetInputs')]
_test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(128, 128), keep_ratio=True),
                  dict(type='LoadAnnotations', with_bbox=True),
                  dict(type='PackDetInputs',
                       meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
train_dataloader = dict(_delete_=True, batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='CocoDataset', data_root=_data_root, metainfo=_metainfo, ann_file='annotations/train.json',
                 data_prefix=dict(img='train/'), filter_cfg=dict(filter_empty_gt=True), pipeline=_train_pipeline))
val_dataloader = dict(_delete_=True, batch_size=2, num_workers=0, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CocoDataset', data_root=_data_root, metainfo=_metainfo, ann_file='annotations/val.json',
                 data_prefix=dict(img='val/'), test_mode=True, pipeline=_test_pipeline, indices=16))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='CocoMetric', ann_file=_data_root + 'annotations/val.json', metric='bbox')
test_evaluator = val_evaluator
'''

CLS_DATA = '''
_data_root = '{root}/data/generated/shapes_cls/'
_metainfo = dict(classes=('circle', 'square', 'triangle'))
train_dataloader = dict(_delete_=True, batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='CustomDataset', data_root=_data_root, data_prefix='train', metainfo=_metainfo,
                 pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')]))
val_dataloader = dict(_delete_=True, batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CustomDataset', data_root=_data_root, data_prefix='val', metainfo=_metainfo, indices=16,
                 pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')]))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
'''

# what a model needs beyond the common data settings: CenterNet tests on its own padded crop (its head reads the
# crop's `border`)
_RESIZE224 = '''
for _dl in (train_dataloader, val_dataloader):
    _dl['dataset']['pipeline'] = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(224, 224)),
                                  dict(type='PackInputs')]
test_dataloader = val_dataloader
'''
SHAPE = {'levit_128s': (3, 224, 224), 'efficientformer_l1': (3, 224, 224), 'vgg11': (3, 224, 224)}
EXTRA = {
    'faster_rcnn_r50_c4': "model['roi_head']['shared_head']['init_cfg'] = None\n",  # no download: a random init
    'levit_128s': _RESIZE224,
    'efficientformer_l1': _RESIZE224,
    'vgg11': _RESIZE224,
    'centernet_r18': '''
val_dataloader['dataset']['pipeline'] = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='RandomCenterCropPad', ratios=None, border=None, mean=[0, 0, 0], std=[1, 1, 1], to_rgb=True,
         test_mode=True, test_pad_mode=['logical_or', 31], test_pad_add_pix=1),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'border'))]
test_dataloader = val_dataloader
''',
}

INIT = '''
import torch
from mmengine.config import Config
from mmfisher.zoo import build_model
m = build_model(Config.fromfile({cfg!r}), init_weights=True)
torch.save(dict(state_dict=m.state_dict(), meta=dict()), {out!r})
'''

# the fine-tuned checkpoint reloaded strictly into the config's Pruned model (the architecture's own class), its
# FLOPs beside the unpruned model's (mmengine's counter) and its ONNX export checked against torch (onnxruntime)
EXPORT = '''
import json, torch, numpy as np, onnxruntime as ort, mmfisher
from mmengine.analysis import get_model_complexity_info
from mmengine.config import Config
from mmengine.runner import load_checkpoint
from mmfisher.models import TensorMode
from mmfisher.models.tracing import det_data_samples
from mmfisher.zoo import build_model
shape = {shape!r}
slim = build_model(Config.fromfile({ft!r}))
load_checkpoint(slim, {ckpt!r}, map_location='cpu', strict=True, logger='silent')
base = build_model(Config.fromfile({model!r}))
samples = det_data_samples(shape[1:]) if {det!r} else None
x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
out = dict(cls=type(slim).__name__, same_class=type(slim) is type(base))
for tag, m in (('unpruned', base), ('pruned', slim)):
    w = TensorMode(m.eval(), samples).eval()
    out[tag + '_flops'] = int(get_model_complexity_info(w, inputs=(x,), show_table=False, show_arch=False)['flops'])
for tag, m in (('unpruned', base), ('pruned', slim)):  # the unpruned model's export: what the runtime gives anyway
    w = TensorMode(m, samples).eval()
    path = {onnx!r}.replace('.onnx', '_' + tag + '.onnx')
    try:
        torch.onnx.export(w, (x,), path, opset_version=17, dynamo=False, input_names=['inputs'])
        got = ort.InferenceSession(path, providers=['CPUExecutionProvider']).run(None, dict(inputs=x.numpy()))
    except Exception as exc:  # noqa: BLE001  recorded: an op the exporter or the runtime lacks (mmcv's DCN)
        out[tag + '_onnx_error'] = (type(exc).__name__ + ': ' + str(exc))[:300]
        continue
    with torch.no_grad():
        ref = w(x)
    out[tag + '_onnx_max_abs_diff'] = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref))
    out[tag + '_onnx_rel_diff'] = max(float(np.abs(g - r.numpy()).max() / max(np.abs(r.numpy()).max(), 1e-12))
                                      for g, r in zip(got, ref))
print('EXPORT ' + json.dumps(out))
'''


def _run(cmd, log):
    """Run ``cmd`` in the repository root, output to ``log``; (exit code, seconds, last error line)."""
    t = time.perf_counter()
    with open(log, 'w') as f:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                             env=dict(os.environ, OMP_NUM_THREADS='1'))
    err = None
    if rc:
        lines = [ln for ln in open(log).read().splitlines()  # the raised exception: a qualified class name, ':'
                 if re.match(r'^([a-z_][a-z0-9_]*\.)*[A-Z][A-Za-z0-9_]*: ', ln)]
        err = lines[-1][:300] if lines else None
    return rc, round(time.perf_counter() - t, 1), err


def one(name, work):
    cfg, classes, mode, base_hooks = MODELS[name]
    scope = cfg.split('::')[0]
    shape = SHAPE.get(name, (3, 128, 128) if scope == 'mmdet' else (3, 64, 64))
    d = osp.join(work, name)
    os.makedirs(d, exist_ok=True)
    py = sys.executable
    with open(osp.join(d, 'model.py'), 'w') as f:
        f.write(f"_base_ = ['{cfg}']\nmodel = _base_.model\nmodel['backbone']['init_cfg'] = None\n{classes}\n"
                + (DATA if scope == 'mmdet' else CLS_DATA).format(root=ROOT) + EXTRA.get(name, ''))
    init = osp.join(d, 'init.pth')
    row = {'config': cfg, 'mode': mode, 'recipe': 'custom_hooks = _base_.custom_hooks + [...]' if base_hooks
           else "_base_ += ['mmfisher::_base_/balanced_pruning.py']"}
    rc, s, err = _run([py, '-c', INIT.format(cfg=osp.join(d, 'model.py'), out=init)],
                      osp.join(d, 'init.log'))
    row['init'] = dict(rc=rc, s=s, error=err)
    if rc:
        return row
    hook = (f"dict(type='mmfisher.BalancedPruningHook', target=0.5, mode='{mode}', calibration_batches=2, "
            f"input_shape={shape})")
    bases = "['./model.py']" if base_hooks else "['./model.py', 'mmfisher::_base_/balanced_pruning.py']"
    hooks = f"_base_.custom_hooks + [{hook}]" if base_hooks else f"[{hook}]"
    with open(osp.join(d, 'prune.py'), 'w') as f:
        f.write(f"_base_ = {bases}\nload_from = '{init}'\ncustom_hooks = {hooks}\n")
    with open(osp.join(d, 'finetune.py'), 'w') as f:
        f.write(f"""_base_ = ['./model.py', 'mmfisher::_base_/fisher_finetune.py']
model = dict(_delete_=True, type='mmfisher.Pruned', architecture=_base_.model, channels='{d}/prune/channels.json')
load_from = '{d}/prune/pruned.pth'
custom_hooks = []
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=4, val_interval=4)
param_scheduler = []
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=4, by_epoch=False))
""")
    steps = [('prune', ['tools/train.py', f'{d}/prune.py', '--work-dir', f'{d}/prune']),
             ('finetune', ['tools/train.py', f'{d}/finetune.py', '--work-dir', f'{d}/ft']),
             ('test', ['tools/test.py', f'{d}/finetune.py', f'{d}/ft/iter_4.pth', '--work-dir', f'{d}/test'])]
    for step, args in steps:
        rc, s, err = _run([py] + args, osp.join(d, f'{step}.log'))
        row[step] = dict(rc=rc, s=s, error=err)
        if step == 'prune' and not rc:
            meta = json.load(open(f'{d}/prune/channels.json'))['meta']
            row['flops_ratio'] = meta['flops_ratio']
            log = open(osp.join(d, 'prune.log')).read()
            m = re.search(r'unprunable layers \((\d+)\)', log)
            row['unprunable_layers_named'] = int(m.group(1)) if m else 0
        if rc:
            break
    if row.get('test', {}).get('rc') == 0:
        code = EXPORT.format(shape=shape, ft=f'{d}/finetune.py', ckpt=f'{d}/ft/iter_4.pth', model=f'{d}/model.py',
                             det=scope == 'mmdet', onnx=f'{d}/pruned.onnx')
        rc, s, err = _run([py, '-c', code], osp.join(d, 'export.log'))
        row['export'] = dict(rc=rc, s=s, error=err)
        found = [ln for ln in open(osp.join(d, 'export.log')).read().splitlines() if ln.startswith('EXPORT ')]
        if not rc and found:
            row['export'].update(json.loads(found[-1][len('EXPORT '):]))
            row['export']['flops_ratio_mmengine'] = row['export']['pruned_flops'] / row['export']['unpruned_flops']
    row['ok'] = all(row.get(k, {}).get('rc') == 0 for k in ('prune', 'finetune', 'test', 'export')) and \
        row['export'].get('same_class') is True and row['export'].get('pruned_onnx_rel_diff', 1.0) < 1e-4
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=None, choices=list(MODELS),
                   help='the models to run (default: the --set)')
    p.add_argument('--set', choices=('first', 'more'), default='first',
                   help='first: the 15 configs of balanced_user_flow.json; more: the 34 of balanced_user_flow_more.json')
    p.add_argument('--work-dir', default=None,
                   help='default work_dirs/bench/balanced_user_flow (--set first) or balanced_user_flow_more')
    p.add_argument('--out', default=None, help='the JSON file (default benchmarks/results/balanced_user_flow.json, '
                   'or _more.json for --set more)')
    p.add_argument('--update', action='store_true',
                   help="keep the out file's other rows: rerun only --models and replace their rows")
    args = p.parse_args()
    if args.models is None:
        args.models = FIRST if args.set == 'first' else list(MORE)
    if args.work_dir is None:
        args.work_dir = osp.join(ROOT, 'work_dirs', 'bench',
                                 'balanced_user_flow' if args.set == 'first' else 'balanced_user_flow_more')
    res = Result('balanced_user_flow' if args.set == 'first' else 'balanced_user_flow_more', args.out)
    res['rows'] = {}
    if args.update and osp.exists(res.path):
        res['rows'] = json.load(open(res.path))['rows']
        res['updated_rows'] = args.models
    for name in args.models:
        res['rows'][name] = one(name, args.work_dir)
        print(name, json.dumps(res['rows'][name]), flush=True)
        res.save(final=False)
    res['ok'] = sum(r['ok'] for r in res['rows'].values())
    print(res.save(), f"{res['ok']} of {len(res['rows'])} ok")


if __name__ == '__main__':
    main()
