"""mmfisher: Group Fisher channel pruning for OpenMMLab 2.x.

``import mmfisher`` (or ``custom_imports = dict(imports=['mmfisher'])`` in a config) registers every mmfisher
component with the mm registries and applies the runtime patches in :mod:`mmfisher.engine`.
"""
__version__ = '0.1.0'

from . import engine  # noqa: F401,E402  runtime patches: checkpoint allow-list, CPU distributed

# Registered components: the pruning hook, the slimmed-model builder, the label-free distiller and its data set.
from . import datasets, hooks, models  # noqa: F401,E402
