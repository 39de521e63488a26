"""``type='mmfisher.Pruned'``: the fine-tune config pattern, strict loading of pruned.pth, tools/test.py, the mmdet
inferencer, TorchScript, two-stage detectors, mmpretrain classifiers and SyncBN."""
import copy
import os
import os.path as osp
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import convert_sync_batchnorm
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import Runner
from mmengine.utils import get_installed_path

from _hook_helpers import DET_CFG, DET_SHAPE, ROOT, assert_same_outputs, ensure_det_data
from mmfisher.core import ChannelMasks, analyze, channel_config, random_alive, save_channel_config, slim_model
from mmfisher.core.export import export_pruned
from mmfisher.models import make_trace_forward


def mm_config(scope: str, rel: str) -> str:
    return osp.join(get_installed_path(scope), '.mim', 'configs', rel)


def build(model_cfg, scope: str = 'mmdet'):
    init_default_scope(scope)
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(model_cfg))
    model.init_weights()
    return model


def masked_copy(model, graph, alive):
    masked = copy.deepcopy(model)
    ChannelMasks(masked, graph).set_alive(alive)
    return masked


def slimmed_state(masked, graph, alive):
    reference = copy.deepcopy(masked)
    slim_model(reference, graph, alive)
    return reference.state_dict()


def write_finetune_cfg(path: str, base: str, channels: str, weights: str, extra: str = '') -> str:
    with open(path, 'w') as f:
        f.write(textwrap.dedent(f"""\
            _base_ = [{base!r}, 'mmfisher::_base_/fisher_finetune.py']
            model = dict(_delete_=True, type='mmfisher.Pruned', architecture={{{{_base_.model}}}},
                         channels={channels!r})
            load_from = {weights!r}
            """) + extra)
    return path


def test_finetune_pattern_with_an_mmdet_base_config(tmp_path):
    """`{{_base_.model}}` + `_delete_` on `mmdet::retinanet/retinanet_r50_fpn_1x_coco.py` builds a slimmed RetinaNet
    that loads the hook's weights strictly and computes what the masked model computes."""
    base = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
    model_cfg = Config.fromfile(mm_config('mmdet', 'retinanet/retinanet_r50_fpn_1x_coco.py')).model
    unpruned_cfg = copy.deepcopy(model_cfg)
    unpruned_cfg.backbone.init_cfg = None  # nothing to download here; the config below keeps its Pretrained init_cfg
    model = build(unpruned_cfg)
    shape = (3, 64, 64)
    graph = analyze(model, make_trace_forward(model, shape))
    alive = random_alive(graph, 0.4, seed=1)
    json_path, pth_path = export_pruned(model, graph, alive, str(tmp_path), '', {'note': 'test'})

    cfg = Config.fromfile(write_finetune_cfg(str(tmp_path / 'finetune.py'), base, json_path, pth_path))
    assert set(cfg.model) == {'type', 'architecture', 'channels'}  # `_delete_`: no base keys merged in
    assert cfg.model.architecture.type == 'RetinaNet' and cfg.model.architecture.backbone.depth == 50
    assert cfg.load_from == pth_path and cfg.default_scope == 'mmdet'

    assert cfg.model.architecture.backbone.init_cfg.type == 'Pretrained'
    init_default_scope('mmdet')
    slim = MODELS.build(cfg.model)  # building never downloads (only init_weights would)
    assert type(slim) is type(model)
    state = torch.load(pth_path, map_location='cpu', weights_only=True)['state_dict']
    slim.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in slim.parameters()) < 0.75 * sum(p.numel() for p in model.parameters())
    forward = make_trace_forward(model, shape)
    assert_same_outputs(masked_copy(model, graph, alive), slim, forward)

    # TorchScript tracing (what the legacy ONNX exporter runs) works on the slimmed model: no masks, no hooks
    class Tensors(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x, mode='tensor')

    x = torch.randn(1, *shape)
    traced = torch.jit.trace(Tensors(slim.eval()), (x,), check_trace=False)
    with torch.no_grad():
        torch.testing.assert_close(traced(x)[0][0], slim(x, mode='tensor')[0][0])
    if sys.modules.get('onnx') is not None or _has('onnx'):
        import io
        torch.onnx.export(Tensors(slim), (x,), io.BytesIO(), dynamo=False)


def _has(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


class CaptureWeights(Hook):
    """The model's parameters right after ``load_from`` (``before_train`` runs after ``load_or_resume``)."""

    def before_train(self, runner) -> None:
        self.state = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}


def test_finetune_config_trains_tests_and_infers(tmp_path):
    ensure_det_data()
    model_cfg = Config.fromfile(DET_CFG).model
    model = build(model_cfg)
    graph = analyze(model, make_trace_forward(model, DET_SHAPE))
    alive = random_alive(graph, 0.5, seed=2)
    json_path, pth_path = export_pruned(model, graph, alive, str(tmp_path), '',
                                        {'dataset_meta': {'classes': ('circle', 'square', 'triangle')}})
    data_root = osp.join(ROOT, 'data', 'generated', 'shapes_det') + '/'
    extra = textwrap.dedent(f"""\
        train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2, val_interval=100)
        param_scheduler = None
        default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=100, by_epoch=False),
                             logger=dict(type='LoggerHook', interval=1))
        _data = dict(data_root={data_root!r}, indices=8)
        train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=_data)
        val_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False, dataset=_data)
        test_dataloader = val_dataloader
        val_evaluator = dict(ann_file={data_root + 'annotations/val.json'!r})
        test_evaluator = val_evaluator
        """)
    cfg_path = write_finetune_cfg(str(tmp_path / 'finetune.py'), DET_CFG, json_path, pth_path, extra)
    state = torch.load(pth_path, map_location='cpu', weights_only=True)['state_dict']

    # fine-tune: load_from puts every slimmed weight in place (strict match of names and shapes)
    cfg = Config.fromfile(cfg_path)
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    capture = CaptureWeights()
    runner.register_hook(capture, priority='LOWEST')
    runner.train()
    assert capture.state.keys() == state.keys()
    for k, v in state.items():
        torch.testing.assert_close(capture.state[k], v, rtol=0, atol=0, msg=k)
    assert runner.iter == 2

    # tools/test.py runs the slimmed model from the same config (no masks, no hook)
    proc = subprocess.run([sys.executable, 'tools/test.py', cfg_path, pth_path, '--work-dir', str(tmp_path / 't')],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'Epoch(test) [2/2]' in proc.stdout and 'Pruned: built RetinaNet' in proc.stdout

    # mmdet's inferencer builds `mmfisher.Pruned` from the config and loads pruned.pth
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=cfg_path, weights=pth_path, device='cpu', show_progress=False)
    image = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    result = inferencer(image, return_vis=False, no_save_pred=True)
    assert len(result['predictions']) == 1 and 'bboxes' in result['predictions'][0]


def tiny_faster_rcnn():
    cfg = Config.fromfile(mm_config('mmdet', 'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')).model
    cfg.backbone.update(depth=18, base_channels=8, init_cfg=None)
    cfg.neck.update(in_channels=[8, 16, 32, 64], out_channels=16)
    cfg.rpn_head.update(in_channels=16, feat_channels=16)
    cfg.roi_head.bbox_roi_extractor.update(out_channels=16)
    cfg.roi_head.bbox_head.update(in_channels=16, fc_out_channels=32, num_classes=3)
    cfg.test_cfg.rpn.update(nms_pre=100, max_per_img=30)
    return cfg


def test_two_stage_detector_traces_rpn_and_roi_head_and_slims_exactly(tmp_path):
    model_cfg = tiny_faster_rcnn()
    model = build(model_cfg)
    shape = (3, 128, 128)
    forward = make_trace_forward(model, shape)
    graph = analyze(model, forward)
    for layer in ('neck.fpn_convs.0.conv', 'rpn_head.rpn_conv', 'roi_head.bbox_head.shared_fcs.0',
                  'roi_head.bbox_head.shared_fcs.1', 'roi_head.bbox_head.fc_cls'):
        assert (graph.in_atoms[layer] >= 0).all(), layer  # FPN, RPN and RoI-head channels are all prunable
    assert set(graph.unprunable) == {'rpn_head.rpn_cls', 'rpn_head.rpn_reg', 'roi_head.bbox_head.fc_cls',
                                     'roi_head.bbox_head.fc_reg'}
    # RoI-head cost is counted at the test-time number of RoIs (30 fixed proposals here)
    shared_fc0 = graph.records['roi_head.bbox_head.shared_fcs.0'].calls[0]
    assert shared_fc0.in_shape[0] == 30
    alive = random_alive(graph, 0.4, seed=3)
    cfg = channel_config(model, graph, alive)
    save_channel_config(cfg, str(tmp_path / 'channels.json'))
    slim = MODELS.build(dict(type='mmfisher.Pruned', architecture=model_cfg, channels=str(tmp_path / 'channels.json')))
    masked = masked_copy(model, graph, alive)
    slim.load_state_dict(slimmed_state(masked, graph, alive), strict=True)
    assert_same_outputs(masked, slim, forward)
    # and the full predict path (RPN proposals, RoI extractor with fewer channels, NMS)
    from mmfisher.models.tracing import det_data_samples
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        pa = masked.eval()(x, det_data_samples(shape[1:]), mode='predict')[0].pred_instances
        pb = slim.eval()(x, det_data_samples(shape[1:]), mode='predict')[0].pred_instances
    torch.testing.assert_close(pb.scores, pa.scores, rtol=1e-4, atol=1e-5)


def test_classifier_pruned_after_runner_level_sync_bn(tmp_path):
    """mmpretrain classifier traced in 'tensor' mode; a channel config fingerprinted on the SyncBN-converted model
    (``sync_bn='torch'`` in the pruning run) still builds with plain BN layers."""
    model_cfg = Config.fromfile(osp.join(ROOT, 'configs', 'tiny', 'resnet_tiny_shapes_cls.py')).model
    model = build(model_cfg, scope='mmpretrain')
    synced = convert_sync_batchnorm(copy.deepcopy(model), implementation='torch')
    shape = (3, 64, 64)
    forward = make_trace_forward(synced, shape)
    graph = analyze(synced, forward)
    assert (graph.in_atoms['head.fc'] >= 0).all() and 'head.fc' in graph.unprunable
    alive = random_alive(graph, 0.5, seed=4)
    cfg = channel_config(synced, graph, alive)
    slim = MODELS.build(dict(type='mmfisher.Pruned', architecture=model_cfg, channels=cfg))
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in slim.modules())
    masked = masked_copy(synced, graph, alive)
    slim.load_state_dict(slimmed_state(masked, graph, alive), strict=True)
    assert_same_outputs(masked, slim, forward)
    assert slim.head.fc.in_features == int(alive[graph.in_atoms['head.fc']].sum())


@pytest.mark.parametrize('kind', ['det', 'cls'])
def test_trace_forward_is_deterministic_and_leaves_the_global_rng_alone(kind):
    model = build(tiny_faster_rcnn()) if kind == 'det' else build(
        Config.fromfile(osp.join(ROOT, 'configs', 'tiny', 'resnet_tiny_shapes_cls.py')).model, 'mmpretrain')
    state = torch.get_rng_state()
    f1 = make_trace_forward(model, (3, 64, 64), seed=7)
    f2 = make_trace_forward(model, (3, 64, 64), seed=7)
    assert torch.equal(state, torch.get_rng_state())
    model.eval()
    with torch.no_grad():
        a, b = f1(model), f2(model)
    from _hook_helpers import tensors
    assert all(torch.equal(x, y) for x, y in zip(tensors(a), tensors(b)))


def test_build_model_takes_the_top_level_data_preprocessor_as_the_runner_does():
    """mmpretrain configs set ``data_preprocessor`` at the top level; mmengine's Runner moves it into the model, so a
    channels.json written in tools/train.py fingerprints that model: mmfisher.zoo.build_model (verify_slimming, the
    demo, inference scripts) must build the same one, or the Pruned model refuses its own checkpoint."""
    from mmengine.registry import MODELS, init_default_scope
    import mmfisher  # noqa: F401
    from mmfisher.core.slim import model_fingerprint
    from mmfisher.zoo import build_model
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    cfg = Config.fromfile(osp.join(root, 'configs', 'tiny', 'resnet_tiny_shapes_cls.py'))
    model = build_model(cfg)
    assert type(model.data_preprocessor).__name__ == 'ClsDataPreprocessor'
    init_default_scope('mmpretrain')
    runner_cfg = copy.deepcopy(cfg.model)
    runner_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)  # what Runner.build_model is given
    assert model_fingerprint(model) == model_fingerprint(MODELS.build(runner_cfg))
