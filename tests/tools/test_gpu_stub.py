"""The GPU check's stand-in for mmcv's compiled ops (``benchmarks/gpu/mmcv_ext_stub.py``): its sigmoid focal loss
must equal mmdet's torch one (values and gradients), and every other op must raise, naming itself."""
import importlib.util
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def load_stub():
    spec = importlib.util.spec_from_file_location('mmcv_ext_stub', osp.join(ROOT, 'benchmarks', 'gpu',
                                                                          'mmcv_ext_stub.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize('gamma,alpha', [(2.0, 0.25), (1.5, 0.5)])
def test_focal_loss_matches_mmdet(gamma, alpha):
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
    stub = load_stub()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 7, generator=gen, dtype=torch.float64) * 4
    t = torch.randint(0, 8, (64,), generator=gen)  # 7 == num_classes: background
    t[:3] = 7
    out = torch.zeros_like(x)
    stub.sigmoid_focal_loss_forward(x, t, x.new_empty(0), out, gamma=gamma, alpha=alpha)
    grad = torch.zeros_like(x)
    stub.sigmoid_focal_loss_backward(x, t, x.new_empty(0), grad, gamma=gamma, alpha=alpha)
    xr = x.clone().requires_grad_(True)
    ref = py_sigmoid_focal_loss(xr, F.one_hot(t, 8)[:, :7].to(x.dtype), None, gamma, alpha, 'none')
    (ref_grad,) = torch.autograd.grad(ref.sum(), xr)
    assert torch.allclose(out, ref.detach(), rtol=1e-10, atol=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert out[:3].ne(0).all()  # background rows still have their negative terms


def test_other_ops_raise_naming_themselves():
    stub = load_stub()
    assert stub.MMFISHER_STUB is True
    with pytest.raises(RuntimeError, match="'nms' is not available"):
        stub.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    with pytest.raises(NotImplementedError, match='class weights'):
        stub.sigmoid_focal_loss_forward(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.ones(3),
                                        torch.zeros(2, 3))
    assert not hasattr(stub, '__wrapped__')
