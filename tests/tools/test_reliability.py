"""Nothing silently wrong (issue 12): structure and weights as one verified pair, the pair written atomically,
resumes that honour a new target, skip patterns that match nothing, file modes, foreign checkpoints, meta.iter
and the no-checkpoint warning. Each test fails without its fix."""
import errno
import glob
import json
import os
import os.path as osp
import stat

import pytest
import torch
from mmengine.runner import load_checkpoint

from _hook_helpers import ToyNet, get_hook, toy_runner
from mmfisher.core import analyze, input_forward, random_alive
from mmfisher.core import export as export_mod
from mmfisher.core.export import WeightsMismatch, export_pruned
from mmfisher.core.files import DiskFullError
from mmfisher.models import Pruned

SHAPE = (3, 12, 12)
TOY = dict(type='ReliabilityToyNet')


@pytest.fixture(autouse=True, scope='module')
def _register_toy():
    from mmengine.registry import MODELS
    MODELS.register_module(name='ReliabilityToyNet', module=ToyNet, force=True)


def _pair(tmp_path, ratio: float, seed: int, suffix: str = ''):
    torch.manual_seed(0)
    model = ToyNet()
    graph = analyze(model, input_forward(torch.randn(1, *SHAPE)))
    alive = random_alive(graph, ratio, seed)
    from mmfisher.core import ChannelMasks
    ChannelMasks(model, graph).set_alive(alive)
    return export_pruned(model, graph, alive, str(tmp_path), suffix, {'ratio': ratio})


def test_a_pruned_model_refuses_weights_of_another_structure(tmp_path):
    json_a, pth_a = _pair(tmp_path / 'a', 0.5, seed=0)
    json_b, pth_b = _pair(tmp_path / 'b', 0.3, seed=1)
    model = Pruned(TOY, channels=json_a)
    load_checkpoint(model, pth_a, map_location='cpu', logger='silent')  # the right pair loads (non-strict path)
    model.load_state_dict(torch.load(pth_a, weights_only=True)['state_dict'], strict=True)  # and strictly
    with pytest.raises(WeightsMismatch, match='differ in shape.*Fix: load the pruned.pth written beside'):
        load_checkpoint(model, pth_b, map_location='cpu', logger='silent')  # mmengine would only warn
    torch.manual_seed(0)
    unpruned = ToyNet().state_dict()
    with pytest.raises(WeightsMismatch, match='they are unpruned'):
        model.load_state_dict(unpruned, strict=False)


def test_same_shapes_but_another_structure_is_refused_by_the_digest(tmp_path):
    json_a, pth_a = _pair(tmp_path / 'a', 0.5, seed=0)
    json_b, pth_b = _pair(tmp_path / 'b', 0.5, seed=1)  # same share of every unit, other channels kept
    a = json.load(open(json_a))
    b = json.load(open(json_b))
    assert [len(u['kept']) for u in a['units']] == [len(u['kept']) for u in b['units']]
    assert a['meta']['structure_digest'] != b['meta']['structure_digest']
    model = Pruned(TOY, channels=json_a)
    with pytest.raises(WeightsMismatch, match='another pruned structure'):
        load_checkpoint(model, pth_b, map_location='cpu', logger='silent')


def test_checkpoints_of_a_pruned_model_carry_its_digest(tmp_path):
    json_a, pth_a = _pair(tmp_path, 0.5, seed=0)
    model = Pruned(TOY, channels=json_a)
    sd = model.state_dict()
    assert export_mod.DIGEST_KEY in sd
    other = Pruned(TOY, channels=json_a)
    other.load_state_dict(sd, strict=True)  # the digest key is consumed, strict loading still works


def test_the_pair_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    json_a, pth_a = _pair(tmp_path, 0.5, seed=0)
    before = (open(json_a, 'rb').read(), open(pth_a, 'rb').read())
    real_dumps = json.dumps

    def fail_second(*args, **kwargs):  # the json is staged after the weights: fail there
        if kwargs.get('separators') == (',', ':') and not kwargs.get('sort_keys'):
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_dumps(*args, **kwargs)
    monkeypatch.setattr(export_mod.json, 'dumps', fail_second)
    with pytest.raises(DiskFullError, match='no space left to write "channels.json" in .*free space there'):
        _pair(tmp_path, 0.3, seed=1)
    monkeypatch.undo()
    assert (open(json_a, 'rb').read(), open(pth_a, 'rb').read()) == before  # the old pair, untouched
    assert not glob.glob(osp.join(str(tmp_path), '.*.tmp'))


def test_torch_disk_full_error_names_the_file(tmp_path, monkeypatch):
    def full(obj, f, *a, **k):
        raise RuntimeError('[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0')
    monkeypatch.setattr(export_mod.torch, 'save', full)
    with pytest.raises(DiskFullError, match='"pruned.pth"'):
        _pair(tmp_path, 0.3, seed=1)
    assert not glob.glob(osp.join(str(tmp_path), '.*.tmp'))
    assert not osp.exists(osp.join(str(tmp_path), 'channels.json'))


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path):
    os.makedirs(str(tmp_path), exist_ok=True)
    stale = osp.join(str(tmp_path), '.pruned.pth.abc123.tmp')
    open(stale, 'w').write('half')
    _pair(tmp_path, 0.3, seed=1)
    assert not osp.exists(stale)


def test_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        json_a, pth_a = _pair(tmp_path, 0.5, seed=0)
    finally:
        os.umask(old)
    for path in (json_a, pth_a):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


def _ratio(work: str) -> float:
    return json.load(open(osp.join(work, 'channels.json')))['meta']['flops_ratio']


def test_a_resume_with_a_lower_target_continues_pruning(tmp_path):
    work = str(tmp_path / 'w')
    hook = dict(interval=1, input_shape=SHAPE, target=0.6, channels_per_step=1)
    first = toy_runner(work, hook, max_iters=40, ckpt_interval=1, experiment_name='first')
    first.train()
    done = get_hook(first)
    assert done.done and _ratio(work) <= 0.6
    last = osp.join(work, f'iter_{first.iter}.pth')
    second = toy_runner(work, dict(hook, target=0.3), max_iters=80, resume=True, load_from=last,
                        experiment_name='second')
    second.train()
    got = get_hook(second)
    assert got.done and got.ratios()['flops'] <= 0.3 < 0.6
    assert got.order[:len(done.order)] == done.order  # continued from the saved state
    assert _ratio(work) <= 0.3 and json.load(open(osp.join(work, 'channels.json')))['meta']['target'] == 0.3


def _log(work: str) -> str:
    """The runner's log file (mmengine's logger does not propagate to pytest's caplog; give each runner its own
    experiment_name, or a logger created in the same second by another runner is reused)."""
    return '\n'.join(open(p).read() for p in glob.glob(osp.join(work, '*', '*.log')))


def test_a_skip_pattern_matching_nothing_warns_or_fails(tmp_path):
    work = str(tmp_path / 'w')
    runner = toy_runner(work, dict(interval=1000, input_shape=SHAPE, skip=('mdi',)), max_iters=1,
                        experiment_name=f'skip-{tmp_path.name}')  # a logger of its own
    runner.train()
    text = _log(work)
    assert "'mdi' (closest: mid" in text and 'not protected' in text
    strict = toy_runner(str(tmp_path / 's'), dict(input_shape=SHAPE, skip=('mdi',), skip_unmatched='error'),
                        max_iters=1)
    with pytest.raises(ValueError, match="match no layer.*'mdi'"):
        strict.train()


def test_resuming_another_models_checkpoint_fails_on_the_pruning_state_first(tmp_path):
    first = toy_runner(str(tmp_path / 'a'), dict(input_shape=SHAPE, interval=1, target=0.2), max_iters=2,
                       ckpt_interval=2, experiment_name='a')
    first.train()
    ckpt = osp.join(str(tmp_path / 'a'), 'iter_2.pth')
    wider = toy_runner(str(tmp_path / 'b'), dict(input_shape=SHAPE), model=ToyNet(width=8), load_from=ckpt,
                       resume=True, experiment_name='b')
    with pytest.raises(ValueError, match='checkpoint masks do not fit the model'):
        wider.train()


def test_meta_iter_when_training_ends_before_the_target_and_the_no_checkpoint_warning(tmp_path):
    work = str(tmp_path / 'w')
    runner = toy_runner(work, dict(interval=2, input_shape=SHAPE, target=0.1), max_iters=6,
                        experiment_name=f'meta-{tmp_path.name}')  # a logger of its own
    runner.train()
    assert not get_hook(runner).done
    assert json.load(open(osp.join(work, 'channels.json')))['meta']['iter'] == 6 == runner.iter
    assert 'no load_from and no --resume: pruning a randomly initialised model' in _log(work)


def _tiny_det_pairs(tmp_path):
    """Two pruned structures of the tiny RetinaNet (other channels kept) and the unpruned weights."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from _hook_helpers import DET_CFG, DET_SHAPE, ensure_det_data
    from mmfisher.models import make_trace_forward
    ensure_det_data()
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(DET_CFG).model)
    graph = analyze(model, make_trace_forward(model, DET_SHAPE))
    pairs = [export_pruned(model, graph, random_alive(graph, r, seed=s), str(tmp_path / name), '', {})
             for name, r, s in (('a', 0.5, 2), ('b', 0.3, 3))]
    unpruned = str(tmp_path / 'unpruned.pth')
    torch.save({'state_dict': model.state_dict()}, unpruned)
    return DET_CFG, pairs, unpruned


def test_tools_refuse_a_channel_config_with_weights_that_do_not_belong_to_it(tmp_path):
    import subprocess
    import sys
    import textwrap
    from _hook_helpers import ROOT
    base, ((json_a, pth_a), (json_b, pth_b)), unpruned = _tiny_det_pairs(tmp_path)
    data_root = osp.join(ROOT, 'data', 'generated', 'shapes_det') + '/'
    cfg_path = str(tmp_path / 'finetune.py')
    with open(cfg_path, 'w') as f:
        f.write(textwrap.dedent(f"""\
            _base_ = [{base!r}]
            model = dict(_delete_=True, type='mmfisher.Pruned', architecture={{{{_base_.model}}}},
                         channels={json_a!r})
            load_from = {pth_a!r}
            train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=1, val_interval=100)
            param_scheduler = None
            _data = dict(data_root={data_root!r}, indices=4)
            train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=_data)
            test_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=_data)
            test_evaluator = dict(ann_file={data_root + 'annotations/val.json'!r})
            """))

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    for ckpt, why in ((pth_b, 'differ in shape'), (unpruned, 'they are unpruned')):
        proc = run('tools/test.py', cfg_path, ckpt, '--work-dir', str(tmp_path / 't'))
        assert proc.returncode != 0, proc.stdout[-2000:]
        assert f'checkpoint "{ckpt}"' in proc.stdout and json_a in proc.stdout and why in proc.stdout
        assert 'coco/bbox_mAP' not in proc.stdout  # nothing was evaluated
    proc = run('tools/train.py', cfg_path, '--work-dir', str(tmp_path / 'ft'), '--cfg-options', f'load_from={pth_b}')
    assert proc.returncode != 0 and f'checkpoint "{pth_b}"' in proc.stdout and 'differ in shape' in proc.stdout
    assert not glob.glob(osp.join(str(tmp_path / 'ft'), '*.pth'))  # nothing trained from random layers
    proc = run('tools/test.py', cfg_path, pth_a, '--work-dir', str(tmp_path / 'ok'))
    assert proc.returncode == 0, proc.stdout[-2000:]  # the right pair still tests


def test_a_checkpoint_with_no_key_of_the_model_is_refused_not_ignored(tmp_path):
    json_a, pth_a = _pair(tmp_path, 0.5, seed=0)
    model = Pruned(TOY, channels=json_a)
    weights = torch.load(pth_a, weights_only=True)['state_dict']
    wrapped = {f'student.{k}': v for k, v in weights.items()}
    wrapped.update({f'teacher.{k}': v for k, v in weights.items()})
    with pytest.raises(WeightsMismatch, match='nothing would load.*extract_student'):
        model.load_state_dict(wrapped, strict=False)  # mmengine's non-strict load would load nothing, silently
    with pytest.raises(WeightsMismatch, match='nothing would load.*checkpoint key'):
        model.load_state_dict({'other.weight': torch.zeros(1)}, strict=False)
