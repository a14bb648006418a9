#!/usr/bin/env bash
# The GPU benchmark as one prepared command for a lent H100/H200 machine (no network).
#
#   benchmarks/gpu_device_run.sh            # writes $OUT/gpu_search.jsonl and $OUT/log.txt
#
# The machine's image has JAX (CUDA), flax, optax, orbax, PyTorch (CUDA) and scikit-learn
# but not ml-collections: bring it as a wheel in .whl/ (see BENCHMARKS.md, "GPU search").
# With PyTorch in the same process, JAX gets half of the GPU's memory.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
OUT="${OUT:-/tmp/gpu_search_out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" || true
timeout "${LIMIT_S:-480}" python3 benchmarks/gpu_search.py --out="$OUT" "$@" 2>&1 \
  | tee "$OUT/log.txt"
