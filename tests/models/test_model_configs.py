"""The paper-setting prune / fine-tune configs of configs/detection and configs/classification (docs/model_zoo.md).

For every pair: the prune config loads, inherits the package's own config, sets the paper's hook arguments and an
iteration-based loop starting from a trained checkpoint; its model builds without pretrained weights and its trace
finds >= 80% of the channels prunable (at a small input). The fine-tune config is the ``mmfisher.Pruned`` pattern
over the same architecture with the package's standard schedule; built from a channels.json written here for a
random 30% mask (through the prune model's fingerprint check), it is smaller and runs a forward.
Nothing is trained or downloaded: the full-size runs need COCO / ImageNet and GPUs.
"""
import copy
import glob
import os
import os.path as osp

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import HOOKS, MODELS, DefaultScope, init_default_scope

import mmfisher  # noqa: F401  registers mmfisher:: configs, FisherPruningHook and Pruned
from mmfisher.core import analyze, channel_config, random_alive, save_channel_config
from mmfisher.hooks import FisherPruningHook
from mmfisher.models.tracing import make_trace_forward
from mmfisher.zoo import build_model, load_config, strip_pretrained

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = osp.join(ROOT, 'configs')

DET_SHAPE = (3, 128, 128)  # trace / forward shapes here; the configs count costs at (3, 800, 1333) / (3, 224, 224)
CLS_SHAPE = (3, 64, 64)

# (prune config, fine-tune config, the package config both inherit, target)
DET = [
    ('retinanet_r50_fpn_fisher_prune_coco', 'retinanet_r50_fpn_fisher_finetune_coco',
     'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', 0.5),
    ('fcos_r50-caffe_fpn_gn-head_fisher_prune_coco', 'fcos_r50-caffe_fpn_gn-head_fisher_finetune_coco',
     'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', 0.5),
    ('atss_r50_fpn_fisher_prune_coco', 'atss_r50_fpn_fisher_finetune_coco',
     'mmdet::atss/atss_r50_fpn_1x_coco.py', 0.5),
    ('fsaf_r50_fpn_fisher_prune_coco', 'fsaf_r50_fpn_fisher_finetune_coco',
     'mmdet::fsaf/fsaf_r50_fpn_1x_coco.py', 0.5),
    ('faster-rcnn_r50_fpn_fisher_prune_coco', 'faster-rcnn_r50_fpn_fisher_finetune_coco',
     'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', 0.25),
]
CLS = [
    ('resnet50_fisher_prune_in1k', 'resnet50_fisher_finetune_in1k',
     'mmpretrain::resnet/resnet50_8xb32_in1k.py', 0.5),
    ('resnext50-32x4d_fisher_prune_in1k', 'resnext50-32x4d_fisher_finetune_in1k',
     'mmpretrain::resnext/resnext50-32x4d_8xb32_in1k.py', 0.5),
    ('mobilenet-v2_fisher_prune_in1k', 'mobilenet-v2_fisher_finetune_in1k',
     'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py', 0.5),
    ('regnetx-400mf_fisher_prune_in1k', 'regnetx-400mf_fisher_finetune_in1k',
     'mmpretrain::regnet/regnetx-400mf_8xb128_in1k.py', 0.5),
    ('densenet121_fisher_prune_in1k', 'densenet121_fisher_finetune_in1k',
     'mmpretrain::densenet/densenet121_4xb256_in1k.py', 0.5),
    ('efficientnet-b0_fisher_prune_in1k', 'efficientnet-b0_fisher_finetune_in1k',
     'mmpretrain::efficientnet/efficientnet-b0_8xb32_in1k.py', 0.5),
]
PAIRS = [('detection', *p) for p in DET] + [('classification', *p) for p in CLS]
IDS = [p[1].split('_fisher_')[0] for p in PAIRS]


def path(task: str, name: str) -> str:
    return osp.join(CONFIGS, task, name + '.py')


def fisher_hooks(cfg):
    return [h for h in cfg.get('custom_hooks') or [] if str(h['type']).split('.')[-1] == 'FisherPruningHook']


def runner_model_cfg(cfg) -> ConfigDict:
    """``cfg.model`` as the Runner builds it: a top-level ``data_preprocessor`` (mmpretrain) is handed down."""
    model = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:
        model.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
    return model


def without_scope(d):
    if isinstance(d, dict):
        return {k: without_scope(v) for k, v in d.items() if k != '_scope_'}
    if isinstance(d, (list, tuple)):
        return [without_scope(v) for v in d]
    return d


def released_weights(base: str):
    """The checkpoint URLs the package's metafile.yml lists for the config ``base`` (``pkg::dir/name.py``)."""
    from mmengine.fileio import load
    from mmengine.utils import get_installed_path
    pkg, rel = base.split('::')
    meta = load(osp.join(get_installed_path(pkg), '.mim', 'configs', osp.dirname(rel), 'metafile.yml'))
    return {m['Weights'] for m in meta['Models'] if m.get('Config') == f'configs/{rel}' and m.get('Weights')}


# The zoo configs of the other methods are checked by their own tests, each with its own "every config is tested".
OTHER_METHODS = {'label_free': 'tests/models/test_label_free_configs.py',
                 'balanced': 'tests/hooks/test_balanced_configs.py'}


def test_every_config_in_the_zoo_folders_is_tested():
    found = {osp.splitext(osp.basename(p))[0] for task in ('detection', 'classification')
             for p in glob.glob(osp.join(CONFIGS, task, '*.py'))
             if not any(f'_{method}_' in osp.basename(p) for method in OTHER_METHODS)}
    for test_file in OTHER_METHODS.values():
        assert osp.isfile(osp.join(ROOT, test_file)), test_file
    listed = {name for p in PAIRS for name in p[1:3]}
    assert found == listed


@pytest.fixture(scope='module', params=PAIRS, ids=IDS)
def pruned(request):
    """(pair, prune cfg, unpruned model built the Runner's way without pretrained weights, its graph)."""
    task, prune, _, base, _ = request.param
    cfg = Config.fromfile(path(task, prune))
    shape = DET_SHAPE if task == 'detection' else CLS_SHAPE
    torch.manual_seed(0)
    model = build_model(Config(dict(model=runner_model_cfg(cfg), default_scope=cfg.default_scope)))
    graph = analyze(model, make_trace_forward(model, shape))
    return request.param, cfg, model, graph, shape


def test_prune_config_inherits_the_package_config_with_the_paper_settings(pruned):
    (task, prune, _, base, target), cfg, *_ = pruned
    package = load_config(base)
    assert cfg.default_scope == package.default_scope
    assert cfg.model.type == package.model.type and cfg.model.backbone.type == package.model.backbone.type
    assert cfg.train_dataloader.dataset.type == package.train_dataloader.dataset.type

    hooks = fisher_hooks(cfg)
    assert len(hooks) == 1 and len(cfg.custom_hooks) == 1  # e.g. RegNet's PreciseBNHook stays out of pruning
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        hook = HOOKS.build(hooks[0])
    assert isinstance(hook, FisherPruningHook)
    paper = (10, (3, 800, 1333)) if task == 'detection' else (25, (3, 224, 224))
    assert (hook.interval, hook.input_shape) == paper
    assert (hook.delta, hook.target, hook.target_metric) == ('acts', target, 'flops')
    assert hook.channels_per_step >= 1 and hook.stop_at_target and not hook.prune_frozen

    # iteration based, so it stops at the target; pruning starts from a trained checkpoint
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.val_interval >= cfg.train_cfg.max_iters
    assert cfg.default_hooks.checkpoint.by_epoch is False and cfg.log_processor.by_epoch is False
    assert cfg.load_from in released_weights(base)
    # the pruning learning rate is below the standard one
    assert cfg.optim_wrapper.optimizer.lr < package.optim_wrapper.optimizer.lr
    # nothing is downloaded besides load_from
    assert strip_pretrained(cfg.model) == cfg.model
    if task == 'detection':  # the official code trains and prunes every stage
        assert cfg.model.backbone.frozen_stages == -1


def test_prune_model_traces_with_most_channels_prunable(pruned):
    (task, *_), cfg, model, graph, shape = pruned
    s = graph.summary()
    assert s['channels_prunable'] >= 0.8 * s['channels_total'], s['unprunable']
    assert graph.num_atoms > 0 and len(graph.units) > 10
    # max_iters is a bound the hook never hits: one atom is masked per step at least
    hook = fisher_hooks(cfg)[0]
    assert cfg.train_cfg.max_iters >= hook['interval'] * graph.num_atoms / hook['channels_per_step']
    # only output layers keep their output channels
    heads = ('head.fc',) if task == 'classification' else ('cls', 'reg', 'centerness')
    assert all(name.endswith(heads) for name in graph.unprunable), graph.unprunable


def test_finetune_config_builds_the_slimmed_model(pruned, tmp_path):
    (task, prune, finetune, base, _), prune_cfg, model, graph, shape = pruned
    cfg = Config.fromfile(path(task, finetune))
    package = load_config(base)

    # the documented Pruned pattern, pointing at the prune run's outputs
    assert cfg.model.type == 'mmfisher.Pruned' and set(cfg.model) == {'type', 'architecture', 'channels'}
    assert cfg.model.channels == f'work_dirs/{prune}/channels.json'
    assert cfg.load_from == f'work_dirs/{prune}/pruned.pth'
    assert not fisher_hooks(cfg)
    # the architecture is exactly the pruned one
    assert without_scope(cfg.model.architecture) == without_scope(prune_cfg.model)
    # ... and trains with the package's standard schedule
    for key in ('train_cfg', 'optim_wrapper', 'param_scheduler', 'train_dataloader', 'default_hooks',
                'custom_hooks', 'data_preprocessor'):
        assert without_scope(cfg.get(key)) == without_scope(package.get(key)), key

    alive = random_alive(graph, 0.3, seed=0)
    channels = str(tmp_path / 'channels.json')
    save_channel_config(channel_config(model, graph, alive), channels)
    cfg.model.channels = channels
    init_default_scope(cfg.default_scope)
    slim = MODELS.build(runner_model_cfg(cfg))  # fingerprint checked against the prune model
    assert type(slim) is type(model)
    n_slim, n_full = (sum(p.numel() for p in m.parameters()) for m in (slim, model))
    assert n_slim < 0.85 * n_full, (n_slim, n_full)
    slim.eval()
    with torch.no_grad():
        out = make_trace_forward(slim, shape)(slim)
    flat = _tensors(out)
    assert flat and all(torch.isfinite(t).all() for t in flat)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return []


# A detector iteration at R50 size takes seconds on 2 CPU cores (about 3 minutes for this test): opt in with
# MMFISHER_SLOW_TESTS=1.
SLOW = pytest.mark.skipif(not os.environ.get('MMFISHER_SLOW_TESTS'),
                          reason='R50 detector training on the CPU; set MMFISHER_SLOW_TESTS=1 to run it')
SMOKE = [pytest.param(*p, marks=SLOW if p[0] == 'detection' else (), id=p[1].split('_fisher_')[0])
         for p in PAIRS if p[1] in ('retinanet_r50_fpn_fisher_prune_coco', 'resnet50_fisher_prune_in1k')]


def _toy_data(cfg, task: str) -> None:
    """Swap COCO / ImageNet for the bundled toy sets (small images, no validation) and run on the CPU quickly."""
    from mmfisher.data_gen import make_all
    which = 'shapes_det' if task == 'detection' else 'shapes_cls'
    make_all(osp.join(ROOT, 'data', 'generated'), which=[which])
    tiny = Config.fromfile(osp.join(CONFIGS, '_base_', 'datasets', which + '.py'))
    loader = copy.deepcopy(tiny.train_dataloader)
    loader.dataset.data_root = osp.join(ROOT, 'data', 'generated', which) + '/'
    loader.update(batch_size=2 if task == 'detection' else 8, num_workers=0, persistent_workers=False)
    cfg.train_dataloader = loader
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)


@pytest.mark.parametrize('task, prune, finetune, base, target', SMOKE)
def test_prune_config_runs_and_its_output_fine_tunes(task, prune, finetune, base, target, tmp_path):
    """The prune config's own loop, schedule and hooks run (toy data, a random start, a quick target); the
    fine-tune config then builds the slimmed model from the run's channels.json and loads its pruned.pth."""
    from mmengine.runner import Runner
    work = str(tmp_path / prune)
    cfg = Config.fromfile(path(task, prune))
    _toy_data(cfg, task)
    cfg.work_dir = work
    cfg.load_from = None  # the trained checkpoint cannot be downloaded here
    cfg.custom_hooks[0].update(interval=1, channels_per_step=400, target=0.9,
                               input_shape=DET_SHAPE if task == 'detection' else CLS_SHAPE)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.train_loop.stop_training and runner.iter < 20
    assert osp.isfile(osp.join(work, 'channels.json')) and osp.isfile(osp.join(work, 'pruned.pth'))

    ft = Config.fromfile(path(task, finetune))
    _toy_data(ft, task)
    ft.work_dir = str(tmp_path / finetune)
    ft.model.channels = osp.join(work, 'channels.json')
    ft.load_from = osp.join(work, 'pruned.pth')
    ft.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1, val_interval=100)
    ft.param_scheduler = None
    ft_runner = Runner.from_cfg(ft)
    ft_runner.train()
    # the Runner loads non-strictly: the slimmed structure must match pruned.pth name for name, shape for shape
    state = torch.load(osp.join(work, 'pruned.pth'), map_location='cpu', weights_only=True)['state_dict']
    assert {k: v.shape for k, v in ft_runner.model.state_dict().items()} == {k: v.shape for k, v in state.items()}
    assert type(ft_runner.model) is type(runner.model)
