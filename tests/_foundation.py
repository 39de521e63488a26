"""Shared helpers for the foundation tests (not collected: no ``test_`` prefix)."""
from __future__ import annotations

import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PYTHON = sys.executable
DET_CFG = osp.join(ROOT, 'configs', 'tiny', 'retinanet_tiny_shapes.py')
CLS_CFG = osp.join(ROOT, 'configs', 'tiny', 'resnet_tiny_shapes_cls.py')
DATA_ROOT = osp.join(ROOT, 'data', 'generated')


def ensure_data() -> None:
    """Generate the bundled data sets into data/generated (idempotent; what the configs point at)."""
    from mmfisher.data_gen import make_all
    make_all(DATA_ROOT)


def env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Subprocess environment: repo root and tests/ importable, one intra-op thread unless set."""
    e = dict(os.environ)
    e.pop('PORT', None)  # a PORT of the caller's shell would pin tools/dist_*.sh to it: parallel runs would collide
    e['PYTHONPATH'] = os.pathsep.join([ROOT, osp.join(ROOT, 'tests')] +
                                      ([e['PYTHONPATH']] if e.get('PYTHONPATH') else []))
    e.setdefault('OMP_NUM_THREADS', '1')  # tiny models: 1 thread is ~5x faster than 2 on a busy 2-core CPU
    e.setdefault('PYTHONFAULTHANDLER', '1')  # a crash in a subprocess (SIGABRT, SIGSEGV) shows its Python stack
    e.update(extra or {})
    return e


def run(cmd: Sequence[str], timeout: float = 300, extra_env: Optional[Dict[str, str]] = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repo root; on failure raise with the tail of its output."""
    t0 = time.time()
    proc = subprocess.run(list(cmd), cwd=ROOT, env=env(extra_env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'command failed (rc={proc.returncode}, {time.time() - t0:.0f} s): {" ".join(cmd)}\n'
                             + proc.stdout[-6000:])
    return proc


def free_port() -> int:
    """The PORT for tools/dist_train.sh / dist_test.sh: 0, so torchrun binds a free port itself (its c10d rendezvous
    on port 0, chosen by the OS at bind time). A port found here by bind-and-close could be taken by a parallel run
    before torchrun bound it; leaving PORT unset does the same as 0."""
    return 0


def pickle_globals(checkpoint: str) -> set:
    """``module.name`` of every GLOBAL opcode in a torch.save zip checkpoint's pickle."""
    import pickletools
    import zipfile
    with zipfile.ZipFile(checkpoint) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith('/data.pkl')))
    return {arg.replace(' ', '.') for op, arg, _ in pickletools.genops(data) if op.name == 'GLOBAL'}


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def small_det_options(n_train: int = 16, n_val: int = 8, epochs: int = 1) -> List[str]:
    """--cfg-options that shrink the tiny detector run to a few iterations."""
    return [
        f'train_dataloader.dataset.indices={n_train}', f'val_dataloader.dataset.indices={n_val}',
        f'test_dataloader.dataset.indices={n_val}', f'train_cfg.max_epochs={epochs}',
        f'train_cfg.val_interval={epochs}', 'default_hooks.logger.interval=1',
        'model.test_cfg.score_thr=0.0',  # an untrained model scores below 0.05: keep its boxes so metrics exist
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
    ]
