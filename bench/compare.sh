#!/bin/sh
# flowc against a plain PyTorch formulation of the same models with the same
# weights, in one run: log_prob at batch 1, 256 and 65536, sampling at 65536,
# one training step at batch 256, and compile time; a table of times (us per
# call), flowc's speedup and the targets of issue #6.
#
# Models: bench/models/realnvp2.flow (D = 2, 8 affine couplings, mlp 64x64
# relu, scale tanh, each followed by permute(reverse)) and
# bench/models/realnvp16.flow (D = 16, mlp 256x256, same structure). Weights:
# `flowc init --seed 1`, then N(0, 0.05^2) noise added to every tensor
# (init zeroes each network's last layer, which would make every coupling
# the identity). The PyTorch model (bench/torch_compare.py) reads the same
# file and must reproduce `flowc decode` and `flowc logprob` on the same data
# (max abs diff < 1e-3) before anything is timed; a mismatch stops the run.
#
# flowc: `flowc bench` (three warm-up calls, then at least 1 s and 5 calls;
# rows drawn from the model; --op train: Adam lr 1e-3 on batches cycling
# through 16 x B model-drawn rows) at the default thread count (all cores)
# and at --threads 1; the faster one is shown. Its compile time is the
# lowering + optimisation + LLVM compilation of the kernels the bench uses
# (decode and log_prob; with --op train also the gradient kernels).
# PyTorch: eager, TorchScript (torch.jit.script) and, for batches <= 256,
# frozen TorchScript (freeze + optimize_for_inference), at 1 and at NPROC
# threads (torch.set_num_threads, OMP_NUM_THREADS and OPENBLAS_NUM_THREADS
# all set to it, OMP_WAIT_POLICY=PASSIVE); batches over 4096 in row blocks
# of 4096 (with WHOLE=1 also whole, eager); training eager and scripted, Adam with and
# without foreach; inference under torch.inference_mode(). The fastest
# configuration is shown. PyTorch "compile" is the time of torch.jit.script of the log_prob
# module. Median of repeated calls after warm-up (bench/torch_compare.py).
#
# The pi0 head: bench/pi0_bench.sh with SAMPLE_ONLY=1 (its own check that
# PyTorch decodes as flowc does, then batch-1 sampling: the built .so and
# flowc bench against eager and TorchScript at 1 and 2 threads; its compile
# time is flowc bench's, of the sample kernel).
#
# Peak: OpenBLAS sgemm GFLOP/s (bench/sgemm_peak.c, built here) at 1 and
# NPROC threads for 1024^3 and the models' hidden-layer shapes at batch
# 65536; the large-batch rows show the fraction of the best of these figures
# (the machine's sgemm peak) that the models' matrix products reach (2 * B * in * out FLOPs per linear
# layer, one direction).
#
# Environment: FLOWC (default BUILD/flowc, built Release with Ninja),
# BUILD (default build; if it is configured but not Release, build-bench is
# used), PYTHON (default /usr/bin/python3 with torch), REPS (3: timed calls
# of each large-batch configuration in PyTorch), WHOLE (0; 1: PyTorch also
# runs batch 65536 as one call, eager: a few minutes more), CC (default cc).
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PY=${PYTHON:-/usr/bin/python3}
REPS=${REPS:-3}
WHOLE=${WHOLE:-0}
WHOLE_OPT=
[ "$WHOLE" = 1 ] && WHOLE_OPT=--whole-batch
CC=${CC:-cc}
NPROC=$(nproc)
START=$(date +%s)

# ---- build -------------------------------------------------------------
configure() {
  mkdir -p "$1"
  cmake -S . -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=Release >"$1/compare-configure.log" 2>&1 ||
    { cat "$1/compare-configure.log" >&2; exit 1; }
}
if [ -z "${FLOWC:-}" ]; then
  [ -f "$BUILD/CMakeCache.txt" ] || configure "$BUILD"
  if ! grep -q '^CMAKE_BUILD_TYPE:STRING=Release$' "$BUILD/CMakeCache.txt"; then
    echo "compare: $BUILD is not a Release build; building flowc in build-bench instead" >&2
    BUILD=build-bench
    [ -f "$BUILD/CMakeCache.txt" ] || configure "$BUILD"
  fi
  if grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$BUILD/CMakeCache.txt"; then
    ninja -C "$BUILD" flowc >"$BUILD/compare-build.log" 2>&1 ||
      { cat "$BUILD/compare-build.log" >&2; exit 1; }
  else
    cmake --build "$BUILD" -j"$NPROC" --target flowc >"$BUILD/compare-build.log" 2>&1 ||
      { cat "$BUILD/compare-build.log" >&2; exit 1; }
  fi
  F=$BUILD/flowc
else
  F=$FLOWC
fi
[ -x "$F" ] || { echo "compare: no flowc at $F" >&2; exit 1; }
"$PY" -c 'import torch, numpy' 2>/dev/null ||
  { echo "compare: $PY cannot import torch and numpy" >&2; exit 1; }

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
# a private copy, so that a rebuild of the build folder during the run
# (a shared checkout) neither breaks nor changes what is measured
cp "$F" "$T/flowc"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "compare: flowc $F (copied), $NPROC cores, load average at start $LOAD0" >&2
F=$T/flowc

# ---- sgemm peak ----------------------------------------------------------
"$CC" -O2 bench/sgemm_peak.c -o "$T/sgemm_peak" -lopenblas
for t in 1 "$NPROC"; do
  "$T/sgemm_peak" "$t" 5 1024 1024 1024 65536 256 256 65536 64 64 >> "$T/sgemm.txt"
done

# ---- per model: weights, verification, flowc, PyTorch --------------------
: > "$T/flowc.txt"
: > "$T/torch.jsonl"
: > "$T/script.jsonl"
for m in realnvp2:2 realnvp16:16; do
  name=${m%:*}
  D=${m#*:}
  flow=bench/models/$name.flow
  W=$T/$name.safetensors
  "$F" init "$flow" --seed 1 -o "$T/$name.w0.safetensors"
  "$PY" bench/torch_compare.py perturb "$T/$name.w0.safetensors" "$W" --sigma 0.05 --seed 0

  # same weights, same data: PyTorch must reproduce flowc
  "$PY" bench/torch_compare.py randn "$T/$name.z.npy" --rows 2048 --dim "$D" --seed 0
  "$F" decode "$flow" -w "$W" --data "$T/$name.z.npy" -o "$T/$name.xz.npy"
  "$F" logprob "$flow" -w "$W" --data "$T/$name.xz.npy" -o "$T/$name.lpx.npy"
  "$F" logprob "$flow" -w "$W" --data "$T/$name.z.npy" -o "$T/$name.lpz.npy"
  if ! "$PY" bench/torch_compare.py verify -w "$W" --name "$name" --z "$T/$name.z.npy" \
      --xz "$T/$name.xz.npy" --lp-xz "$T/$name.lpx.npy" --lp-z "$T/$name.lpz.npy" --tol 1e-3; then
    echo "compare: FAILED: PyTorch and flowc disagree on $name; no timing" >&2
    exit 1
  fi

  # flowc bench: default threads (all cores) and --threads 1
  echo "compare: flowc bench $name" >&2
  for t in all 1; do
    topt=
    [ "$t" = all ] || topt="--threads $t"
    for spec in logprob:1 logprob:256 logprob:65536 sample:65536 train:256; do
      op=${spec%:*}
      B=${spec#*:}
      # shellcheck disable=SC2086
      if out=$("$F" bench "$flow" -w "$W" --batch "$B" --op "$op" $topt 2>"$T/err.txt"); then
        echo "threads=$t $out" >> "$T/flowc.txt"
      else
        echo "compare: flowc bench $name --op $op --batch $B ($t threads) failed: $(cat "$T/err.txt")" >&2
        echo "threads=$t FAILED $name $op batch $B" >> "$T/flowc.txt"
      fi
    done
  done

  # PyTorch at 1 and NPROC threads
  echo "compare: PyTorch $name" >&2
  # shellcheck disable=SC2086
  for t in $(printf '%s\n' 1 "$NPROC" | sort -un); do
    OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t MKL_NUM_THREADS=$t OMP_WAIT_POLICY=PASSIVE \
      "$PY" bench/torch_compare.py time -w "$W" --name "$name" --threads "$t" --reps "$REPS" \
      $WHOLE_OPT >> "$T/torch.jsonl"
  done
  OMP_NUM_THREADS=1 "$PY" bench/torch_compare.py script-time -w "$W" --name "$name" >> "$T/script.jsonl"
done

# ---- the pi0 head: bench/pi0_bench.sh's check and sampling latency ---------
PI0=none
if [ -f examples/pi0_head.flow ]; then
  echo "compare: pi0 head (bench/pi0_bench.sh, sampling only)" >&2
  if FLOWC=$F PYTHON=$PY SAMPLE_ONLY=1 sh bench/pi0_bench.sh > "$T/pi0.txt" 2>&1; then
    PI0=$T/pi0.txt
  else
    tail -n 5 "$T/pi0.txt" >&2
    echo "compare: bench/pi0_bench.sh failed; its row is left out" >&2
  fi
fi

# ---- table ---------------------------------------------------------------
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
"$PY" bench/torch_compare.py report --dir "$T" --nproc "$NPROC" --pi0 "$PI0" \
  --load "$LOAD0" "$LOAD1" --seconds $(($(date +%s) - START))
