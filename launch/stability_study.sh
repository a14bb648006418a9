#!/usr/bin/env bash
# Usage: launch/stability_study.sh OUTDIR [RUNS] [--config.x=y ...]
#   The paper's stability study (appendix D.1): RUNS (default 10) independent searches
#   on 10% of SVHN's training set, 1,000 models at epsilon 1.0 then the usual tail,
#   and the stability plot (Figure A3) in OUTDIR/plots. Searches only, as in the paper:
#   no final stage (it would retrain each run's top 10 on all of SVHN and its extra set).
# Example:
#   launch/stability_study.sh runs/svhn_stability 10 --config.num_workers=8 --config.parallel=candidate
set -euo pipefail
source "$(dirname "$(readlink -f "$0" 2>/dev/null || echo "$0")")/common.sh"
[ $# -ge 1 ] || usage
out=$1; shift
runs=10
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then runs=$1; shift; fi
count RUNS "$runs"
exec "$ROOT/launch/sweep_seeds.sh" configs/svhn.py "$out" "$runs" \
  --config.dataset.train_fraction=0.1 --config.final.run_after_search=False \
  --config.search.schedule=1.0:1000,0.9:100,0.8:100,0.7:100,0.6:150,0.5:150,0.4:150,0.3:150,0.2:150,0.1:150 \
  "$@"
