#!/usr/bin/env bash
# Multi-node DDP with torchrun's c10d rendezvous. Run the same line on every node:
#   bash examples/multinode/torchrun_c10d.sh HOST:PORT NNODES GPUS_PER_NODE CONFIG [key=value ...]
# HOST:PORT is one of the nodes (the rendezvous store runs there); NNODES is the number of nodes.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 HOST:PORT NNODES GPUS_PER_NODE CONFIG [key=value ...]" >&2
  exit 2
fi
endpoint=$1 nnodes=$2 nproc=$3 config=$4
shift 4
cd "$(dirname "$0")/../.."
# The job id names the rendezvous: every node of one job must use the same one.
run_id=${RTVP_RUN_ID:-rtvp-$(basename "$config" .yaml)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}   # per process; the data loader has its own workers
# NCCL_SOCKET_IFNAME / NCCL_IB_* may be needed on clusters with several network interfaces.
exec torchrun \
  --nnodes="$nnodes" \
  --nproc_per_node="$nproc" \
  --rdzv_backend=c10d \
  --rdzv_endpoint="$endpoint" \
  --rdzv_id="$run_id" \
  --max_restarts=3 \
  -m training --config "$config" "$@"
