"""mmfisher's registries: children of mmengine's roots with scope ``'mmfisher'``.

Configs can name mmfisher components with the scope prefix (``type='mmfisher.Pruned'``,
``type='mmfisher.FisherPruningHook'``) under any ``default_scope``; mmengine imports this module and then the
``locations`` on first use, so the prefixed form works even without ``custom_imports``. The hook and the builder
are also registered in mmengine's root registries, so the plain names (``type='FisherPruningHook'``,
``type='Pruned'``) resolve under ``default_scope='mmdet'`` or ``'mmpretrain'`` once ``mmfisher`` is imported.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmfisher', locations=['mmfisher.hooks'])
MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmfisher', locations=['mmfisher.models'])
# UnlabeledImages (label-free pruning); also in mmengine's root DATASETS, so the plain name resolves under
# default_scope='mmdet' / 'mmpretrain'
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='mmfisher', locations=['mmfisher.datasets'])

# The parts every pruning method shares (plain-PyTorch classes of mmfisher.core, registered here so configs
# select them: importance=dict(type='L1Norm'), schedule=dict(type='AdaptiveK', share=0.01)). A new criterion or
# schedule is one class in mmfisher/core/ plus one line below.
IMPORTANCE = Registry('importance criterion', scope='mmfisher')
SCHEDULES = Registry('pruning schedule', scope='mmfisher')


def _register_core_parts() -> None:
    from .core import importance, schedule
    for cls in (importance.GroupFisher, importance.Taylor, importance.L1Norm, importance.GroupMagnitude,
                importance.BNScale, importance.RandomImportance):
        IMPORTANCE.register_module(module=cls)
    for cls in (schedule.IntervalTopK, schedule.AdaptiveK):
        SCHEDULES.register_module(module=cls)


_register_core_parts()

__all__ = ['HOOKS', 'MODELS', 'DATASETS', 'MMENGINE_HOOKS', 'MMENGINE_MODELS', 'MMENGINE_DATASETS', 'IMPORTANCE',
           'SCHEDULES']
