"""Render the results tables of benchmarks/README.md from benchmarks/results/*.json (only measured figures).

    .venv/bin/python benchmarks/report.py            # print markdown
    .venv/bin/python benchmarks/report.py --write    # replace the section between the markers in README.md
"""
import argparse
import json
import os.path as osp

HERE = osp.dirname(osp.abspath(__file__))
RESULTS = osp.join(HERE, 'results')
BEGIN, END = '<!-- results:begin -->', '<!-- results:end -->'


def load(name):
    path = osp.join(RESULTS, f'{name}.json')
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def f(v, nd=3):
    if v is None:
        return '-'
    if isinstance(v, float):
        return f'{v:.{nd}f}'
    return str(v)


def when(d):
    m = d['machine']
    return (f'*{d.get("started")} .. {d.get("finished", d.get("updated"))}, {m["cpu_count"]} CPUs '
            f'({m.get("cpu_model")}), torch {m["torch"]}, load average at start {m.get("load_average_at_start")}*')


def overhead(d, name='overhead'):
    st = d.get('setup', {})
    model = (f'Model {st.get("model", "tiny")} (`{st.get("config")}`), batch {st.get("batch_size")} of '
             f'{st.get("image_size")}, {st.get("iters")} measured iterations x {st.get("rounds")} rounds.')
    out = [f'### Overhead (`{name}.json`)', '', when(d), '', model, '',
           '| variant | CPU s/iter | wall s/iter | CPU-time ratio | wall-time ratio | peak RSS MiB | RSS ratio | '
           'autograd-saved MiB |', '|---|---|---|---|---|---|---|---|']
    for v, s in d['variants'].items():
        out.append(f'| {v} | {f(s.get("median_cpu_s"), 4)} | {f(s["median_iter_s"], 4)} | '
                   f'{f(s.get("time_ratio"))} | {f(s.get("wall_time_ratio", s.get("time_ratio")))} | '
                   f'{f(s["peak_rss_mib"], 1)} | {f(s.get("memory_ratio"))} | {f(s["saved_mib"], 2)} |')
    out += ['', f'Headline (worse of `accumulate` / `pruning`): `time_ratio` {f(d["time_ratio"])}, '
                f'`wall_time_ratio` {f(d.get("wall_time_ratio"))}, `memory_ratio` {f(d["memory_ratio"])}, '
                f'`saved_bytes_ratio` {f(d.get("saved_bytes_ratio"))}; goal <= 1.10 / <= 1.15: '
                f'{"met" if d["goal"]["met"] else "NOT met"}.', '']
    return out


def trace(d):
    g = d['grouping']
    out = ['### Grouping time (`trace_time.json`)', '', when(d), '',
           '| | seconds |', '|---|---|',
           f'| mmfisher `analyze_fast` (trace on a meta copy + units: what the hook runs) | {f(d["ours_s"], 2)} |',
           f'| mmfisher `analyze` (the same trace on real tensors) | {f(d.get("ours_real_s"), 2)} |',
           f'| Torch-Pruning `build_dependency` | {f(d["torch_pruning_s"], 2)} |',
           f'| Torch-Pruning `get_all_groups` | {f(d["torch_pruning_groups_s"], 2)} |',
           f'| plain forward, autograd on | {f(d["forward_grad_s"], 2)} |',
           f'| plain forward, autograd off | {f(d["forward_nograd_s"], 2)} |', '',
           f'`ratio` (ours / build_dependency) {f(d["ratio"])}; with get_all_groups {f(d["ratio_with_groups"])}. '
           f'Model `{d["setup"]["model"]}` at {d["setup"]["input_shape"]}.', '',
           f'Grouping: ours {g["ours_units"]} units / {g["ours_atoms"]} atoms / {g["ours_prunable_out_channels"]} '
           f'prunable out-channels; Torch-Pruning {g["torch_pruning_groups"]} groups / '
           f'{g["torch_pruning_prunable_out_channels"]} prunable out-channels. Identical coupled layer sets: '
           f'{g["identical_layer_sets"]}; identical channel sets: {g["identical_channel_sets"]} '
           f'(only ours {g["channel_sets_only_ours"]}, only TP {g["channel_sets_only_torch_pruning"]}).']
    if g['layer_sets_only_ours'] or g['layer_sets_only_torch_pruning']:
        out += ['', f'Layer sets only in ours: `{g["layer_sets_only_ours"]}`',
                f'Layer sets only in Torch-Pruning: `{g["layer_sets_only_torch_pruning"]}`']
    out.append('')
    return out


def cost(d):
    out = ['### Pruning cost vs k (`cost.json`)', '', when(d), '',
           f'Baseline: {d["baseline"]["iters"]} iterations, {d["baseline"]["metric"]} {f(d["baseline"]["value"])}; '
           f'with the same {d["setup"]["ft_iters"]}-iteration fine-tune: '
           f'{f(d.get("baseline_finetuned", {}).get("value"))}.', '']
    long, equal = d.get('long_finetune', {}), d.get('equal_total', {})
    head = ('| k | pruning iters | steps | wall s | atoms masked | FLOPs ratio | mAP after short fine-tune | '
            'cost vs k=1 (iters) |')
    if long:
        it = next(iter(long.values()))['iters']
        head += f' mAP after {it}-iter fine-tune (mean +- std, seeds) |'
    if equal:
        head += ' mAP at equal total training (fine-tune iters) |'
    out += [head, '|' + '---|' * (head.count('|') - 1)]
    red = d.get('cost_reduction_vs_k1', {})

    def pm(r):
        return f'{f(r["mean"])} +- {f(r["std"])} ({len(r["values"])})' if r else '-'
    for k, r in d.get('runs', {}).items():
        iters = r['iters'] if not r.get('extrapolated') else f'{r["extrapolated_iters"]:.0f} (EXTRAPOLATED)'
        row = (f'| {k} | {iters} | {r["steps"]} | {f(r["wall_s"], 1)} | {r["atoms_masked"]} | '
               f'{f(r["ratios"]["flops"])} | {f(r.get("value"))} | '
               f'{f(red.get(k, {}).get("iters"), 1) if k != "1" else "1"} |')
        if long:
            row += f' {pm(long.get(k))} |'
        if equal:
            e = equal.get(k)
            row += (f' {pm(e)} ({e["iters"]}) |' if e else (' (k=1 itself) |' if k == '1' else ' - |'))
        out.append(row)
    if 'baseline' in long:
        out += ['', f'Unpruned baseline after the same {long["baseline"]["iters"]}-iteration fine-tune: '
                    f'{pm(long["baseline"])}.']
    out.append('')
    return out


def speedup(d):
    out = ['### Latency (`speedup_cpu.json`)', '', when(d), '']
    for name, m in d.get('models', {}).items():
        proto = ('round-robin timing' if any('torch_cpu_s' in r for r in m['structures'].values())
                 else 'SEQUENTIAL timing under varying load (before the round-robin protocol): not reliable')
        load = m.get('load_average_per_round')
        load = f', 1-min load average per round {[round(v, 1) for v in load]}' if load else ''
        src = f', structures from `{m["structures_from"]}`' if m.get('structures_from') else ''
        out += [f'**{name}** (`{m["spec"]}`), input {m["timed_input"]}, {proto}{load}{src}:', '',
                '| structure | FLOPs ratio (ours) | FLOPs ratio (mmengine) | acts ratio (ours) | params M | torch s | '
                'torch speed-up | torch speed-up (CPU time) | ORT s | ORT speed-up | ORT speed-up (CPU time) |',
                '|---|---|---|---|---|---|---|---|---|---|---|']
        for s, r in m['structures'].items():
            out.append(f'| {s} | {f(r["flops_ratio_ours"])} | {f(r.get("flops_ratio_mmengine"))} | '
                       f'{f(r.get("acts_ratio_ours"))} | {f(r["params"] / 1e6, 2)} | {f(r["torch_median_s"])} | {f(r.get("speedup_torch"), 2)} | '
                       f'{f(r.get("speedup_torch_cpu_time"), 2)} | {f(r.get("onnxruntime_median_s"))} | '
                       f'{f(r.get("speedup_onnxruntime"), 2)} | {f(r.get("speedup_onnxruntime_cpu_time"), 2)} |')
        if 'batch_8' in m:
            out.append(f'\nBatch 8: {m["batch_8"]}')
        out.append('')
    return out


def quality(d, name):
    st = d.get('setup', {})
    budget = st.get('budget', 'flops')
    match = st.get('match_iters')
    out = [f'### Quality at equal {"FLOPs" if budget == "flops" else "acts"} (`{name}.json`, task {st.get("task")})',
           '', when(d), '',
           f'Baseline {d["baseline"]["metric"]} {f(d["baseline"]["value"], 2)} ({d["baseline"]["iters"]} iters); '
           f'with a {st.get("ft_iters")}-iteration fine-tune: {f(d.get("baseline_finetuned", {}).get("value"), 2)}. '
           f'Target: {st.get("target")} of the baseline\'s {budget}. '
           + ('Every method trains equally long (one-shot methods fine-tune for as many more iterations as Fisher '
              'trained while pruning).' if match else 'Every method fine-tunes the same number of iterations '
              '(Fisher also trains while it prunes).'), '',
           '| method | n seeds | metric mean | metric std | before fine-tune (mean) | train iters (mean) | '
           'FLOPs ratio (mean) | acts ratio (mean) |', '|---|---|---|---|---|---|---|---|']
    methods = d.get('methods')
    if methods is None:  # partial run: summarise what was measured
        methods = {}
        for m, rs in d.get('runs', {}).items():
            vals = [r['value'] for r in rs]
            mean = sum(vals) / len(vals)
            std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
            methods[m] = dict(n=len(vals), metric_mean=mean, metric_std=std,
                              flops_ratio_mean=sum(r['ratios']['flops'] for r in rs) / len(rs),
                              acts_ratio_mean=sum(r['ratios']['acts'] for r in rs) / len(rs))
            if all('value_before_finetune' in r for r in rs):
                methods[m]['before_finetune_mean'] = sum(r['value_before_finetune'] for r in rs) / len(rs)
            if all('train_iters_total' in r for r in rs):
                methods[m]['train_iters_mean'] = sum(r['train_iters_total'] for r in rs) / len(rs)
        out.insert(4, f'**Partial run** (still running or stopped early): {d.get("updated")}.')
        out.insert(5, '')
    for m, s in methods.items():
        out.append(f'| {m} | {s["n"]} | {f(s["metric_mean"], 3)} | {f(s["metric_std"], 3)} | '
                   f'{f(s.get("before_finetune_mean"), 3)} | {f(s.get("train_iters_mean"), 0)} | '
                   f'{f(s["flops_ratio_mean"])} | {f(s.get("acts_ratio_mean"))} |')
    out.append('')
    return out


def render():
    out = []
    for name, fn in (('overhead', overhead), ('overhead_retinanet_r50', overhead), ('trace_time', trace),
                     ('cost', cost), ('speedup_cpu', speedup)):
        d = load(name)
        if d and fn is overhead:
            out += overhead(d, name)
        else:
            out += fn(d) if d else [f'### `{name}.json`: not measured yet', '']
    for name in ('quality', 'quality_acts', 'quality_det', 'quality_det_acts'):
        d = load(name)
        out += quality(d, name) if d else [f'### `{name}.json`: not measured yet', '']
    return '\n'.join(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--write', action='store_true')
    args = p.parse_args()
    text = render()
    if not args.write:
        print(text)
        return
    path = osp.join(HERE, 'README.md')
    with open(path) as fh:
        readme = fh.read()
    a, b = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    with open(path, 'w') as fh:
        fh.write(readme[:a] + '\n' + text + '\n' + readme[b:])


if __name__ == '__main__':
    main()
