"""The parts every pruning method shares, on plain nn.Modules: pruning state, reversible masks, importance
criteria, schedules."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from mmfisher.core import (AdaptiveK, BNScale, GroupFisher, IntervalTopK, L1Norm, NothingPrunable, PruningState,
                           RandomImportance, StateMismatch, Taylor, analyze, input_forward)


class Net(nn.Module):
    """stem -> BN -> residual pair (a + b) -> mid -> head."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.a = nn.Conv2d(width, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 1)
        self.mid = nn.Conv2d(width, 2 * width, 1)
        self.head = nn.Conv2d(2 * width, 2, 1)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.a(x)) + self.b(x)
        return self.head(torch.relu(self.mid(y)))


def _setup(width=6, **kw):
    torch.manual_seed(0)
    model = Net(width)
    graph = analyze(model, input_forward(torch.randn(1, 3, 8, 8)))
    return model, graph, PruningState(model, graph, input_shape=(3, 8, 8), **kw)


def _backward(model, n=4, seed=0):
    x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    model.zero_grad()
    model(x).pow(2).mean().backward()


def test_state_prunes_in_order_keeps_min_and_rounds_the_written_structure():
    model, graph, state = _setup(divisor=2)
    assert state.min_keep == 2 and state.ratios() == {'flops': 1.0, 'acts': 1.0, 'params': 1.0}
    score = np.arange(graph.num_atoms, dtype=float)
    chosen = state.choose(score, 1000)
    for atoms in state.unit_atoms:  # every unit keeps >= divisor atoms
        assert len(set(atoms.tolist()) - set(chosen)) >= 2
    state.prune(chosen[:3])
    assert state.order == chosen[:3] and state.step_sizes == [3]
    assert not state.alive[chosen[:3]].any()
    exported = state.export_alive()
    for atoms in state.unit_atoms:
        kept = int(exported[atoms].sum())
        assert kept % 2 == 0 or kept == atoms.size
    assert state.ratios()['flops'] < 1.0


def test_state_reaches_stops_a_step_at_the_target():
    model, graph, state = _setup()
    score = np.arange(graph.num_atoms, dtype=float)
    chosen = state.choose(score, 1000, state.reaches('flops', 0.9))
    state.prune(chosen)
    assert state.ratios()['flops'] <= 0.9
    alive = state.alive
    alive[chosen[-1]] = True
    assert state.ratios(alive, chosen[:-1])['flops'] > 0.9  # one atom fewer would not have reached it


def test_state_dict_round_trip_and_mismatch_refused():
    model, graph, state = _setup()
    state.prune([0, 1])
    saved = state.state_dict()
    other_model, other_graph, other = _setup()
    other.load_state_dict(saved)
    assert other.order == [0, 1] and np.array_equal(other.alive, state.alive)
    modules = dict(other_model.named_modules())
    zeroed = 0
    for name, atoms in other_graph.in_atoms.items():  # the restored masks are applied to the readers
        cols = np.nonzero(np.isin(atoms, [0, 1]))[0]
        if cols.size:
            assert modules[name].weight[:, cols].abs().sum() == 0, name
            zeroed += 1
    assert zeroed > 0
    _, _, wider = _setup(width=8)
    with pytest.raises(StateMismatch, match='do not fit the model.*num_atoms'):
        wider.load_state_dict(saved)
    shaped = PruningState(other_model, other_graph, input_shape=(3, 16, 16))
    with pytest.raises(StateMismatch, match=r'input_shape=\(3, 8, 8\)'):
        shaped.load_state_dict(saved)


def test_nothing_eligible_and_unmatched_skip_patterns():
    model, graph, state = _setup(skip=('nek.*', 'a'))
    assert 'nek.*' in state.unmatched_skip and 'a' not in state.unmatched_skip
    with pytest.raises(NothingPrunable, match='no atom is eligible'):
        model2 = Net()
        PruningState(model2, analyze(model2, input_forward(torch.randn(1, 3, 8, 8))),
                     skip=('stem', 'a', 'b', 'mid', 'bn'))


def test_unmatched_skip_suggests_the_closest_layer_names():
    model, graph, state = _setup(skip=('mdi',))
    assert state.unmatched_skip['mdi'] and state.unmatched_skip['mdi'][0] == 'mid'


def test_trial_masks_restore_the_model_bit_for_bit():
    model, graph, state = _setup()
    model.eval()  # forwards in train mode would update BN statistics
    state.prune([0])
    before = copy.deepcopy(model.state_dict())
    alive_before = state.masks.alive.clone()
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)
    trial = np.zeros(graph.num_atoms, dtype=bool)
    trial[:2] = True
    with state.masks.trial(trial):
        assert int(state.masks.alive.sum()) == 1  # atom 0 stays masked: trial intersects
        assert not torch.allclose(model(x), ref)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(state.masks.alive, alive_before)
    assert torch.equal(model(x), ref)
    with pytest.raises(RuntimeError, match='inside'):
        with state.masks.trial(trial):
            raise RuntimeError('inside')
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_group_fisher_is_the_square_of_summed_per_sample_mask_gradients():
    model, graph, state = _setup()
    crit = GroupFisher(delta='none')
    crit.attach(model, graph, state.masks)
    crit.collecting = True
    _backward(model)
    assert crit.accumulate()
    vec = crit.collect()
    assert vec.shape == (graph.num_atoms + 1,) and vec[-1] == 4
    crit.add(vec)
    crit.add(vec)  # e.g. a second rank with the same sums
    assert crit.samples == 8 and torch.equal(crit.sums, 2 * vec[:-1])
    scores = crit.scores(state.alive, state.costs)
    assert np.allclose(scores, 2 * vec[:-1].numpy())
    crit.reset()
    assert crit.samples == 0 and not crit.ready()
    crit.detach()
    _backward(model)
    assert not crit.accumulate()  # detached: no taps fire


def test_taylor_is_the_absolute_summed_mask_gradient():
    model, graph, state = _setup()
    fisher, taylor = GroupFisher(delta='none'), Taylor()
    fisher.attach(model, graph, state.masks)
    _backward(model, n=1)
    fisher.accumulate()
    f = fisher.collect()
    fisher.detach()
    taylor.attach(model, graph, state.masks)
    _backward(model, n=1)
    taylor.accumulate()
    t = taylor.collect()
    taylor.add(t)
    # one sample: |sum_n g| squared is sum_n g^2
    assert np.allclose(taylor.raw_scores() ** 2, f[:-1].numpy())


def test_l1_layerwise_takes_the_same_share_of_every_unit():
    model, graph, state = _setup()
    crit = L1Norm()
    crit.attach(model, graph)
    norms = crit.norms()
    w = model.stem.weight.detach().abs().reshape(model.stem.out_channels, -1).sum(1)
    stem_atoms = graph.out_atoms['stem']
    assert norms[stem_atoms].min() >= w.min().item() - 1e-6  # the stem's filters contribute to their atoms
    score = crit.scores(state.alive, state.costs)
    for unit in graph.units:
        s = score[unit.atoms]
        assert np.allclose(np.sort(s), np.arange(1, unit.atoms.size + 1) / unit.atoms.size)
        lowest = unit.atoms[np.argmin(s)]
        assert norms[lowest] == norms[unit.atoms].min()
    raw = L1Norm(layerwise=False)
    raw.attach(model, graph)
    assert np.allclose(raw.scores(state.alive, state.costs), norms)


def test_bn_scale_and_random_criteria():
    model, graph, state = _setup()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.5, -2.0, 0.1, 3.0, -0.2, 1.0]))
    crit = BNScale()
    crit.attach(model, graph)
    s = crit.scores(state.alive, state.costs)
    atoms = graph.out_atoms['bn']
    assert np.allclose(s[atoms], [0.5, 2.0, 0.1, 3.0, 0.2, 1.0])
    r1, r2 = RandomImportance(seed=3), RandomImportance(seed=3)
    for r in (r1, r2):
        r.attach(model, graph)
    a = r1.scores(state.alive, state.costs)
    assert np.array_equal(a, r2.scores(state.alive, state.costs))  # the same on every rank
    assert not np.array_equal(a, r1.scores(state.alive, state.costs))  # a new draw per step
    r3 = RandomImportance(seed=3)
    r3.attach(model, graph)
    r3.load_state_dict(r1.state_dict())
    assert np.array_equal(r3.raw_scores(), r1.raw_scores())  # resumes the same stream


def test_acts_delta_divides_by_the_atoms_saving():
    model, graph, state = _setup()
    crit = L1Norm(layerwise=False, delta='acts')
    crit.attach(model, graph)
    d = state.costs.deltas(state.alive)['acts']
    expect = crit.norms() / (d / d.max())
    assert np.allclose(crit.scores(state.alive, state.costs), expect)


def test_schedules():
    s = IntervalTopK(interval=3, k=2, start_iter=1)
    assert [s.due(i) for i in range(1, 9)] == [False, False, False, True, False, False, True, False]
    assert not s.collects(0) and s.collects(1)
    model, graph, state = _setup()
    assert s.next_k(state) == 2 and s.history == [2]
    a = AdaptiveK(interval=1, share=0.25)
    n = int(state.candidates().sum())
    assert a.next_k(state) == int(np.ceil(0.25 * n))
    state.prune(state.choose(np.arange(graph.num_atoms, dtype=float), 4))
    assert a.next_k(state) == int(np.ceil(0.25 * (n - 4)))
    fixed = AdaptiveK(interval=1, share=0.25, recompute=False)
    k0 = fixed.next_k(state)
    state.prune(state.choose(np.arange(graph.num_atoms, dtype=float), 2))
    assert fixed.next_k(state) == k0
    capped = AdaptiveK(share=0.9, max_k=2)
    assert capped.next_k(state) == 2
    with pytest.raises(ValueError, match='share'):
        AdaptiveK(share=1.5)
    with pytest.raises(ValueError, match='interval'):
        IntervalTopK(interval=0)
    with pytest.raises(ValueError, match='delta'):
        GroupFisher(delta='memory')


def test_group_magnitude_averages_every_weight_slice_an_atom_owns():
    """Torch-Pruning's group magnitude: the producer's filter, the norm's scale and the plain reader's input column
    (p-th powers summed per slice, averaged over the slices); a depthwise reader has no column per atom."""
    from mmfisher.core.importance import GroupMagnitude
    from mmfisher.registry import IMPORTANCE

    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
            self.dw = nn.Conv2d(4, 4, 3, groups=4)
            self.b = nn.Conv2d(4, 5, 1)

        def forward(self, x):
            return self.b(self.dw(self.bn(self.a(x))))

    torch.manual_seed(0)
    model = Chain()
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 2)
    graph = analyze(model, input_forward(torch.randn(1, 3, 9, 9)))
    crit = GroupMagnitude()
    crit.attach(model, graph)
    score = crit.raw_scores()
    atoms = graph.out_atoms['a']
    w_a = model.a.weight.detach().double().pow(2).reshape(4, -1).sum(1)
    gamma = model.bn.weight.detach().double().pow(2)
    assert len({int(a) for a in atoms} & {int(a) for a in graph.out_atoms['dw']}) == 4  # dw is in a's unit
    w_dw = model.dw.weight.detach().double().pow(2).reshape(4, -1).sum(1)  # its filters: output slices
    w_b = model.b.weight.detach().double().pow(2).movedim(1, 0).reshape(4, -1).sum(1)  # b's input columns
    expected = (w_a + gamma + w_dw + w_b) / 4  # dw as reader: grouped, left out
    assert np.allclose(score[atoms], expected.numpy())
    assert isinstance(IMPORTANCE.build(dict(type='GroupMagnitude', p=1)), GroupMagnitude)
    with pytest.raises(ValueError, match=r'^p=0 must be a number > 0'):
        GroupMagnitude(p=0)
