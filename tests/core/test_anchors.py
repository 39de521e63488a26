"""Anchor layers for label-free pruning (mmfisher.core.anchors): seed 002's selection rule on the channel graph,
the alive channels an anchor compares while channels are masked, and the sampled (zero-mean) MSE term."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import ChannelMasks, analyze, input_forward, slim_model
from mmfisher.core import anchors as A


class Chain(nn.Module):
    """stem -> 2 residual blocks (identity shortcut) -> down conv -> 2 plain conv+bn -> head (model output).

    Units in execution order: stem/stream (stem, b1c2, b2c2), b1c1, b2c1, down, c1, c2."""

    def __init__(self, w: int = 8):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.b1c1, self.b1n1 = nn.Conv2d(w, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.b1c2, self.b1n2 = nn.Conv2d(6, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.b2c1, self.b2n1 = nn.Conv2d(w, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.b2c2, self.b2n2 = nn.Conv2d(6, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.down, self.dn = nn.Conv2d(w, 10, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(10)
        self.c1, self.n1 = nn.Conv2d(10, 10, 3, padding=1, bias=False), nn.BatchNorm2d(10)
        self.c2, self.n2 = nn.Conv2d(10, 12, 1, bias=False), nn.BatchNorm2d(12)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.b1n2(self.b1c2(F.relu(self.b1n1(self.b1c1(x))))))
        x = F.relu(x + self.b2n2(self.b2c2(F.relu(self.b2n1(self.b2c1(x))))))
        x = F.relu(self.dn(self.down(x)))
        x = F.relu(self.n1(self.c1(x)))
        x = F.relu(self.n2(self.c2(x)))
        return self.head(x)


X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope='module')
def chain():
    torch.manual_seed(0)
    model = Chain().eval()
    return model, analyze(model, input_forward(X))


def test_units_in_execution_order(chain):
    _, graph = chain
    assert [u.name for u in A.ordered_units(graph)] == ['stem', 'b1c1', 'b2c1', 'down', 'c1', 'c2']


def test_descendants_follow_the_forward_pass(chain):
    _, graph = chain
    desc = A.descendants(graph)
    # the residual stream's readers run after its producers: b2c1 reads what b1c2 wrote, not the other way round
    assert 'b2c1' in desc['b1c2'] and 'b1c1' not in desc['b1c2']
    assert desc['stem'] >= {'b1c1', 'b1c2', 'b2c1', 'b2c2', 'down', 'c1', 'c2'}
    assert desc['c2'] == {'head'} and desc['head'] == set()  # the model output is reached, reaches nothing
    assert A.anchor_module(graph, 'c1') == 'n1' and A.anchor_module(graph, 'head') == 'head'


def test_seed_rule_one_anchor_per_partition(chain):
    _, graph = chain
    # P=3 over 6 units: [stem, b1c1] [b2c1, down] [c1, c2]
    got = A.select_anchors(graph, 3)
    assert [(c.last_unit, c.layer, c.anchor) for c in got] == [
        ('b1c1', 'b1c2', 'b1n2'),   # b1c1's first common descendant is b1c2; the anchor is the norm after it
        ('down', 'c1', 'n1'),
        ('c2', 'c2', 'n2'),         # only the model output follows c2: anchored at its own producer
    ]
    assert got[2].note and all(c.units == 2 for c in got)
    # the residual stream (produced by stem, b1c2, b2c2): the first conv every producer reaches is `down`
    one = A.select_anchors(graph, 1)
    assert [(c.last_unit, c.anchor) for c in one] == [('c2', 'n2')]
    six = A.select_anchors(graph, 6)
    assert six[0].last_unit == 'stem' and six[0].layer == 'down' and six[0].anchor == 'dn'
    assert len({c.anchor for c in six}) == len(six)  # duplicates dropped
    assert A.every_anchor(graph) == ['bn0', 'b1n1', 'b1n2', 'b2n1', 'b2n2', 'dn', 'n1', 'n2']


@pytest.mark.parametrize('bad', [0, -1, 7, 2.5, True, '3'])
def test_bad_num_partitions(chain, bad):
    _, graph = chain
    with pytest.raises(A.AnchorError, match='num_partitions'):
        A.select_anchors(graph, bad)


def test_more_partitions_than_units_names_the_limit(chain):
    _, graph = chain
    with pytest.raises(A.AnchorError, match=r'num_partitions=7 is more than .* 6 channel units: use 1 <= '):
        A.select_anchors(graph, 7)


def test_anchor_name_that_is_not_a_module(chain):
    model, _ = chain
    assert A.check_anchor_names(model, ['n1', 'b1n2']) == ['n1', 'b1n2']
    with pytest.raises(A.AnchorError, match=r"\['n9'\] is not a module of Chain.*Fix"):
        A.check_anchor_names(model, ['n1', 'n9'])


def test_alive_positions_follow_the_masks(chain):
    model, graph = chain
    model = copy.deepcopy(model)
    assert A.alive_positions(graph, model, 'n1') is None  # nothing masked
    masks = ChannelMasks(model, graph)
    atoms_n1 = graph.out_atoms['n1']
    masks.prune(atoms_n1[[1, 4]])
    alive = A.alive_positions(graph, model, 'n1')
    assert alive.tolist() == [i not in (1, 4) for i in range(10)]
    # the producer still computes the masked channels (masking zeroes the readers' weights only)
    assert A.alive_positions(graph, model, 'c1').tolist() == alive.tolist()
    assert A.alive_positions(graph, model, 'n2') is None
    assert A.alive_positions(graph, model, 'head') is None  # model output: never masked


def test_anchor_mse_of_masked_equals_slimmed_and_ignores_masked_channels(chain):
    model, graph = chain
    teacher = copy.deepcopy(model)
    student = copy.deepcopy(model)
    with torch.no_grad():  # a student that differs from its teacher
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    masks = ChannelMasks(student, graph)
    for name in ('n1', 'b1n1', 'dn'):
        masks.prune(graph.out_atoms[name][[0, 3]])
    alive = masks.alive.numpy()

    def out(m, name):
        store = {}
        h = dict(m.named_modules())[name].register_forward_hook(lambda mod, a, o: store.setdefault('x', o.clone()))
        with torch.no_grad():
            m(X)
        h.remove()
        return store['x']

    slim = copy.deepcopy(student)
    cfg = slim_model(slim, graph, alive)
    for name in ('n1', 'b1n1', 'dn', 'n2'):
        s_alive = A.alive_positions(graph, student, name)
        si, ti = A.compose(None, s_alive)
        masked = A.anchor_mse(out(student, name), out(teacher, name), 1, si, ti, name)
        kept = (cfg['layers'].get(name) or {}).get('out')
        si2, ti2 = A.compose(kept, None)
        slimmed = A.anchor_mse(out(slim, name), out(teacher, name), 1, si2, ti2, name)
        torch.testing.assert_close(masked, slimmed, rtol=1e-5, atol=1e-7)
        if s_alive is not None:
            full = A.anchor_mse(out(student, name), out(teacher, name), 1)
            assert not torch.isclose(full, masked), f'{name}: the masked channels should change an all-channel MSE'
            # what the student computes at a masked channel does not count
            noisy = out(student, name).clone()
            noisy[:, ~s_alive] += 100.0
            torch.testing.assert_close(A.anchor_mse(noisy, out(teacher, name), 1, si, ti, name), masked)


def test_anchor_mse_refuses_unpairable_shapes():
    with pytest.raises(A.AnchorError, match='cannot be compared channel by channel'):
        A.anchor_mse(torch.zeros(2, 4, 3, 3), torch.zeros(2, 5, 3, 3), name='neck.x')


def test_sampled_mse_term_has_zero_mean_and_curvature_gradient():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(4, 3, 5, 5)
    s = t.clone().requires_grad_(True)
    z = A.fisher_noise_mse(s, t, batch=4, generator=gen)
    assert float(z) == 0.0  # linear in (s - t): zero where the student equals the teacher ...
    z.backward()
    assert s.grad.abs().sum() > 0  # ... but its gradient is not, so the Fisher is informative
    # per sample: E[|d z / d s_n|^2] = 2 / (N M) x (M / N elements) = 2 / N^2: the per-sample squared gradient of a
    # batch mean whose curvature is the MSE's (2 / M per element)
    grads = []
    for _ in range(400):
        s.grad = None
        A.fisher_noise_mse(s, t, 4, gen).backward()
        grads.append(s.grad[0].pow(2).sum().item())
    assert np.mean(grads) == pytest.approx(2 / 4 ** 2, rel=0.1)
    vals = [float(A.fisher_noise_mse(t + 0.3, t, 4, gen)) for _ in range(400)]
    assert abs(np.mean(vals)) < 4 * np.std(vals) / np.sqrt(len(vals))


def test_input_weight_norms_per_layer_type():
    conv = nn.Conv2d(4, 6, 3, groups=2)
    with torch.no_grad():
        conv.weight[:, 1] = 0  # input position 1 of group 0 and position 3 of group 1
    nz = (A.input_weight_norms(conv) != 0).tolist()
    assert nz == [True, False, True, False]
    lin = nn.Linear(5, 2)
    with torch.no_grad():
        lin.weight[:, 2] = 0
    assert (A.input_weight_norms(lin) != 0).tolist() == [True, True, False, True, True]
    tconv = nn.ConvTranspose2d(3, 4, 2)
    with torch.no_grad():
        tconv.weight[0] = 0
    assert (A.input_weight_norms(tconv) != 0).tolist() == [False, True, True]
    assert A.input_weight_norms(nn.BatchNorm2d(3)) is None
