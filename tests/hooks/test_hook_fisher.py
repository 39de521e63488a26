"""FisherPruningHook's Fisher math in a real mmengine Runner, against a brute-force ``sum_n (dL_n/dm)^2``;
AMP loss-scale division and overflow skipping; frozen layers."""
import numpy as np
import pytest
import torch

from _hook_helpers import FakeAmpOptimWrapper, ToyData, ToyNet, get_hook, per_sample_loss, toy_runner  # noqa: F401

SHAPE = (3, 12, 12)
NO_STEP = dict(optimizer=dict(type='SGD', lr=0.0))  # weights stay put: the brute force sees the same model


def brute_force_fisher(model: ToyNet, graph, batches) -> torch.Tensor:
    """``F[a] = sum_n (dL_n / dm_a)^2`` with an explicit multiplier ``m_a`` on every reader input of atom ``a``
    (all readers, both calls of ``shared``), per-sample losses from the batch forward (BN in train mode)."""
    model.train()
    fisher = torch.zeros(graph.num_atoms, dtype=torch.float64)
    for x, y in batches:
        m = torch.ones(graph.num_atoms, requires_grad=True)
        model.mask = {}
        for name, atoms in graph.in_atoms.items():
            a = torch.from_numpy(atoms)
            model.mask[name] = torch.where(a >= 0, m[a.clamp(min=0)], torch.ones(a.numel()))
        losses = per_sample_loss(model.features(x), y)
        for n in range(losses.numel()):
            (g,) = torch.autograd.grad(losses[n], m, retain_graph=True)
            fisher += g.double() ** 2
        model.mask = None
    return fisher


def test_fisher_equals_brute_force_with_shared_module_and_coupled_residual(tmp_path):
    runner = toy_runner(str(tmp_path), dict(interval=1000, input_shape=SHAPE), max_iters=2, shuffle=False,
                        optim_wrapper=NO_STEP)
    runner.train()
    hook = get_hook(runner)
    g = hook.graph
    # the structure the test relies on: a/b read the same (stem) atoms; the residual stream y = a(x) + b(x) is
    # coupled with both calls of `shared` and with `mid`'s input; head reads mid's atoms
    assert np.array_equal(g.in_atoms['a'], g.in_atoms['b'])
    assert np.array_equal(g.in_atoms['shared'], g.in_atoms['mid'])
    assert len({tuple(g.in_atoms[n]) for n in ('a', 'shared', 'head')}) == 3
    assert g.num_atoms == 18 and hook.samples == 8
    data = ToyData()
    ref = brute_force_fisher(runner.model, g, [(data.x[i:i + 4], data.y[i:i + 4]) for i in (0, 4)])
    assert float(ref.min()) > 0
    torch.testing.assert_close(hook.fisher, ref, rtol=1e-5, atol=0)


def _fisher(tmp_path, name, iters, wrapper):
    runner = toy_runner(str(tmp_path / name), dict(interval=1000, input_shape=SHAPE), max_iters=iters,
                        shuffle=False, optim_wrapper=wrapper, experiment_name=name)
    runner.train()
    hook = get_hook(runner)
    return hook.fisher.clone(), hook.samples


def test_amp_loss_scale_is_divided_out_and_overflow_steps_are_skipped(tmp_path):
    sgd = dict(type='SGD', lr=0.0)
    plain2, n2 = _fisher(tmp_path, 'plain2', 2, dict(optimizer=sgd))
    plain1, n1 = _fisher(tmp_path, 'plain1', 1, dict(optimizer=sgd))
    scaled, ns = _fisher(tmp_path, 'scaled', 2, dict(type='FakeAmpOptimWrapper', optimizer=sgd,
                                                     scales=(1024.0, 65536.0)))
    torch.testing.assert_close(scaled, plain2, rtol=1e-5, atol=0)
    assert ns == n2 == 8
    overflow, no = _fisher(tmp_path, 'overflow', 2, dict(type='FakeAmpOptimWrapper', optimizer=sgd,
                                                         scales=(1024.0, float('inf'))))
    torch.testing.assert_close(overflow, plain1, rtol=1e-5, atol=0)
    assert no == n1 == 4


@pytest.mark.parametrize('prune_frozen', [False, True])
def test_frozen_stem_atoms_are_kept_unless_prune_frozen(tmp_path, prune_frozen):
    runner = toy_runner(str(tmp_path), dict(interval=1, input_shape=SHAPE, target=0.45, channels_per_step=2,
                                            prune_frozen=prune_frozen),
                        model=ToyNet(frozen_stem=True), max_iters=12)
    runner.train()
    hook = get_hook(runner)
    g = hook.graph
    stem_atoms = g.in_atoms['a']
    assert not g.trainable[stem_atoms].any() and g.trainable[g.in_atoms['shared']].all()
    alive = hook.masks.alive.numpy()
    assert hook.done
    if prune_frozen:
        assert not alive[stem_atoms].all()
    else:
        assert alive[stem_atoms].all()
        assert 'frozen' in hook.summary('ToyNet', 0.0) and 'stem' in hook.summary('ToyNet', 0.0)
