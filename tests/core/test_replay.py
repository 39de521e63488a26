"""Replay of unchanged activations in one-shot trials (``mmfisher.core.replay``): the balanced curves come out bit
for bit as without it while the unchanged prefix is skipped; hooks, RNG draws, shared modules, in-place writes,
views, outputs that cannot be copied and the memory limit are respected."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import PruningState, analyze, input_forward
from mmfisher.core.balanced import BalancedPruning
from mmfisher.core.replay import ActivationReplay


class Block(nn.Module):
    """conv-bn-relu-conv-bn + identity; counts its forwards."""

    def __init__(self, w: int, noisy: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                                  nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w))
        self.noisy = noisy
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        y = self.body(x)
        if self.noisy:  # draws from torch's RNG: must never be replayed
            y = y + 0.01 * torch.randn_like(y)
        return F.relu(x + y)


class Net(nn.Module):
    """stem -> layer1 (2 blocks) -> layer2 (down + 2 blocks, the second shared with layer3) -> layer3 -> head."""

    def __init__(self, w: int = 16, noisy: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
        self.layer1 = nn.Sequential(Block(w), Block(w, noisy=noisy))
        shared = Block(2 * w)
        self.layer2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.BatchNorm2d(2 * w),
                                    Block(2 * w), shared)
        self.layer3 = nn.Sequential(shared, Block(2 * w))  # the shared block's second call
        self.head = nn.Linear(2 * w, 4)

    def forward(self, x):
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))).mean((2, 3)))


SHAPE = (3, 12, 12)


@pytest.fixture(scope='module')
def nets(fit_regression):
    """Net and Net(noisy=True) briefly trained, each with 4 calibration batches of 8."""
    return {noisy: fit_regression(lambda: Net(noisy=noisy), SHAPE, 32, 8, 30) for noisy in (False, True)}


def run(net, batches, **kw):
    net = copy.deepcopy(net)
    graph = analyze(net, input_forward(torch.randn(1, *SHAPE)))
    state = PruningState(net, graph, input_shape=SHAPE)
    res = BalancedPruning(target=0.5, full_curves=True, **kw).run(
        state, net, batches, lambda b: F.mse_loss(net(b[0]), b[1]))
    return net, res


def same_curves(a, b):
    assert [c.name for c in a.curves] == [c.name for c in b.curves]
    for ca, cb in zip(a.curves, b.curves):
        assert np.array_equal(ca.ks, cb.ks) and np.array_equal(ca.variation, cb.variation), ca.name
    assert a.pruned == b.pruned and a.tau == b.tau and a.combined_loss == b.combined_loss


@pytest.mark.parametrize('noisy', [False, True])
def test_replayed_curves_equal_the_computed_ones_bit_for_bit(nets, noisy):
    net, batches = nets[noisy]
    _, off = run(net, batches, replay_mb=0)
    slim, on = run(net, batches)
    same_curves(on, off)
    assert off.replay is None and on.replay is not None
    assert on.forwards == off.forwards  # recorded in the points: no pass of its own
    stats = on.replay
    assert stats['calls_replayed'] > 0 and stats['recorded'] > 0
    # a block that draws from the RNG, and every container holding it, is never recorded
    noisy_names = {'layer1', 'layer1.1'} if noisy else set()
    assert noisy_names <= set(stats['refused'])
    # the replayed calls really skipped work: the blocks before the last unit ran fewer times than the points
    points = sum(len(c.ks) for c in on.curves)
    assert slim.layer1[0].calls < (points + 1) * len(batches)


def test_a_trial_skips_the_unchanged_prefix_and_keeps_shared_calls_aligned(nets):
    net, batches = nets[False]
    net = copy.deepcopy(net).eval()
    graph = analyze(net, input_forward(torch.randn(1, *SHAPE)))
    state = PruningState(net, graph, input_shape=SHAPE)
    masks = state.masks
    # mask channels only the last block reads (its inner conv's output): layer3[1].body[3]'s input
    names = [u.name for u in graph.units]
    unit = next(u for u, name in enumerate(names) if 'layer3.1.body.0' in name)
    alive = np.ones(graph.num_atoms, dtype=bool)
    alive[state.unit_atoms[unit][:8]] = False
    with torch.no_grad():
        expect = []
        with masks.trial(alive):
            for x, _ in batches:
                expect.append(net(x))
        replay = ActivationReplay(net, 2 ** 24)
        with replay.installed():
            for i, (x, _) in enumerate(batches):  # an unchanged forward records every call
                with replay.replay(i, ()):
                    net(x)
            before = {n: m.calls for n, m in net.named_modules() if isinstance(m, Block)}
            with masks.trial(alive) as m:
                assert m.changed_modules
                got = []
                for i, (x, _) in enumerate(batches):
                    with replay.replay(i, m.changed_modules, m.changed_tensors):
                        got.append(net(x))
    for e, g in zip(expect, got):
        assert torch.equal(e, g)
    after = {n: m.calls for n, m in net.named_modules() if isinstance(m, Block)}
    # everything before layer3.1 came from the records; layer3.1 ran for every batch
    assert after['layer1.0'] == before['layer1.0'] and after['layer2.2'] == before['layer2.2']
    assert after['layer3.1'] == before['layer3.1'] + len(batches)
    # the shared block's second call (inside layer3) was answered from its own record, not the first call's
    assert after['layer2.3'] == before['layer2.3']
    assert not any('forward' in mod.__dict__ for mod in net.modules())  # unwrapped after


def test_inner_hooks_see_every_call_and_the_memory_limit_is_kept(nets):
    net, batches = nets[False]
    seen = {}
    res = {}
    for mb in (0, 1024):
        hooked = copy.deepcopy(net)
        calls = seen.setdefault(mb, [])
        hooked.layer1[0].body[0].register_forward_hook(lambda m, a, o, calls=calls: calls.append(1))
        _, res[mb] = run(hooked, batches, replay_mb=mb)
    same_curves(res[1024], res[0])
    # a module with a hook inside is never replayed, a module's own hook runs around its replayed forward: the
    # hooked conv saw every forward (the trace's included)
    assert len(seen[1024]) == len(seen[0]) == res[0].forwards + 1
    assert {'layer1', 'layer1.0', 'layer1.0.body'} <= set(res[1024].replay['hooked'])
    assert 'layer1.0.body.0' not in res[1024].replay['hooked']
    assert res[1024].replay['calls_replayed'] > 0  # the others still are
    # a limit that holds nothing: no record, the same curves
    _, off = run(net, batches, replay_mb=0)
    _, tiny = run(net, batches, replay_mb=1e-6)
    same_curves(tiny, off)
    assert tiny.replay['recorded'] == 0 and tiny.replay['calls_replayed'] == 0 and tiny.replay['limit_reached']
    # a limit that holds part: the first records are kept within it, the rest computed, the same curves
    full = on_stats = run(net, batches)[1].replay
    assert not full['limit_reached']
    limit_mb = full['stored_mb'] / 3
    _, part = run(net, batches, replay_mb=limit_mb)
    same_curves(part, off)
    stats = part.replay
    assert stats['limit_reached'] and 0 < stats['stored_mb'] <= limit_mb
    assert 0 < stats['calls_replayed'] < on_stats['calls_replayed']
    assert ActivationReplay(net, 0).enabled is False


def test_hooks_registered_for_one_forward_see_their_call(nets):
    """A feature recorder hooked for one forward only (a distiller's anchors on its frozen teacher) must see the
    call: the containers above it are computed while the hook is there, and replayed again after."""
    net, batches = nets[False]
    res, seen = {}, {}
    for mb in (0, 1024):
        hooked = copy.deepcopy(net)
        graph = analyze(hooked, input_forward(torch.randn(1, *SHAPE)))
        state = PruningState(hooked, graph, input_shape=SHAPE)
        calls = seen.setdefault(mb, [])

        def loss_fn(b, net=hooked, calls=calls):
            captured = []  # first, as a distiller's teacher: a forward that has not diverged yet
            handle = net.layer2[2].body[3].register_forward_hook(lambda m, a, o: captured.append(o))
            try:
                out = net(b[0])
            finally:
                handle.remove()
            calls.append(len(captured))
            return F.mse_loss(out, b[1]) + 1e-3 * captured[0].square().mean() + F.mse_loss(net(b[0]), b[1])
        res[mb] = BalancedPruning(target=0.5, full_curves=True, replay_mb=mb).run(state, hooked, batches, loss_fn)
    same_curves(res[1024], res[0])
    assert seen[1024] == seen[0] and set(seen[0]) == {1}  # the hooked conv ran in every hooked forward
    stats = res[1024].replay
    assert {'layer2', 'layer2.2', 'layer2.2.body'} <= set(stats['hooked'])
    assert 'layer1' not in stats['hooked'] and stats['calls_replayed'] > 0  # the unhooked ones still are


def test_in_place_writes_views_and_input_writes():
    class WritesInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            x.mul_(2)  # writes into its argument and returns something else: never replayed
            return self.conv(x)

    class Top(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.act = nn.ReLU(inplace=True)
            self.flat = nn.Flatten(0)  # a view of its argument: never replayed
            self.writes = WritesInput()
            self.last = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            self.act(y)  # relies on the in-place write, not on the returned value
            y = self.writes(y)
            self.flat(y)
            return self.last(y)

    top = Top().eval()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        expect = top(x)
        replay = ActivationReplay(top, 2 ** 20)
        with replay.installed():
            with replay.replay(0, ()):
                first = top(x)
            with replay.replay(0, (top.last,)):
                got = top(x)
    assert torch.equal(first, expect) and torch.equal(got, expect)
    stats = replay.stats()
    assert set(stats['refused']) == {'flat', 'writes'}
    # conv, the in-place act (its write replayed into its argument) and writes.conv (its input, after the
    # computed write, is the unchanged one)
    assert stats['calls_replayed'] == 3


def test_outputs_that_cannot_be_copied_are_not_recorded():
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return {'out': self.conv(x), 'meta': object()}

    class Top(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = Wrap()

        def forward(self, x):
            return self.w(x)['out']

    top = Top().eval()
    replay = ActivationReplay(top, 2 ** 20)
    with torch.no_grad(), replay.installed():
        with replay.replay(0, ()):
            top(torch.randn(1, 3, 4, 4))
    assert replay.stats()['refused'] == ['w'] and replay.stats()['recorded'] == 1  # w.conv is


@pytest.mark.parametrize('bad', [-1, 1.5, True, '1'])
def test_bad_limit_names_the_field(bad):
    with pytest.raises(ValueError, match='limit_bytes'):
        ActivationReplay(nn.Sequential(nn.Sequential(nn.Linear(2, 2))), bad)


@pytest.mark.parametrize('bad', [-1, True, 'x', float('nan')])
def test_bad_replay_mb_names_the_field(bad):
    with pytest.raises(ValueError, match='replay_mb'):
        BalancedPruning(replay_mb=bad)


class Attend(nn.Module):
    """conv stem -> tokens -> nn.MultiheadAttention (reads ``out_proj.weight`` itself: ``out_proj``'s forward is
    never called) -> an MLP -> mean -> head."""

    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
        self.attn = nn.MultiheadAttention(w, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(w, 2 * w), nn.ReLU(), nn.Linear(2 * w, w))
        self.head = nn.Linear(w, 4)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.head((t + self.mlp(t)).mean(1))


def test_a_changed_module_whose_weights_its_parent_reads_diverges_the_forward_there(fit_regression):
    """Masking the attention's value channels zeroes ``out_proj``'s input weights, but ``out_proj`` is never called:
    the forward diverges where ``attn`` starts, so the MLP after it is computed, not replayed (each attention
    point a real loss rise, and the curves bit for bit those without replay)."""
    net, batches = fit_regression(Attend, SHAPE, 32, 8, 30)
    _, off = run(net, batches, replay_mb=0)
    _, on = run(net, batches)
    same_curves(on, off)
    assert on.replay['calls_replayed'] > 0
    attn = [c for c in off.curves if c.name.startswith('attn')]
    assert attn and all(np.any(c.variation != 0) for c in attn), [(c.name, c.variation) for c in off.curves]


class Refine(nn.Module):
    """Calls a module it is given (not its own submodule), as DINO's decoder calls the head's reg_branches."""

    def __init__(self, w: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())

    def forward(self, x, branch):
        y = self.body(x)
        return y + branch(y)


class Passed(nn.Module):
    """stem -> refine(., branch) -> branch again -> head; ``branch`` belongs to the net, not to ``refine``."""

    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
        self.refine = Refine(w)
        self.branch = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 1))
        self.head = nn.Linear(w, 4)

    def forward(self, x):
        t = self.refine(self.stem(x), self.branch)
        return self.head(self.branch(t).mean((2, 3)))


def test_a_changed_module_called_inside_another_modules_call_is_not_replayed_past(fit_regression):
    """Masking ``branch``'s inner channels changes ``branch.2``, which runs inside ``refine``'s call without being
    its descendant: ``refine`` is computed, not answered from its unchanged record (the curves bit for bit those
    without replay)."""
    net, batches = fit_regression(Passed, SHAPE, 32, 8, 30)
    _, off = run(net, batches, replay_mb=0)
    _, on = run(net, batches)
    same_curves(on, off)
    assert on.replay['calls_replayed'] > 0
    assert any(c.name.startswith('branch') for c in off.curves), [c.name for c in off.curves]
