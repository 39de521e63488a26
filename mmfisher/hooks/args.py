"""Argument checks, log formatting and part building shared by the pruning drivers (the mm glue's helpers)."""
from typing import Any, Dict, List

import numpy as np
from mmengine.registry import DefaultScope

__all__ = ['build_part', 'is_int', 'is_number', 'patterns', 'ratio_text', 'short_list']


def is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def patterns(value: Any) -> tuple:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise TypeError(f'skip={value!r} must be a sequence of fnmatch patterns over unit or layer names, e.g. '
                        "skip=('backbone.conv1', 'neck.*')")
    return tuple(value)


def short_list(names: List[str], n: int = 8) -> str:
    return ', '.join(names[:n]) + (f', ... {len(names) - n} more' if len(names) > n else '')


def ratio_text(r: Dict[str, float]) -> str:
    return f'flops {r["flops"]:.4f}, acts {r["acts"]:.4f}, params {r["params"]:.4f} of the unpruned model'


def build_part(registry, cfg: Any, kind: str, base: type, field: str):
    if isinstance(cfg, base):
        return cfg
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'{field}={cfg!r} must be a dict with a "type" (one of {sorted(registry.module_dict)}), '
                        f'e.g. {field}=dict(type={sorted(registry.module_dict)[0]!r})')
    try:
        with DefaultScope.overwrite_default_scope('mmfisher'):  # the parts' registries have no task scope
            part = registry.build(dict(cfg))
    except KeyError as exc:
        raise ValueError(f'{field}: unknown {kind} type {cfg["type"]!r}; registered: '
                         f'{sorted(registry.module_dict)}') from exc
    except TypeError as exc:
        raise TypeError(f'{field}={dict(cfg)!r}: {exc}') from exc
    if not isinstance(part, base):
        raise TypeError(f'{field}: {type(part).__name__} is not a {kind} ({base.__name__})')
    return part
