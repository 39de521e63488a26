"""A real mmengine Runner resumes (optimizer state, message hub, schedulers, counters) under weights_only loading."""
import os.path as osp

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

import _foundation as F


class CaptureResumedState(Hook):
    """Records the runner state right after ``load_or_resume`` (``before_train`` runs after it)."""

    def __init__(self) -> None:
        self.seen = {}

    def before_train(self, runner) -> None:
        opt = runner.optim_wrapper.optimizer
        first = next(p for g in opt.param_groups for p in g['params'])
        self.seen = dict(
            iter=runner.iter, epoch=runner.epoch,
            exp_avg=opt.state[first]['exp_avg'].clone() if first in opt.state else None,
            step=opt.state[first]['step'].clone() if first in opt.state else None,
            loss_history=runner.message_hub.get_scalar('train/loss').data[0].copy(),
            lr=[g['lr'] for g in opt.param_groups],
            sched_last_step=[s.last_step for s in runner.param_schedulers],
        )


def cls_cfg(work_dir: str, epochs: int, name: str, resume: bool) -> Config:
    cfg = Config.fromfile(F.CLS_CFG)
    cfg.merge_from_dict({
        'work_dir': work_dir, 'experiment_name': name, 'resume': resume,
        'train_dataloader.dataset.indices': 32, 'train_dataloader.batch_size': 16, 'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False, 'train_cfg.max_epochs': epochs,
        'train_cfg.val_interval': 100, 'default_hooks.logger.interval': 1,
    })
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    return cfg


def test_runner_resume_restores_optimizer_and_message_hub(tmp_path):
    F.ensure_data()
    work = str(tmp_path / 'work')
    first = Runner.from_cfg(cls_cfg(work, epochs=2, name='resume_a', resume=False))
    first.train()
    ckpt_path = osp.join(work, 'epoch_2.pth')
    assert osp.isfile(ckpt_path)
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in F.pickle_globals(ckpt_path), \
        'checkpoint has only plain types: the allow-list would not be exercised'
    ckpt = torch.load(ckpt_path, map_location='cpu')  # weights_only=True (torch default)
    assert ckpt['meta']['epoch'] == 2 and ckpt['meta']['iter'] == 4

    capture = CaptureResumedState()
    cfg = cls_cfg(work, epochs=3, name='resume_b', resume=True)
    second = Runner.from_cfg(cfg)
    second.register_hook(capture, priority='LOWEST')
    second.train()
    s = capture.seen
    assert (s['iter'], s['epoch']) == (4, 2)
    saved_state = ckpt['optimizer']['state'][0]
    assert s['exp_avg'] is not None and torch.equal(s['exp_avg'], saved_state['exp_avg'])
    assert float(s['step']) == float(saved_state['step']) == 4
    saved_loss = ckpt['message_hub']['log_scalars']['train/loss'].data[0]
    assert len(saved_loss) == 4 and (s['loss_history'] == saved_loss).all()
    assert s['lr'] == [g['lr'] for g in ckpt['optimizer']['param_groups']]
    assert s['sched_last_step'] == [sd['last_step'] for sd in ckpt['param_schedulers']]
    assert (second.iter, second.epoch) == (6, 3)
    final = torch.load(osp.join(work, 'epoch_3.pth'), map_location='cpu')
    assert final['meta']['iter'] == 6
    assert len(final['message_hub']['log_scalars']['train/loss'].data[0]) == 6
