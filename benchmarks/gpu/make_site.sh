#!/usr/bin/env bash
# Build .gpu/site (git-ignored): the OpenMMLab stack for the GPU machine's own Python 3.12 + torch (2.11, CUDA),
# which has none of it and reaches no registry. Pure-Python packages and cp312 wheels, pinned as
# requirements/lock.txt; mmcv as its Python sources with benchmarks/gpu/mmcv_ext_stub.py as mmcv/_ext (no
# compiled ops: see that file). About 36 MB; carried to the device with `carry: [".gpu/site", ...]`.
#
#   make setup && bash benchmarks/gpu/make_site.sh /root/.pyenv/versions/3.12.1/bin/python3.12
#
# The first argument: a Python 3.12 whose pip installs the wheels (the GPU machine's Python is 3.12). setuptools
# 80.9 travels too: mmengine finds `mmdet::` configs through pkg_resources, which setuptools 81+ no longer has.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY312="${1:-python3.12}"
GPU="$ROOT/.gpu"
MMCV_SRC="${MMCV_SRC:-}"   # a folder holding mmcv 2.1.0's Python package (e.g. an unpacked sdist's mmcv/)
rm -rf "$GPU/wheels" "$GPU/site"
mkdir -p "$GPU/wheels"
python3 -m pip --isolated download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$GPU/wheels" \
  mmengine==0.10.7 mmdet==3.3.0 mmpretrain==1.2.0 addict==2.4.0 termcolor==3.3.0 yapf==0.43.0 \
  platformdirs==4.14.5 terminaltables==3.1.10 pycocotools==2.0.11 shapely==2.2.0 mat4py==0.6.0 \
  model-index==0.1.11 modelindex==0.0.2 ordered-set==4.1.0 importlib_metadata==10.2.0 \
  setuptools==80.9.0 lazy-importer==0.1.0
"$PY312" -m pip --isolated install -q --no-deps --no-index --no-compile --target "$GPU/site" "$GPU"/wheels/*.whl
rm -rf "$GPU/site/tests" "$GPU/site/yapftests"
if [ -z "$MMCV_SRC" ]; then
  tmp="$(mktemp -d)"
  # the project's .venv (make setup) has the torch and setuptools that mmcv's setup.py needs for its metadata
  "$ROOT/.venv/bin/python" -m pip --isolated download -q --no-deps --no-binary :all: --no-build-isolation \
    -d "$tmp" mmcv==2.1.0 || { echo "fetch the mmcv 2.1.0 sdist and set MMCV_SRC to its mmcv/ folder" >&2; exit 1; }
  tar xzf "$tmp"/mmcv-2.1.0.tar.gz -C "$tmp"
  MMCV_SRC="$tmp/mmcv-2.1.0/mmcv"
fi
cp -r "$MMCV_SRC" "$GPU/site/mmcv"
rm -rf "$GPU/site/mmcv/ops/csrc"
find "$GPU/site/mmcv" \( -name '*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
cp "$ROOT/benchmarks/gpu/mmcv_ext_stub.py" "$GPU/site/mmcv/_ext.py"
mkdir -p "$GPU/site/mmcv-2.1.0.dist-info"
printf 'Metadata-Version: 2.1\nName: mmcv\nVersion: 2.1.0\n' > "$GPU/site/mmcv-2.1.0.dist-info/METADATA"
echo mmcv > "$GPU/site/mmcv-2.1.0.dist-info/top_level.txt"
touch "$GPU/site/mmcv-2.1.0.dist-info/RECORD"
find "$GPU/site" -name __pycache__ -prune -exec rm -rf {} +
du -sh "$GPU/site"
