"""Issue 11 end to end: FisherPruningHook prunes the tiny ViT (configs/tiny/vit_tiny_shapes_cls.py) on the bundled
shapes data (embedding width, whole heads, MLP widths), the slimmed pair computes what the masked model computes,
the ``Pruned`` fine-tune config trains it, and the slimmed ViT exports to ONNX (checked with onnxruntime)."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS
from mmengine.runner import Runner

from mmfisher.models import TensorMode

from _hook_helpers import ROOT, assert_same_outputs, finetune_config, get_hook, small_cls_cfg

VIT_CFG = osp.join(ROOT, 'configs', 'tiny', 'vit_tiny_shapes_cls.py')
PRUNE_CFG = osp.join(ROOT, 'configs', 'tiny', 'vit_tiny_cls_prune.py')
DATA = osp.join(ROOT, 'data', 'generated', 'shapes_cls')


def _small(cfg, work_dir: str, max_iters: int) -> None:
    small_cls_cfg(cfg, work_dir, max_iters, DATA)
    cfg.load_from = None


def test_configs_load():
    for name in ('vit_tiny_shapes_cls.py', 'vit_tiny_cls_prune.py', 'vit_tiny_cls_finetune.py'):
        cfg = Config.fromfile(osp.join(ROOT, 'configs', 'tiny', name))
        assert cfg.model.type in ('ImageClassifier', 'mmfisher.Pruned')
    assert Config.fromfile(PRUNE_CFG).custom_hooks[0].type == 'mmfisher.FisherPruningHook'


def test_prune_finetune_and_export_a_vit(tmp_path):
    work = str(tmp_path / 'prune')
    cfg = Config.fromfile(PRUNE_CFG)
    _small(cfg, work, max_iters=40)
    cfg.custom_hooks = [dict(type='mmfisher.FisherPruningHook', interval=2, channels_per_step=24, target=0.6,
                             input_shape=(3, 64, 64))]
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = get_hook(runner)
    assert hook.done and runner.iter < 40
    graph = hook.graph
    assert set(graph.unprunable) == {'head.layers.head'}, graph.unprunable
    summary = graph.summary()
    assert summary['channels_prunable'] >= 0.9 * summary['channels_total']
    masked = copy.deepcopy(runner.model)

    reference = MODELS.build(dict(type='mmfisher.Pruned', architecture=cfg.model,
                                  channels=osp.join(work, 'channels.json'), data_preprocessor=cfg.data_preprocessor))
    state = torch.load(osp.join(work, 'pruned.pth'), weights_only=True)['state_dict']
    reference.load_state_dict(state, strict=True)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert_same_outputs(masked, reference, lambda m: m(x, mode='tensor'))
    backbone = reference.backbone
    widths = [backbone.layers[i].attn.num_heads for i in range(4)]
    stream = backbone.patch_embed.projection.out_channels
    hidden = [backbone.layers[i].ffn.layers[0][0].out_features for i in range(4)]
    assert stream < 64 or min(widths) < 4 or min(hidden) < 128, (stream, widths, hidden)
    print(f'slimmed tiny ViT: stream {stream}/64, heads {widths}/4, MLP {hidden}/128')
    assert backbone.cls_token.shape[-1] == backbone.pos_embed.shape[-1] == stream

    # the fine-tune config pattern trains the slimmed ViT
    ft = finetune_config(str(tmp_path / 'finetune.py'), VIT_CFG, osp.join(work, 'channels.json'))
    _small(ft, str(tmp_path / 'ft'), max_iters=3)
    ft.load_from = osp.join(work, 'pruned.pth')
    ft_runner = Runner.from_cfg(ft)
    ft_runner.train()
    slim = ft_runner.model
    assert slim.backbone.patch_embed.projection.out_channels == stream

    # ONNX export of the slimmed ViT, checked against torch
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')

    net = TensorMode(slim.eval()).eval()  # forward(x) -> the flat tuple of model(x, mode='tensor')'s tensors
    path = str(tmp_path / 'vit_slim.onnx')
    with torch.no_grad():
        torch.onnx.export(net, (x,), path, input_names=['inputs'], output_names=['scores'], opset_version=17,
                          dynamo=False)
        expect = net(x)[0]
    onnx.checker.check_model(onnx.load(path))
    got = ort.InferenceSession(path, providers=['CPUExecutionProvider']).run(None, {'inputs': x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), expect, rtol=1e-3, atol=1e-4)
