#!/usr/bin/env bash
# Usage: launch/all_datasets.sh OUTDIR [--config.x=y ...]
#   One search per data set of the paper (MNIST, SVHN, CIFAR-10, CIFAR-100), one after
#   another, into OUTDIR/<name>. The tfds data must be prepared first (BUILD.md).
# Example:
#   launch/all_datasets.sh runs/paper --config.num_workers=8 --config.parallel=candidate
set -euo pipefail
source "$(dirname "$(readlink -f "$0" 2>/dev/null || echo "$0")")/common.sh"
[ $# -ge 1 ] || usage
out=$1; shift
for name in ${DATASETS:-mnist svhn cifar10 cifar100}; do
  check_workdir "$out/$name"
  run "$PYTHON" -m metaqnn.main --config="$ROOT/configs/$name.py" --workdir="$out/$name" "$@"
done
