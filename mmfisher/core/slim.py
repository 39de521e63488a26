"""Physical slimming and the JSON channel config.

:func:`channel_config` turns a graph plus an alive vector into a small JSON-able dict (kept positions per layer,
kept atoms per unit, a fingerprint of the unpruned model's structure); :func:`apply_channel_config` slims any
freshly built model of the same structure from it, without tracing. The slimmed model computes exactly what the
masked model computes (masks sit at the readers' inputs; a removed channel is removed everywhere).
"""
import hashlib
import json
import os
import tempfile
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from .layers import find_rule
from .units import ChannelGraph

FORMAT = 'mmfisher-channels/1'


class ChannelConfigError(ValueError):
    """A channel config that cannot be applied to this model (wrong model, corrupted or missing file)."""


def _kind(module: nn.Module) -> str:
    """A module's structural kind: its rule's class for ruled layers (so SyncBatchNorm, BatchNorm2d and
    FrozenBatchNorm agree, as Runner's ``sync_bn`` conversion must not change the fingerprint), else its type."""
    rule = find_rule(module)
    return type(rule).__name__ if rule is not None else type(module).__name__


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over every module's name, kind and parameter/buffer shapes (batch-norm counters excluded)."""
    items = []
    for name, module in model.named_modules():
        shapes = [(k, list(v.shape)) for k, v in list(module._parameters.items()) + list(module._buffers.items())
                  if v is not None and not k.endswith('num_batches_tracked')]
        if shapes:
            items.append([name, _kind(module), shapes])
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:32]


def _keep(atoms: np.ndarray, alive: np.ndarray) -> Optional[list]:
    if atoms.size == 0 or alive.size == 0:
        return None
    keep = (atoms < 0) | alive[np.clip(atoms, 0, None)]
    if keep.all():
        return None
    return np.nonzero(keep)[0].tolist()


def channel_config(model: nn.Module, graph: ChannelGraph, alive: np.ndarray,
                   extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The channel config for keeping atoms where ``alive`` (bool, ``(A,)``) is True.

    ``model`` must still have its unpruned structure (it is fingerprinted, not changed).
    """
    alive = np.asarray(alive, dtype=bool)
    if alive.shape != (graph.num_atoms,):
        raise ValueError(f'alive must have shape ({graph.num_atoms},), got {alive.shape}')
    layers: Dict[str, Dict[str, Optional[list]]] = {}
    for name, rule in graph.rules.items():
        if rule.role == 'passthrough':
            continue
        out_keep = _keep(graph.out_atoms[name], alive)
        in_keep = _keep(graph.in_atoms[name], alive) if name in graph.in_atoms else None
        if out_keep is not None or in_keep is not None:
            layers[name] = {'in': in_keep, 'out': out_keep}
    params = {}
    for pname, (dim, atoms) in graph.param_atoms.items():
        keep = _keep(atoms, alive)
        if keep is not None:
            params[pname] = {'dim': dim, 'keep': keep}
    attrs = {}
    for key, atoms in graph.attr_atoms.items():
        keep = _keep(atoms, alive)
        if keep is not None:
            attrs[key] = len(keep)
    units = [{'name': u.name, 'layers': u.layers, 'channels': int(u.atoms.size),
              'kept': np.nonzero(alive[u.atoms])[0].tolist()} for u in graph.units]
    cfg = {'format': FORMAT, 'fingerprint': model_fingerprint(model), 'layers': layers, 'params': params,
           'attrs': attrs, 'units': units}
    if extra:
        cfg['meta'] = extra
    return cfg


def _update_wrapper_attrs(model: nn.Module, name: str, module: nn.Module) -> None:
    """Keep wrappers such as mmcv's ConvModule (``.conv`` child) in step with their sliced layer."""
    if '.' not in name:
        return
    parent_name, child = name.rsplit('.', 1)
    parent = model.get_submodule(parent_name)
    if child != 'conv':
        return
    for attr in ('in_channels', 'out_channels', 'groups'):
        if hasattr(parent, attr) and hasattr(module, attr) and isinstance(getattr(parent, attr), int):
            setattr(parent, attr, getattr(module, attr))


def apply_channel_config(model: nn.Module, cfg: Dict[str, Any], check_fingerprint: bool = True) -> nn.Module:
    """Slim ``model`` (unpruned, same structure as when ``cfg`` was made) in place and return it."""
    if not isinstance(cfg, dict) or cfg.get('format') != FORMAT:
        raise ChannelConfigError(f'not an mmfisher channel config (expected "format": "{FORMAT}"); '
                                 'pass the channels.json written by FisherPruningHook or tools/')
    if check_fingerprint and cfg.get('fingerprint') != model_fingerprint(model):
        raise ChannelConfigError(
            'channel config was made for another model (structure fingerprint mismatch): build the same model '
            'config that was pruned, without its pruning, then apply the channel config')
    modules = dict(model.named_modules())
    for name, spec in cfg.get('layers', {}).items():
        module = modules.get(name)
        rule = find_rule(module) if module is not None else None
        if rule is None:
            raise ChannelConfigError(f'channel config names layer "{name}", which this model does not have (or '
                                     'cannot slice): the config belongs to another model')
        keeps = {}
        for side, size in (('in', rule.in_channels(module)), ('out', rule.out_channels(module))):
            idx = spec.get(side)
            if idx is None:
                keeps[side] = None
                continue
            t = torch.as_tensor(idx, dtype=torch.long)
            if t.dim() != 1 or t.numel() == 0 or int(t.min()) < 0 or int(t.max()) >= size or \
                    not bool((t[1:] > t[:-1]).all()):
                raise ChannelConfigError(f'channel config for layer "{name}" ({side}) has invalid indices for '
                                         f'{size} channels: the file is corrupted or belongs to another model')
            keeps[side] = t
        if rule.role == 'norm':
            keeps['in'] = keeps['out'] = keeps['out'] if keeps['out'] is not None else keeps['in']
        try:
            rule.slice(module, keeps['in'], keeps['out'])
        except ValueError as exc:
            raise ChannelConfigError(f'layer "{name}": {exc}') from exc
        _update_wrapper_attrs(model, name, module)
    params = dict(model.named_parameters(remove_duplicate=False))
    params.update(dict(model.named_buffers(remove_duplicate=False)))
    for pname, spec in cfg.get('params', {}).items():
        if pname not in params:
            raise ChannelConfigError(f'channel config names parameter "{pname}", which this model does not have')
        owner_name, attr = pname.rsplit('.', 1) if '.' in pname else ('', pname)
        owner = model.get_submodule(owner_name) if owner_name else model
        t = getattr(owner, attr)
        idx = torch.as_tensor(spec['keep'], dtype=torch.long)
        dim = int(spec['dim'])
        new = t.detach().index_select(dim, idx).clone()
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(new, requires_grad=t.requires_grad)
        else:
            owner._buffers[attr] = new
    for key, value in cfg.get('attrs', {}).items():
        owner_name, attr = key.rsplit('.', 1) if '.' in key else ('', key)
        owner = modules.get(owner_name)
        if owner is None or not isinstance(getattr(owner, attr, None), int) or not isinstance(value, int) or \
                not 0 < value <= getattr(owner, attr):
            raise ChannelConfigError(f'channel config sets "{key}" = {value!r}, which does not fit this model')
        setattr(owner, attr, value)
    return model


def slim_model(model: nn.Module, graph: ChannelGraph, alive: np.ndarray) -> Dict[str, Any]:
    """Slim ``model`` in place to the atoms ``alive``; returns the channel config that reproduces it."""
    cfg = channel_config(model, graph, alive)
    apply_channel_config(model, cfg)
    return cfg


def save_channel_config(cfg: Dict[str, Any], path: str) -> None:
    """Write atomically: a crash never leaves a half-written channels.json."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.channels.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(cfg, f, separators=(',', ':'))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_channel_config(path: str) -> Dict[str, Any]:
    """Read a channel config, with errors that say what is wrong and how to fix it."""
    if not os.path.isfile(path):
        raise ChannelConfigError(f'channel config "{path}" does not exist: point `channels` at the channels.json '
                                 'that FisherPruningHook wrote in the pruning work_dir')
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ChannelConfigError(f'channel config "{path}" is not valid JSON ({exc}): the file is corrupted; '
                                 're-export it from the pruning checkpoint') from exc
    if not isinstance(cfg, dict) or cfg.get('format') != FORMAT:
        raise ChannelConfigError(f'"{path}" is not an mmfisher channel config (expected "format": "{FORMAT}")')
    return cfg
