"""Exact slimming and prunable share on real OpenMMLab zoo models (issue 3), through tools/verify_slimming.py."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, 'tools', 'verify_slimming.py')

spec = importlib.util.spec_from_file_location('verify_slimming', TOOL)
verify_slimming = importlib.util.module_from_spec(spec)
spec.loader.exec_module(verify_slimming)

DET = (3, 160, 160)
CLS = (3, 64, 64)
ZOO = [
    ('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', DET),
    ('mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', DET),
    ('mmdet::atss/atss_r50_fpn_1x_coco.py', DET),
    ('mmdet::fsaf/fsaf_r50_fpn_1x_coco.py', DET),
    ('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', DET),
    ('mmdet::yolox/yolox_s_8xb8-300e_coco.py', DET),
    ('mmpretrain::resnet/resnet50_8xb32_in1k.py', CLS),
    ('mmpretrain::resnext/resnext50-32x4d_8xb32_in1k.py', CLS),
    ('mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py', CLS),
    ('mmpretrain::regnet/regnetx-400mf_8xb128_in1k.py', CLS),
    ('mmpretrain::densenet/densenet121_4xb256_in1k.py', CLS),
    ('mmpretrain::efficientnet/efficientnet-b0_8xb32_in1k.py', CLS),
]


def run_tool(capsys, config, shape, ratio=0.3, seed=0):
    code = verify_slimming.main([config, '--ratio', str(ratio), '--seed', str(seed), '--shape', *map(str, shape)])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


@pytest.mark.parametrize('config,shape', ZOO, ids=[c.split('::')[1].split('/')[0] for c, _ in ZOO])
def test_zoo_slimming_is_exact(capsys, config, shape):
    code, report = run_tool(capsys, config, shape)
    assert code == 0, report
    assert report['ok'] is True
    assert report['max_abs_diff'] <= 1e-4 * report['output_scale']
    assert report['channels_prunable'] >= 0.8 * report['channels_total'], report['unprunable']
    assert report['channels_pruned'] > 0.2 * report['channels_prunable']
    assert report['params_after'] < report['params_before']
    if report['flops_before'] is not None:
        assert report['flops_after'] < report['flops_before']
    for key in ('config', 'units', 'channels_total', 'channels_prunable', 'channels_pruned', 'max_abs_diff',
                'flops_before', 'flops_after', 'params_before', 'params_after', 'unprunable'):
        assert key in report


def test_retinanet_units_match_the_paper():
    """One unit per ResNet stage's residual stream with its FPN lateral conv; the FPN outputs P3-P7 (extra convs
    included) coupled with the first conv of both shared head towers."""
    from mmfisher.core import analyze
    from mmfisher.zoo import build_model, load_config, tensor_forward
    model = build_model(load_config('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'))
    graph = analyze(model, tensor_forward(model, DET))
    by_layers = {frozenset(u.layers): u for u in graph.units}

    def unit_with(layer):
        units = [u for u in graph.units if layer in u.producers]
        assert len(units) == 1, (layer, [u.name for u in units])
        return units[0]

    for stage, blocks, lateral in ((2, 4, 'neck.lateral_convs.0.conv'), (3, 6, 'neck.lateral_convs.1.conv'),
                                   (4, 3, 'neck.lateral_convs.2.conv')):
        unit = unit_with(f'backbone.layer{stage}.0.conv3')
        for b in range(blocks):
            assert f'backbone.layer{stage}.{b}.conv3' in unit.layers
        assert f'backbone.layer{stage}.0.downsample.0' in unit.layers
        assert lateral in unit.readers
    fpn = unit_with('neck.fpn_convs.0.conv')
    for i in range(5):
        assert f'neck.fpn_convs.{i}.conv' in fpn.producers
    assert fpn.readers == ['neck.fpn_convs.4.conv', 'bbox_head.cls_convs.0.conv', 'bbox_head.reg_convs.0.conv'] or \
        set(fpn.readers) == {'neck.fpn_convs.4.conv', 'bbox_head.cls_convs.0.conv', 'bbox_head.reg_convs.0.conv'}
    assert fpn.atoms.size == 256
    laterals = unit_with('neck.lateral_convs.0.conv')
    assert set(laterals.producers) == {'neck.lateral_convs.0.conv', 'neck.lateral_convs.1.conv',
                                       'neck.lateral_convs.2.conv'}  # top-down adds couple the laterals
    assert 'bbox_head.retina_cls' in graph.unprunable and 'bbox_head.retina_reg' in graph.unprunable
    assert len(by_layers) == len(graph.units)


def test_faster_rcnn_couples_rpn_conv_with_roi_fc():
    from mmfisher.core import analyze
    from mmfisher.zoo import build_model, load_config, tensor_forward
    model = build_model(load_config('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'))
    graph = analyze(model, tensor_forward(model, DET))
    units = [u for u in graph.units if 'rpn_head.rpn_conv' in u.readers]
    assert len(units) == 1
    assert 'roi_head.bbox_head.shared_fcs.0' in units[0].readers
    assert {'neck.fpn_convs.0.conv', 'neck.fpn_convs.3.conv'} <= set(units[0].producers)
    # the FC reads 7x7 positions per channel: 256 atoms, 12544 input positions
    fc_atoms = graph.in_atoms['roi_head.bbox_head.shared_fcs.0']
    assert fc_atoms.size == 256 * 49 and (fc_atoms >= 0).all()
    assert 'rpn_head.rpn_cls' in graph.unprunable and 'roi_head.bbox_head.fc_cls' in graph.unprunable


def test_bad_config_path_fails_clearly(capsys):
    with pytest.raises(FileNotFoundError, match='not found'):
        verify_slimming.main(['configs/does_not_exist.py'])


def test_cli_subprocess_exit_code_and_json():
    proc = subprocess.run([sys.executable, TOOL, 'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py',
                           '--ratio', '0.5', '--shape', '3', '32', '32'], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report['ratio'] == 0.5 and report['ok']


def test_query_based_two_stage_traces_its_own_forward(capsys):
    """Sparse R-CNN: the "RPN" is learned proposal embeddings (no forward) and the RoI head unpacks gt_instances
    in tensor mode; the trace runs the model's own forward, slimming is exact, and the FPN (read by DynamicConv's
    bmm) is left unprunable and named."""
    code, report = run_tool(capsys, 'mmdet::sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py', (3, 128, 128))
    assert code == 0 and report['ok'] is True, report
    assert report['channels_pruned'] > 0 and report['params_after'] < report['params_before']
    assert any('bmm' in why for why in report['unprunable'].values()), report['unprunable']
