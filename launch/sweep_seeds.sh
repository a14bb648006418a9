#!/usr/bin/env bash
# Usage: launch/sweep_seeds.sh CONFIG OUTDIR SEEDS [--config.x=y ...]
#   Runs SEEDS independent searches (seeds 0..SEEDS-1) one after another into
#   OUTDIR/seed<N>, then writes the stability plot over all of them to OUTDIR/plots.
#   Each search runs its final stage too, as main does (--config.final.run_after_search=False
#   skips it). Re-run to resume; finished seeds are skipped by the search itself.
# Example:
#   launch/sweep_seeds.sh configs/mnist.py runs/mnist_seeds 5 --config.num_workers=4
set -euo pipefail
source "$(dirname "$(readlink -f "$0" 2>/dev/null || echo "$0")")/common.sh"
[ $# -ge 3 ] || usage
config=$(config_path "$1"); out=$2; seeds=$3; shift 3
check_workdir "$out/seed0"
count SEEDS "$seeds"
dirs=()
for ((seed = 0; seed < seeds; seed++)); do
  run "$PYTHON" -m metaqnn.main --config="$config" --workdir="$out/seed$seed" \
    --config.seed="$seed" "$@"
  dirs+=("$out/seed$seed")
done
workdirs=""  # comma-separated, each quoted as CSV: OUTDIR may hold commas or quotes
for d in "${dirs[@]}"; do workdirs+="${workdirs:+,}\"${d//\"/\"\"}\""; done
run "$PYTHON" -m metaqnn.plots --workdir="$workdirs" --out="$out/plots"
