#!/usr/bin/env bash
# Usage: launch/one_machine.sh CONFIG WORKDIR [MODE] [--config.x=y ...]
#   Runs a search on every GPU of this machine. MODE is
#     data       each candidate data-parallel over all GPUs (default; best for big nets)
#     candidate  one candidate per GPU (best for small nets)
#   Workers are left to config.num_workers' auto: two candidates per device group, so
#   that one compiles while the other trains (README, "On GPUs"); add
#   --config.num_workers=N to choose. Re-run the same command to resume.
# Example:
#   launch/one_machine.sh configs/cifar10.py runs/cifar10 candidate --config.seed=1
set -euo pipefail
source "$(dirname "$(readlink -f "$0" 2>/dev/null || echo "$0")")/common.sh"
[ $# -ge 2 ] || usage
config=$(config_path "$1"); workdir=$2; shift 2
check_workdir "$workdir"
mode=data
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then mode=$1; shift; fi
case "$mode" in
  data|candidate) ;;
  *) echo "error: MODE must be data or candidate, not $mode" >&2; exit 2 ;;
esac
run "$PYTHON" -m metaqnn.main --config="$config" --workdir="$workdir" \
  --config.parallel="$mode" "$@"
