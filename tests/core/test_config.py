"""Rule 15: channel config round trip, fingerprint mismatch and corrupted files."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import (ChannelConfigError, ChannelMasks, analyze, apply_channel_config, channel_config,
                           input_forward, load_channel_config, model_fingerprint, random_alive,
                           save_channel_config, slim_model)


class Net(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.gn = nn.GroupNorm(2, 12)
        self.pw = nn.Conv2d(width, 12, 1)
        self.res = nn.Conv2d(12, 12, 3, padding=1)
        self.fc = nn.Linear(12 * 4, 5)
        self.layer_scale = nn.Parameter(torch.rand(1, 12, 1, 1) + 0.5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.pw(F.relu(self.dw(x)))
        x = F.relu(self.gn(x))
        x = x + self.res(x) * self.layer_scale
        return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))


def build(width=8, seed=0):
    torch.manual_seed(seed)
    model = Net(width)
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2)
        model.gn.weight.normal_()
        model.gn.bias.normal_()
    return model.eval()


def test_round_trip_matches_slim_model(tmp_path):
    model = build()
    x = torch.randn(1, 3, 8, 8)
    g = analyze(model, input_forward(x))
    assert 'layer_scale' in g.param_atoms
    alive = random_alive(g, 0.4, seed=1)
    assert not alive.all()
    cfg = channel_config(model, g, alive, extra={'note': 'test'})
    json.dumps(cfg)  # JSON-able
    assert cfg['fingerprint'] == model_fingerprint(build())
    path = tmp_path / 'sub' / 'channels.json'
    save_channel_config(cfg, str(path))
    assert [p.name for p in path.parent.iterdir()] == ['channels.json'], 'no temporary file left behind'
    loaded = load_channel_config(str(path))
    assert loaded == json.loads(json.dumps(cfg))

    ref = copy.deepcopy(model)
    cfg_direct = slim_model(ref, g, alive)
    assert cfg_direct['layers'] == cfg['layers']
    fresh = apply_channel_config(build(), loaded)
    assert {k: tuple(v.shape) for k, v in fresh.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert fresh.layer_scale.shape[1] == ref.pw.out_channels < 12
    xb = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(xb), ref(xb))
        # and both equal the masked model
        masked = copy.deepcopy(model)
        ChannelMasks(masked, g).set_alive(alive)
        torch.testing.assert_close(masked(xb), fresh(xb), rtol=1e-5, atol=1e-5)


def test_fingerprint_mismatch_raises(tmp_path):
    model = build()
    g = analyze(model, input_forward(torch.randn(1, 3, 8, 8)))
    cfg = channel_config(model, g, random_alive(g, 0.4))
    other = build(width=10)
    assert model_fingerprint(other) != cfg['fingerprint']
    with pytest.raises(ChannelConfigError):
        apply_channel_config(other, cfg)
    # an already slimmed model has a different structure too
    slimmed = apply_channel_config(build(), cfg)
    with pytest.raises(ChannelConfigError):
        apply_channel_config(slimmed, cfg)
    # the same architecture with other weights is fine
    apply_channel_config(build(seed=3), cfg)


def test_corrupted_or_missing_file_raises(tmp_path):
    model = build()
    g = analyze(model, input_forward(torch.randn(1, 3, 8, 8)))
    cfg = channel_config(model, g, random_alive(g, 0.4))
    path = tmp_path / 'channels.json'
    save_channel_config(cfg, str(path))
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    with pytest.raises(ChannelConfigError):
        load_channel_config(str(path))
    path.write_bytes(b'\xff\xfe\x00garbage')
    with pytest.raises(ChannelConfigError):
        load_channel_config(str(path))
    path.write_text(json.dumps({'layers': {}}))
    with pytest.raises(ChannelConfigError):
        load_channel_config(str(path))
    with pytest.raises(ChannelConfigError):
        load_channel_config(str(tmp_path / 'missing.json'))


def test_invalid_indices_raise():
    model = build()
    g = analyze(model, input_forward(torch.randn(1, 3, 8, 8)))
    cfg = channel_config(model, g, random_alive(g, 0.4))
    name = next(iter(cfg['layers']))
    for bad in ([100], [], [3, 1], [-1]):
        broken = copy.deepcopy(cfg)
        side = 'out' if broken['layers'][name]['out'] is not None else 'in'
        broken['layers'][name][side] = bad
        with pytest.raises(ChannelConfigError):
            apply_channel_config(build(), broken)
    broken = copy.deepcopy(cfg)
    broken['layers']['no.such.layer'] = {'in': None, 'out': [0]}
    with pytest.raises(ChannelConfigError):
        apply_channel_config(build(), broken)
