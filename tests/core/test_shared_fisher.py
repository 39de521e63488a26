"""Rule 11: a module called several times (a head shared over pyramid levels), and the group Fisher of
``FisherTaps`` against brute force with explicit mask multipliers."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import ChannelMasks, FisherTaps, analyze, input_forward


class SharedHead(nn.Module):
    """Three pyramid levels from separate convs; one head tower (2 convs + GN) applied to each level."""

    def __init__(self):
        super().__init__()
        self.l0 = nn.Conv2d(3, 8, 3, padding=1)
        self.l1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.l2 = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.tower = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.tower_gn = nn.GroupNorm(4, 8)
        self.tower2 = nn.Conv2d(8, 6, 3, padding=1)
        self.pred = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        outs = []
        for level in (self.l0, self.l1, self.l2):
            f = F.relu(level(x))
            f = F.relu(self.tower_gn(self.tower(f)))
            f = F.relu(self.tower2(f))
            outs.append(self.pred(f))
        return outs


def test_shared_module_couples_all_levels(check_exact, unit_of):
    g = analyze(SharedHead(), input_forward(torch.randn(1, 3, 8, 8)))
    lv = g.out_atoms['l0']
    assert (lv >= 0).all() and len(set(lv.tolist())) == 8
    np.testing.assert_array_equal(g.out_atoms['l1'], lv)
    np.testing.assert_array_equal(g.out_atoms['l2'], lv)
    np.testing.assert_array_equal(g.in_atoms['tower'], lv)
    assert len(unit_of(g, 'l0')) == 1 and {'l0', 'l1', 'l2', 'tower'} <= set(unit_of(g, 'l0')[0].layers)
    assert len(g.records['tower'].calls) == 3 and len(g.records['pred'].calls) == 3
    assert [c.out_shape[2] for c in g.records['tower'].calls] == [8, 4, 2]
    t = g.out_atoms['tower']
    assert len(set(t.tolist())) == 4  # GN(4, 8): 2-channel groups
    assert (g.out_atoms['tower2'] >= 0).all()
    assert 'pred' in g.unprunable
    out = check_exact(SharedHead(), torch.randn(1, 3, 8, 8))
    slim = out['slim']
    assert slim.l0.out_channels == slim.l1.out_channels == slim.tower.in_channels < 8


class RoIShared(nn.Module):
    """Adds a shared-conv call on two inputs and a flatten -> Linear reader (channel c owns c*4 .. c*4+3)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.shared = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        ys = []
        for f in (F.relu(self.a(x)), torch.tanh(self.b(x)) + F.relu(self.a(x))):
            z = F.relu(self.shared(f))
            ys.append(F.adaptive_avg_pool2d(z, 2).flatten(1))
        h = F.relu(self.fc(ys[0] * ys[1]))
        return self.out(h)


def _loss_per_sample(outs, weights):
    """A differentiable per-sample loss over a list of outputs: (N,)."""
    total = 0
    for o, w in zip(outs, weights):
        o = o.flatten(1)
        total = total + (o * w).sum(1) + 0.5 * (o ** 2).mean(1)
    return total


def _brute_fisher(model, graph, x, weights):
    """F[a] = sum_n (dL_n/dm_a)^2 with a mask multiplier m (ones) applied at every reader's input."""
    modules = dict(model.named_modules())
    A = graph.num_atoms
    per_sample = []
    for n in range(x.shape[0]):
        m = torch.ones(A, dtype=torch.float64, requires_grad=True)
        handles = []
        for name, atoms in graph.in_atoms.items():
            if not (atoms >= 0).any():
                continue
            idx = torch.from_numpy(np.where(atoms >= 0, atoms, A))
            dim = graph.rules[name].in_dim

            def pre(module, args, idx=idx, dim=dim):
                inp = args[0]
                scale = torch.cat([m, torch.ones(1, dtype=m.dtype)])[idx].to(inp.dtype)
                d = dim if dim >= 0 else inp.dim() + dim
                shape = [1] * inp.dim()
                shape[d] = -1
                return (inp * scale.view(shape),) + tuple(args[1:])
            handles.append(modules[name].register_forward_pre_hook(pre))
        try:
            outs = model(x[n:n + 1])
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            loss = _loss_per_sample(outs, weights).sum()
            (grad,) = torch.autograd.grad(loss, m)
        finally:
            for h in handles:
                h.remove()
        per_sample.append(grad.detach())
    return torch.stack(per_sample).pow(2).sum(0)


def _tap_fisher(model, graph, x, weights, iters=1):
    taps = FisherTaps(model, graph)
    try:
        for _ in range(iters):
            model.zero_grad()
            outs = model(x)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            _loss_per_sample(outs, weights).sum().backward()
            assert taps.accumulate()
        return taps.fisher.clone(), taps.samples
    finally:
        taps.remove()


def _check_fisher(model, x1, x, n_outs, out_shapes, alive_frac=0.8):
    torch.manual_seed(0)
    model.eval()  # no batch coupling: per-sample gradients of the summed loss are dL_n/da
    graph = analyze(model, input_forward(x1))
    assert graph.num_atoms > 0
    weights = [torch.randn(int(np.prod(s))) for s in out_shapes[:n_outs]]
    fisher, samples = _tap_fisher(model, graph, x, weights)
    assert samples == x.shape[0]
    brute = _brute_fisher(model, graph, x, weights)
    assert fisher.shape == brute.shape == (graph.num_atoms,)
    assert (brute > 0).float().mean() > alive_frac, 'most atoms should matter to the loss in this model'
    torch.testing.assert_close(fisher, brute, rtol=1e-4, atol=1e-9 * float(brute.max()))
    # per-atom sums must come *before* squaring: the sum of squares per channel differs
    return graph, fisher, brute


def test_fisher_shared_head_equals_brute_force():
    model = SharedHead()
    torch.manual_seed(1)
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(3, 3, 8, 8)
    graph, fisher, brute = _check_fisher(model, x[:1], x, 3, [(3, 8, 8), (3, 4, 4), (3, 2, 2)])
    # the level convs' atoms are read three times (tower on each level): their F is one square of a sum
    lv = np.unique(graph.out_atoms['l0'])
    assert (fisher[lv] > 0).all()


def test_fisher_accumulates_over_iterations():
    model = SharedHead().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = analyze(model, input_forward(x[:1]))
    weights = [torch.randn(3 * 8 * 8), torch.randn(3 * 4 * 4), torch.randn(3 * 2 * 2)]
    once, _ = _tap_fisher(model, graph, x, weights, iters=1)
    twice, samples = _tap_fisher(model, graph, x, weights, iters=2)
    assert samples == 4
    torch.testing.assert_close(twice, 2 * once)


def test_fisher_flatten_linear_and_multiply_equals_brute_force():
    model = RoIShared()
    torch.manual_seed(2)
    for p in model.parameters():
        p.data.normal_(0, 0.4)
    x = torch.randn(4, 3, 4, 4)
    graph, _, _ = _check_fisher(model, x[:1], x, 1, [(2,)])
    np.testing.assert_array_equal(graph.in_atoms['fc'], np.repeat(graph.out_atoms['shared'], 4))
    # a and b are added: one unit, read by the shared conv twice
    np.testing.assert_array_equal(graph.out_atoms['a'], graph.out_atoms['b'])
    np.testing.assert_array_equal(graph.in_atoms['shared'], graph.out_atoms['a'])


def test_fisher_is_zero_for_masked_atoms():
    model = SharedHead().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = analyze(model, input_forward(x[:1]))
    masks = ChannelMasks(model, graph)
    lv = np.unique(graph.out_atoms['l0'])
    masks.prune(lv[:3])
    taps = FisherTaps(model, graph, masks)
    out = model(x)
    sum(o.pow(2).sum() for o in out).backward()
    taps.accumulate()
    taps.remove()
    # a masked channel is read by zeroed weights only: dL/da is 0 there, so its Fisher is 0
    assert (taps.fisher[lv[:3]] == 0).all()
    assert (taps.fisher[lv[3:]] > 0).all()


def test_fisher_torchvision_equals_brute_force():
    """Depthwise convs, SE blocks, hardswish, chunk + channel shuffle, Linear classifier."""
    import pytest
    models = pytest.importorskip('torchvision').models
    for arch in ('mobilenet_v3_small', 'shufflenet_v2_x0_5'):
        torch.manual_seed(0)
        model = getattr(models, arch)(weights=None, num_classes=5)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
        x = torch.randn(2, 3, 32, 32)
        graph, fisher, _ = _check_fisher(model, x[:1], x, 1, [(5,)], alive_frac=0.5)
        assert graph.num_atoms > 100


def test_masks_set_alive_shape_checked():
    import pytest
    model = SharedHead()
    g = analyze(model, input_forward(torch.randn(1, 3, 8, 8)))
    masks = ChannelMasks(model, g)
    with pytest.raises(ValueError):
        masks.set_alive(np.ones(g.num_atoms + 1, dtype=bool))
    alive = np.ones(g.num_atoms, dtype=bool)
    alive[np.unique(g.out_atoms['l0'])[:2]] = False
    masks.set_alive(alive)
    w = model.tower.weight.detach().clone()
    masks.apply()
    assert torch.equal(model.tower.weight, w), 'apply is idempotent'
    cols = [i for i, a in enumerate(g.in_atoms['tower']) if not alive[a]]
    assert len(cols) == 2 and (model.tower.weight[:, cols] == 0).all()
    assert (model.tower.weight[:, [i for i in range(8) if i not in cols]] != 0).any()


def test_taps_do_not_change_gradients():
    """The taps are identities in forward and backward: parameter gradients are bit-identical with and without
    them (train mode, in-place ReLUs and residual adds of torchvision's ResNet)."""
    import pytest
    models = pytest.importorskip('torchvision').models
    torch.manual_seed(0)
    model = models.resnet18(weights=None, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    graph = analyze(model, input_forward(x[:1]))
    model.train()

    def grads():
        model.zero_grad()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        out = model(x)
        out.pow(2).sum().backward()
        model.load_state_dict(state)  # undo BN running-stat updates
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    out0, g0 = grads()
    taps = FisherTaps(model, graph)
    out1, g1 = grads()
    assert taps.accumulate() and taps.samples == 2
    assert (taps.fisher > 0).float().mean() > 0.9
    taps.remove()
    assert torch.equal(out0, out1)
    for a, b in zip(g0, g1):
        assert torch.equal(a, b)


@pytest.mark.parametrize('shape', [(2, 3, 5, 7), (2, 64, 256, 260), (4, 6), (3, 5, 11)])
def test_channel_dot_matches_multiply_and_sum(shape):
    """Both paths of the tap's reduction (batched matmul for big CPU tensors, multiply-sum otherwise)."""
    from mmfisher.core.masks import _BMM_MIN_NUMEL, _channel_dot
    torch.manual_seed(0)
    x, g = torch.randn(shape), torch.randn(shape)
    want = (x.double() * g.double()).reshape(shape[0], shape[1], -1).sum(-1) if len(shape) > 2 else x * g
    got = _channel_dot(x, g)
    assert got.shape == shape[:2]
    assert torch.allclose(got.double(), want.double(), rtol=1e-4, atol=1e-3)
    if shape == (2, 64, 256, 260):
        assert x.numel() >= _BMM_MIN_NUMEL  # the batched-matmul path is the one checked here
