#!/usr/bin/env bash
# Usage: launch/ray_cluster.sh head
#        launch/ray_cluster.sh worker HEAD_ADDRESS
#        launch/ray_cluster.sh search CONFIG WORKDIR WORKERS [--config.x=y ...]
#        launch/ray_cluster.sh stop
#   head    starts the Ray head on this machine (port 6379); run the search here too.
#   worker  joins this machine to the cluster (run on every GPU machine).
#   search  runs the search on the cluster: the agent and the record stay on this
#           machine, WORKERS candidates run at once as Ray actors with one GPU each.
#   Needs `pip install "ray>=2.40"` on every machine (see BUILD.md).
# Example:
#   launch/ray_cluster.sh head                                  # on machine A
#   launch/ray_cluster.sh worker 10.0.0.1:6379                  # on machines B, C, ...
#   launch/ray_cluster.sh search configs/cifar10.py runs/c10 10 # on machine A
set -euo pipefail
source "$(dirname "$(readlink -f "$0" 2>/dev/null || echo "$0")")/common.sh"
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
RAY="$(dirname "$PYTHON")/ray"
[ -x "$RAY" ] || RAY=ray
case "${1:-}" in
  head) run "$RAY" start --head --port=6379 --disable-usage-stats ;;
  worker) [ $# -eq 2 ] || usage
          run "$RAY" start --address="$2" --disable-usage-stats ;;
  search) [ $# -ge 4 ] || usage
          config=$(config_path "$2"); workdir=$3; workers=$4; shift 4
          check_workdir "$workdir"
          count WORKERS "$workers"
          run "$PYTHON" -m metaqnn.main --config="$config" --workdir="$workdir" \
            --config.executor=ray --config.ray.address=auto --config.num_workers="$workers" \
            --config.ray.gpus_per_worker="${GPUS_PER_WORKER:-1}" "$@" ;;
  stop) run "$RAY" stop ;;
  *) usage ;;
esac
