"""torch >= 2.6 ``weights_only`` loading: mmengine checkpoints resume; arbitrary pickled objects are refused."""
import os
import pickle

import numpy as np
import pytest
import torch
from mmengine.runner import load_checkpoint

import mmfisher  # noqa: F401  (registers the allow-list)
from mmfisher.engine.checkpoint import safe_globals

MARKER_ENV = 'MMFISHER_TEST_MARKER'


class Evil:
    """Unpickling this runs a shell command (creates a marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


@pytest.fixture
def model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def _save(path, payload):
    torch.save(payload, str(path))
    return str(path)


@pytest.mark.parametrize('where', ['top', 'meta', 'object_array'])
def test_malicious_checkpoint_is_refused(tmp_path, model, where):
    marker = tmp_path / 'pwned'
    evil = Evil(str(marker))
    ckpt = {'state_dict': model.state_dict(), 'meta': {'epoch': 1}}
    if where == 'top':
        ckpt['evil'] = evil
    elif where == 'meta':
        ckpt['meta']['note'] = evil
    else:  # smuggled inside a numpy object array (the ndarray globals are allow-listed; object dtype is not)
        arr = np.empty(1, dtype=object)
        arr[0] = evil
        ckpt['meta']['arr'] = arr
    path = _save(tmp_path / 'evil.pth', ckpt)
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
        load_checkpoint(model, path, map_location='cpu')
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location='cpu')
    assert not marker.exists(), 'the pickled command ran'
    # sanity: the payload really is dangerous when loaded without the restriction
    torch.load(path, map_location='cpu', weights_only=False)
    assert marker.exists()


def test_allow_list_is_narrow():
    names = []
    for item in safe_globals():
        obj = item[0] if isinstance(item, tuple) else item
        names.append(f'{getattr(obj, "__module__", "?")}.{getattr(obj, "__qualname__", obj)}')
    assert all(n.startswith(('numpy', 'mmengine.logging.history_buffer')) for n in names), names
    assert not any(type(np.dtype(object)).__name__ in n for n in names)
    assert not any(n.startswith(('builtins', 'os', 'posix', 'subprocess')) for n in names)


def test_numpy_and_history_buffer_round_trip(tmp_path, model):
    """Everything an mmengine checkpoint carries beyond tensors loads under weights_only=True."""
    from mmengine.logging import HistoryBuffer, MessageHub
    hub = MessageHub('ckpt-test')
    for v in (1.0, 2.5, 4.0):
        hub.update_scalar('train/loss', v)
    hub.update_info('iter', np.int64(7))
    payload = {'state_dict': model.state_dict(), 'message_hub': hub.state_dict(),
               'meta': {'seed': np.int64(3), 'lr': np.float32(0.5), 'arr': np.arange(4, dtype=np.float16),
                        'flags': np.array([True, False]), 'dt': np.dtype('int32')}}
    path = _save(tmp_path / 'ok.pth', payload)
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    assert unsafe, 'this payload should need allow-listed globals; otherwise the test proves nothing'
    loaded = torch.load(path, map_location='cpu')
    buf = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer) and buf.mean() == pytest.approx(2.5)
    assert loaded['meta']['seed'] == 3 and loaded['meta']['arr'].dtype == np.float16
    assert loaded['meta']['dt'] == np.dtype('int32')
