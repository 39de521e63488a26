"""FisherPruningHook on an mmpretrain classifier (top-level ``data_preprocessor`` config), then the fine-tune
config pattern through a Runner."""
import copy
import os.path as osp
import textwrap

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import MODELS
from mmengine.runner import Runner

from _hook_helpers import ROOT, assert_same_outputs, get_hook

CLS_CFG = osp.join(ROOT, 'configs', 'tiny', 'resnet_tiny_shapes_cls.py')
DATA = osp.join(ROOT, 'data', 'generated', 'shapes_cls')


def _small(cfg, work_dir: str, max_iters: int) -> None:
    from mmfisher.data_gen import make_all
    make_all(osp.join(ROOT, 'data', 'generated'), which=['shapes_cls'])
    cfg.merge_from_dict({'work_dir': work_dir, 'train_dataloader.num_workers': 0, 'train_dataloader.batch_size': 8,
                         'train_dataloader.persistent_workers': False, 'default_hooks.logger.interval': 1,
                         'train_dataloader.dataset.data_root': DATA})
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=100000)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=100000, by_epoch=False)
    cfg.param_scheduler = None
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None


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
    ft_path = str(tmp_path / 'finetune.py')
    with open(ft_path, 'w') as f:
        f.write(textwrap.dedent(f"""\
            _base_ = [{CLS_CFG!r}, 'mmfisher::_base_/fisher_finetune.py']
            model = dict(_delete_=True, type='mmfisher.Pruned', architecture={{{{_base_.model}}}},
                         channels={osp.join(work, 'channels.json')!r})
            load_from = {osp.join(work, 'pruned.pth')!r}
            """))
    ft = Config.fromfile(ft_path)
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
