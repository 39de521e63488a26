"""Physical slimming and the JSON channel config.

:func:`channel_config` turns a graph plus an alive vector into a small JSON-able dict (kept positions per layer,
kept atoms per unit, a fingerprint of the unpruned model's structure); :func:`apply_channel_config` slims any
freshly built model of the same structure from it, without tracing. The slimmed model computes exactly what the
masked model computes (masks sit at the readers' inputs; a removed channel is removed everywhere).
"""
import hashlib
import json
import os
from collections import Counter
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .files import atomic_write
from .layers import INFER_ATTR, adapt_forwards, find_rule
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
        if rule.is_passthrough:
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
    if graph.inferred_sizes:  # modules whose slimmed forward infers a reshape size (layers.InferredSizesAdapter)
        cfg['forwards'] = {name: {'infer_sizes': list(pos)} for name, pos in sorted(graph.inferred_sizes.items())}
    if extra:
        cfg['meta'] = extra
    return cfg


def _update_wrapper_attrs(model: nn.Module, name: str, module: nn.Module) -> None:
    """Keep wrappers such as mmcv's ConvModule (``.conv`` child) in step with their sliced layer. Only plain int
    attributes are updated: a property (timm's ``ConvNormAct.in_channels`` reads ``self.conv``) already follows."""
    if '.' not in name:
        return
    parent_name, child = name.rsplit('.', 1)
    if child != 'conv':
        return
    parent = model.get_submodule(parent_name)
    plain = vars(parent)
    for attr in ('in_channels', 'out_channels', 'groups'):
        if isinstance(plain.get(attr), int) and isinstance(getattr(module, attr, None), int):
            setattr(parent, attr, getattr(module, attr))


_REEXPORT = 're-export it from the pruning run (FisherPruningHook writes channels.json in its work_dir)'


def _check_units(units: Any, slims: bool) -> None:
    """``units`` of a channel config: a list of ``{"name", "layers", "channels", "kept"}`` whose ``kept`` are
    distinct, sorted positions in ``0..channels-1``; empty only when the config slims nothing."""
    if not isinstance(units, list):
        raise ChannelConfigError(f'channel config "units" must be a list of units, got {type(units).__name__}: the '
                                 f'file is corrupted; {_REEXPORT}')
    if not units and slims:
        raise ChannelConfigError(f'channel config lists no units but slims layers: the file is inconsistent '
                                 f'(edited by hand or truncated); {_REEXPORT}')
    for i, unit in enumerate(units):
        name = unit.get('name') if isinstance(unit, dict) else None
        label = f'unit {i} ("{name}")' if isinstance(name, str) else f'unit {i}'
        if not isinstance(unit, dict) or not isinstance(name, str):
            raise ChannelConfigError(f'channel config {label} must be an object with a "name", "channels" and '
                                     f'"kept": the file is corrupted; {_REEXPORT}')
        channels, kept = unit.get('channels'), unit.get('kept')
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ChannelConfigError(f'channel config {label} has "channels" = {channels!r}, not a positive '
                                     f'count: the file is corrupted; {_REEXPORT}')
        if not isinstance(kept, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in kept):
            raise ChannelConfigError(f'channel config {label} has "kept" = {kept!r}, not a list of channel '
                                     f'indices: the file is corrupted; {_REEXPORT}')
        outside = [k for k in kept if not 0 <= k < channels]
        if outside:
            raise ChannelConfigError(f'channel config {label} keeps {_few(outside)}, outside its {channels} '
                                     f'channels (0..{channels - 1}): the file is corrupted or belongs to another '
                                     f'model; {_REEXPORT}')
        twice = sorted(k for k, n in Counter(kept).items() if n > 1)
        if twice:
            raise ChannelConfigError(f'channel config {label} keeps {_few(twice)} more than once: the file is '
                                     f'corrupted or was edited by hand; {_REEXPORT}')
        if kept != sorted(kept):
            raise ChannelConfigError(f'channel config {label} lists its kept channels out of order: the file was '
                                     f'edited by hand; sort them or {_REEXPORT}')


def _few(values: List[int]) -> str:
    shown = ', '.join(str(v) for v in values[:5])
    return f'channel{"s" if len(values) > 1 else ""} {shown}{", ..." if len(values) > 5 else ""}'


def apply_channel_config(model: nn.Module, cfg: Dict[str, Any], check_fingerprint: bool = True) -> nn.Module:
    """Slim ``model`` (unpruned, same structure as when ``cfg`` was made) in place and return it."""
    if not isinstance(cfg, dict) or cfg.get('format') != FORMAT:
        raise ChannelConfigError(f'not an mmfisher channel config (expected "format": "{FORMAT}"); '
                                 'pass the channels.json written by FisherPruningHook or tools/')
    if check_fingerprint and cfg.get('fingerprint') != model_fingerprint(model):
        raise ChannelConfigError(
            'channel config was made for another model (structure fingerprint mismatch): build the same model '
            'config that was pruned, without its pruning, then apply the channel config')
    _check_units(cfg.get('units'), bool(cfg.get('layers') or cfg.get('params') or cfg.get('attrs')))
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
        try:
            rule.slice(module, *rule.keeps(keeps['in'], keeps['out']))
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
        if not 0 <= dim < t.dim() or idx.dim() != 1 or idx.numel() == 0 or int(idx.min()) < 0 or \
                int(idx.max()) >= t.shape[dim] or not bool((idx[1:] > idx[:-1]).all()):
            raise ChannelConfigError(f'channel config for parameter "{pname}" has invalid indices for its '
                                     f'{tuple(t.shape)} shape along dim {dim}: the file is corrupted or belongs '
                                     'to another model')
        new = t.detach().index_select(dim, idx).clone()
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(new, requires_grad=t.requires_grad)
        else:
            owner._buffers[attr] = new
    for key, value in cfg.get('attrs', {}).items():
        owner_name, attr = key.rsplit('.', 1) if '.' in key else ('', key)
        owner = modules.get(owner_name)
        attr, item = _attr_item(attr)
        current = getattr(owner, attr, None) if owner is not None else None
        if item is not None and isinstance(current, (list, tuple)) and 0 <= item < len(current):
            current = current[item]
        if owner is None or not isinstance(current, int) or not isinstance(value, int) or not 0 < value <= current:
            raise ChannelConfigError(f'channel config sets "{key}" = {value!r}, which does not fit this model')
        if item is None:
            setattr(owner, attr, value)
        else:  # an int inside a list or tuple attribute (``num_features[3]``)
            seq = list(getattr(owner, attr))
            seq[item] = value
            setattr(owner, attr, type(getattr(owner, attr))(seq))
    for name, spec in (cfg.get('forwards') or {}).items():
        owner = modules.get(name)
        pos = spec.get('infer_sizes') if isinstance(spec, dict) else None
        if owner is None or not isinstance(pos, list) or not pos or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                            for v in p) and 0 <= p[1] < p[0] <= 16 for p in pos):
            raise ChannelConfigError(f'channel config has forwards["{name}"] = {spec!r}, which does not fit this '
                                     'model: the file is corrupted or belongs to another model')
        owner.__dict__[INFER_ATTR] = [list(p) for p in pos]
    if cfg.get('layers') or cfg.get('params') or cfg.get('attrs') or cfg.get('forwards'):
        adapt_forwards(model)  # forwards that read a size from a width pruning changed (layers.ForwardAdapter)
    return model


def _attr_item(attr: str):
    """``'num_features[3]'`` -> ``('num_features', 3)``; a plain name -> ``(name, None)``."""
    if attr.endswith(']') and '[' in attr:
        name, _, idx = attr[:-1].partition('[')
        if idx.isdigit():
            return name, int(idx)
    return attr, None


def slim_model(model: nn.Module, graph: ChannelGraph, alive: np.ndarray) -> Dict[str, Any]:
    """Slim ``model`` in place to the atoms ``alive``; returns the channel config that reproduces it."""
    cfg = channel_config(model, graph, alive)
    apply_channel_config(model, cfg)
    return cfg


def save_channel_config(cfg: Dict[str, Any], path: str) -> None:
    """Write atomically (:func:`mmfisher.core.files.atomic_write`): a crash never leaves a half-written
    channels.json, and a full disk says so."""
    data = json.dumps(cfg, separators=(',', ':')).encode()
    atomic_write(path, lambda f: f.write(data), size_hint=len(data))


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
    if cfg.get('units') == [] or 'units' not in cfg:
        raise ChannelConfigError(f'channel config "{path}" lists no prunable units, so it would keep 0/0 atoms: '
                                 'FisherPruningHook writes every prunable unit of the model it pruned. Fix: point '
                                 '`channels` at the channels.json of the pruning run (a model with nothing to '
                                 'prune needs no channel config)')
    try:
        _check_units(cfg['units'], bool(cfg.get('layers') or cfg.get('params') or cfg.get('attrs')))
    except ChannelConfigError as exc:
        raise ChannelConfigError(f'"{path}": {exc}') from None
    return cfg
