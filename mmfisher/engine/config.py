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
from typing import Any, Dict, List, Optional, Tuple

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


class ConfigConflict(ValueError):
    """Two ``_base_`` files of one config set the same top-level key (mmengine refuses that)."""


_DUPLICATE = 'Duplicate key is not allowed among bases'


def _hook_fix(hooks: List[str]) -> str:
    """The recipe for a model base and an mmfisher base that both set custom_hooks."""
    listed = ', '.join(f"dict(type='{h}', ...)" for h in hooks)
    return ("inherit the model base only and list every hook in your config, the model base's first: "
            f"custom_hooks = _base_.custom_hooks + [{listed}] (the mmfisher base's hook dict with its arguments: "
            "configs/_base_/ of mmfisher, or mmfisher.hooks' docstrings)")


def _base_keys(path: str) -> Tuple[List[Tuple[str, Any]], Optional[str]]:
    """The ``_base_`` files of ``path``, each with its loaded Config, and the first base that itself fails with a
    duplicate key (None when every base loads)."""
    from mmengine.config import Config
    out, failing = [], None
    for spec in Config._get_base_files(path):
        base_path, _ = Config._get_cfg_path(spec, path)  # relative specs joined to path's folder, as mmengine does
        try:
            loaded = Config.fromfile(base_path)
        except KeyError as err:
            if _DUPLICATE not in str(err):
                raise
            failing = failing or base_path
            continue
        out.append((spec, loaded))
    return out, failing


def _conflict(path: str) -> Optional[str]:
    """The message for the first config in ``path``'s ``_base_`` tree whose bases set a key twice."""
    bases, failing = _base_keys(path)
    owners: Dict[str, List[str]] = {}
    mmfisher_hooks: List[str] = []
    for spec, loaded in bases:
        for key in loaded.keys():
            owners.setdefault(key, []).append(spec)
        mmfisher_hooks += [h['type'] for h in loaded.get('custom_hooks') or []
                           if isinstance(h, dict) and str(h.get('type', '')).startswith('mmfisher.')]
    twice = {k: v for k, v in sorted(owners.items()) if len(v) > 1}
    if not twice:
        return _conflict(failing) if failing else None
    fixes = []
    for key, specs in twice.items():
        fix = (_hook_fix(mmfisher_hooks) if key == 'custom_hooks' and mmfisher_hooks
               else f'drop {key} from all but one of them, or inherit fewer bases and set {key} in your config')
        fixes.append(f"{key!r} is set by {', '.join(specs)}: {fix}")
    return f"config {path}: mmengine refuses a key set by two _base_ files. " + '; '.join(fixes)


def load_config(path: str):  # -> mmengine.config.Config
    """``Config.fromfile(path)``, with mmengine's duplicate-key error among ``_base_`` files re-raised as
    :class:`ConfigConflict` naming the key, the bases that set it and the fix (an mmfisher pruning base beside a
    model base that sets ``custom_hooks`` too: SSD, YOLOX, RTMDet, ...)."""
    from mmengine.config import Config
    try:
        return Config.fromfile(path)
    except KeyError as err:
        if _DUPLICATE not in str(err):
            raise
        message = _conflict(path)
        if message is None:
            raise
        raise ConfigConflict(message) from None
