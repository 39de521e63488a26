"""Costs of atoms at the traced input shape: activations (memory) and FLOPs, for normalising importance.

All numbers are per sample at the trace's input shape, counted over conv/linear layers (the layers that carry
the cost; norms and activations scale with them). Everything is computed from the alive vector with numpy, so
every rank computes the same numbers.
"""
from typing import Dict

import numpy as np

from .units import ChannelGraph


class CostModel:
    """Per-layer counts for acts, FLOPs (multiply-adds) and params as functions of the alive atoms."""

    def __init__(self, graph: ChannelGraph) -> None:
        self.graph = graph
        self.layers = []
        for name, rec in graph.records.items():
            rule = graph.rules[name]
            if not rule.is_weighted or not rec.calls:
                continue
            spatial = 0.0  # output positions per sample, summed over calls
            for call in rec.calls:
                shape = call.out_shape
                d = rule.out_dim(len(shape))
                spatial += float(np.prod(shape)) / max(shape[d], 1) / max(graph.batch, 1)
            module_in = graph.in_atoms[name]
            module_out = graph.out_atoms[name]
            column = rec.groups > 1 and getattr(rec, 'group_mode', 'whole') == 'column'
            self.layers.append((name, module_in, module_out, -rec.groups if column else rec.groups, rec.kernel,
                                spatial))

    def _counts(self, atoms: np.ndarray, alive: np.ndarray) -> int:
        if atoms.size == 0:
            return 0
        if alive.size == 0:
            return int(atoms.size)
        return int(((atoms < 0) | alive[np.clip(atoms, 0, None)]).sum())

    def totals(self, alive: np.ndarray) -> Dict[str, float]:
        """{'flops', 'acts', 'params'} of the model with atoms ``alive``."""
        alive = np.asarray(alive, dtype=bool)
        flops = acts = params = 0.0
        for name, a_in, a_out, groups, k, spatial in self.layers:
            c_in, c_out = self._counts(a_in, alive), self._counts(a_out, alive)
            if groups < 0:  # column mode: every group keeps the same positions, each output reads its group's
                per_out = c_in // -groups
            elif groups > 1:
                per_out = a_in.size // groups  # whole groups are removed, so each output reads a full group
            else:
                per_out = c_in
            params += c_out * per_out * k
            flops += c_out * per_out * k * spatial
            acts += c_out * spatial
        return {'flops': flops, 'acts': acts, 'params': params}

    def deltas(self, alive: np.ndarray) -> Dict[str, np.ndarray]:
        """What removing each atom alone saves now: {'flops': (A,), 'acts': (A,)}."""
        alive = np.asarray(alive, dtype=bool)
        n = self.graph.num_atoms
        d_flops = np.zeros(n)
        d_acts = np.zeros(n)
        for name, a_in, a_out, groups, k, spatial in self.layers:
            c_in, c_out = self._counts(a_in, alive), self._counts(a_out, alive)
            per_out = c_in // -groups if groups < 0 else a_in.size // groups if groups > 1 else c_in
            v_out = a_out[a_out >= 0]
            np.add.at(d_flops, v_out, per_out * k * spatial)
            np.add.at(d_acts, v_out, spatial)
            if groups == 1 or groups < 0:  # an input position feeds every output of its group
                v_in = a_in[a_in >= 0]
                np.add.at(d_flops, v_in, (c_out if groups == 1 else c_out // -groups) * k * spatial)
        return {'flops': d_flops, 'acts': d_acts}
