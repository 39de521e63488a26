"""A model's forward failing on the trace input is one clear error naming the caller's shape field (issue 12 item 7),
and tools/verify_slimming.py says so, names --shape, and refuses a model with nothing prunable (item 8)."""
import importlib.util
import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mmfisher.zoo
from mmfisher.core import analyze_fast, input_forward
from mmfisher.core.trace import TraceForwardError
from mmfisher.models.tracing import make_trace_forward

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location('verify_slimming', os.path.join(ROOT, 'tools', 'verify_slimming.py'))
verify_slimming = importlib.util.module_from_spec(spec)
spec.loader.exec_module(verify_slimming)

CALLS = []  # the device of every forward call: the real model must not be traced after a real error on meta


class Net(nn.Module):
    def __init__(self, fail=None):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)
        self.fail = fail

    def forward(self, x):
        CALLS.append(self.a.weight.device.type)
        if self.fail:
            raise ValueError(self.fail)
        return self.b(F.relu(self.a(x)))


@pytest.fixture(autouse=True)
def _calls():
    CALLS.clear()


def test_wrong_channel_count_is_one_clear_error_naming_input_shape():
    with pytest.raises(TraceForwardError) as info:
        analyze_fast(Net(), lambda m: make_trace_forward(m, (4, 8, 8)))  # what FisherPruningHook calls
    msg = str(info.value)
    assert "the model's forward failed on the trace input of shape (1, 4, 8, 8) built from input_shape=(4, 8, 8)" \
        in msg, msg
    assert "in layer 'a' (Conv2d), which reads 3 input channels but got 4" in msg, msg
    assert msg.endswith("Fix: set input_shape's channel count to what the model's first layer expects (3)"), msg
    assert CALLS == ['meta'], 'the real trace ran after a real error on the meta copy'
    assert info.value.__cause__ is None and info.value.__suppress_context__, 'the raw error is not shown twice'
    assert isinstance(info.value.error, RuntimeError)


def test_shape_name_names_the_option():
    with pytest.raises(TraceForwardError) as info:
        analyze_fast(Net(), lambda m: make_trace_forward(m, (4, 8, 8)), shape_name='--shape')
    msg = str(info.value)
    assert 'built from --shape 4 8 8' in msg and "set --shape's channel count" in msg and 'input_shape' not in msg


def test_other_forward_errors_are_raised_once_from_the_meta_trace():
    with pytest.raises(TraceForwardError, match="Fix: check that input_shape is an input this model accepts") as info:
        analyze_fast(Net(fail='boom'), lambda m: make_trace_forward(m, (3, 8, 8)))
    assert isinstance(info.value.__cause__, ValueError) and 'ValueError: boom' in str(info.value)
    assert CALLS == ['meta']


def test_meta_limits_still_fall_back_to_the_real_trace():
    class NeedsValues(Net):
        def forward(self, x):
            CALLS.append(self.a.weight.device.type)
            h = F.relu(self.a(x))
            return self.b(h[torch.nonzero(h[:, 0, 0, 0] > -1e9).flatten()])

    graph = analyze_fast(NeedsValues(), lambda m: make_trace_forward(m, (3, 8, 8)))
    assert graph.device == 'real' and CALLS == ['meta', 'cpu']


def test_without_a_shape_the_traced_input_is_named():
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(TraceForwardError, match=r'of shape \(1, 4, 8, 8\): RuntimeError'):
        analyze_fast(Net(), lambda m: input_forward(x.to(next(m.parameters()).device)))


def _use_model(monkeypatch, model):
    monkeypatch.setattr(mmfisher.zoo, 'load_config', lambda spec: {'model': spec})
    monkeypatch.setattr(mmfisher.zoo, 'build_model', lambda cfg, **kw: model)


def test_verify_slimming_bad_shape_names_the_option(capsys):
    with pytest.raises(SystemExit) as info:
        verify_slimming.parse_args(['some_config.py', '--shape', '3', '0', '0'])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert '--shape 3 0 0 must hold three positive ints' in err and 'input_shape' not in err, err


def test_verify_slimming_wrong_channel_count(monkeypatch, capsys):
    _use_model(monkeypatch, Net())
    assert verify_slimming.main(['toy.py', '--shape', '4', '8', '8']) == 2
    err = capsys.readouterr().err
    assert "--shape's channel count to what the model's first layer expects (3)" in err and 'input_shape' not in err


def test_verify_slimming_nothing_prunable_is_not_ok(monkeypatch, capsys):
    _use_model(monkeypatch, nn.Sequential(nn.Conv2d(3, 4, 1)))
    assert verify_slimming.main(['toy.py', '--shape', '3', '8', '8']) == 3
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith('NOTHING PRUNABLE: toy.py: 0/4 channels prunable') and 'OK' not in out[0]
    report = json.loads(out[-1])
    assert report['ok'] is False and report['nothing_prunable'] and report['unprunable'] == {
        '0': 'reaches the model output'}


def test_a_compiled_ops_device_check_on_the_meta_copy_falls_back_to_the_real_trace():
    """mmcv's deformable convolution refuses meta tensors with its own message ("input must be a CPU tensor",
    VFNet's head): that is the meta device's limit, not the model's error."""
    class CompiledOp(Net):
        def forward(self, x):
            CALLS.append(self.a.weight.device.type)
            if x.is_meta:
                raise RuntimeError('input must be a CPU tensor')
            return self.b(F.relu(self.a(x)))

    graph = analyze_fast(CompiledOp(), lambda m: make_trace_forward(m, (3, 8, 8)))
    assert graph.device == 'real' and CALLS == ['meta', 'cpu']
