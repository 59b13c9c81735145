#!/usr/bin/env bash
# The one-call device check: on one GPU, in under 9 minutes,
#   1. installs this checkout into the machine's own JAX+torch environment without touching its CUDA packages
#      (`pip install --no-deps --no-build-isolation -e .`; wheels in $WHEELS, if any, for missing pure-Python deps),
#   2. runs the tests marked `gpu` (the Pallas kernels and cuDNN's LSTM, impl="cudnn", against the scan on the
#      device, float32 and bfloat16),
#   3. runs `rnn-jax bench` at the five anchor configurations (rnn_jax/kernels/anchors.py) for the three cells:
#      impl scan, pallas and cudnn (LSTM) in float32 with torch cuDNN fp32 and jax.experimental.rnn's cuDNN LSTM
#      (--peers jax_cudnn) in the same run, scan and pallas in bfloat16, and torch cuDNN fp16 against the scan
#      in float16 at the half-precision rows (tiny_step, latency),
# and writes JSON lines (bench.jsonl) plus markdown tables (device_check.md) to the output folder.
#
# Usage:   experiments/device_check.sh [OUTPUT_DIR]      (default: $OUT if set, else device_check_out)
#          DRY_RUN=1 experiments/device_check.sh DIR     the same steps on CPU at tiny sizes, interpret-mode kernels,
#                                                        no install, no cuDNN rows (CI runs this:
#                                                        tests/test_kernels.py)
# Each step has its own time limit; a step that fails or runs out of time is reported and the next one runs.
# The script exits 0 only when every step passed; otherwise it lists the failed steps and exits 1.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out="${1:-${OUT:-device_check_out}}"
mkdir -p "$out"
md="$out/device_check.md"
jsonl="$out/bench.jsonl"
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ "${DRY_RUN:-0}" == "1" ]]; then
  export JAX_PLATFORMS=cpu
  configs=(--config '2,4,3,5')
  half_configs=(--config '2,4,3,5')
  cells=vanilla
  f32_impls=scan,pallas
  f32_peers=torch  # cuDNN (impl cudnn, peer jax_cudnn) needs a GPU: no dry-run rows
  timing=(--warmup 1 --reps 1 --rounds 1)
  limits=(240 240 240 240)
else
  # JAX and torch share the GPU in one bench process: JAX must not take 75% of its memory up front.
  # tests/conftest.py keeps the tests on the CPU unless RNN_JAX_TEST_PLATFORM (or JAX_PLATFORMS) says otherwise.
  export JAX_PLATFORMS=cuda,cpu RNN_JAX_TEST_PLATFORM=cuda,cpu XLA_PYTHON_CLIENT_PREALLOCATE=false
  mapfile -t configs < <("$python" -c "from rnn_jax.kernels.anchors import ANCHORS
for a in ANCHORS: print('--config'); print(f'{a.B},{a.T},{a.I},{a.H}')")
  mapfile -t half_configs < <("$python" -c "from rnn_jax.kernels.anchors import ANCHORS
for a in ANCHORS:
    if a.name in ('tiny_step', 'latency'): print('--config'); print(f'{a.B},{a.T},{a.I},{a.H}')")
  cells=vanilla,lstm,gru
  f32_impls=scan,pallas,cudnn  # cudnn runs the LSTM only; the bench skips it for the other cells
  f32_peers=torch,jax_cudnn
  timing=(--warmup 2 --reps 5 --rounds 3)
  limits=(120 170 110 60)  # tests, float32, bfloat16, float16: with install and versions (75 s) under 9 minutes
fi

failed=()

step() {  # step TITLE SECONDS COMMAND...: run with a time limit, append its output to the markdown
  local title="$1" seconds="$2"
  shift 2
  # shellcheck disable=SC2016  # the "$ " is a literal prompt before the command
  printf '## %s\n```\n$ %s\n```\n' "$title" "$*" >>"$md"
  timeout "$seconds" "$@" 2>&1 | tee -a "$out/log.txt" | grep -v '^  run \|compiling$' >>"$md"
  local rc=${PIPESTATUS[0]}
  if [[ $rc -ne 0 ]]; then
    echo "**step failed (exit $rc$([[ $rc -eq 124 ]] && echo ', out of time'))**" >>"$md"
    failed+=("$title (exit $rc)")
  fi
  echo >>"$md"
  return 0  # the next step runs all the same; the summary at the end says what failed
}

{
  echo "# rnn_jax device check"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- gpu: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo none)"
  echo "- dry run: ${DRY_RUN:-0}"
  echo
} >"$md"

if [[ "${DRY_RUN:-0}" != "1" ]]; then
  wheels="${WHEELS:-.whl}"
  if compgen -G "$wheels/*.whl" >/dev/null; then
    step "install carried wheels" 30 "$python" -m pip install -q --no-index --no-deps "$wheels"/*.whl
  fi
  step "install rnn_jax (no dependencies: the machine's jax, torch and CUDA stay)" 30 \
    "$python" -m pip install -q --no-deps --no-build-isolation -e .
  step "versions" 15 "$python" -c "import jax, torch; print('jax', jax.__version__, jax.devices()); \
print('torch', torch.__version__, torch.cuda.is_available(), torch.backends.cudnn.version())"
fi

step "tests marked gpu (Pallas kernels and cuDNN's LSTM against the scan on the device)" "${limits[0]}" \
  "$python" -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels.py tests/test_cudnn.py

bench=("$python" -m rnn_jax.cli bench --cells "$cells" --modes fwd_bwd "${timing[@]}" --json "$jsonl")
step "bench float32: $f32_impls, peers $f32_peers" "${limits[1]}" \
  "${bench[@]}" "${configs[@]}" --dtype float32 --impls "$f32_impls" --peers "$f32_peers"
step "bench bfloat16: scan, pallas" "${limits[2]}" \
  "${bench[@]}" "${configs[@]}" --dtype bfloat16 --impls scan,pallas
step "bench float16 (half-precision rows): scan, torch (cuDNN fp16)" "${limits[3]}" \
  "${bench[@]}" "${half_configs[@]}" --dtype float16 --impls scan --peers torch

{
  echo "## summary"
  if [[ ${#failed[@]} -eq 0 ]]; then
    echo "every step passed"
  else
    echo "${#failed[@]} step(s) failed:"
    printf -- '- %s\n' "${failed[@]}"
  fi
} | tee -a "$md"
echo "device check written to $out (device_check.md, bench.jsonl, log.txt)"
[[ ${#failed[@]} -eq 0 ]]
