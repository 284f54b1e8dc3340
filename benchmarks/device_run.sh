#!/usr/bin/env bash
# On a CUDA machine: install what is missing, run the test suite with compiled kernels, then the
# benchmark. Logs go to $OUT (default /tmp/trinix-out). Wheels in the checkout's .whl/ folder
# (git ignores it) are installed first: jax-triton and liger-kernel for a machine without network.
#   bash benchmarks/device_run.sh [tests] [properties] [memcheck] [racecheck] [probe] [probe-alibi]
#     [probe-sharding] [probe-blocks] [probe-attention] [sweep-attention] [ncu-attention] [bench]
# tests: the suite (or the TESTS paths), compiled kernels included, over PYTEST_WORKERS processes
#   (8); a test running past 150 s fails with its stack (pytest-timeout, installed there). ~3 min.
# properties: the property tests in their "gpu" profile (compiled kernels, larger shapes), each
#   test in its own process, in the background while the later steps run (put timing steps
#   before it); each writes $OUT/properties-<test>.log as it ends, so a failure and its
#   falsifying example come back even if another test is cut (one summary printed at the end
#   would be lost with it): pytest-timeout stops a test at PROPERTIES_TEST_TIMEOUT (360 s; the
#   RoPE backward test has taken 267 s beside the suite) and prints its stack, `timeout` kills
#   it at PROPERTIES_LIMIT (60 s later by default: the plugin's clock starts at the test, after
#   imports and collection, and 15 s between the two left cut tests with empty logs). 30 s
#   before the plugin's limit, Python's faulthandler writes every thread's stack: that works
#   while the main thread is stuck in C, where the plugin's signal never runs.
#   PROPERTIES_MATCH (a grep pattern) picks some of the tests. The script waits for them at its end.
# memcheck, racecheck: the compiled-kernel tests (-k triton) of SANITIZE_TESTS under
#   compute-sanitizer; each took over 130 s for ~2/3 of the three default files.
# probe: benchmarks/probe_rope.py $PROBE_ARGS (default --profile: host time per call, kernel
#   time per tile, variants, timing methods, generate; "--items 4 5" for some of them).
# probe-alibi: benchmarks/probe_alibi.py $PROBE_ALIBI_ARGS (the ALiBi softmax per row block
#   and num_warps; "--causal" for the causal rows alone), stopped after PROBE_LIMIT (300 s).
# probe-sharding: benchmarks/probe_sharding.py $PROBE_SHARDING_ARGS in torch and in JAX (one device,
#   sharded beside not).
# probe-blocks: benchmarks/probe_blocks.py $PROBE_BLOCKS_ARGS (compiled Llama blocks in alternating
#   rounds; what each program launches goes to $OUT/blocks-programs.tgz), stopped after PROBE_LIMIT.
# probe-attention: benchmarks/probe_attention.py $PROBE_ATTENTION_ARGS (default "--configs medium large
#   decode"): checks, then trinix's attention kernels timed beside Flex and SDPA.
# sweep-attention: benchmarks/sweep_attention_tiles.py $SWEEP_ARGS (e.g. "--head-dims 128 --stages dkdv"):
#   each kernel's tile candidates, the fastest printed as rows for kernels/attention.py's TILES.
# ncu-attention: ncu of trinix's attention kernels and of FlexAttention's at large (one forward +
#   backward each, benchmarks/probe_attention.py --once large), the full report in $OUT/ncu.log.
# bench: the benchmark, written to $OUT/bench in the committed layout (EMBEDDINGS.md, plots,
#   results/latest.json: copy it into benchmarks/ to commit it), with $BENCH_ARGS (e.g. "--methods
#   llama_block bloom_block": the blocks alone; "--methods alibi_attention": attention with ALiBi
#   alone; "--methods rope alibi alibi_attention": all but the blocks). ~4 min without the blocks
#   and attention with ALiBi. Two runs' latest.json make one report on any machine:
#   python3 benchmarks/benchmark_embeddings.py --render-from A/results/latest.json B/results/latest.json
# TESTS_LIMIT, PROPERTIES_LIMIT, BENCH_LIMIT, SANITIZE_LIMIT (seconds) stop a step early, so that later steps
# still run and the logs come back.
set -uo pipefail
OUT=${OUT:-/tmp/trinix-out}
export XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p "$OUT"
steps=("${@:-tests bench}")
# Installs once per machine, so that two runs of this script may share it (one step in the
# background, e.g. a sanitizer beside the tests).
if [[ ! -d /tmp/site ]] && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site .whl/*.whl
fi
[[ -d /tmp/site ]] && export PYTHONPATH=/tmp/site
(cd /tmp && python3 -c "import trinix.kernels" 2>/dev/null) \
  || python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, jax, flax; print('torch', torch.__version__, 'triton', triton.__version__, 'jax', jax.__version__, 'flax', flax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
status=0
property_pids=()
for step in ${steps[*]}; do
  case "$step" in
    tests)
      # -v: each test's outcome is logged as it ends, so a run cut by TESTS_LIMIT still names its
      # failures (pytest's summary comes only at the end); they are printed after the tail.
      timeout "${TESTS_LIMIT:-600}" python3 -m pytest -v -rfEs -p no:benchmark -n "${PYTEST_WORKERS:-8}" --timeout 150 \
        --durations 15 ${TESTS:-tests} >"$OUT/pytest.log" 2>&1
      status=$((status | $?))
      grep -v -E "(PASSED|SKIPPED|XFAIL|XPASS) " "$OUT/pytest.log" | tail -n 40
      grep -E "^\[gw[0-9]+\].* (FAILED|ERROR) " "$OUT/pytest.log" | head -n 60 ;;
    properties)
      for test in $(python3 -m pytest -q -p no:benchmark --collect-only tests/test_properties.py | grep '::' | grep -e "${PROPERTIES_MATCH:-::}"); do
        test_timeout=${PROPERTIES_TEST_TIMEOUT:-360}
        HYPOTHESIS_PROFILE=gpu timeout "${PROPERTIES_LIMIT:-$((test_timeout + 60))}" python3 -m pytest -q \
          -p no:benchmark -p no:cacheprovider -rf --timeout "$test_timeout" --hypothesis-show-statistics \
          -o faulthandler_timeout=$((test_timeout - 30)) "$test" \
          >"$OUT/properties-${test##*::}.log" 2>&1 &
        property_pids+=($!)
      done ;;
    memcheck|racecheck)
      timeout "${SANITIZE_LIMIT:-600}" compute-sanitizer --tool "$step" --error-exitcode 3 --print-limit 20 \
        python3 -m pytest -q -p no:cacheprovider -p no:benchmark -k "triton" \
        ${SANITIZE_TESTS:-tests/test_rope.py tests/test_alibi.py tests/test_edge_cases.py} 2>&1 \
        | tee "$OUT/$step.log" | tail -n 15
      status=$((status | ${PIPESTATUS[0]})) ;;
    probe)
      python3 benchmarks/probe_rope.py ${PROBE_ARGS:---profile} 2>&1 | tee "$OUT/probe.log" | tail -n 80
      status=$((status | ${PIPESTATUS[0]})) ;;
    probe-alibi)
      timeout "${PROBE_LIMIT:-300}" python3 benchmarks/probe_alibi.py ${PROBE_ALIBI_ARGS:-} 2>&1 | tee "$OUT/probe_alibi.log" | tail -n 80
      status=$((status | ${PIPESTATUS[0]})) ;;
    probe-sharding)
      for framework in torch jax; do
        timeout "${PROBE_LIMIT:-300}" python3 benchmarks/probe_sharding.py --framework $framework ${PROBE_SHARDING_ARGS:-} 2>&1 \
          | grep -v Warning | tail -n 30 | tee -a "$OUT/probe_sharding.log"
        status=$((status | ${PIPESTATUS[0]}))
      done ;;
    probe-blocks)
      mkdir -p "$OUT/programs"
      timeout "${PROBE_LIMIT:-300}" python3 benchmarks/probe_blocks.py ${PROBE_BLOCKS_ARGS:-} --out "$OUT/programs" 2>&1 \
        | grep -v Warning | tee "$OUT/probe_blocks.log" | tail -n 30
      status=$((status | ${PIPESTATUS[0]}))
      tar czf "$OUT/blocks-programs.tgz" -C "$OUT/programs" . && rm -rf "$OUT/programs" ;;
    probe-attention)
      timeout "${PROBE_LIMIT:-300}" python3 benchmarks/probe_attention.py ${PROBE_ATTENTION_ARGS:-} 2>&1 \
        | grep -v Warning | tee "$OUT/probe_attention.log" | tail -n 40
      status=$((status | ${PIPESTATUS[0]})) ;;
    sweep-attention)
      timeout "${PROBE_LIMIT:-300}" python3 benchmarks/sweep_attention_tiles.py ${SWEEP_ARGS:-} 2>&1 \
        | tee "$OUT/sweep_attention.log" | grep -v "^    " | tail -n 60
      status=$((status | ${PIPESTATUS[0]})) ;;
    ncu-attention)
      sections=(--section SpeedOfLight --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis
                --section MemoryWorkloadAnalysis --section WarpStateStats --section InstructionStats)
      # Flex's kernels are Inductor templates (triton_tem_*): its second forward and backward, after compiling.
      for of in trinix flex; do
        if [[ $of == flex ]]; then kernels=(--kernel-name regex:triton_tem --launch-skip 2 --launch-count 2)
        else kernels=(--kernel-name regex:_attention --launch-count 4); fi
        timeout "${PROBE_LIMIT:-300}" ncu --clock-control none "${kernels[@]}" "${sections[@]}" \
          python3 benchmarks/probe_attention.py --once large --once-of $of >>"$OUT/ncu.log" 2>&1
        status=$((status | $?))
      done
      grep -E "^  [_a-z].*\(|Duration|Registers Per|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Block Size|Grid Size|Dynamic Shared|Executed Ipc A" "$OUT/ncu.log" | head -n 90 ;;
    bench)
      timeout "${BENCH_LIMIT:-600}" python3 benchmarks/benchmark_embeddings.py ${BENCH_ARGS:-} --output "$OUT/bench" 2>&1 \
        | tee "$OUT/bench.log" | tail -n 60
      status=$((status | ${PIPESTATUS[0]})) ;;
  esac
done
for pid in "${property_pids[@]}"; do
  wait "$pid"
  status=$((status | $?))
done
if ((${#property_pids[@]})); then
  tail -n 3 "$OUT"/properties-*.log
fi
exit $status
