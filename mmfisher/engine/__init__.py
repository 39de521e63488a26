"""Runtime patches that make the pinned stack (torch 2.13 + mmengine 0.10.7) work; applied on import.

* :mod:`.checkpoint`: allow-list the globals mmengine checkpoints need under ``weights_only=True``.
* :mod:`.dist`: distributed training/testing on CPU-only machines (gloo).
* :mod:`.config`: ``_base_ = 'mmfisher::...'`` config paths (also from an editable install).
* :mod:`.launch`: config helpers shared by ``tools/train.py`` and ``tools/test.py``.
"""
from .checkpoint import register_safe_globals, safe_globals
from .config import ConfigConflict, load_config, register_config_scope
from .dist import default_backend, has_accelerator, patch_cpu_distributed
from . import launch  # noqa: F401

register_safe_globals()
register_config_scope()
patch_cpu_distributed()

__all__ = ['ConfigConflict', 'load_config', 'safe_globals', 'register_safe_globals', 'register_config_scope', 'patch_cpu_distributed', 'has_accelerator', 'default_backend']
