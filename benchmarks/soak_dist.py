"""Soak: consecutive 2-process ``tools/dist_train.sh`` pruning runs of the tiny detector, some with one rank
killed (``kill -9``) mid-pruning and then ``--resume``d; every run must end (no hang) and reach the same channels
as an uninterrupted reference run.

Each run prunes the bundled-data tiny RetinaNet (configs/demo/retinanet_tiny_prune.py, target 0.8, 16 atoms every
2 iterations, a checkpoint every 2 iterations) from the same baseline on 2 gloo processes. In every ``--kill-every``-th
run, once the first checkpoint exists, one rank is killed with SIGKILL; torchrun must then end the other rank and
exit non-zero within ``--timeout`` seconds (the process group timeout is set to the same, so a rank blocked in a
collective also ends with gloo's timeout message instead of waiting forever), and a ``--resume`` run of the same
work dir must finish with the reference's channels.json structure.

    nice .venv/bin/python benchmarks/soak_dist.py                 # 20 runs -> benchmarks/results/soak_dist.json
    nice .venv/bin/python benchmarks/soak_dist.py --runs 2 --out /tmp/soak.json
"""
import argparse
import glob
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import DET_CFG, ROOT, Result, train_baseline  # noqa: E402

PRUNE_CFG = osp.join(ROOT, 'configs', 'demo', 'retinanet_tiny_prune.py')


def structure(work: str):
    path = osp.join(work, 'channels.json')
    if not osp.isfile(path):
        return None
    cfg = json.load(open(path))
    return [(u['name'], u['kept']) for u in cfg['units']]


def launch(work: str, base: str, timeout: int, resume: bool = False) -> subprocess.Popen:
    opts = [f'load_from={base}', 'custom_hooks.0.target=0.8', 'custom_hooks.0.channels_per_step=16',
            'custom_hooks.0.save_thresholds=[]', 'default_hooks.checkpoint.interval=2',
            'default_hooks.checkpoint.max_keep_ckpts=2', f'env_cfg.dist_cfg.timeout={timeout}',
            'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False']
    cmd = ['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), PRUNE_CFG, '2', '--work-dir', work,
           '--cfg-options', *opts] + (['--resume'] if resume else [])
    log = open(osp.join(work, 'resume.log' if resume else 'run.log'), 'w')
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, PORT='0', OMP_NUM_THREADS='1'))


def wait(proc: subprocess.Popen, timeout: int):
    """(returncode, hung): a process still alive after ``timeout`` s is killed and reported as a hang."""
    try:
        return proc.wait(timeout=timeout), False
    except subprocess.TimeoutExpired:
        for pid in rank_pids(proc):
            os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(), True


def rank_pids(proc: subprocess.Popen):
    """The worker processes torchrun started (its children; they run in sessions of their own)."""
    out = subprocess.run(['pgrep', '-P', str(proc.pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def kill_one_rank(proc: subprocess.Popen, work: str, limit: float) -> bool:
    """SIGKILL one rank once the first checkpoint is written; False if the run ended first."""
    t0 = time.time()
    while time.time() - t0 < limit and proc.poll() is None:
        if glob.glob(osp.join(work, 'iter_*.pth')):
            workers = rank_pids(proc)
            if workers:
                os.kill(workers[-1], signal.SIGKILL)
                return True
        time.sleep(0.2)
    return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--runs', type=int, default=20)
    p.add_argument('--kill-every', type=int, default=3, help='kill a rank in every N-th run')
    p.add_argument('--timeout', type=int, default=300, help='seconds before a run counts as hung')
    p.add_argument('--work', default=osp.join(ROOT, 'work_dirs', 'soak_dist'))
    p.add_argument('--out', default=None)
    args = p.parse_args()
    res = Result('soak_dist', args.out)
    base = osp.join(args.work, 'base.pth')
    res['baseline'] = train_baseline(DET_CFG, base, iters=120)
    ref_work = osp.join(args.work, 'reference')
    os.makedirs(ref_work, exist_ok=True)
    rc, hung = wait(launch(ref_work, base, args.timeout), args.timeout)
    reference = structure(ref_work)
    if rc != 0 or reference is None:
        raise SystemExit(f'the reference run failed (rc {rc}, hung {hung}); see {ref_work}/run.log')
    runs = []
    for i in range(1, args.runs + 1):
        work = osp.join(args.work, f'run_{i:02d}')
        subprocess.run(['rm', '-rf', work])
        os.makedirs(work)
        kill = i % args.kill_every == 0
        t0 = time.time()
        proc = launch(work, base, args.timeout)
        killed = kill_one_rank(proc, work, args.timeout) if kill else False
        rc, hung = wait(proc, args.timeout)
        row = dict(run=i, killed=killed, rc=rc, hung=hung, wall_s=round(time.time() - t0, 1))
        if killed:
            row['ended_after_kill_s'] = row['wall_s']
            rc2, hung2 = wait(launch(work, base, args.timeout, resume=True), args.timeout)
            row.update(resume_rc=rc2, resume_hung=hung2)
        got = structure(work)
        row['completed'] = got is not None and (row.get('resume_rc', rc) == 0)
        row['identical'] = got == reference
        runs.append(row)
        print(json.dumps(row), flush=True)
        res['runs'] = runs
        res.save(final=False)
    res['summary'] = dict(
        runs=len(runs), completed=sum(r['completed'] for r in runs), identical=sum(r['identical'] for r in runs),
        killed=sum(r['killed'] for r in runs), killed_then_resumed_identical=sum(r['killed'] and r['identical']
                                                                               for r in runs),
        hangs=sum(r['hung'] or r.get('resume_hung', False) for r in runs),
        killed_runs_exit_nonzero=sum(r['killed'] and r['rc'] != 0 for r in runs))
    print(json.dumps(res['summary']))
    res.save()


if __name__ == '__main__':
    main()
