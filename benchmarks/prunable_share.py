"""Share of conv/linear output channels prunable, and exact slimming (issue 11): the mm zoo families beyond plain
CNNs, and plain torchvision and timm models through the core.

For each model (``mmfisher.model_sweep``: built without pretrained weights, zero-initialised weights and norm
statistics randomised, small input; ViT's ``img_size`` set to it): trace it with ``analyze_fast`` (what
FisherPruningHook runs), mask a random ``--ratio`` of every unit, slim a copy and compare masked and slimmed
outputs (``compare_masked_slimmed``, float64 re-check on a mismatch). Reports per model ``channels_total``,
``channels_prunable``, ``share``, ``ok``, ``max_abs_diff``, ``params_ratio`` and the most common reasons channels
are kept; a model that fails reports its ``error`` (a crash is a defect of the engine).

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/prunable_share.py [--suite mm torchvision timm]
        [--only convnext timm:skresnet18 ...] [--no-check] [--out benchmarks/results/prunable_share.json]

To measure another checkout (e.g. the commit before a change), run this file with ``PYTHONPATH`` pointing there
(copy ``mmfisher/model_sweep.py`` into it if it has none): ``PYTHONPATH=/tmp/base python
benchmarks/prunable_share.py --out /tmp/base.json``, then add it as ``--before /tmp/base.json`` to a run of this
checkout. ``channels_total`` counts the conv/linear layers the trace records and (since the timm sweep) the
conv/linear-like layers no rule covers (timm's ``ScaledStdConv2d``), which used to be left out of the count.
"""
import argparse
import json
import os
import sys
import time
import traceback

SUITES = ('mm', 'torchvision', 'timm')


def families(suite):
    """``{name: (source, builder name or config, shape, overrides)}`` of one suite (mmfisher.model_sweep)."""
    from mmfisher import model_sweep as ms
    if suite == 'mm':
        return dict(ms.MM_FAMILIES)
    table = ms.TORCHVISION if suite == 'torchvision' else ms.TIMM
    return {f'{suite}:{n}': (suite, n, shape, {}) for n, shape in table.items()}


def measure(entry, check=True, ratio=0.3, seed=0):
    from mmfisher import model_sweep as ms
    source, name, shape, overrides = entry
    model = ms.build(source, name, shape, overrides, seed)
    r = ms.check(model, source, shape, ratio, seed, compare=check, name=name)
    r.pop('graph')
    r.pop('slim', None)
    r['config' if source == 'mm' else 'model'] = name
    return r


def _pct(v):
    return '-' if v is None else f'{100 * v:.1f}%'


def markdown_table(results):
    """One row per model: share before and after, exact (or the error), the most common reason channels are kept."""
    rows = ['| model | prunable before | prunable now | exact | most channels kept by |', '|---|---|---|---|---|']
    for name, r in results.items():
        before = _pct(r.get('before_share')) if r.get('before_ok') is not False else 'not exact'
        if 'before_share' in r and r.get('before_share') is None:
            before = 'crashed'
        exact = 'yes' if r.get('ok') else ('error: ' + r['error'][:60] if 'error' in r else
                                            '-' if r.get('ok') is None else 'NO')
        reasons = [why for why, _ in r.get('top_reasons', []) if why != 'reaches the model output']
        why = reasons[0][:70] if reasons and (r.get('share') or 0) < 0.98 else ''
        rows.append(f'| {name} | {before} | {_pct(r.get("share"))} | {exact} | {why} |')
    return '\n'.join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--suite', nargs='+', default=['mm'], choices=SUITES,
                   help='mm: the issue-11 zoo families; torchvision / timm: plain models through the core')
    p.add_argument('--only', nargs='*', default=None, help='family names (mm) or suite:model names')
    p.add_argument('--no-check', action='store_true', help='only trace (no masked/slimmed comparison)')
    p.add_argument('--ratio', type=float, default=0.3)
    p.add_argument('--out', default=None, help='write the JSON here (default: print only)')
    p.add_argument('--table', default=None, metavar='JSON',
                   help="print this script's JSON as a markdown table (before / after share, exact, top reason)")
    p.add_argument('--before', default=None,
                   help="this script's JSON from another checkout: its shares are added as before_* fields")
    args = p.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(markdown_table(json.load(f)))
        return 0
    before = {}
    if args.before:
        with open(args.before) as f:
            before = json.load(f)
    table = {}
    for suite in args.suite:
        table.update(families(suite))
    results = {}
    for name in args.only or list(table):
        t0 = time.perf_counter()
        try:
            results[name] = measure(table[name], check=not args.no_check, ratio=args.ratio)
        except Exception as exc:  # noqa: BLE001  a failing family is a result, not the end of the run
            results[name] = {'model': table[name][1], 'error': f'{type(exc).__name__}: {exc}',
                             'traceback': traceback.format_exc()[-3000:]}
        results[name]['seconds'] = round(time.perf_counter() - t0, 1)
        if name in before:
            for key in ('channels_total', 'channels_prunable', 'share', 'top_reasons', 'ok'):
                results[name][f'before_{key}'] = before[name].get(key)
        r = results[name]
        print(f"{name}: {r.get('channels_prunable')}/{r.get('channels_total')} = {r.get('share')} "
              f"ok={r.get('ok')} diff={r.get('max_abs_diff')} {r.get('error', '')}", file=sys.stderr, flush=True)
    text = json.dumps(results, indent=1)
    if args.out:
        from mmfisher.core.files import atomic_write
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write(args.out, lambda f: f.write((text + '\n').encode()))
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
