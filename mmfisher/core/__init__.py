"""Plain-PyTorch core of mmfisher (no OpenMMLab imports): tracing, channel units, masks, Fisher, costs, slimming.

Typical use on any ``nn.Module``::

    graph = analyze(model, input_forward(torch.randn(1, 3, 224, 224)))   # atoms, units, unprunable layers
    masks = ChannelMasks(model, graph); taps = FisherTaps(model, graph)  # train as usual, taps.accumulate()
    costs = CostModel(graph)                                             # acts / flops per atom
    cfg = slim_model(model, graph, masks.alive.numpy())                  # real smaller model + channel config

The layer above serves every pruning method: ``PruningState`` (alive atoms, order, eligibility, ratios, divisor
rounding, checkpoint state), importance criteria (``importance``: GroupFisher, Taylor, L1Norm, GroupMagnitude,
BNScale, random), schedules (``schedule``: IntervalTopK, AdaptiveK), ``ChannelMasks.trial`` (masks that are undone
exactly), and ``export.export_pruned`` (channels.json + pruned.pth as one verified pair).
"""
from .copying import deepcopy_module
from .cost import CostModel
from .layers import LayerRule, find_rule, register_rule
from .masks import ChannelMasks, FisherTaps
from .slim import (ChannelConfigError, apply_channel_config, channel_config, load_channel_config,
                   model_fingerprint, save_channel_config, slim_model)
from .trace import trace_channels
from .units import ChannelGraph, Unit, analyze, analyze_fast, build_graph, input_forward, meta_copy
from .export import SlimmingMismatch, WeightsMismatch, export_pruned, structure_digest
from .importance import BNScale, GroupFisher, GroupMagnitude, Importance, L1Norm, RandomImportance, Taylor
from .schedule import AdaptiveK, IntervalTopK, Schedule
from .state import NothingPrunable, PruningState, StateMismatch
from .verify import compare_masked_slimmed, max_output_diff, outputs_agree, random_alive

__all__ = [
    'CostModel', 'LayerRule', 'find_rule', 'register_rule', 'ChannelMasks', 'FisherTaps', 'ChannelConfigError',
    'apply_channel_config', 'channel_config', 'load_channel_config', 'model_fingerprint', 'save_channel_config',
    'slim_model', 'trace_channels', 'ChannelGraph', 'Unit', 'analyze', 'analyze_fast', 'meta_copy', 'build_graph', 'input_forward',
    'compare_masked_slimmed', 'max_output_diff', 'random_alive', 'deepcopy_module', 'outputs_agree',
    'SlimmingMismatch', 'WeightsMismatch', 'export_pruned', 'structure_digest', 'Importance', 'GroupFisher',
    'Taylor', 'L1Norm', 'GroupMagnitude', 'BNScale', 'RandomImportance', 'Schedule', 'IntervalTopK', 'AdaptiveK', 'PruningState',
    'NothingPrunable', 'StateMismatch',
]
