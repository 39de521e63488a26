"""mmengine hooks: :class:`FisherPruningHook` (Group Fisher pruning during training)."""
from .fisher_pruning_hook import FisherPruningHook

__all__ = ['FisherPruningHook']
