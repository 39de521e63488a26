"""Time of the engine's checks on real torchvision architectures: what ``tests/core/test_torchvision.py`` runs.

For each model (``weights=None``, ``num_classes=10``, eval mode, BatchNorm statistics randomised as in the test):

* ``build_s``: construct the model and randomise its norms;
* ``analyze_s``: ``mmfisher.core.analyze`` on a real forward of one ``--shape`` input (trace + units);
* ``compare_s``: ``random_alive`` (30% of the atoms masked) + ``compare_masked_slimmed`` on a batch of 2 (mask the
  model, slim a copy, run both, compare);
* ``total_s``: the three together, i.e. the test's body.

Each is timed ``--repeats`` times (``time.perf_counter``); the figure is the median. The test asserted
``total_s < 30`` (``budget_s``) until the timing moved here: ``within_budget`` says whether this run kept to it.
Each row also records what the test checks (prunable share, slim/full parameters, max abs diff / output scale),
so a slow run can be told from a wrong one.

    nice .venv/bin/python benchmarks/trace_torchvision.py            # 224x224, 3 repeats: ~45 s on 2 CPU cores
    nice .venv/bin/python benchmarks/trace_torchvision.py --quick    # the test's 64x64, 1 repeat: ~20 s
"""
import argparse
import gc
import os.path as osp
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import Result  # noqa: E402

MODELS = ['resnet18', 'mobilenet_v2', 'densenet121', 'shufflenet_v2_x0_5', 'efficientnet_b0', 'regnet_x_400mf',
          'resnext50_32x4d']  # tests/core/test_torchvision.py's MODELS
BUDGET_S = 30.0  # the limit tests/core/test_torchvision.py used to assert per model


def randomize_norms(model, seed: int) -> None:
    """As the test: non-trivial BatchNorm statistics and affine parameters, so masked channels matter."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._NormBase):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def one_run(arch: str, shape):
    """The test's body for ``arch``, timed phase by phase; returns (times, checks)."""
    import torch
    import torchvision
    from mmfisher.core import analyze, compare_masked_slimmed, input_forward, random_alive
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10).eval()
    randomize_norms(model, 0)
    t1 = time.perf_counter()
    graph = analyze(model, input_forward(torch.randn(1, *shape)))
    t2 = time.perf_counter()
    alive = random_alive(graph, 0.3, seed=0)
    res = compare_masked_slimmed(model, graph, input_forward(torch.randn(2, *shape)), alive)
    t3 = time.perf_counter()
    s = graph.summary()
    n_full = sum(p.numel() for p in model.parameters())
    n_slim = sum(p.numel() for p in res['slim'].parameters())
    checks = dict(prunable_share=s['channels_prunable'] / s['channels_total'], atoms=graph.num_atoms,
                  atoms_masked=int((~alive).sum()), unprunable=sorted(graph.unprunable),
                  unknown_ops=sorted(graph.unknown_ops), slim_over_full_params=n_slim / n_full,
                  rel_diff=float(res['max_abs_diff']) / max(float(res['scale']), 1e-12))
    return dict(build_s=t1 - t0, analyze_s=t2 - t1, compare_s=t3 - t2, total_s=t3 - t0), checks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=MODELS, choices=MODELS)
    p.add_argument('--shape', type=int, nargs=3, default=(3, 224, 224))
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=1, help='torch intra-op threads (the test suite runs with 1)')
    p.add_argument('--quick', action='store_true', help="the test's setting: 64x64 inputs, one repeat")
    p.add_argument('--out')
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    if args.quick:
        args.shape, args.repeats = (3, 64, 64), 1
    shape = tuple(args.shape)
    res = Result('trace_torchvision', args.out, args.quick)
    res['setup'] = dict(models=args.models, input_shape=list(shape), trace_batch=1, compare_batch=2,
                        masked_share=0.3, repeats=args.repeats, torch_threads=args.threads, pretrained=False,
                        mode='eval', budget_s=BUDGET_S,
                        timer='time.perf_counter around each phase; median over repeats')
    rows = {}
    for arch in args.models:
        times = {}
        checks = None
        for _ in range(args.repeats):
            gc.collect()
            t, checks = one_run(arch, shape)
            for k, v in t.items():
                times.setdefault(k, []).append(v)
        row = {k: statistics.median(v) for k, v in times.items()}
        row['raw_total_s'] = times['total_s']
        row['within_budget'] = row['total_s'] < BUDGET_S
        row.update(checks)
        rows[arch] = row
        print(f"{arch}: total {row['total_s']:.2f}s (build {row['build_s']:.2f}, analyze {row['analyze_s']:.2f}, "
              f"compare {row['compare_s']:.2f}), prunable {row['prunable_share']:.1%}, "
              f"rel diff {row['rel_diff']:.1e}", flush=True)
        res['models'] = rows
        res.save(final=False)
    res['total_s'] = sum(r['total_s'] for r in rows.values())
    res['max_total_s'] = max(r['total_s'] for r in rows.values())
    res['all_within_budget'] = all(r['within_budget'] for r in rows.values())
    print('wrote', res.save())


if __name__ == '__main__':
    main()
