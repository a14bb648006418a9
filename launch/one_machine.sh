#!/usr/bin/env bash
# Usage: launch/one_machine.sh CONFIG WORKDIR [MODE] [--config.x=y ...]
#   Runs a search on every GPU of this machine. MODE is
#     data       each candidate data-parallel over all GPUs (default; best for big nets)
#     candidate  one candidate per GPU, one worker per GPU (best for small nets)
#   Re-run the same command to resume.
# Example:
#   launch/one_machine.sh configs/cifar10.py runs/cifar10 candidate --config.seed=1
set -euo pipefail
source "$(dirname "$0")/common.sh"
[ $# -ge 2 ] || usage
config=$1; workdir=$2; shift 2
mode=data
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then mode=$1; shift; fi
gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
[ "${gpus:-0}" -ge 1 ] || gpus=1
case "$mode" in
  data) workers=1 ;;
  candidate) workers=$gpus ;;
  *) echo "error: MODE must be data or candidate, not $mode" >&2; exit 2 ;;
esac
run "$PYTHON" -m metaqnn.main --config="$config" --workdir="$workdir" \
  --config.parallel="$mode" --config.num_workers="$workers" "$@"
