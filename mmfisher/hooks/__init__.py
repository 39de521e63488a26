"""mmengine hooks: :class:`FisherPruningHook` (Group Fisher pruning during training), :class:`BalancedPruningHook`
(balanced one-shot pruning before training)."""
from .balanced_pruning_hook import BalancedPruningHook
from .fisher_pruning_hook import FisherPruningHook

__all__ = ['BalancedPruningHook', 'FisherPruningHook']
