#!/usr/bin/env bash
# Distributed testing with torchrun: tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args...]
# With CUDA: one process per GPU on nccl. Without CUDA: GPUS processes on the CPU, gloo backend.
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT as in mmdet's script (PORT defaults to 29500 there).
# One node: PORT unset or 0 lets torchrun pick a free port itself (parallel runs cannot collide); PORT=N uses N.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py args...]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python )}"
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

if [ "$NNODES" = 1 ] && [ "${PORT:-0}" = 0 ]; then
  # One node, no PORT (or PORT=0): torchrun's c10d rendezvous listens on port 0, i.e. a free port the OS assigns
  # when torchrun binds it, and the workers join through that store. Parallel runs on one machine get different
  # ports, with no window between finding a free port and binding it.
  RENDEZVOUS=(--nnodes=1 --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:0 --local-addr=127.0.0.1)
elif [ "${PORT:-29500}" = 0 ]; then
  echo "$0: PORT=0 (torchrun picks a free port) works on one node only; set the same PORT on every node" >&2
  exit 2
else
  # mmdet's interface: static rendezvous at MASTER_ADDR:PORT (29500 unless set), the same on every node
  RENDEZVOUS=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR"
              --master_port="${PORT:-29500}")
fi

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
exec "$PYTHON" -m torch.distributed.run \
    "${RENDEZVOUS[@]}" \
    --nproc_per_node="$GPUS" \
    "$ROOT/tools/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch "$@"
