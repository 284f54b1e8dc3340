#!/usr/bin/env bash
# On the GPU machine (device tool): install what is missing, run the test suite with
# compiled kernels, then the benchmark. Logs go to $OUT.
#   bash benchmarks/device_run.sh [tests] [bench] [-- extra pytest args]
# jax-triton is not on that machine: carry its wheel in .whl/ (see README).
set -uo pipefail
OUT=${OUT:-/tmp/trinix-out}
export XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p "$OUT"
steps=("${@:-tests bench}")
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, jax, flax; print('torch', torch.__version__, 'triton', triton.__version__, 'jax', jax.__version__, 'flax', flax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
status=0
for step in ${steps[*]}; do
  case "$step" in
    tests)
      python3 -m pytest -q -rs tests 2>&1 | tee "$OUT/pytest.log" | tail -n 40
      status=$((status | ${PIPESTATUS[0]})) ;;
    bench)
      python3 benchmarks/benchmark_embeddings.py --output "$OUT/bench" 2>&1 | tee "$OUT/bench.log" | tail -n 60
      status=$((status | ${PIPESTATUS[0]})) ;;
  esac
done
exit $status
