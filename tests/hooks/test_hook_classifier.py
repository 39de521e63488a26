"""FisherPruningHook on an mmpretrain classifier (top-level ``data_preprocessor`` config), then the fine-tune
config pattern through a Runner."""
import copy
import os.path as osp

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import MODELS
from mmengine.runner import Runner

from _hook_helpers import ROOT, assert_same_outputs, finetune_config, get_hook, small_cls_cfg

CLS_CFG = osp.join(ROOT, 'configs', 'tiny', 'resnet_tiny_shapes_cls.py')
DATA = osp.join(ROOT, 'data', 'generated', 'shapes_cls')


def _small(cfg, work_dir: str, max_iters: int) -> None:
    small_cls_cfg(cfg, work_dir, max_iters, DATA)


class CaptureWeights(Hook):
    def before_train(self, runner) -> None:
        self.state = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}


def test_prune_and_finetune_a_classifier(tmp_path):
    work = str(tmp_path / 'prune')
    cfg = Config.fromfile(CLS_CFG)
    _small(cfg, work, max_iters=30)
    cfg.custom_hooks = [dict(type='mmfisher.FisherPruningHook', interval=1, channels_per_step=48, target=0.6,
                             input_shape=(3, 64, 64), divisor=4)]
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = get_hook(runner)
    assert hook.done and runner.iter < 30
    assert 'head.fc' in hook.graph.unprunable and (hook.graph.in_atoms['head.fc'] >= 0).all()
    masked = copy.deepcopy(runner.model)

    # fine-tune config: the Runner hands the top-level data_preprocessor to Pruned, which passes it on
    ft = finetune_config(str(tmp_path / 'finetune.py'), CLS_CFG, osp.join(work, 'channels.json'),
                         load_from=osp.join(work, 'pruned.pth'))
    _small(ft, str(tmp_path / 'ft'), max_iters=2)
    ft_runner = Runner.from_cfg(ft)
    capture = CaptureWeights()
    ft_runner.register_hook(capture, priority='LOWEST')
    ft_runner.train()
    slim = ft_runner.model
    assert type(slim) is type(masked)
    state = torch.load(osp.join(work, 'pruned.pth'), weights_only=True)['state_dict']
    assert capture.state.keys() == state.keys()
    for k, v in state.items():
        torch.testing.assert_close(capture.state[k], v, rtol=0, atol=0, msg=k)
    # kept channel counts are multiples of divisor=4 (or whole units)
    for module in slim.modules():
        if isinstance(module, torch.nn.Conv2d):
            assert module.out_channels % 4 == 0
    # the slimmed classifier (with the captured, pre-fine-tuning weights) computes what the masked one computes
    reference = MODELS.build(dict(type='mmfisher.Pruned', architecture=cfg.model,
                                  channels=osp.join(work, 'channels.json'), data_preprocessor=cfg.data_preprocessor))
    reference.load_state_dict(state, strict=True)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert_same_outputs(masked, reference, lambda m: m(x, mode='tensor'))
