#!/usr/bin/env bash
# The prepared GPU check (issue 10, item 6), one command on the device machine from the repository root:
#   1. benchmarks/speedup.py --device cuda: the saved RetinaNet R50-FPN / FCOS R50 structures (Fisher 'acts' at
#      50% FLOPs rounded to 1 / 8 / 16, Fisher 'flops', random control), fp32 and fp16, batch 1 and 8
#      -> $OUT/speedup_gpu.json (copied to benchmarks/results/ after review)
#   2. benchmarks/balanced.py --r50-device cuda: the balanced calibration of RetinaNet R50-FPN at 800x1333 with 8
#      images: the estimated mode end to end and 8 measured points -> $OUT/balanced_r50_gpu.json, then also the
#      measured mode end to end -> $OUT/balanced_r50_gpu_measured.json
#   3. step 1 again in channels_last (NHWC) -> $OUT/speedup_gpu_cl.json, if time is left
# Needs .gpu/site (benchmarks/gpu/make_site.sh) and work_dirs/bench/structures/{retinanet_r50_fpn,fcos_r50}.json
# (speedup.py --prune-only on the CPU); both carried. Each step has its own time limit; what it wrote stays.
# $OUT gets 8 files (the device tool returns at most 8).
set -uo pipefail
OUT="${OUT:-/tmp/gpu_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu/site:$PWD" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 PYTHONDONTWRITEBYTECODE=1
PY="${PY:-python3}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
"$PY" - 2>&1 <<'PYEOF'
import platform, torch, mmcv, mmdet, mmengine, mmcv.ops, mmfisher
print(platform.python_version(), torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0),
      mmcv.__version__, mmdet.__version__, mmengine.__version__)
PYEOF
SPEEDUP=(benchmarks/speedup.py --device cuda --dtype fp32 fp16 --det-batch 1 8 --no-mm-flops --threads 8
         --repeats 5 --inner 10 --structures-dir work_dirs/bench/structures --models retinanet_r50_fpn fcos_r50)
step() {  # step NAME SECONDS LOG COMMAND...
  local name=$1 limit=$2 log=$3; shift 3
  local t0; t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$log" 2>&1
  echo "== $name: rc=$? in $(( $(date +%s) - t0 )) s (limit $limit)"; grep -v -i warn "$OUT/$log" | tail -n 4
}
step speedup "${SPEEDUP_S:-240}" speedup.log "$PY" "${SPEEDUP[@]}" --out "$OUT/speedup_gpu.json"
step "r50 calibration, estimated + 8 measured points" "${R50_EST_S:-90}" balanced_r50.log \
  "$PY" benchmarks/balanced.py --tasks --r50-device cuda --r50-points 8 --threads 8 --out "$OUT/balanced_r50_gpu.json"
step "r50 calibration, + measured end to end" "${R50_MEASURED_S:-150}" balanced_r50_measured.log \
  "$PY" benchmarks/balanced.py --tasks --r50-device cuda --r50-points 8 --threads 8 --r50-measured \
  --out "$OUT/balanced_r50_gpu_measured.json"
step "speedup channels_last" "${SPEEDUP_CL_S:-100}" speedup_cl.log "$PY" "${SPEEDUP[@]}" \
  --memory-format channels_last --name speedup_gpu_cl --out "$OUT/speedup_gpu_cl.json"
