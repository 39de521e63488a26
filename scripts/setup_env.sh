#!/usr/bin/env bash
# Create (idempotently) the project's virtual environment with the pinned OpenMMLab stack.
#
#   scripts/setup_env.sh            # set up if needed; a second run costs about a second
#   MMFISHER_VENV=/path  ...        # put the venv elsewhere (default: <repo>/.venv, git-ignored)
#   MMFISHER_WHEELHOUSE=/path ...   # where the mmcv wheel built from source is kept (default: ~/.cache/mmfisher)
#
# mmcv 2.1.0 has no wheel for this torch on the registry, so it is built once from its sdist (about 15 minutes on
# 2 cores) into the wheelhouse, outside the repo, and every later set-up (a fresh clone, CI) installs that wheel.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMFISHER_VENV:-$ROOT/.venv}"
PY_BASE="${PYTHON:-python3}"
TORCH_VERSION=2.13.0
MMCV_VERSION=2.1.0
WHEELHOUSE="${MMFISHER_WHEELHOUSE:-$HOME/.cache/mmfisher/wheels}/torch-$TORCH_VERSION"

hash_inputs() { cat "$ROOT"/requirements/*.txt "$ROOT/setup.py" "$0" | sha256sum | cut -c1-16; }
STAMP="$VENV/.mmfisher-setup-$(hash_inputs)"
if [ -f "$STAMP" ]; then
  exit 0
fi

log() { printf '[setup] %s\n' "$*"; }
t0=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment at $VENV"
  "$PY_BASE" -m venv "$VENV"
fi
# --isolated: ignore the machine's pip configuration and PIP_* variables (they point at a CPU-only torch wheel
# for which no torchvision exists); everything comes from the registry, pinned.
PIP=("$VENV/bin/python" -m pip --isolated --disable-pip-version-check)
"${PIP[@]}" install -q pip==24.3.1
log "installing torch $TORCH_VERSION and build tools"
"${PIP[@]}" install -q -r "$ROOT/requirements/build.txt" -r "$ROOT/requirements/torch.txt"

mmcv_wheel() { ls "$WHEELHOUSE"/mmcv-$MMCV_VERSION-*.whl 2>/dev/null | head -n 1; }
if [ -z "$(mmcv_wheel)" ]; then
  log "building mmcv $MMCV_VERSION with its ops from source into $WHEELHOUSE (once; about 15 minutes on 2 cores)"
  mkdir -p "$WHEELHOUSE"
  tmp="$(mktemp -d "$WHEELHOUSE/.build.XXXXXX")"
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-2}" FORCE_CUDA=0 \
    "${PIP[@]}" wheel -q --no-build-isolation --no-deps --no-binary mmcv "mmcv==$MMCV_VERSION" -w "$tmp"
  mv "$tmp"/mmcv-$MMCV_VERSION-*.whl "$WHEELHOUSE/"   # only a finished wheel ever lands in the wheelhouse
  rm -rf "$tmp"
fi
log "installing mmcv from $(mmcv_wheel)"
"${PIP[@]}" install -q "$(mmcv_wheel)" -r "$ROOT/requirements/torch.txt"
log "installing the OpenMMLab stack, test tools and mmfisher"
# lock.txt pins every package (regenerate: see README, Development); without it, the direct pins only.
if [ -f "$ROOT/requirements/lock.txt" ]; then
  "${PIP[@]}" install -q -r "$ROOT/requirements/lock.txt" -r "$ROOT/requirements/runtime.txt" \
    -r "$ROOT/requirements/tests.txt"
else
  "${PIP[@]}" install -q -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/torch.txt" \
    -r "$ROOT/requirements/tests.txt"
fi
# Editable (PEP 660) install; setup.py links configs/ into mmfisher/.mim so `mmfisher::` config paths resolve.
"${PIP[@]}" install -q --no-deps --no-build-isolation --use-pep517 -e "$ROOT"
"$VENV/bin/python" -c "import mmcv.ops, mmdet, mmpretrain, mmfisher; print('[setup] ok: mmcv', mmcv.__version__, 'mmdet', mmdet.__version__, 'mmpretrain', mmpretrain.__version__)"
rm -f "$VENV"/.mmfisher-setup-*
touch "$STAMP"
log "done in $(( $(date +%s) - t0 )) s"
