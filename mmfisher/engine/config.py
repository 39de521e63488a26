"""Make ``_base_ = 'mmfisher::path/in/configs.py'`` resolve like ``mmdet::`` with mmengine 0.10.7's Config.

mmengine resolves ``pkg::`` only for packages in its hard-coded ``MODULE2PACKAGE`` table, then looks for
``<installed path>/.mim/configs``. setup.py ships ``configs/`` there; this module

1. adds ``mmfisher`` to ``MODULE2PACKAGE`` (so ``import mmfisher`` must precede parsing such a config: our tools
   import it first; with mmdet's tools, import mmfisher or inherit by relative/absolute path);
2. fixes ``get_installed_path`` for editable installs: mmengine derives the path from the distribution's
   metadata folder (``site-packages/<pkg>``), which does not exist for a PEP 660 editable install; when that
   path is missing we fall back to where Python imports the package from. Existing paths are returned unchanged.
"""
from __future__ import annotations

import functools
import importlib.util
import os.path as osp
from typing import Any

_PATCHED = '_mmfisher_editable_patch'


def _editable_aware(original: Any) -> Any:

    @functools.wraps(original)
    def get_installed_path(package: str) -> str:
        path = original(package)
        if osp.isdir(path):
            return path
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None and osp.isdir(osp.dirname(spec.origin)):
            return osp.dirname(spec.origin)
        return path

    setattr(get_installed_path, _PATCHED, True)
    return get_installed_path


def register_config_scope(package: str = 'mmfisher') -> None:
    """Let mmengine's Config resolve ``<package>::`` config paths (idempotent)."""
    from mmengine.config import config as config_module
    from mmengine.config import utils as config_utils
    config_utils.MODULE2PACKAGE.setdefault(package, package)
    if not getattr(config_module.get_installed_path, _PATCHED, False):
        config_module.get_installed_path = _editable_aware(config_module.get_installed_path)
