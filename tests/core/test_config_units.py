"""Channel config ``units`` are validated when loaded and applied (issue 12 item 8): errors name the unit, the
problem and the fix; an empty ``units`` list is refused on load."""
import copy
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfisher.core import (ChannelConfigError, analyze, apply_channel_config, channel_config, input_forward,
                           load_channel_config, random_alive, save_channel_config, slim_model)
from mmfisher.core.files import default_mode


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(F.relu(self.b(F.relu(self.a(x)))))


def _config():
    torch.manual_seed(0)
    model = Net().eval()
    g = analyze(model, input_forward(torch.randn(1, 3, 6, 6)))
    return channel_config(model, g, random_alive(g, 0.4, 0))


def _broken(cfg, index, **changes):
    cfg = copy.deepcopy(cfg)
    cfg['units'][index].update(changes)
    return cfg


@pytest.mark.parametrize('kept, problem', [
    ([0, 1, 99], 'channel 99, outside its 8 channels (0..7)'),
    ([-1, 2], 'channel -1, outside'),
    ([1, 1, 2], 'keeps channel 1 more than once'),
    ([3, 1], 'out of order'),
    ('0,1', 'not a list of channel indices'),
])
def test_bad_kept_indices_name_the_unit(tmp_path, kept, problem):
    cfg = _config()
    unit = cfg['units'][0]
    assert unit['name'] == 'a' and unit['channels'] == 8
    bad = _broken(cfg, 0, kept=kept)
    with pytest.raises(ChannelConfigError, match='unit 0 \\("a"\\)') as info:
        apply_channel_config(Net(), bad)
    assert problem in str(info.value) and 're-export' in str(info.value)
    path = tmp_path / 'channels.json'
    path.write_text(json.dumps(bad))
    with pytest.raises(ChannelConfigError, match=re.escape(str(path))) as info:
        load_channel_config(str(path))
    assert problem in str(info.value)


def test_bad_channel_count_and_shape():
    cfg = _config()
    for bad in (_broken(cfg, 1, channels=0), _broken(cfg, 1, channels='6')):
        with pytest.raises(ChannelConfigError, match='unit 1 \\("b"\\) has "channels"'):
            apply_channel_config(Net(), bad)
    bad = copy.deepcopy(cfg)
    bad['units'][1] = ['b', 6]
    with pytest.raises(ChannelConfigError, match='unit 1 must be an object'):
        apply_channel_config(Net(), bad)
    bad = copy.deepcopy(cfg)
    bad['units'] = {'a': [0]}
    with pytest.raises(ChannelConfigError, match='"units" must be a list'):
        apply_channel_config(Net(), bad)


def test_empty_units_refused_on_load(tmp_path):
    cfg = _config()
    cfg['units'] = []
    path = tmp_path / 'channels.json'
    save_channel_config(cfg, str(path))
    with pytest.raises(ChannelConfigError, match='lists no prunable units, so it would keep 0/0 atoms'):
        load_channel_config(str(path))
    with pytest.raises(ChannelConfigError, match='lists no units but slims layers'):
        apply_channel_config(Net(), cfg)
    del cfg['units']
    save_channel_config(cfg, str(path))
    with pytest.raises(ChannelConfigError, match='lists no prunable units'):
        load_channel_config(str(path))


def test_valid_configs_still_load_and_apply(tmp_path):
    cfg = _config()
    path = tmp_path / 'channels.json'
    save_channel_config(cfg, str(path))
    assert path.stat().st_mode & 0o777 == default_mode(), 'written with the umask, not mkstemp\'s 0600'
    slim = apply_channel_config(Net(), load_channel_config(str(path)))
    assert slim.a.out_channels == len(cfg['units'][0]['kept']) < 8
    # a model with nothing prunable gives the trivial config, which still applies in memory
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    g = analyze(model, input_forward(torch.randn(1, 3, 4, 4)))
    slim_model(model, g, np.ones(0, dtype=bool))


def test_bad_param_indices_raise():
    class Scaled(Net):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.rand(1, 6, 1, 1) + 0.5)

        def forward(self, x):
            return self.head(F.relu(self.b(F.relu(self.a(x))) * self.scale))

    torch.manual_seed(0)
    model = Scaled().eval()
    g = analyze(model, input_forward(torch.randn(1, 3, 6, 6)))
    cfg = channel_config(model, g, random_alive(g, 0.4, 0))
    assert 'scale' in cfg['params']
    cfg['params']['scale']['keep'] = [0, 17]
    with pytest.raises(ChannelConfigError, match='parameter "scale" has invalid indices'):
        apply_channel_config(Scaled(), cfg)
