#!/usr/bin/env python
"""The main job (``make demo``): Group Fisher pruning of a tiny RetinaNet on the bundled shapes data, end to end.

    python tools/demo.py [--work-dir work_dirs/demo] [--quick]

1. generate the bundled data (seconds, idempotent);
2. train the tiny RetinaNet (configs/tiny/retinanet_tiny_shapes.py) and test it;
3. prune it to about 50% FLOPs with FisherPruningHook on 2 processes through tools/dist_train.sh
   (configs/demo/retinanet_tiny_prune.py; gloo on a CPU) and test the slimmed model as pruned;
4. fine-tune the slimmed model (configs/demo/retinanet_tiny_finetune.py: the ``mmfisher.Pruned`` builder) and
   test it;
   (4c: label-free Group Fisher of the same model to the same FLOPs on the bundled unlabeled images, a label-free
   fine-tune of the Pruned student against the unpruned teacher, both tested; summary.json's ``label_free``)
5. export both models to ONNX, check them against torch and time them with onnxruntime;
6. print a before/after table (FLOPs, activations, params, mAP, CPU latency), save a per-layer kept-channels plot
   (``kept_channels.png``) and write ``summary.json``.

About 15 minutes on 2 CPU cores; ``--quick`` shortens every phase for a smoke test (about 3 minutes).
"""
import argparse
import glob
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

TRAIN_CFG = osp.join(ROOT, 'configs', 'tiny', 'retinanet_tiny_shapes.py')
PRUNE_CFG = osp.join(ROOT, 'configs', 'demo', 'retinanet_tiny_prune.py')
FINETUNE_CFG = osp.join(ROOT, 'configs', 'demo', 'retinanet_tiny_finetune.py')
SHAPE = (3, 128, 128)
T0 = time.time()


def step(msg: str) -> None:
    print(f'\n[demo {time.time() - T0:6.0f} s] {msg}', flush=True)


def run(cmd: List[str], log: str) -> float:
    """Run ``cmd`` from the repo root with one intra-op thread per process (faster for a model this small on 2
    cores); its output goes to ``log`` and a line per progress message is echoed. Raises on failure."""
    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', '1')
    os.makedirs(osp.dirname(log), exist_ok=True)
    print('  $ ' + ' '.join(osp.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd), flush=True)
    t0 = time.time()
    with open(log, 'w') as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            f.write(line)
            if any(k in line for k in ('FisherPruningHook:', 'Epoch(train)', 'Iter(train)', 'coco/bbox_mAP:',
                                       'Error', 'error:')):
                print('    ' + line.rstrip()[:160], flush=True)
        code = proc.wait()
    if code:
        raise SystemExit(f'[demo] command failed (exit {code}); see {osp.relpath(log, ROOT)}')
    return time.time() - t0


def test(config: str, ckpt: str, work_dir: str, opts: List[str]) -> Dict[str, float]:
    metrics = osp.join(work_dir, 'metrics.json')
    run([sys.executable, osp.join(ROOT, 'tools', 'test.py'), config, ckpt, '--work-dir', work_dir,
         '--metrics-json', metrics] + (['--cfg-options'] + opts if opts else []), osp.join(work_dir, 'test.log'))
    with open(metrics) as f:
        return json.load(f)


def last_checkpoint(work_dir: str) -> str:
    ckpts = glob.glob(osp.join(work_dir, 'epoch_*.pth'))
    if not ckpts:
        raise SystemExit(f'[demo] no checkpoint in {work_dir}')
    return max(ckpts, key=lambda p: int(osp.basename(p)[6:-4]))


def analyse(train_ckpt: str, finetune_ckpt: str, channels: str, out_dir: str) -> Dict[str, Any]:
    """FLOPs/params (mmengine), activations (mmfisher's cost model), CPU latency, ONNX export and the plot."""
    import numpy as np
    import torch
    from mmengine.analysis import get_model_complexity_info
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint

    import mmfisher  # noqa: F401
    from mmfisher.core import CostModel, analyze_fast
    from mmfisher.models import TensorMode
    from mmfisher.models.tracing import det_data_samples, make_trace_forward
    from mmfisher.zoo import build_model

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    base = build_model(Config.fromfile(TRAIN_CFG))
    load_checkpoint(base, train_ckpt, map_location='cpu', logger='silent')
    slim = build_model(_finetune_cfg(channels))
    load_checkpoint(slim, finetune_ckpt, map_location='cpu', strict=True, logger='silent')
    base.eval()
    slim.eval()
    samples = det_data_samples(SHAPE[1:])

    figures: Dict[str, Any] = {}
    x1 = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(0))
    models = {'before': base, 'after': slim}
    wrapped = {tag: TensorMode(model, samples).eval() for tag, model in models.items()}
    for tag, model in models.items():
        info = get_model_complexity_info(wrapped[tag], inputs=(x1,), show_table=False, show_arch=False)
        graph = analyze_fast(model, lambda m: make_trace_forward(m, SHAPE))
        acts = CostModel(graph).totals(np.ones(graph.num_atoms, dtype=bool))['acts']
        figures[tag] = {'flops': int(info['flops']), 'params': int(info['params']), 'acts': float(acts)}
        figures[tag]['layers'] = {name: int(m.out_channels) for name, m in model.named_modules()
                                  if isinstance(m, torch.nn.Conv2d)}
    with torch.no_grad():
        for batch, key, rounds, per_round in ((1, 'latency_ms', 5, 3), (8, 'latency_b8_ms', 5, 1)):
            x = torch.randn(batch, *SHAPE)
            lat = interleaved_ms({tag: (lambda w=w: w(x)) for tag, w in wrapped.items()}, rounds, per_round)
            for tag in models:
                figures[tag][key] = lat[tag]

    # ONNX export of both models, each checked against torch and timed with onnxruntime
    import onnxruntime as ort
    figures['onnx'] = {}
    sessions = {}
    for tag in models:
        onnx_path = osp.join(out_dir, f'retinanet_tiny_{"unpruned" if tag == "before" else "pruned"}.onnx')
        torch.onnx.export(wrapped[tag], (x1,), onnx_path, opset_version=17, dynamo=False, input_names=['inputs'],
                          do_constant_folding=True)
        sessions[tag] = sess = ort.InferenceSession(onnx_path, providers=['CPUExecutionProvider'])
        ort_out = sess.run(None, {'inputs': x1.numpy()})
        with torch.no_grad():
            ref = wrapped[tag](x1)
        diff = max(float(np.abs(o - r.numpy()).max()) for o, r in zip(ort_out, ref))
        figures['onnx'][tag] = {'path': osp.relpath(onnx_path, ROOT), 'max_abs_diff_vs_torch': diff}
    feed = {'inputs': x1.numpy()}
    lat = interleaved_ms({tag: (lambda s=s: s.run(None, feed)) for tag, s in sessions.items()}, 10, 3)
    for tag in models:
        figures['onnx'][tag]['latency_ms'] = lat[tag]
    figures['plot'] = plot(figures['before']['layers'], figures['after']['layers'],
                           osp.join(out_dir, 'kept_channels.png'))
    return figures


def interleaved_ms(calls: Dict[str, Callable[[], Any]], rounds: int, per_round: int) -> Dict[str, float]:
    """Median milliseconds per call of each of ``calls``, timed in alternating rounds (``rounds`` x
    ``per_round`` calls each, after 3 warm-up calls): load from other jobs then slows every model alike."""
    for call in calls.values():
        for _ in range(3):
            call()
    times: Dict[str, List[float]] = {tag: [] for tag in calls}
    for _ in range(rounds):
        for tag, call in calls.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                call()
                times[tag].append(time.perf_counter() - t0)
    return {tag: 1000 * statistics.median(t) for tag, t in times.items()}


def _finetune_cfg(channels: str):
    from mmengine.config import Config
    cfg = Config.fromfile(FINETUNE_CFG)
    cfg.model.channels = channels
    return cfg


def plot(before: Dict[str, int], after: Dict[str, int], path: str) -> str:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = [n for n in before if n in after]
    kept = [after[n] / before[n] for n in names]
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.22), 4.5))
    colors = ['tab:blue' if n.startswith('backbone') else 'tab:orange' if n.startswith('neck') else 'tab:green'
              for n in names]
    ax.bar(range(len(names)), kept, color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel('kept output channels (share)')
    ax.set_ylim(0, 1.05)
    ax.set_title('Group Fisher pruning of the tiny RetinaNet: kept channels per conv layer '
                 '(blue backbone, orange FPN, green head)', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return osp.relpath(path, ROOT)


BALANCED_CFG = osp.join(ROOT, 'configs', 'tiny', 'retinanet_tiny_balanced_prune.py')


def balanced(ckpt: str, target: float, wd: str, quick: bool) -> Dict[str, Any]:
    """Balanced one-shot pruning (seed 003, BalancedPruningHook) of the same trained model to the same FLOPs with
    tools/train.py (a few calibration batches, no training), a test right after, one short fine-tune
    (mmfisher.Pruned, cosine over ``epochs``) and a test: the ``balanced`` object of summary.json."""
    out = osp.join(wd, 'balanced')
    batches, epochs = (2, 1) if quick else (4, 2)
    grid = '[0.25,0.5,0.75]' if quick else '[0.2,0.4,0.6,0.8]'
    t_prune = run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), BALANCED_CFG, '--work-dir',
                   osp.join(out, 'prune'), '--cfg-options', f'load_from={ckpt}', f'custom_hooks.0.target={target}',
                   f'custom_hooks.0.calibration_batches={batches}', f'custom_hooks.0.grid={grid}'],
                  osp.join(out, 'prune.log'))
    channels, pruned = osp.join(out, 'prune', 'channels.json'), osp.join(out, 'prune', 'pruned.pth')
    with open(osp.join(out, 'prune', 'balanced_curves.json')) as f:
        curves = json.load(f)
    print(f'    balanced: tau={curves["tau"]:.4g} after {curves["search_steps"]} search steps, flops '
          f'{curves["ratios"]["flops"]:.4f}; calibration loss {curves["base_loss"]:.4f} -> '
          f'{curves["combined_loss"]:.4f} (sum of the units\' variations {curves["sum_unit_variations"]:.4f})',
          flush=True)
    opts = [f'model.channels={channels}']
    m_pruned = test(FINETUNE_CFG, pruned, osp.join(out, 'test_pruned'), opts)
    t_ft = run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), FINETUNE_CFG, '--work-dir',
                osp.join(out, 'finetune'), '--cfg-options'] + opts + [
                f'load_from={pruned}', f'train_cfg.max_epochs={epochs}', f'train_cfg.val_interval={epochs}',
                f'param_scheduler.0.end={epochs}', f'param_scheduler.0.T_max={epochs}'],
               osp.join(out, 'finetune.log'))
    ft_ckpt = last_checkpoint(osp.join(out, 'finetune'))
    m_after = test(FINETUNE_CFG, ft_ckpt, osp.join(out, 'test_finetuned'), opts)
    key = 'coco/bbox_mAP'
    return {'flops_ratio': curves['ratios']['flops'], 'acts_ratio': curves['ratios']['acts'],
            'params_ratio': curves['ratios']['params'], 'target': target,
            'metric_after_prune': m_pruned.get(key), 'metric_after_finetune': m_after.get(key),
            'prune_wall_s': t_prune, 'method_wall_s': curves['wall_s'].get('prune'),
            'finetune_wall_s': t_ft, 'finetune_epochs': epochs, 'calibration_batches': curves['calibration_batches'],
            'tau': curves['tau'], 'search_steps': curves['search_steps'], 'mode': curves['mode'],
            'points_measured': curves['points_measured'], 'grid_points': curves['grid_points'],
            'norm_stats': curves['norm_stats'], 'norms_recalibrated': curves['norms_recalibrated'],
            'base_loss': curves['base_loss'], 'combined_loss': curves['combined_loss'],
            'sum_unit_variations': curves['sum_unit_variations'], 'channels': osp.relpath(channels, ROOT),
            'curves_plot': osp.relpath(osp.join(out, 'prune', 'balanced_curves.png'), ROOT)}


LABEL_FREE_PRUNE_CFG = osp.join(ROOT, 'configs', 'tiny', 'retinanet_tiny_label_free_prune.py')
LABEL_FREE_FINETUNE_CFG = osp.join(ROOT, 'configs', 'tiny', 'retinanet_tiny_label_free_finetune.py')
UNLABELED = osp.join(ROOT, 'data', 'generated', 'shapes_unlabeled', 'det')
# tools/train.py under a Python audit hook (written to the phase's work dir and run as a script): every file the
# process (and its dataloader workers, forked) opens under data/ is appended once to the file named by argv[1];
# the rest of argv is tools/train.py's
_READ_AUDIT = r"""
import os, runpy, sys
log, data = sys.argv[1], os.path.abspath('data') + os.sep
fd, seen = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), set()
def audit(event, args):
    if event == 'open' and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(args[0]))
        if path.startswith(data) and path not in seen:
            seen.add(path)
            os.write(fd, (path + '\n').encode())
sys.addaudithook(audit)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def _what_was_read(work_dir: str, config: str, reads: str, log: str) -> Dict[str, Any]:
    """What a label-free run read, from the run itself: its training data set (the config the Runner dumped into
    its work dir), the files it opened under data/ (the audit log), and whether the distiller saw a label."""
    from mmengine.config import Config
    from mmfisher.datasets.unlabeled import IMG_EXTENSIONS
    dumped = Config.fromfile(osp.join(work_dir, osp.basename(config)))
    with open(reads) as f:
        paths = sorted(set(f.read().split()))
    images = {p for p in paths if p.startswith(UNLABELED + os.sep) and p.lower().endswith(IMG_EXTENSIONS)}
    with open(log) as f:
        saw = 'carries labels' in f.read()  # LabelFreeDistiller says so once when a sample holds gt_*
    return {'train_dataset': dumped.train_dataloader.dataset.type, 'val_dataloader': dumped.get('val_dataloader'),
            'images_read': len(images), 'image_folder': osp.relpath(UNLABELED, ROOT),
            'other_files_read': [osp.relpath(p, ROOT) for p in paths if p not in images],
            'distiller_saw_labels': saw}


def label_free(ckpt: str, target: float, wd: str, quick: bool) -> Dict[str, Any]:
    """Label-free Group Fisher (seed 002) of the same trained model to the same FLOPs: the LabelFreeDistiller
    (configs/tiny/retinanet_tiny_label_free_prune.py: the trained model as student and frozen teacher,
    distillation loss only, top-k steps) on the bundled unlabeled images, a test of pruned.pth right after, a
    label-free fine-tune of the Pruned student against the unpruned teacher
    (configs/tiny/retinanet_tiny_label_free_finetune.py) and a test of the slimmed student (extract_student ->
    the Pruned config), both tests on the labeled val set: the ``label_free`` object of summary.json.
    ``labels_used`` is read off the two training runs (their data set, every file they opened under data/, the
    distiller's log), which run with no validation set, so they open no annotation file at all."""
    out = osp.join(wd, 'label_free')
    k, interval, epochs = (32, 1, 1) if quick else (16, 5, 4)
    # seed 002's automatic anchors, their MSE weighted 0.01 while pruning (the detection configs' weight): at weight 1
    # its gradients dwarf the output KL's, so the head's last tower layers, which no anchor follows, rank lowest and
    # were cut to 1 channel each (measured on this model: bbox mAP right after pruning 0.064 at weight 1, 0.466 at
    # 0.01, 0.413 with output KL only; benchmarks/label_free.py compares the variants). Passed explicitly, so the
    # figure in summary.json says what ran.
    anchor_weight = 0.01
    no_val = ['val_dataloader=None', 'val_cfg=None', 'val_evaluator=None']
    few = ['train_dataloader.dataset.indices=64'] if quick else []  # --quick: 8 iterations an epoch
    os.makedirs(out, exist_ok=True)
    with open(osp.join(out, 'read_audit.py'), 'w') as f:
        f.write(_READ_AUDIT)
    audited = [sys.executable, osp.join(out, 'read_audit.py')]
    prune_dir, prune_reads = osp.join(out, 'prune'), osp.join(out, 'prune_reads.txt')
    t_prune = run(audited + [prune_reads, osp.join(ROOT, 'tools', 'train.py'), LABEL_FREE_PRUNE_CFG, '--work-dir',
                             prune_dir, '--cfg-options', f'load_from={ckpt}', f'custom_hooks.0.target={target}',
                             f'custom_hooks.0.channels_per_step={k}', f'custom_hooks.0.interval={interval}',
                             f'model.anchor_weight={anchor_weight}'] + no_val + few, osp.join(out, 'prune.log'))
    channels, pruned = osp.join(prune_dir, 'channels.json'), osp.join(prune_dir, 'pruned.pth')
    for path in (channels, pruned):
        if not osp.isfile(path):
            raise SystemExit(f'[demo] the label-free pruning run wrote no {osp.basename(path)}; see {out}/prune.log')
    with open(channels) as f:
        meta = json.load(f).get('meta', {})
    print(f'    label-free: {meta["iter"]} iterations, flops {meta["flops_ratio"]:.4f}', flush=True)
    opts = [f'model.channels={channels}']
    m_pruned = test(FINETUNE_CFG, pruned, osp.join(out, 'test_pruned'), opts)
    ft_dir, ft_reads = osp.join(out, 'finetune'), osp.join(out, 'finetune_reads.txt')
    t_ft = run(audited + [ft_reads, osp.join(ROOT, 'tools', 'train.py'), LABEL_FREE_FINETUNE_CFG, '--work-dir',
                          ft_dir, '--cfg-options', f'model.architecture.channels={channels}',
                          f'model.teacher_checkpoint={ckpt}', f'load_from={pruned}', f'train_cfg.max_epochs={epochs}',
                          f'train_cfg.val_interval={epochs}', f'param_scheduler.1.end={epochs}',
                          f'param_scheduler.1.T_max={epochs}'] + no_val + few, osp.join(out, 'finetune.log'))
    from mmfisher.models.distiller import extract_student
    student = extract_student(last_checkpoint(ft_dir), osp.join(out, 'student.pth'))
    m_after = test(FINETUNE_CFG, student, osp.join(out, 'test_finetuned'), opts)
    read = {'prune': _what_was_read(prune_dir, LABEL_FREE_PRUNE_CFG, prune_reads, osp.join(out, 'prune.log')),
            'finetune': _what_was_read(ft_dir, LABEL_FREE_FINETUNE_CFG, ft_reads, osp.join(out, 'finetune.log'))}
    labels_used = any(r['train_dataset'] != 'mmfisher.UnlabeledImages' or r['other_files_read'] or
                      r['distiller_saw_labels'] or r['val_dataloader'] is not None or not r['images_read']
                      for r in read.values())
    key = 'coco/bbox_mAP'
    return {'flops_ratio': meta['flops_ratio'], 'acts_ratio': meta['acts_ratio'],
            'params_ratio': meta['params_ratio'], 'target': target,
            'metric_after_prune': m_pruned.get(key), 'metric_after_finetune': m_after.get(key),
            'pruning_iters': meta['iter'], 'channels_per_step': k, 'interval': interval,
            'anchor_weight': anchor_weight,
            'prune_wall_s': t_prune, 'finetune_wall_s': t_ft, 'finetune_epochs': epochs,
            'labels_used': labels_used, 'read': read, 'channels': osp.relpath(channels, ROOT),
            'student_checkpoint': osp.relpath(student, ROOT)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'demo'))
    parser.add_argument('--quick', action='store_true', help='a short smoke run of every phase')
    parser.add_argument('--gpus', type=int, default=2, help='processes of the pruning run (dist_train.sh)')
    args = parser.parse_args()
    wd = osp.abspath(args.work_dir)
    import shutil
    shutil.rmtree(wd, ignore_errors=True)  # every demo starts from scratch: no stale outputs
    from mmfisher.data_gen import make_all

    step('1/6 data')
    made = make_all(osp.join(ROOT, 'data', 'generated'))
    print('  ' + ', '.join(f'{k} {"generated" if v else "up to date"}' for k, v in made.items()))

    step('2/6 train the tiny RetinaNet (configs/tiny/retinanet_tiny_shapes.py) and test it')
    quick_train = ['--cfg-options', 'train_cfg.max_epochs=2', 'train_cfg.val_interval=2'] if args.quick else []
    t_train = run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), TRAIN_CFG, '--work-dir',
                   osp.join(wd, 'train')] + quick_train, osp.join(wd, 'train.log'))
    ckpt = last_checkpoint(osp.join(wd, 'train'))
    m_before = test(TRAIN_CFG, ckpt, osp.join(wd, 'test_before'), [])

    step(f'3/6 prune to ~50% FLOPs with FisherPruningHook on {args.gpus} processes (tools/dist_train.sh)')
    prune_dir = osp.join(wd, 'prune')
    opts = [f'load_from={ckpt}'] + (['custom_hooks.0.target=0.8', 'custom_hooks.0.channels_per_step=16',
                                      'custom_hooks.0.save_thresholds=[0.9]'] if args.quick else [])
    launcher = (['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), PRUNE_CFG, str(args.gpus)] if args.gpus > 1
                else [sys.executable, osp.join(ROOT, 'tools', 'train.py'), PRUNE_CFG])
    t_prune = run(launcher + ['--work-dir', prune_dir, '--cfg-options'] + opts, osp.join(wd, 'prune.log'))
    channels, pruned = osp.join(prune_dir, 'channels.json'), osp.join(prune_dir, 'pruned.pth')
    for path in (channels, pruned):
        if not osp.isfile(path):
            raise SystemExit(f'[demo] the pruning run wrote no {osp.basename(path)}; see {wd}/prune.log')
    with open(channels) as f:
        meta = json.load(f).get('meta', {})
    ft_opts = [f'model.channels={channels}']
    m_pruned = test(FINETUNE_CFG, pruned, osp.join(wd, 'test_pruned'), ft_opts)

    step('4/6 fine-tune the slimmed model (mmfisher.Pruned) and test it')
    quick_ft = ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1'] if args.quick else []
    t_ft = run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), FINETUNE_CFG, '--work-dir',
                osp.join(wd, 'finetune'), '--cfg-options'] + ft_opts + [f'load_from={pruned}'] + quick_ft,
               osp.join(wd, 'finetune.log'))
    ft_ckpt = last_checkpoint(osp.join(wd, 'finetune'))
    m_after = test(FINETUNE_CFG, ft_ckpt, osp.join(wd, 'test_finetuned'), ft_opts)

    step(f'4b/6 balanced one-shot pruning (seed 003) of the same model to the same FLOPs '
         f'({meta["flops_ratio"]:.4f}), one short fine-tune')
    bal = balanced(ckpt, round(float(meta['flops_ratio']), 4), wd, args.quick)

    step(f'4c/6 label-free Group Fisher (seed 002: distillation from the unpruned model, unlabeled images) of the '
         f'same model to the same FLOPs, label-free fine-tune')
    lf = label_free(ckpt, round(float(meta['flops_ratio']), 4), wd, args.quick)

    step('5/6 FLOPs, activations, params, CPU latency, ONNX export (onnxruntime check)')
    fig = analyse(ckpt, ft_ckpt, channels, wd)

    step('6/6 summary')
    b, a = fig['before'], fig['after']
    key = 'coco/bbox_mAP'
    summary = {
        'flops_ratio': a['flops'] / b['flops'], 'acts_ratio': a['acts'] / b['acts'],
        'params_ratio': a['params'] / b['params'],
        'metric': key, 'metric_before': m_before.get(key), 'metric_after_prune': m_pruned.get(key),
        'metric_after_finetune': m_after.get(key),
        'latency_before_ms': b['latency_ms'], 'latency_after_ms': a['latency_ms'],
        'latency_b8_before_ms': b['latency_b8_ms'], 'latency_b8_after_ms': a['latency_b8_ms'],
        'onnx_latency_before_ms': fig['onnx']['before']['latency_ms'],
        'onnx_latency_after_ms': fig['onnx']['after']['latency_ms'], 'onnx': fig['onnx']['after']['path'],
        'onnx_max_abs_diff_vs_torch': fig['onnx']['after']['max_abs_diff_vs_torch'],
        'flops_before': b['flops'], 'flops_after': a['flops'], 'params_before': b['params'],
        'params_after': a['params'], 'acts_before': b['acts'], 'acts_after': a['acts'],
        'hook_meta': meta, 'input_shape': list(SHAPE), 'plot': fig['plot'], 'quick': args.quick,
        'seconds': {'train': t_train, 'prune': t_prune, 'finetune': t_ft, 'total': time.time() - T0},
        'channels': osp.relpath(channels, ROOT), 'pruned_weights': osp.relpath(pruned, ROOT),
        'finetuned_checkpoint': osp.relpath(ft_ckpt, ROOT),
        'balanced': bal,
        'label_free': lf,
    }
    with open(osp.join(wd, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    rows = [('GFLOPs (mmengine, 1x3x128x128)', b['flops'] / 1e9, a['flops'] / 1e9, '.3f'),
            ('activations (M, conv/linear outputs)', b['acts'] / 1e6, a['acts'] / 1e6, '.3f'),
            ('params (M)', b['params'] / 1e6, a['params'] / 1e6, '.3f'),
            ('bbox mAP (val)', m_before.get(key), m_after.get(key), '.3f'),
            ('CPU latency batch 1 (ms, torch)', b['latency_ms'], a['latency_ms'], '.2f'),
            ('CPU latency batch 8 (ms, torch)', b['latency_b8_ms'], a['latency_b8_ms'], '.2f'),
            ('CPU latency batch 1 (ms, onnxruntime)', fig['onnx']['before']['latency_ms'],
             fig['onnx']['after']['latency_ms'], '.2f')]
    print('\n' + '=' * 78)
    print(f'{"":40s}{"unpruned":>12s}{"pruned":>12s}{"ratio":>10s}')
    for name, x, y, fmt in rows:
        ratio = f'{y / x:.3f}' if x else '-'
        print(f'{name:40s}{x:>12{fmt}}{y:>12{fmt}}{ratio:>10s}')
    print(f'{"bbox mAP right after pruning (no fine-tune)":40s}{"":>12s}{m_pruned.get(key, float("nan")):>12.3f}')
    print(f'\n{"pruned to the same FLOPs (mmfisher cost model)":48s}{"flops":>7s}{"mAP pruned":>12s}'
          f'{"mAP tuned":>11s}{"prune s":>9s}')
    for name, row in ((f'iterative Group Fisher ({args.gpus} proc., {1 if args.quick else 8} ep. tune)',
                       dict(flops_ratio=meta.get('flops_ratio'), metric_after_prune=m_pruned.get(key),
                            metric_after_finetune=m_after.get(key), prune_wall_s=t_prune)),
                      (f'balanced one-shot ({bal["calibration_batches"]} batches, {bal["finetune_epochs"]} ep. tune)',
                       bal),
                      (f'label-free, no labels ({lf["pruning_iters"]} it., {lf["finetune_epochs"]} ep. distill)', lf)):
        v = {k: float('nan') if row[k] is None else float(row[k]) for k in
             ('flops_ratio', 'metric_after_prune', 'metric_after_finetune', 'prune_wall_s')}
        print(f'{name:48s}{v["flops_ratio"]:>7.3f}{v["metric_after_prune"]:>12.3f}'
              f'{v["metric_after_finetune"]:>11.3f}{v["prune_wall_s"]:>9.0f}')
    print(f'ONNX: {fig["onnx"]["after"]["path"]} (max abs diff vs torch '
          f'{fig["onnx"]["after"]["max_abs_diff_vs_torch"]:.2e})')
    print(f'plot: {fig["plot"]}; summary: {osp.relpath(osp.join(wd, "summary.json"), ROOT)}; '
          f'total {time.time() - T0:.0f} s')
    print('=' * 78)


if __name__ == '__main__':
    main()
