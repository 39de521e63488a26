"""The rule table: RoI pooling passthrough (two-stage heads) and user-registered rules."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import FisherTaps, LayerRule, analyze, find_rule, input_forward, register_rule
from mmfisher.core import layers as core_layers

tv_ops = pytest.importorskip('torchvision.ops')


class RoIAlign(nn.Module):
    """Stand-in for mmcv's RoIAlign (a compiled op the tracer cannot see into), matched by class name."""

    def __init__(self, size=3):
        super().__init__()
        self.size = size

    def forward(self, feats, rois):
        return tv_ops.roi_align(feats, rois, self.size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


class TwoStage(nn.Module):
    """Backbone conv -> RoIAlign on 3 fixed boxes per image -> flatten -> shared FCs -> cls/reg."""

    def __init__(self, deep=False):
        super().__init__()
        self.backbone = nn.Conv2d(3, 6, 3, padding=1)
        self.neck = nn.Conv2d(6, 6, 3, padding=1) if deep else None
        self.roi = RoIAlign(3)
        self.fc1 = nn.Linear(6 * 9, 12)
        self.fc2 = nn.Linear(12, 10)
        self.cls = nn.Linear(10, 4)
        self.reg = nn.Linear(10, 8)

    def forward(self, x):
        f = F.relu(self.backbone(x))
        if self.neck is not None:
            f = F.relu(self.neck(f))
        boxes = torch.tensor([[0., 0., 5., 5.], [2., 1., 7., 7.], [1., 3., 6., 7.]])
        rois = torch.cat([torch.cat([torch.full((3, 1), float(i)), boxes], 1) for i in range(x.shape[0])])
        r = self.roi(f, rois).flatten(1)
        h = F.relu(self.fc2(F.relu(self.fc1(r))))
        return self.cls(h), self.reg(h)


def test_roi_passthrough_then_fc(check_exact):
    assert find_rule(RoIAlign()).role == 'passthrough'
    g = analyze(TwoStage(), input_forward(torch.randn(1, 3, 8, 8)))
    b = g.out_atoms['backbone']
    assert (b >= 0).all() and len(set(b.tolist())) == 6
    np.testing.assert_array_equal(g.in_atoms['fc1'], np.repeat(b, 9))
    assert (g.out_atoms['fc1'] >= 0).all() and (g.out_atoms['fc2'] >= 0).all()
    assert g.unprunable == {'cls': 'reaches the model output', 'reg': 'reaches the model output'}
    out = check_exact(TwoStage(), torch.randn(1, 3, 8, 8))
    assert out['slim'].fc1.in_features == 9 * out['slim'].backbone.out_channels < 54


def _roi_fisher(deep):
    torch.manual_seed(0)
    model = TwoStage(deep).eval()
    x = torch.randn(2, 3, 8, 8)
    g = analyze(model, input_forward(x[:1]))
    taps = FisherTaps(model, g)
    w = torch.randn(6, 4), torch.randn(6, 8)

    def loss(cls, reg, n):
        return (cls.view(n, 3, 4) * w[0][:3]).sum((1, 2)) + (reg.view(n, 3, 8) * w[1][3:]).pow(2).sum((1, 2))

    cls, reg = model(x)
    loss(cls, reg, 2).sum().backward()
    taps.accumulate()
    taps.remove()
    modules = dict(model.named_modules())
    brute = torch.zeros(g.num_atoms, dtype=torch.float64)
    for n in range(2):
        m = torch.ones(g.num_atoms, dtype=torch.float64, requires_grad=True)
        hs = []
        for name, atoms in g.in_atoms.items():
            if (atoms >= 0).any():
                idx = torch.from_numpy(np.where(atoms >= 0, atoms, g.num_atoms))
                d = g.rules[name].in_dim

                def pre(mod, args, idx=idx, d=d):
                    a = args[0]
                    s = torch.cat([m, torch.ones(1, dtype=m.dtype)])[idx].float()
                    shape = [1] * a.dim()
                    shape[d] = -1
                    return (a * s.view(shape),)
                hs.append(modules[name].register_forward_pre_hook(pre))
        cls, reg = model(x[n:n + 1])
        (gm,) = torch.autograd.grad(loss(cls, reg, 1).sum(), m)
        for h in hs:
            h.remove()
        brute += gm.pow(2)
    return taps, brute


def test_roi_fisher_rows_map_to_images():
    """fc1 sees 3 RoI rows per image (image-major); per-image Fisher must sum an image's RoIs before squaring."""
    taps, brute = _roi_fisher(deep=True)
    assert taps.samples == 2
    torch.testing.assert_close(taps.fisher, brute, rtol=1e-4, atol=1e-10)


def test_roi_fisher_when_first_tapped_reader_sees_rois():
    """Same, when no tapped reader runs before the RoI head (a one-conv or frozen backbone): the batch must still
    be the number of images, not the number of RoIs."""
    taps, brute = _roi_fisher(deep=False)
    assert taps.samples == 2, f'{taps.samples} samples counted for 2 images'
    torch.testing.assert_close(taps.fisher, brute, rtol=1e-4, atol=1e-10)


class Affine(nn.Module):
    """A custom per-channel layer (not known to the core): y = x * weight + bias."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)
        self.bias = nn.Parameter(torch.randn(c))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class AffineRule(LayerRule):
    role = 'norm'

    def matches(self, module):
        return isinstance(module, Affine)

    def in_channels(self, module):
        return module.weight.numel()

    out_channels = in_channels

    def slice(self, module, in_keep, out_keep):
        keep = in_keep if in_keep is not None else out_keep
        if keep is not None:
            module.weight = nn.Parameter(module.weight.detach()[keep].clone())
            module.bias = nn.Parameter(module.bias.detach()[keep].clone())


class AffineNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 5, 3, padding=1)
        self.a = nn.Conv2d(5, 8, 3, padding=1)
        self.aff = Affine(8)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.b(F.relu(self.aff(self.a(F.relu(self.stem(x))))))


def test_register_rule(check_exact):
    rule = AffineRule()
    with pytest.raises(TypeError):
        register_rule(object())
    register_rule(rule)
    try:
        assert find_rule(Affine(3)) is rule
        g = analyze(AffineNet(), input_forward(torch.randn(1, 3, 8, 8)))
        assert 'aff' in g.rules and g.rules['aff'] is rule
        np.testing.assert_array_equal(g.out_atoms['aff'], g.out_atoms['a'])
        assert not g.param_atoms, 'the module is ruled: its parameters are not traced op by op'
        out = check_exact(AffineNet(), torch.randn(1, 3, 8, 8))
        assert out['slim'].aff.weight.numel() == out['slim'].a.out_channels < 8
    finally:
        core_layers._RULES.remove(rule)
    assert find_rule(Affine(3)) is None


def test_unruled_affine_traced_op_by_op(check_exact):
    """Without a rule the same module is followed op by op: its per-channel parameters (used through a view)
    are either attributed and sliced, or their channels are kept with the op named."""
    g = analyze(AffineNet(), input_forward(torch.randn(1, 3, 8, 8)))
    assert 'aff' not in g.rules
    if g.param_atoms:
        assert set(g.param_atoms) == {'aff.weight', 'aff.bias'}
    else:
        assert 'mul' in g.unprunable['a'], g.unprunable
    check_exact(AffineNet(), torch.randn(1, 3, 8, 8))
