#!/usr/bin/env bash
# gpu-check: on a machine with an NVIDIA GPU, build the CUDA kernels for sm_90 (override with
# GDR2_CUDA_ARCH), run the GPU tests (ctest -R '^Cuda'), compute-sanitizer memcheck and racecheck on small
# cases, gdr2-verify against the CUDA kernels (with gradients), and the CUDA benchmarks; print a short table
# last. Logs go to $GPU_CHECK_LOGS, else $OUT (if set), else $BUILD/gpu-check.
# With FLA_DIR pointing at a copy of flash-linear-attention (and torch + triton installed), the same run also
# times its GDN-2 kernels at the same shapes (bench/fla_compare.py) and checks its chunk kernel through the
# port protocol (verify/ports/torch_port.py): the comparison of docs/performance.md.
#
#   make gpu-check                                   # from the repository root
#   BUILD=build-gpu GPU_CHECK_CMAKE_ARGS="-DCMAKE_PREFIX_PATH=/opt/deps/usr" scripts/gpu-check.sh
#
# Steps can be skipped: GPU_CHECK_SKIP="tests sanitizer verify bench fla". GPU_CHECK_PROFILE=1 adds ncu kernel times.
# GPU_CHECK_BASE=<another source tree> also builds and times that tree's gdr2-bench in the same run (see below).
# Exit status: 0 when every step passed.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-gpu}
LOGS=${GPU_CHECK_LOGS:-${OUT:-$BUILD/gpu-check}}
ARCH=${GDR2_CUDA_ARCH:-90}
JOBS=${JOBS:-$(nproc)}
SKIP=${GPU_CHECK_SKIP:-}
mkdir -p "$LOGS"
declare -a SUMMARY=()
status=0
step() {  # step NAME LOGFILE COMMAND...: run, record PASS/FAIL with the elapsed time
  local name=$1 log=$2; shift 2
  local start=$SECONDS
  echo "== $name" >&2
  if "$@" >"$LOGS/$log" 2>&1; then
    SUMMARY+=("$(printf '%-34s %-6s %5ss  %s' "$name" PASS $((SECONDS - start)) "$log")")
  else
    SUMMARY+=("$(printf '%-34s %-6s %5ss  %s' "$name" FAIL $((SECONDS - start)) "$log")")
    status=1
    tail -n 40 "$LOGS/$log" >&2
  fi
}
skipped() { [[ " $SKIP " == *" $1 "* ]]; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$LOGS/gpu.txt" 2>&1 || true
echo "GPU: $(head -n1 "$LOGS/gpu.txt")" >&2

# ---- build ----------------------------------------------------------------------------------------------
# shellcheck disable=SC2086
step "configure (sm_$ARCH)" configure.log cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DGDR2_CUDA_RESOURCE_REPORT=ON ${GPU_CHECK_CMAKE_ARGS:-}
TARGETS=(gdr2_cuda gdr2-bench gdr2-verify)
skipped tests || TARGETS+=(test_cuda_forward test_cuda_mma)
# (grep reads all of the help text: with pipefail, grep -q closing the pipe early would fail the test.)
if ! skipped tests && cmake --build "$BUILD" --target help 2>/dev/null | grep -c 'test_cuda_backward' >/dev/null; then
  TARGETS+=(test_cuda_backward)
fi
step "build ${TARGETS[*]}" build.log cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}"
grep -E 'Function properties|registers|spill' "$LOGS/build.log" >"$LOGS/ptxas-resources.txt" 2>/dev/null || true

# ---- GPU tests ----------------------------------------------------------------------------------------------
skipped tests || step "ctest -R '^Cuda'" ctest.log ctest --test-dir "$BUILD" -R '^Cuda' --no-tests=error --output-on-failure -j 4 --timeout 600

# ---- compute-sanitizer on small cases ------------------------------------------------------------------------
FWD="$BUILD/tests/test_cuda_forward"
BWD="$BUILD/tests/test_cuda_backward"
FWD_SMALL=${GPU_CHECK_FWD_FILTER:-'CudaForward.VariableLengthSequences:CudaForward.ZeroInitialStateAndNoFinalState:CudaForward.EmptySequenceCopiesTheState:CudaApi.*'}
BWD_SMALL=${GPU_CHECK_BWD_FILTER:-'*Small*:*Varlen*'}
if ! skipped sanitizer && ! skipped tests && command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    step "sanitizer $tool (forward)" "sanitizer-$tool-forward.log" \
      compute-sanitizer --tool "$tool" --error-exitcode 3 "$FWD" --gtest_filter="$FWD_SMALL"
    if [[ -x "$BWD" ]]; then
      step "sanitizer $tool (backward)" "sanitizer-$tool-backward.log" \
        compute-sanitizer --tool "$tool" --error-exitcode 3 "$BWD" --gtest_filter="$BWD_SMALL"
    fi
    step "sanitizer $tool (tensor-core products)" "sanitizer-$tool-mma.log" \
      compute-sanitizer --tool "$tool" --error-exitcode 3 "$BUILD/tests/test_cuda_mma"
  done
fi

# ---- gdr2-verify against the CUDA kernels ---------------------------------------------------------------------
if ! skipped verify; then
  step "gdr2-verify cuda-* --grad" verify-cuda.log "$BUILD/verify/gdr2-verify" \
    --target cuda-recurrent cuda-chunk-fast cuda-chunk-accurate --grad --cases "${GPU_CHECK_VERIFY_CASES:-100}" \
    --repro-dir "$LOGS/failures" --json "$LOGS/verify-cuda.json"
fi

# ---- benchmarks -----------------------------------------------------------------------------------------------
if ! skipped bench; then
  step "gdr2-bench --filter cuda/" bench.log "$BUILD/bench/gdr2-bench" --filter cuda/ --json "$LOGS/bench.json"
fi

# ---- the same benchmark of another checkout, in the same run (only when GPU_CHECK_BASE names one) ------------------
# GPU_CHECK_BASE=<directory with another gdr2 source tree, e.g. `git archive <commit> | tar -x -C .base`>: its
# gdr2-bench is built and run right after ours (filter GPU_CHECK_BASE_FILTER, default cuda/), so that a change is
# measured against its base on the same GPU in the same session.
if [[ -n "${GPU_CHECK_BASE:-}" ]] && ! skipped bench; then
  # shellcheck disable=SC2086
  step "base: configure + build gdr2-bench" base-build.log bash -c "cmake -S '$GPU_CHECK_BASE' -B '$BUILD-base' \
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES='$ARCH' ${GPU_CHECK_CMAKE_ARGS:-} && \
    cmake --build '$BUILD-base' -j '$JOBS' --target gdr2-bench"
  step "base: gdr2-bench --filter ${GPU_CHECK_BASE_FILTER:-cuda/}" base-bench.log \
    "$BUILD-base/bench/gdr2-bench" --filter "${GPU_CHECK_BASE_FILTER:-cuda/}" --json "$LOGS/base-bench.json"
fi

# ---- where the time goes (only with GPU_CHECK_PROFILE=1): ncu's duration of each kernel of the first chunk
# forward + backward at B=4, T=4096, H=16, K=V=128 (bf16), and of the decode step for 256 sequences with each block
# kernel (cuda/decode runs 52 launches per configuration and size: default, stream, tiled 8 warps, tiled 4 warps, each
# x {1, 256} sequences) -----------------------------------------------------------------------------------------------
if [[ "${GPU_CHECK_PROFILE:-0}" == 1 ]] && command -v ncu >/dev/null; then
  step "ncu kernel times (fwd+bwd, decode)" ncu.log bash -c "ncu -k regex:_kernel --launch-count 8 --metrics gpu__time_duration.sum \
      '$BUILD/bench/gdr2-bench' --filter cuda/chunk_forward_backward --repeats 1 && \
    for skip in 164 268 372; do echo \"decode of 256 sequences, launch \$skip (164: stream, 268: tiled 8 warps, 372: tiled 4 warps)\"; \
      ncu -k regex:recurrent --launch-skip \$skip --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
        '$BUILD/bench/gdr2-bench' --filter cuda/decode --repeats 1; done"
fi

# ---- flash-linear-attention, measured in the same run (only when FLA_DIR is given) --------------------------------
if [[ -n "${FLA_DIR:-}" ]] && ! skipped fla; then
  step "fla GDN-2 timings" fla-bench.log env PYTHONPATH="$FLA_DIR:${PYTHONPATH:-}" \
    python3 "$ROOT/bench/fla_compare.py" --json "$LOGS/fla-bench.json"
  # fla's chunk_gdn2 takes HV == H only (--no-gva) and bf16 inputs.
  step "gdr2-verify fla chunk_gdn2 (port)" verify-fla.log timeout "${GPU_CHECK_FLA_TIMEOUT:-300}" env PYTHONPATH="$FLA_DIR:${PYTHONPATH:-}" \
    "$BUILD/verify/gdr2-verify" --port-cmd "python3 $ROOT/verify/ports/torch_port.py --kernel fla.ops.gdn2:chunk_gdn2 --no-gva" \
    --contract bf16 --grad --property forward --property grad --cases "${GPU_CHECK_FLA_CASES:-10}" --repro-dir "$LOGS/failures-fla" --json "$LOGS/verify-fla.json"
fi

# ---- summary ---------------------------------------------------------------------------------------------------
{
  echo
  echo "gpu-check on $(head -n1 "$LOGS/gpu.txt") (sm_$ARCH), logs in $LOGS"
  grep -hE '^\[  (PASSED|FAILED|SKIPPED) \]|tests passed|tests failed' "$LOGS/ctest.log" 2>/dev/null | tail -n 3
  for line in "${SUMMARY[@]}"; do echo "  $line"; done
  for log in verify-cuda.log verify-fla.log; do
    [[ -f "$LOGS/$log" ]] && { echo; echo "$log:"; grep -vE '^(gdr2-verify:|CUDA targets)' "$LOGS/$log" | head -n 40; }
  done
  if [[ -f "$LOGS/bench.log" ]]; then
    echo
    grep -E '^(benchmark|cuda/)' "$LOGS/bench.log"
  fi
  [[ -f "$LOGS/base-bench.log" ]] && { echo; echo "base ($GPU_CHECK_BASE):"; grep -E '^(benchmark|cuda/)' "$LOGS/base-bench.log"; }
  [[ -f "$LOGS/fla-bench.log" ]] && { echo; cat "$LOGS/fla-bench.log"; }
  [[ -f "$LOGS/ncu.log" ]] && { echo; grep -E '^  [a-zA-Z_].*\(|gpu__time_duration|dram__' "$LOGS/ncu.log" | head -n 60; }
} | tee "$LOGS/summary.txt"
exit $status
