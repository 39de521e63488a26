#!/usr/bin/env python
"""Generate the bundled toy data sets (deterministic, idempotent, a few seconds).

    python tools/make_data.py                       # every set into data/generated/
    python tools/make_data.py --only shapes_det --seed 1 --out /tmp/data --force
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from mmfisher.data_gen import MAKERS, make_all  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/generated', help='root folder (default: data/generated)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--only', nargs='+', choices=sorted(MAKERS), help='generate only these')
    parser.add_argument('--force', action='store_true', help='regenerate even if an identical set exists')
    args = parser.parse_args()
    t0 = time.time()
    made = make_all(args.out, seed=args.seed, force=args.force, which=args.only)
    for name, fresh in made.items():
        print(f'[make_data] {os.path.join(args.out, name)}: {"generated" if fresh else "up to date"}')
    print(f'[make_data] done in {time.time() - t0:.1f} s')


if __name__ == '__main__':
    main()
