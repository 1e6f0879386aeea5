#!/bin/sh
# The pi0 action head (model pi0_head of examples/pi0_head.flow: one cnf,
# velocity mlp 894 -> 1024 -> 1024 -> 1024 -> 350 GELU, sincos(32) time
# embedding, 10 Euler steps; dim [50, 7], context 512) in flowc against
# PyTorch (bench/torch_pi0.py), on the same weights, in one run.
#
# Weights: `flowc init --seed 1` with the last linear layer (zero at
# initialisation: the identity flow) drawn N(0, 0.1^2) by torch_pi0.py
# prepare, so that the check below is not trivial (the flow then moves z
# by about 0.1 a value).
#
# Check first: 64 fixed base draws z (N(0, 1), 4 of them times 3) with the
# contexts of 64 `flowc toy reach` rows, decoded z -> x by `flowc decode`, by
# the built shared object (bench/pi0_so_bench.c check) and by PyTorch (eager
# and TorchScript); a difference of torch_pi0.py's TOL (1e-4) or more stops
# the script (exit 1).
#
# Then:
# 1. Sampling latency, one action chunk (batch 1, 10 Euler steps), median
#    time of one call in steady state:
#    - flowc: `flowc build -w W -o libpi0_head.so`, pi0_head_decode timed by
#      bench/pi0_so_bench.c (the .so runs on all cores, 2 here); and
#      `flowc bench --op sample --batch 1` (mean time per call) at 1 and 2
#      threads;
#    - PyTorch: the same loop (z <- z + h v(z, t_n, c), v = mlp([z, c,
#      temb(t_n)])), eager and torch.jit.script, torch.inference_mode, at 1
#      and 2 threads (separate processes, OMP_WAIT_POLICY=PASSIVE).
# 2. Flow-matching training throughput, samples/s over TSTEPS steps of batch
#    TBATCH on NTRAIN reach rows (Adam, lr 1e-3, --time-dist TIME_DIST):
#    `flowc train --objective fm` (its summary line: the training loop's wall
#    time, compilation excluded; one validation pass, on the 64 check rows,
#    after the last step), at 1 and 2 threads, and with BENCH_OP_TRAIN=1
#    also `flowc bench --op train --objective fm` (if it fails or takes over
#    300 s, a note: in a trial while cnf was being written it ran for over
#    4 minutes, perhaps not yet honouring --objective fm); PyTorch eager (torch_pi0.py train, own
#    clock of its loop) at 1 and 2 threads.
# The table gives both and the ratio against the best PyTorch configuration.
#
# Environment: FLOWC (default build/flowc, built if the build folder
# exists), PYTHON (default /usr/bin/python3, with torch and numpy), MODEL
# (pi0_head), CC (cc), TSTEPS (30), TBATCH (256), NTRAIN (4096), TIME_DIST
# (beta(1.5,1)), BENCH_OP_TRAIN (1), SAMPLE_ONLY (0; 1: the check and the
# sampling latency only, as bench/compare.sh runs it). A few minutes on two
# cores.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
MODEL=${MODEL:-pi0_head}
CC=${CC:-cc}
TSTEPS=${TSTEPS:-30}
TBATCH=${TBATCH:-256}
NTRAIN=${NTRAIN:-4096}
TIME_DIST=${TIME_DIST:-beta(1.5,1)}
BENCH_OP_TRAIN=${BENCH_OP_TRAIN:-1}
SAMPLE_ONLY=${SAMPLE_ONLY:-0}
M=examples/pi0_head.flow
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
if [ -z "${FLOWC:-}" ]; then
  F=build/flowc
  if [ ! -f build/CMakeCache.txt ] && [ ! -x "$F" ]; then
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
  fi
  if [ -f build/CMakeCache.txt ] && ! cmake --build build --target flowc > "$T/build.log" 2>&1; then
    cat "$T/build.log" >&2
    echo "pi0_bench: building flowc failed" >&2
    exit 1
  fi
  if ! grep -q '^CMAKE_BUILD_TYPE:STRING=Release$' build/CMakeCache.txt 2>/dev/null; then
    echo "pi0_bench: note: build/ is not a Release build" >&2
  fi
else
  F=$FLOWC
fi
[ -x "$F" ] || { echo "pi0_bench: no flowc at $F" >&2; exit 1; }
cp "$F" "$T/flowc"        # a rebuild of build/ during the run cannot disturb it
F=$T/flowc

have_torch=1
if ! "$PY" -c 'import torch, numpy' 2>/dev/null; then
  echo "pi0_bench: $PY cannot import torch and numpy: PyTorch part skipped" >&2
  have_torch=0
fi

# ---- weights, inputs, and flowc's decode of them ----
"$F" init $M --model "$MODEL" --seed 1 -o "$T/w0.safetensors"
"$F" toy reach -n 64 --seed 3 -o "$T/x_reach.npy" --context-out "$T/c.npy"
if [ "$have_torch" = 1 ]; then
  "$PY" bench/torch_pi0.py prepare "$T/w.safetensors" "$T/z.npy" --init "$T/w0.safetensors" --seed 1
else
  echo "pi0_bench: without PyTorch the weights stay flowc init's (last layer zero)" >&2
  cp "$T/w0.safetensors" "$T/w.safetensors"
  "$F" sample $M --model "$MODEL" -w "$T/w.safetensors" -n 64 --seed 1 --context "$T/c.npy" \
    -o "$T/z.npy"         # any 64 rows of the right width will do as z
fi
"$F" decode $M --model "$MODEL" -w "$T/w.safetensors" --data "$T/z.npy" --context "$T/c.npy" \
  -o "$T/x_flowc.npy"

# ---- the shared object and its harness ----
"$F" build $M --model "$MODEL" -w "$T/w.safetensors" -o "$T/lib$MODEL.so"
if ! "$CC" -O2 -DPI0_MODEL="$MODEL" bench/pi0_so_bench.c -I"$T" -L"$T" -l"$MODEL" \
    -Wl,-rpath,"$T" -lm -o "$T/pi0_so_bench" 2> "$T/cc.log"; then
  cat "$T/cc.log" >&2
  echo "pi0_bench: compiling bench/pi0_so_bench.c against lib$MODEL.so failed" >&2
  exit 1
fi
"$T/pi0_so_bench" check "$T/z.npy" "$T/c.npy" "$T/x_so.npy"

# ---- check, then PyTorch latency ----
: > "$T/flowc.txt"
if [ "$have_torch" = 1 ]; then
  for t in 1 2; do
    if ! OMP_WAIT_POLICY=PASSIVE "$PY" bench/torch_pi0.py run --model "$MODEL" -w "$T/w.safetensors" \
        --z "$T/z.npy" --ctx "$T/c.npy" --x "$T/x_flowc.npy" --x "$T/x_so.npy" --threads "$t" \
        --batch 1 > "$T/torch_run_$t.json"; then
      echo "pi0_bench: PyTorch and flowc disagree on the decode of z, or torch_pi0.py failed" >&2
      exit 1
    fi
  done
  echo "check: flowc decode, the .so and PyTorch agree on 64 decoded chunks:"
  "$PY" -c 'import json, sys
for p in sys.argv[1:]:
    for l in open(p):
        j = json.loads(l)
        print("  PyTorch %-5s %d thread%s: max |x_torch - x_flowc| %.3g" % (
            j["config"], j["threads"], "s" if j["threads"] > 1 else "", j["max_abs_diff"]))' \
    "$T"/torch_run_*.json
fi

# ---- flowc latency ----
"$T/pi0_so_bench" time --op decode --batch 1 > "$T/so.txt"
sed -n "s/^so decode batch 1: \([0-9.]*\) us per call (min [0-9.]*, \([0-9]*\) calls).*/so $(nproc) \1 \2/p" \
  "$T/so.txt" >> "$T/flowc.txt"
for t in 1 2; do
  "$F" bench $M --model "$MODEL" -w "$T/w.safetensors" --batch 1 --op sample --threads "$t" \
    > "$T/bench$t.txt"
  sed -n "s/.* batch 1: \([0-9.e+-]*\) samples\/s, \([0-9.e+-]*\) us per call.*/bench $t \1 \2/p" \
    "$T/bench$t.txt" >> "$T/flowc.txt"
  sed -n "s/.*(compile \([0-9.]*\) ms).*/compile $t \1/p" "$T/bench$t.txt" >> "$T/flowc.txt"
done

# ---- training throughput ----
[ "$SAMPLE_ONLY" = 1 ] && TRAIN_THREADS= || TRAIN_THREADS="1 2"
[ "$SAMPLE_ONLY" = 1 ] || "$F" toy reach -n "$NTRAIN" --seed 1 -o "$T/train.npy" --context-out "$T/train_ctx.npy"
for t in $TRAIN_THREADS; do
  if "$F" train $M --model "$MODEL" --objective fm --time-dist "$TIME_DIST" --data "$T/train.npy" \
      --context "$T/train_ctx.npy" --valid "$T/x_reach.npy" --valid-context "$T/c.npy" \
      --steps "$TSTEPS" --batch "$TBATCH" --lr 1e-3 --seed 0 --eval-every "$TSTEPS" \
      --threads "$t" -o "$T/trained$t.safetensors" > "$T/train$t.log" 2>&1; then
    tr '\r' '\n' < "$T/train$t.log" |
      sed -n "s/^trained .*(\([0-9.]*\) samples\/s).*/train $t \1/p" >> "$T/flowc.txt"
  else
    tr '\r' '\n' < "$T/train$t.log" | tail -n 3 >&2
    echo "pi0_bench: flowc train --objective fm failed" >&2
    exit 1
  fi
  if [ "$BENCH_OP_TRAIN" = 1 ]; then
    if timeout 300 "$F" bench $M --model "$MODEL" --batch "$TBATCH" --op train --objective fm \
        --time-dist "$TIME_DIST" --lr 1e-3 --threads "$t" > "$T/bench_train$t.txt" 2>&1; then
      sed -n "s/.*: \([0-9.e+]*\) samples\/s.*/benchtrain $t \1/p" "$T/bench_train$t.txt" >> "$T/flowc.txt"
    else
      echo "pi0_bench: note: flowc bench --op train --objective fm failed or took over 300 s" \
        "($(head -n 1 "$T/bench_train$t.txt"))" >&2
    fi
  fi
  if [ "$have_torch" = 1 ]; then
    OMP_WAIT_POLICY=PASSIVE "$PY" bench/torch_pi0.py train --data "$T/train.npy" \
      --context "$T/train_ctx.npy" -w "$T/w0.safetensors" --steps "$TSTEPS" --batch "$TBATCH" \
      --lr 1e-3 --time-dist "$TIME_DIST" --threads "$t" --seed 0 > "$T/torch_train_$t.json"
  fi
done

echo
echo "raw flowc figures (kind threads value...):"
sed 's/^/  /' "$T/flowc.txt"
echo
if [ "$have_torch" = 1 ]; then
  set -- "$T"/torch_run_*.json
  for j in "$T"/torch_train_*.json; do [ -f "$j" ] && set -- "$@" "$j"; done
  "$PY" bench/torch_pi0.py table "$T/flowc.txt" "$@"
else
  "$PY" bench/torch_pi0.py table "$T/flowc.txt"
fi
echo "(the .so uses every core: $(nproc) here)"
