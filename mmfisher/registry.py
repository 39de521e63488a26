"""mmfisher's registries: children of mmengine's roots with scope ``'mmfisher'``.

Configs can name mmfisher components with the scope prefix (``type='mmfisher.Pruned'``,
``type='mmfisher.FisherPruningHook'``) under any ``default_scope``; mmengine imports this module and then the
``locations`` on first use, so the prefixed form works even without ``custom_imports``. The hook and the builder
are also registered in mmengine's root registries, so the plain names (``type='FisherPruningHook'``,
``type='Pruned'``) resolve under ``default_scope='mmdet'`` or ``'mmpretrain'`` once ``mmfisher`` is imported.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmfisher', locations=['mmfisher.hooks'])
MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmfisher', locations=['mmfisher.models'])

__all__ = ['HOOKS', 'MODELS', 'MMENGINE_HOOKS', 'MMENGINE_MODELS']
