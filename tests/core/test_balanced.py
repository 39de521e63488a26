"""Balanced one-shot pruning, the plain-PyTorch method (``mmfisher.core.balanced``): curves, tau search, one-shot
prune, estimated mode, criteria, rank split, and the refusals (unreachable target, no batches, NaN loss)."""
import copy
import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import ChannelMasks, PruningState, analyze, input_forward
from mmfisher.core.balanced import (BalancedPruning, NoCalibrationData, NonFiniteLoss, TargetUnreachable,
                                    UnitCurve, _corrected)
from mmfisher.core.importance import BNScale, GroupFisher, L1Norm


class Net(nn.Module):
    """stem -> residual block (coupled stream) -> strided conv -> linear head."""

    def __init__(self, w: int = 32) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w)
        self.a, self.bna = nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w)
        self.b, self.bnb = nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w)
        self.c, self.bnc = nn.Conv2d(w, 2 * w, 3, padding=1, stride=2), nn.BatchNorm2d(2 * w)
        self.head = nn.Linear(2 * w, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = x + self.bnb(self.b(F.relu(self.bna(self.a(x)))))
        x = F.relu(self.bnc(self.c(F.relu(x))))
        return self.head(x.mean((2, 3)))


SHAPE = (3, 12, 12)


@pytest.fixture(scope='module')
def trained(fit_regression):
    """A briefly trained Net and 4 calibration batches of a fixed regression task (about a second)."""
    return fit_regression(Net, SHAPE, 64, 16, 60)


def setup(trained, **state_kw):
    net, batches = trained
    net = copy.deepcopy(net)
    graph = analyze(net, input_forward(torch.randn(1, *SHAPE)))
    state = PruningState(net, graph, input_shape=SHAPE, **state_kw)
    calls = []

    def loss_fn(batch):
        calls.append(1)
        return F.mse_loss(net(batch[0]), batch[1])
    return net, graph, state, batches, loss_fn, calls


def assert_met(state, res, target, metric='flops'):
    """The target is met to one atom: the structure is at or below it, and above it without its last atom."""
    assert res.ratios[metric] <= target
    back = state.alive.copy()
    back[res.pruned[-1]] = True
    assert state.ratios(back)[metric] > target


def mean_loss(net, batches):
    net.eval()
    with torch.no_grad():
        return float(np.mean([float(F.mse_loss(net(x), y)) for x, y in batches]))


def test_measured_curves_search_and_one_shot_prune(trained):
    net, graph, state, batches, loss_fn, calls = setup(trained)
    original = copy.deepcopy(net)
    net.train()
    # the stored BN statistics (eval mode) here; norm_stats='batch' (the default): the next test
    res = BalancedPruning(target=0.5, norm_stats='running', recalibrate_norms=False).run(state, net, batches, loss_fn)
    # the target is met within 1% and to one atom, in log2(breakpoints) search steps
    assert 0.49 <= res.ratios['flops'] <= 0.5
    assert_met(state, res, 0.5)
    assert res.search_steps <= math.ceil(math.log2(sum(c.k_max for c in res.curves))) + 1
    alive = state.alive
    # every unit is at its rate at tau (ties at tau split): V(chosen) <= tau < or = V(chosen + 1); except the
    # units the gap filling stopped (when the crossing atom overshoots the target: the floats decide whether it
    # does here), which are named, and whose next atom lies between the crossing threshold and tau
    stopped = set(res.fill_stopped)
    assert (res.tau_before_fill is None) == (not any(st.get('filled') for st in res.search))
    assert stopped <= {c.name for c in res.curves}
    for c in res.curves:
        assert np.all(np.diff(c.ks) > 0) and np.all(np.diff(c.monotone) >= 0)
        assert c.at(c.chosen) <= res.tau + 1e-12
        if c.name in stopped:
            assert c.chosen < c.k_max and res.tau_before_fill <= c.at(c.chosen + 1) <= res.tau + 1e-12
        else:
            assert c.chosen == c.k_max or c.at(c.chosen + 1) >= res.tau
        assert c.rate(res.tau) >= c.chosen
    assert res.alive is not None and int((~alive).sum()) == len(res.pruned)
    # the trials were undone exactly: the model is the original with only the chosen atoms masked, BN statistics
    # included, and every module's train flag restored
    expect = copy.deepcopy(original)
    ChannelMasks(expect, graph).set_alive(alive)
    for (k, v), (k2, v2) in zip(net.state_dict().items(), expect.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert all(m.training for m in net.modules())
    # a measured point is the real loss variation of masking that unit alone
    c = max(res.curves, key=lambda c: c.size)
    k = int(c.ks[len(c.ks) // 2])
    probe = copy.deepcopy(original)
    one = np.ones(graph.num_atoms, dtype=bool)
    one[c.ranked[:k]] = False
    ChannelMasks(probe, graph).set_alive(one)
    assert c.variation[len(c.ks) // 2] == pytest.approx(mean_loss(probe, batches) - res.base_loss, rel=1e-6,
                                                        abs=1e-9)
    # the combined loss is the pruned model's real loss; the sum of the units' variations is reported beside it
    assert res.base_loss == pytest.approx(mean_loss(original, batches), rel=1e-6)
    assert res.combined_loss == pytest.approx(mean_loss(net, batches), rel=1e-6)
    assert res.sum_variations == pytest.approx(sum(c.at(c.chosen) for c in res.curves))
    # forwards: the Fisher pass, units x grid points x batches, the combined loss
    points = sum(len(c.ks) for c in res.curves)
    assert res.forwards == len(calls) == len(batches) * (points + 2)
    js = res.to_json()
    assert js['tau'] == res.tau and js['search_steps'] == res.search_steps and len(js['units']) == len(res.curves)
    assert js['units'][0]['k'] and js['combined_loss'] == res.combined_loss


def test_batch_norm_statistics_in_the_curves_and_recalibrated_after(trained):
    """norm_stats='batch': every calibration forward normalises with the batch's statistics (a measured point is
    the loss of the masked model with its norms adapted), the stored statistics do not move; recalibrate_norms
    re-estimates them for the pruned structure, which then gives (nearly) the batch-statistics loss."""
    net, graph, state, batches, loss_fn, calls = setup(trained)
    original = copy.deepcopy(net)
    res = BalancedPruning(target=0.5, norm_stats='batch', recalibrate_norms=False).run(state, net, batches, loss_fn)
    assert res.norm_stats == 'batch' and res.norms_recalibrated == 0
    assert_met(state, res, 0.5)

    def batch_loss(model):
        model.train()  # BN with batch statistics; nothing else in Net depends on the flag
        with torch.no_grad():
            out = float(np.mean([float(F.mse_loss(model(x), y)) for x, y in batches]))
        return out
    probe = copy.deepcopy(original)
    assert res.base_loss == pytest.approx(batch_loss(probe), rel=1e-6)
    assert res.base_loss != pytest.approx(mean_loss(original, batches), rel=1e-3)
    c = max(res.curves, key=lambda c: c.size)
    k = int(c.ks[0])
    probe = copy.deepcopy(original)
    one = np.ones(graph.num_atoms, dtype=bool)
    one[c.ranked[:k]] = False
    ChannelMasks(probe, graph).set_alive(one)
    assert c.variation[0] == pytest.approx(batch_loss(probe) - res.base_loss, rel=1e-6, abs=1e-9)
    for name in ('bn', 'bna', 'bnb', 'bnc'):  # stored statistics untouched
        assert torch.equal(getattr(net, name).running_mean, getattr(original, name).running_mean)
        assert torch.equal(getattr(net, name).num_batches_tracked, getattr(original, name).num_batches_tracked)

    net2, _, state2, _, loss_fn2, calls2 = setup(trained)
    res2 = BalancedPruning(target=0.5).run(state2, net2, batches, loss_fn2)  # the defaults: batch + recalibrate
    assert res2.norms_recalibrated == 4 and res2.pruned == res.pruned
    assert not torch.equal(net2.bnc.running_var, original.bnc.running_var)
    # with batch statistics the re-estimation's forwards are the combined loss's: no pass of its own
    assert res2.forwards == res.forwards == len(calls2) and res2.combined_loss == res.combined_loss
    net3, _, state3, _, loss_fn3, calls3 = setup(trained)
    res3 = BalancedPruning(target=0.5, norm_stats='running').run(state3, net3, batches, loss_fn3)
    net4, _, state4, _, loss_fn4, calls4 = setup(trained)
    res4 = BalancedPruning(target=0.5, norm_stats='running', recalibrate_norms=False).run(
        state4, net4, batches, loss_fn4)
    # stored statistics in the combined loss: the re-estimation and the combined loss take a pass each
    assert res3.norms_recalibrated == 4 and res3.forwards == len(calls3) == res4.forwards + len(batches)
    # with the re-estimated statistics, eval mode is close to the batch-statistics loss the method measured
    assert mean_loss(net2, batches) == pytest.approx(res2.combined_loss, rel=0.05)
    assert abs(mean_loss(net2, batches) - res2.combined_loss) < abs(mean_loss(net, batches) - res.combined_loss)


def test_frozen_batch_norms_keep_their_statistics_and_cost_no_forward(trained):
    """With every BN frozen (requires_grad=False, as a frozen backbone), 'batch' statistics and re-estimation
    leave them alone: the run equals norm_stats='running' without re-estimation, forward for forward."""
    out = []
    for kw in (dict(), dict(norm_stats='running', recalibrate_norms=False)):
        net, graph, state, batches, loss_fn, calls = setup(trained)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.requires_grad_(False)
        res = BalancedPruning(target=0.5, **kw).run(state, net, batches, loss_fn)
        out.append((res, len(calls), {k: v.clone() for k, v in net.state_dict().items() if 'running' in k}))
    (a, calls_a, stats_a), (b, calls_b, stats_b) = out
    assert a.norms_recalibrated == 0 and calls_a == calls_b == a.forwards
    assert a.pruned == b.pruned and a.base_loss == b.base_loss and a.combined_loss == b.combined_loss
    assert all(torch.equal(stats_a[k], stats_b[k]) for k in stats_a)


@pytest.mark.parametrize('target', [0.5, 0.3])
def test_skipping_points_above_the_needed_threshold_gives_the_whole_grid_structure(trained, target):
    """The rounds stop measuring a unit once its curve is above tau_up; tau, the atoms and the loss are those of
    the whole grid, with fewer forwards."""
    found = {}
    for full in (True, False):
        net, graph, state, batches, loss_fn, calls = setup(trained)
        res = BalancedPruning(target=target, full_curves=full).run(state, net, batches, loss_fn)
        found[full] = (res, state.alive.copy(), len(calls))
    (whole, alive_whole, calls_whole), (lazy, alive_lazy, calls_lazy) = found[True], found[False]
    assert np.array_equal(alive_whole, alive_lazy) and lazy.pruned == whole.pruned
    assert lazy.tau == whole.tau and lazy.combined_loss == pytest.approx(whole.combined_loss, rel=1e-9)
    assert whole.points == whole.grid_points == sum(c.grid_ks.size for c in whole.curves)
    assert lazy.grid_points == whole.grid_points and lazy.points < whole.points
    assert calls_lazy == lazy.forwards == len(batches) * (lazy.points + 2) < calls_whole  # + Fisher, BN (= combined)
    for cl, cw in zip(lazy.curves, whole.curves):
        n = cl.ks.size
        # a measured prefix of the grid, identical to the whole grid's; a unit cut short ends above the measuring
        # bound, which bounds tau (the gap filling's scan included)
        assert np.array_equal(cl.ks, cw.ks[:n]) and np.allclose(cl.variation, cw.variation[:n], rtol=1e-9)
        assert n == cw.ks.size or cl.monotone[-1] > lazy.tau_up >= lazy.tau
        assert cl.chosen == cw.chosen
        assert cl.to_json()['unmeasured_k'] == cw.ks[n:].tolist()



def test_lazy_rounds_give_the_whole_grid_structure_when_the_gap_is_filled(trained):
    """Over a sweep of targets, most of which fill the gap after a coarse crossing atom: the measuring bound
    covers the rows the fill reads, so the lazy rounds still give the whole grid's tau and atoms, and every unit
    cut short ends above the bound (the rule that broke when the bound ignored the fill)."""
    filled = 0
    for target in np.arange(0.40, 0.81, 0.05):
        found = {}
        for full in (True, False):
            net, graph, state, batches, loss_fn, calls = setup(trained)
            res = BalancedPruning(target=float(target), full_curves=full).run(state, net, batches, loss_fn)
            found[full] = (res, state.alive.copy())
        (whole, alive_whole), (lazy, alive_lazy) = found[True], found[False]
        filled += any(s.get('filled') for s in whole.search)
        assert np.array_equal(alive_whole, alive_lazy) and lazy.tau == whole.tau, target
        assert lazy.points < whole.points and math.isinf(whole.tau_up) and lazy.tau <= lazy.tau_up
        for cl, cw in zip(lazy.curves, whole.curves):
            assert cl.ks.size == cw.ks.size or cl.keys()[cl.ks[-1] - 1] > lazy.tau_up
    assert filled >= 4  # the sweep exercises the fill


def test_max_share_caps_every_unit(trained):
    net, graph, state, batches, loss_fn, _ = setup(trained)
    res = BalancedPruning(target=0.6, max_share=0.5).run(state, net, batches, loss_fn)
    assert res.ratios['flops'] <= 0.6
    for c in res.curves:
        assert c.k_max <= c.size // 2 and c.chosen <= c.size // 2 and c.ks.max() <= c.size // 2
    for atoms in state.unit_atoms:  # at least half of every unit is alive
        assert 2 * int(state.alive[atoms].sum()) >= atoms.size


@pytest.mark.parametrize('full', [True, False])
def test_variation_per_cost_allocation_thresholds_the_variation_per_share_freed(trained, full):
    """allocation='variation_per_cost': every unit at the largest k whose running maximum of V(k) / freed(k) stays
    <= tau (freed(k): the FLOPs share its k atoms free alone, counted exactly); the target is met to one atom, and
    skipping points above the needed threshold still gives the whole grid's structure."""
    found = {}
    for whole in (True, full):
        net, graph, state, batches, loss_fn, _ = setup(trained)
        full_ratio = state.ratios()['flops']
        res = BalancedPruning(target=0.5, allocation='variation_per_cost', full_curves=whole).run(
            state, net, batches, loss_fn)
        found[whole] = (res, state)
    (res, state), (whole_res, whole_state) = found[full], found[True]
    assert np.array_equal(state.alive, whole_state.alive) and res.tau == whole_res.tau
    assert_met(state, res, 0.5)
    probe = PruningState(net, graph, input_shape=SHAPE)  # unpruned, for the freed shares
    assert res.allocation == 'variation_per_cost' and res.to_json()['allocation'] == 'variation_per_cost'
    for c in res.curves:
        # freed(k) is the real FLOPs share of masking the unit's first k atoms alone (linear in k here)
        for k in (1, c.k_max):
            one = np.ones(graph.num_atoms, dtype=bool)
            one[c.ranked[:k]] = False
            assert c.freed[k - 1] == pytest.approx(full_ratio - probe.ratios(one)['flops'], rel=1e-9)
        keys = np.maximum.accumulate(c.values() / c.freed)
        np.testing.assert_allclose(c.keys(), keys, rtol=1e-12)
        assert c.chosen == 0 or keys[c.chosen - 1] <= res.tau * (1 + 1e-12)
        if c.name in res.fill_stopped:  # the gap filling stopped it: its next key between the crossing and tau
            assert c.chosen < c.k_max and res.tau_before_fill <= keys[c.chosen] <= res.tau * (1 + 1e-12)
        else:
            assert c.chosen == c.k_max or keys[c.chosen] >= res.tau
        js = c.to_json()
        assert js['freed_per_atom'] == pytest.approx(c.freed[-1] / c.k_max)
    assert 0.49 <= res.ratios['flops'] <= 0.5
    # the same curves under the seed's rule (the threshold on V itself) choose differently: a unit whose atoms
    # free more per loss rise loses more of them here
    net, graph, state, batches, loss_fn, _ = setup(trained)
    plain = BalancedPruning(target=0.5, full_curves=True).run(state, net, batches, loss_fn)
    assert [c.chosen for c in plain.curves] != [c.chosen for c in whole_res.curves]
    for cp, cw in zip(plain.curves, whole_res.curves):
        np.testing.assert_allclose(cp.variation, cw.variation, rtol=1e-9)


def test_estimated_mode_reads_the_fisher_sums_without_curve_forwards(trained):
    net, graph, state, batches, loss_fn, calls = setup(trained)
    crit = GroupFisher(delta='none')
    res = BalancedPruning(target=0.5, mode='estimated', importance=crit, repair_rounds=0).run(
        state, net, batches, loss_fn)
    # the Fisher pass, the BN re-estimation (whose batch-statistics losses are the combined loss)
    assert res.forwards == len(calls) == 2 * len(batches)
    assert res.repair is None and res.points == 0
    assert res.samples == 64 and crit.samples == 64
    f = crit.sums.numpy()
    for c in res.curves:
        dense = 0.5 * np.cumsum(f[c.ranked[:c.k_max]]) / 64
        np.testing.assert_allclose(c.values(), np.maximum.accumulate(dense), rtol=1e-12)
        # ranked by Group Fisher, lowest first
        assert np.all(np.diff(f[c.ranked]) >= 0)
    assert_met(state, res, 0.5)


def test_corrected_curve_is_the_estimate_raised_to_the_measured_points():
    est = np.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert _corrected(est, {}) is est
    out = _corrected(est, {4: 2.0})  # far above the estimate at k=4
    np.testing.assert_allclose(out[:4], [0.5, 1.0, 1.5, 2.0])  # the line from V(0) = 0 to the point
    np.testing.assert_allclose(out[4:], est[4:] * 2.0 / 0.3)  # beyond: the estimate scaled by the point's ratio
    out = _corrected(est, {2: 0.05, 6: -0.3})  # below the estimate (or below 0): the estimate stays
    np.testing.assert_allclose(out, est)
    out = _corrected(est, {3: float('nan')})  # a NaN point: nothing up to it or beyond may be chosen
    assert np.all(out[2:] == np.inf) and np.all(np.isfinite(out[:2]))
    zero = np.zeros(5)
    np.testing.assert_allclose(_corrected(zero, {2: 1.0}), [0.5, 1.0, 1.0, 1.0, 1.0])  # an estimate of 0


@pytest.mark.parametrize('norm_stats', ['running', 'batch'])
def test_estimated_mode_repairs_the_units_its_structure_contradicts(trained, norm_stats):
    """On the briefly trained net the second-order estimates are ~1e-6 where masking a unit's chosen share costs
    0.07-0.3: the structure the estimate chose is measured, found 10x above the estimates, and every unit is
    measured at its rate; its curve is raised to that, tau searched again, until the chosen rates' measurements
    agree with the curves. The repaired structure has a lower real loss rise than the unrepaired one, and no
    warning."""
    found = {}
    for rounds in (0, 3):
        net, graph, state, batches, loss_fn, calls = setup(trained)
        res = BalancedPruning(target=0.5, mode='estimated', norm_stats=norm_stats, recalibrate_norms=False,
                              repair_rounds=rounds).run(state, net, batches, loss_fn)
        found[rounds] = (res, calls)
        assert_met(state, res, 0.5)
    (plain, _), (fixed, calls) = found[0], found[3]
    assert any('second-order estimate is far off' in w for w in plain.warnings), plain.warnings
    assert not any('far off' in w for w in fixed.warnings), fixed.warnings
    assert fixed.combined_variation < plain.combined_variation
    rep = fixed.repair
    assert rep['structure_variation'] == pytest.approx(plain.combined_variation)  # the same structure, checked
    assert rep['structure_variation'] > 10 * rep['structure_estimate']
    assert rep['agreed'] is True and 1 <= rep['rounds'] <= 3 and rep['points']
    assert fixed.points == len(rep['points'])
    # Fisher pass + the check of the estimated structure + one forward per batch per point + the combined loss
    assert fixed.forwards == len(calls) == (3 + fixed.points) * len(batches)
    # every point is the real variation of masking that unit's k lowest atoms alone (with the stored statistics:
    # the eval-mode loss)
    by_name = {c.name: c for c in fixed.curves}
    for p in rep['points'] if norm_stats == 'running' else ():
        net, graph, state, batches, loss_fn, _ = setup(trained)
        base = mean_loss(net, batches)
        state.prune(by_name[p['unit']].ranked[:p['k']].tolist())
        assert p['measured'] == pytest.approx(mean_loss(net, batches) - base, rel=1e-9, abs=1e-12)
        assert by_name[p['unit']].checks[p['k']] == p['measured']
    for c in fixed.curves:
        assert np.all(c.values() >= np.maximum.accumulate(c.estimate) - 1e-15)  # never below the estimate
        if c.chosen:  # the final rates are measured, and agree with their curves
            assert c.chosen in c.checks and c.checks[c.chosen] <= 2.0 * c.at(c.chosen) + 0.01 * fixed.base_loss
    js = fixed.to_json()
    assert js['repair']['rounds'] == rep['rounds'] and js['mode'] == 'estimated'
    assert any(u.get('checked_k') for u in js['units'])


def test_estimated_mode_checks_its_structure_once_when_the_estimate_holds(trained, monkeypatch):
    """When the real rise of the estimated structure is within ESTIMATE_TRUST of the estimates nothing is
    repaired: the check costs one forward per batch."""
    import mmfisher.core.balanced as balanced
    monkeypatch.setattr(balanced, 'ESTIMATE_TRUST', 1e12)
    net, graph, state, batches, loss_fn, calls = setup(trained)
    res = BalancedPruning(target=0.5, mode='estimated', norm_stats='running', recalibrate_norms=False).run(
        state, net, batches, loss_fn)
    assert res.repair['rounds'] == 0 and res.repair['points'] == [] and res.points == 0
    assert res.repair['structure_variation'] == pytest.approx(res.combined_variation)
    assert res.forwards == len(calls) == 3 * len(batches)


def test_a_coarse_crossing_atom_is_skipped_and_the_gap_filled(trained):
    """When the atom that crosses the target overshoots it by more than half the tolerance (a stream channel read
    by several layers), it is skipped with its unit's later atoms and the next atoms in threshold order fill the
    gap: the structure lands closer below the target, still meets it to one atom, and the step is recorded."""
    filled_any = False
    for target in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7):
        found = {}
        for tol in (0.002, 0.99):  # 0.99: the overshoot never exceeds half of it, so nothing is filled
            net, graph, state, batches, loss_fn, _ = setup(trained)
            res = BalancedPruning(target=target, norm_stats='running', recalibrate_norms=False, tolerance=tol,
                                  full_curves=True).run(state, net, batches, loss_fn)
            found[tol] = (res, state)
        (fine, fstate), (plain, _) = found[0.002], found[0.99]
        assert not any(st.get('filled') for st in plain.search)
        assert plain.ratios['flops'] <= fine.ratios['flops'] <= target
        assert_met(fstate, fine, target)
        assert plain.tau_before_fill is None and plain.fill_stopped == [] and plain.to_json()['gap_fill'] is None
        if any(st.get('filled') for st in fine.search):
            filled_any = True
            assert fine.ratios['flops'] > plain.ratios['flops'] and fine.search[-1]['ratio'] == pytest.approx(
                fine.ratios['flops'])
            # the filling is recorded: the crossing threshold (plain's tau) and the units it stopped below their
            # rate at the final tau, each one's next atom between the two thresholds
            assert fine.tau_before_fill == pytest.approx(plain.tau) and fine.tau_before_fill <= fine.tau
            assert fine.to_json()['gap_fill'] == {'tau_before': fine.tau_before_fill,
                                                  'stopped_units': fine.fill_stopped}
            assert fine.search[-1]['stopped_units'] == fine.fill_stopped
            for c in fine.curves:
                below = c.chosen < c.k_max and c.at(c.chosen + 1) < fine.tau
                if c.name in fine.fill_stopped:
                    assert c.chosen < c.k_max and fine.tau_before_fill <= c.at(c.chosen + 1) <= fine.tau + 1e-12
                else:
                    assert not below, c.name
            # the skipped unit keeps its atoms from the crossing one on: units stay prefixes of their ranking
            alive = fstate.alive
            for c in fine.curves:
                masked = ~alive[c.ranked]
                assert not np.any(masked[1:] & ~masked[:-1])
        else:
            assert fine.pruned == plain.pruned
    assert filled_any


def test_estimated_mode_warns_when_the_real_loss_rise_dwarfs_the_estimate(trained):
    """A loss that is flat at the trained weights (matching the unpruned outputs: every mask gradient is 0) makes
    every estimate 0; the combined structure's real rise is not, and the result says so and names the fix. The
    measured mode, which sees the real rises, does not warn."""
    net, graph, state, batches, _, _ = setup(trained)
    net.eval()
    with torch.no_grad():
        ref = [net(x).clone() for x, _ in batches]
    net.train()
    index = {id(b[0]): i for i, b in enumerate(batches)}

    def flat(batch):
        return F.mse_loss(net(batch[0]), ref[index[id(batch[0])]])
    res = BalancedPruning(target=0.5, mode='estimated', norm_stats='running', recalibrate_norms=False,
                          repair_rounds=0).run(state, net, batches, flat)
    assert res.base_loss == 0.0 and res.sum_variations == 0.0 and res.combined_variation > 0
    assert len(res.warnings) == 1
    assert re.search(r'second-order estimate is far off.*rose [0-9.e-]+ .*estimates sum to 0.*Fix: use '
                     r"mode='measured'", res.warnings[0]), res.warnings[0]
    net, graph, state, batches, _, _ = setup(trained)
    net.eval()
    with torch.no_grad():
        ref = [net(x).clone() for x, _ in batches]
    net.train()
    measured = BalancedPruning(target=0.5, norm_stats='running', recalibrate_norms=False).run(
        state, net, batches, flat)
    assert not measured.warnings


def test_measured_points_below_the_base_loss_warn_of_the_noise_floor(trained):
    """A loss that masking cannot move (a model that fits its batches exactly), here a constant plus noise that is
    not torch's RNG (the measurements reseed that): about half the points lower it, and the result says the
    allocation follows noise and names the fix. The regression loss itself does not warn."""
    net, graph, state, batches, loss_fn, _ = setup(trained)
    plain = BalancedPruning(target=0.5).run(state, net, batches, loss_fn)
    assert not plain.warnings
    net, graph, state, batches, _, _ = setup(trained)
    draws = iter(np.random.default_rng(0).standard_normal(100000))

    def noise(batch):
        return F.mse_loss(net(batch[0]), batch[1]) * 0 + 1.0 + 1e-3 * float(next(draws))
    res = BalancedPruning(target=0.5, full_curves=True).run(state, net, batches, noise)
    below = sum(int((c.variation < 0).sum()) for c in res.curves)
    assert below >= 5 and len(res.warnings) == 1, res.warnings
    assert re.search(rf'^{below} of {res.points} measured points lowered the calibration loss .*not at a minimum.*'
                     r'noise.*Fix: prune a converged model.*held-out batches, more batches.*anchors',
                     res.warnings[0]), res.warnings[0]


def test_acts_and_params_targets_count_divisor_rounding(trained):
    for metric in ('acts', 'params'):
        net, graph, state, batches, loss_fn, _ = setup(trained, divisor=4)
        res = BalancedPruning(target=0.6, target_metric=metric, grid=(0.25, 0.5, 0.75)).run(
            state, net, batches, loss_fn)
        assert res.ratios[metric] <= 0.6
        # only atoms the written structure removes are masked: masks == the structure, counts multiples of 4
        assert np.array_equal(state.export_alive(), state.alive)
        for atoms in state.unit_atoms:
            kept = int(state.alive[atoms].sum())
            assert kept % 4 == 0 or kept == atoms.size


@pytest.mark.parametrize('crit', [L1Norm(), BNScale()], ids=['l1', 'bn_scale'])
def test_l1_and_bn_scale_rankings_need_no_gradients(trained, crit):
    net, graph, state, batches, loss_fn, calls = setup(trained)
    ref = type(crit)()
    ref.attach(copy.deepcopy(net), graph)
    raw = ref.raw_scores()  # of the unpruned model (pruning changes the readers' filters)
    res = BalancedPruning(target=0.5, importance=crit, grid=(0.25, 0.5, 0.75)).run(state, net, batches, loss_fn)
    assert res.samples == 0 and all(p.grad is None for p in net.parameters())
    assert res.forwards == len(calls) == len(batches) * (sum(len(c.ks) for c in res.curves) + 2)
    for c in res.curves:
        assert np.all(np.diff(raw[c.ranked]) >= 0)
    assert_met(state, res, 0.5)


def test_a_loss_callable_against_a_frozen_teacher(trained):
    """Label-free: the loss is any callable, e.g. distillation from a frozen copy of the unpruned model. The
    frozen teacher's BN statistics are never used from the batch nor re-estimated."""
    for norm_stats in ('running', 'batch'):
        net, graph, state, batches, _, _ = setup(trained)
        wrapper = nn.ModuleDict({'student': net, 'teacher': copy.deepcopy(net)})
        wrapper['teacher'].requires_grad_(False)
        wrapper.train()

        def distill(batch):
            with torch.no_grad():
                target = wrapper['teacher'](batch[0])
            return F.mse_loss(wrapper['student'](batch[0]), target)
        res = BalancedPruning(target=0.6, grid=(0.25, 0.5, 0.75), norm_stats=norm_stats).run(
            state, net, batches, distill, model=wrapper)
        if norm_stats == 'running':  # the unpruned student is the teacher
            assert res.base_loss == 0.0
        else:  # the student with batch statistics against the teacher with its stored ones
            assert 0 < res.base_loss < res.combined_loss
        assert res.combined_loss > 0 and res.norms_recalibrated == 4
        assert res.ratios['flops'] <= 0.6 and all(m.training for m in wrapper.modules())
        assert all(torch.equal(a, b) for a, b in zip(wrapper['teacher'].state_dict().values(),
                                                     trained[0].state_dict().values()))



def test_the_measurements_use_measure_fn_and_the_fisher_pass_loss_fn(trained):
    """measure_fn (e.g. a distiller's exact terms) gives the base, every curve point, the norms' re-estimation
    and the combined loss; loss_fn (its sampled terms) only the Fisher pass. A loss_fn with a zero-mean term that
    moves with the outputs but carries no gradient ranks as the clean loss does, and with measure_fn=clean the
    run equals the clean run point for point; measured with the noisy loss itself, the curves differ."""
    runs = {}
    for how in ('clean', 'split', 'noisy'):
        net, graph, state, batches, clean, calls = setup(trained)
        grads = []

        def noisy(batch):  # the clean loss + a zero-mean term without gradient (as a sampled target's noise)
            grads.append(1)
            out = net(batch[0]).detach()
            return clean(batch) + 0.05 * (out * torch.randn_like(out)).mean()
        loss_fn, kw = (clean, {}) if how == 'clean' else (noisy, dict(measure_fn=clean) if how == 'split' else {})
        res = BalancedPruning(target=0.5, grid=(0.25, 0.5, 0.75)).run(state, net, batches, loss_fn, **kw)
        runs[how] = (res, len(calls), len(grads))
    (plain, calls_plain, _), (split, calls_split, grads_split), (blurred, _, _) = (
        runs['clean'], runs['split'], runs['noisy'])
    assert grads_split == len(batches)  # loss_fn: the Fisher pass only
    # measure_fn: its own base pass + the same points, re-estimation and combined pass as the clean run
    # (noisy calls clean inside, so every forward of the split run counts once)
    assert calls_split == split.forwards == plain.forwards + len(batches) and calls_plain == plain.forwards
    assert split.base_loss == pytest.approx(plain.base_loss, rel=1e-9)
    assert split.combined_loss == pytest.approx(plain.combined_loss, rel=1e-9) and split.pruned == plain.pruned
    for a, b in zip(split.curves, plain.curves):
        assert np.array_equal(a.ranked, b.ranked) and np.array_equal(a.ks, b.ks)
        assert np.allclose(a.variation, b.variation, rtol=1e-9, atol=1e-12)
    assert not all(np.allclose(a.variation[:n], b.variation[:n], rtol=1e-6) for a, b in zip(blurred.curves,
                   plain.curves) for n in [min(a.ks.size, b.ks.size)])


def test_points_with_a_non_finite_loss_are_never_chosen(trained):
    net, graph, state, batches, loss_fn, _ = setup(trained)
    unit = max(range(len(state.unit_atoms)), key=lambda u: state.unit_atoms[u].size)

    def fragile(batch):  # masking more than a quarter of the widest unit "diverges"
        dead = int((~state.masks.alive[state.unit_atoms[unit]]).sum())
        return loss_fn(batch) * (float('nan') if dead > state.unit_atoms[unit].size // 4 else 1.0)
    res = BalancedPruning(target=0.7).run(state, net, batches, fragile)
    c = next(c for c in res.curves if c.unit == unit)
    assert np.isinf(c.monotone[c.ks > c.size // 4]).all() and c.chosen <= c.size // 4
    assert math.isfinite(res.combined_loss) and res.ratios['flops'] <= 0.7


def test_unit_curve_is_monotone_and_interpolated():
    c = UnitCurve(0, 'u', 10, np.arange(10), 9)
    c.set_points(np.array([2, 4, 6, 9]), np.array([0.2, 0.1, float('nan'), 1.0]))
    assert c.monotone[:2].tolist() == [0.2, 0.2] and np.isinf(c.monotone[2:]).all()
    np.testing.assert_allclose(c.values()[:4], [0.1, 0.2, 0.2, 0.2])
    assert np.isinf(c.values()[4:]).all()
    assert c.rate(0.15) == 1 and c.rate(0.2) == 4 and c.rate(1e9) == 4 and c.rate(-1) == 0


# ---------------------------------------------------------------------------------------------- bad input
def _unchanged(net, original, state):
    assert state.alive.all()
    for (k, v), v2 in zip(net.state_dict().items(), original.state_dict().values()):
        assert torch.equal(v, v2), k


def test_unreachable_target_says_the_best_ratio_before_any_forward(trained):
    net, graph, state, batches, loss_fn, calls = setup(trained, skip=('stem',))
    original = copy.deepcopy(net)
    with pytest.raises(TargetUnreachable, match=r'target=0\.05 \(flops\) cannot be reached: the best reachable '
                                                r'ratio is 0\.\d+ .*Fix: set target >= 0\.\d+'):
        BalancedPruning(target=0.05).run(state, net, batches, loss_fn)
    assert not calls
    _unchanged(net, original, state)


def test_no_calibration_batches(trained):
    net, graph, state, _, loss_fn, calls = setup(trained)
    with pytest.raises(NoCalibrationData, match='calibration_batches.*Fix: set calibration_batches >= 1'):
        BalancedPruning().run(state, net, [], loss_fn)
    assert not calls


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
@pytest.mark.parametrize('mode', ['measured', 'estimated'])
def test_non_finite_loss_of_the_unpruned_model(trained, bad, mode):
    net, graph, state, batches, loss_fn, _ = setup(trained)
    original = copy.deepcopy(net)
    crit = L1Norm() if bad == float('inf') and mode == 'measured' else None  # the no-gradient pass as well
    with pytest.raises(NonFiniteLoss, match=r'calibration loss of the unpruned model is (nan|inf).*Fix: set '
                                            'load_from to the trained checkpoint'):
        BalancedPruning(mode=mode, importance=crit).run(state, net, batches, lambda b: loss_fn(b) * bad)
    _unchanged(net, original, state)
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize('kwargs, field', [
    (dict(target=1.2), 'target'), (dict(target=0), 'target'), (dict(target_metric='latency'), 'target_metric'),
    (dict(mode='exact'), 'mode'), (dict(model_mode='test'), 'model_mode'),
    (dict(grid=(0.5, 1.5)), 'grid'), (dict(grid=()), 'grid'),
    (dict(tolerance=0), 'tolerance'), (dict(max_share=0), 'max_share'), (dict(max_share=1.5), 'max_share'),
    (dict(norm_stats='adaptive'), 'norm_stats'), (dict(allocation='flops'), 'allocation'),
    (dict(repair_rounds=-1), 'repair_rounds'), (dict(repair_rounds=1.5), 'repair_rounds'),
    (dict(repair_rounds=True), 'repair_rounds')])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f'^{field}='):
        BalancedPruning(**kwargs)


@pytest.mark.parametrize('kwargs, field', [(dict(full_curves='yes'), 'full_curves'), (dict(seed=1.5), 'seed'),
                                           (dict(recalibrate_norms=1), 'recalibrate_norms')])
def test_bad_flag_types_name_the_field(kwargs, field):
    with pytest.raises(TypeError, match=f'^{field}='):
        BalancedPruning(**kwargs)


# ---------------------------------------------------------------------------------------------- rank split
def _rank_worker(rank, world, port, out, mode='measured'):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        net = Net(w=16)
        x = torch.randn(24, *SHAPE, generator=torch.Generator().manual_seed(1))
        batches = [(x[i:i + 4], x[i:i + 4, :, ::3, ::3].mean((1, 2, 3))[:, None].expand(-1, 4))
                   for i in range(0, 24, 4)]
        kw = {}
        if mode == 'estimated':  # targets = the unpruned outputs: every estimate is 0, so the repair runs
            net.eval()
            with torch.no_grad():
                batches = [(x_, net(x_)) for x_, _ in batches]
            kw = dict(norm_stats='running', recalibrate_norms=False)
        graph = analyze(net, input_forward(torch.randn(1, *SHAPE)))
        state = PruningState(net, graph, input_shape=SHAPE)
        mine = batches[rank::world] if world > 1 else batches

        def reduce(t):
            if world > 1:
                dist.all_reduce(t)
            return t
        res = BalancedPruning(target=0.5, grid=(0.25, 0.5, 0.75), mode=mode, **kw).run(
            state, net, mine, lambda b: F.mse_loss(net(b[0]), b[1]), reduce=reduce)
        torch.save({'alive': torch.from_numpy(state.alive), 'tau': res.tau, 'base': res.base_loss,
                    'combined': res.combined_loss, 'batches': res.batches, 'samples': res.samples,
                    'repair_rounds': res.repair['rounds'] if res.repair else 0,
                    'repair_points': [p['measured'] for p in res.repair['points']] if res.repair else []},
                   f'{out}_{world}_{rank}.pt')
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize('mode', ['measured', 'estimated'])
def test_batches_split_over_ranks_give_every_rank_the_one_process_structure(tmp_path, mode):
    import socket
    import torch.multiprocessing as mp
    results = {}
    for world in (1, 2):
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        mp.spawn(_rank_worker, args=(world, port, str(tmp_path / 'r'), mode), nprocs=world, join=True)
        results[world] = [torch.load(f'{tmp_path}/r_{world}_{r}.pt', weights_only=True) for r in range(world)]
    one, (r0, r1) = results[1][0], results[2]
    assert r0['batches'] == r1['batches'] == one['batches'] == 6 and r0['samples'] == one['samples'] == 24
    assert torch.equal(r0['alive'], r1['alive']) and torch.equal(r0['alive'], one['alive'])
    assert r0['tau'] == r1['tau'] == pytest.approx(one['tau'], rel=1e-9)
    assert r0['combined'] == pytest.approx(one['combined'], rel=1e-9)
    if mode == 'estimated':  # the untrained net contradicts its estimates: every rank repairs the same units
        assert one['repair_rounds'] >= 1 and r0['repair_rounds'] == r1['repair_rounds'] == one['repair_rounds']
        assert r0['repair_points'] == r1['repair_points'] == pytest.approx(one['repair_points'], rel=1e-9)


class TrainingBranchNet(Net):
    """Net with what a training forward adds: dropout before the head, and an auxiliary output only in training
    (VFNet's head returns its refined boxes only then, GoogLeNet its auxiliary logits)."""

    def __init__(self, w: int = 32) -> None:
        super().__init__(w)
        self.drop = nn.Dropout(0.5)
        self.aux = nn.Linear(w, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = x + self.bnb(self.b(F.relu(self.bna(self.a(x)))))
        aux = self.aux(x.mean((2, 3)))
        y = self.head(self.drop(F.relu(self.bnc(self.c(F.relu(x)))).mean((2, 3))))
        return (y, aux) if self.training else y


def test_the_loss_is_measured_in_training_mode_with_dropout_and_stored_statistics_frozen(trained):
    from mmfisher.core.balanced import loss_mode
    net, batches = trained
    model = TrainingBranchNet()
    model.load_state_dict(net.state_dict(), strict=False)
    model.eval()
    model.bn.train()  # a flag the block must restore as it found it
    with loss_mode(model):
        assert model.training and model.stem.training and model.aux.training
        assert not model.drop.training and not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        x = batches[0][0]
        with torch.no_grad():
            out1, out2 = model(x), model(x)
        assert isinstance(out1, tuple) and torch.equal(out1[0], out2[0])  # training outputs, deterministic
    assert not model.training and model.bn.training and not model.drop.training

    calls = []

    def loss_fn(batch):  # fails unless the model gives its training outputs, as VFNet's loss does in eval mode
        y, aux = model(batch[0])
        calls.append(1)
        return F.mse_loss(y, batch[1]) + 0.1 * F.mse_loss(aux, batch[1])

    from mmfisher.core.norm_stats import batch_statistics, trained_norms
    with loss_mode(model), batch_statistics(trained_norms(model)), torch.no_grad():
        expected = float(np.mean([float(loss_fn(b)) for b in batches]))  # no dropout draw, the batches' statistics
    graph = analyze(model, input_forward(torch.randn(1, *SHAPE)))
    state = PruningState(model, graph, input_shape=SHAPE)
    model.train()
    res = BalancedPruning(target=0.5).run(state, model, batches, loss_fn)
    assert res.ratios['flops'] <= 0.5 and calls
    assert res.base_loss == pytest.approx(expected, rel=1e-6)
    assert all(m.training for m in model.modules())


def test_model_mode_eval_measures_the_inference_outputs(trained):
    net, graph, state, batches, _, _ = setup(trained)
    seen = []

    def loss_fn(batch):
        seen.append(net.training or any(m.training for m in net.modules()))
        return F.mse_loss(net(batch[0]), batch[1])
    net.train()
    res = BalancedPruning(target=0.5, model_mode='eval').run(state, net, batches, loss_fn)
    assert res.ratios['flops'] <= 0.5 and seen and not any(seen) and all(m.training for m in net.modules())
