"""Batch-norm statistics for one-shot pruning (``mmfisher.core.norm_stats``): which norms train, forwards with
batch statistics that leave the stored ones untouched, and re-estimation equal to PyTorch's cumulative average."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core.norm_stats import batch_statistics, recalibrate, trained_norms


class Frozen(nn.Module):
    """A block whose ``train()`` keeps its norm in eval mode (mmdet's ``norm_eval=True`` pattern)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)

    def train(self, mode: bool = True) -> 'Frozen':
        super().train(mode)
        self.bn.eval()
        return self

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = Frozen()
        self.conv, self.bn = nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.no_stats = nn.BatchNorm2d(6, track_running_stats=False)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        x = self.no_stats(F.relu(self.bn(self.conv(self.frozen(x)))))
        return self.head(x.mean((2, 3)))


def _net():
    torch.manual_seed(0)
    net = Net()
    for bn in (net.frozen.bn, net.bn):  # stored statistics far from any batch's
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(9.0)
    return net.eval()


def test_trained_norms_are_those_train_mode_updates_and_flags_are_restored():
    net = _net()
    assert trained_norms(net) == [net.bn]  # frozen by its block's train(); no stored stats on no_stats
    assert not any(m.training for m in net.modules())
    net.bn.requires_grad_(False)  # a frozen stage / teacher
    assert trained_norms(net) == []


def test_batch_statistics_normalise_with_the_batch_and_store_nothing():
    net = _net()
    x = torch.randn(4, 3, 10, 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    feats = {}
    net.bn.register_forward_hook(lambda m, a, out: feats.__setitem__('out', out))
    net.bn.register_forward_pre_hook(lambda m, a: feats.__setitem__('in', a[0]))
    with torch.no_grad():
        stored = net(x)
        stored_bn = feats['out']
        with batch_statistics([net.bn]):
            net(x)
            batch_bn = feats['out']
            x_in = feats['in']
            expect = F.batch_norm(x_in, None, None, net.bn.weight, net.bn.bias, True, 0.0, net.bn.eps)
            assert torch.allclose(feats['out'], expect)
            assert not net.bn.training  # the flag is untouched; only the statistics used differ
        again = net(x)
        again_bn = feats['out']
    assert not torch.allclose(stored_bn, batch_bn)
    assert torch.equal(stored, again) and torch.equal(stored_bn, again_bn)  # the instance forward is gone
    assert 'forward' not in net.bn.__dict__
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # running stats and num_batches_tracked untouched


def test_batch_statistics_undo_on_error():
    net = _net()
    with pytest.raises(KeyError):
        with batch_statistics([net.bn]):
            raise KeyError('boom')
    assert 'forward' not in net.bn.__dict__


def test_recalibrate_equals_torch_cumulative_average():
    net = _net()
    batches = [torch.randn(4, 3, 10, 10) for _ in range(3)]
    ref = copy.deepcopy(net)
    ref.bn.reset_running_stats()
    ref.bn.momentum = None
    ref.bn.train()
    with torch.no_grad():
        for x in batches:
            ref(x)
    n = recalibrate(trained_norms(net), batches, net)
    assert n == 1
    assert torch.allclose(net.bn.running_mean, ref.bn.running_mean, atol=1e-5)
    assert torch.allclose(net.bn.running_var, ref.bn.running_var, atol=1e-5)
    assert float(net.frozen.bn.running_mean[0]) == 3.0  # a frozen norm keeps its statistics
    assert 'forward' not in net.bn.__dict__


def test_recalibrate_sums_over_ranks():
    """Two ranks with one batch each give the statistics of one process with both batches."""
    batches = [torch.randn(4, 3, 10, 10) for _ in range(2)]
    one = _net()
    recalibrate(trained_norms(one), batches, one)
    ranks = [_net(), _net()]
    parts = {}

    def make_reduce(r):
        def reduce(t):
            parts[r] = t.clone()
            return t  # replaced below by the sum once both ranks are in
        return reduce
    # run rank 0 and rank 1 with a reduce that returns the sum of both ranks' tensors
    for r, net in enumerate(ranks):
        recalibrate(trained_norms(net), [batches[r]], net, make_reduce(r))
    total = parts[0] + parts[1]
    for net in ranks:
        recalibrate(trained_norms(net), [batches[ranks.index(net)]], net, lambda t: total.clone())
        assert torch.allclose(net.bn.running_mean, one.bn.running_mean, atol=1e-5)
        assert torch.allclose(net.bn.running_var, one.bn.running_var, atol=1e-5)


def test_one_value_per_channel_falls_back_to_the_stored_statistics():
    """A BatchNorm1d on one sample has no batch statistics (training mode would raise): the stored ones are used."""
    bn = nn.BatchNorm1d(5).eval()
    bn.running_mean.fill_(1.0)
    x = torch.randn(1, 5)
    with torch.no_grad(), batch_statistics([bn]):
        out = bn(x)
    assert torch.allclose(out, (x - 1.0) / torch.sqrt(torch.tensor(1.0 + bn.eps)))
    # and such a batch does not count in the re-estimation (a variance of 0 would be wrong)
    batches = [torch.randn(1, 5), torch.randn(4, 5)]
    assert recalibrate([bn], batches, bn) == 1
    assert torch.allclose(bn.running_var, batches[1].var(0), atol=1e-6)
    assert torch.allclose(bn.running_mean, batches[1].mean(0), atol=1e-6)
