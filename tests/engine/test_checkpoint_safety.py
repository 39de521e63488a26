"""torch >= 2.6 ``weights_only`` loading: mmengine checkpoints resume; arbitrary pickled objects are refused."""
import os
import pickle

import numpy as np
import pytest
import torch
from mmengine.runner import load_checkpoint

import mmfisher  # noqa: F401  (registers the allow-list)
from mmfisher.engine.checkpoint import safe_globals
from _foundation import pickle_globals

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
    from mmfisher.engine.checkpoint import history_buffer_getattr
    for item in safe_globals():
        obj = item[0] if isinstance(item, tuple) else item
        name = f'{obj.__module__}.{obj.__qualname__}'
        assert name.startswith(('numpy', 'mmengine.logging.history_buffer')) or obj is history_buffer_getattr, name
        assert obj not in (getattr, eval, exec, os.system, __import__), name


class Getattr:
    """Pickles as ``getattr(owner, name)`` (how a function stored in an object is pickled)."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return (getattr, (self.owner, self.name))


def test_getattr_only_reaches_history_buffer_statistics(tmp_path):
    from mmengine.logging import HistoryBuffer
    ok = _save(tmp_path / 'ok.pth', {'f': Getattr(HistoryBuffer, 'mean')})
    assert torch.load(ok)['f'] is HistoryBuffer.mean
    for owner, name in [(HistoryBuffer, '__init__'), (HistoryBuffer, '_statistics_methods'), (np.ndarray, 'tofile')]:
        bad = _save(tmp_path / 'bad.pth', {'f': Getattr(owner, name)})
        with pytest.raises(pickle.UnpicklingError):
            torch.load(bad)


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
    needed = pickle_globals(path)
    assert {'mmengine.logging.history_buffer.HistoryBuffer', 'numpy._core.multiarray._reconstruct',
            'numpy._core.multiarray.scalar', '__builtin__.getattr'} <= needed, needed
    loaded = torch.load(path, map_location='cpu')
    buf = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer) and buf.mean() == pytest.approx(2.5) and buf.statistics('max') == 4.0
    assert loaded['meta']['seed'] == 3 and loaded['meta']['arr'].dtype == np.float16
    assert loaded['meta']['dt'] == np.dtype('int32')
    # even an object array of plain values is refused (its dtype class is not allowed)
    objects = _save(tmp_path / 'objects.pth', {'a': np.array([1, 'a'], dtype=object)})
    with pytest.raises(pickle.UnpicklingError):
        torch.load(objects)
