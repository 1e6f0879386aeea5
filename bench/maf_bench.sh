#!/bin/sh
# MAF sampling (the sequential direction: D passes of the MADE per layer)
# in flowc against PyTorch (bench/torch_maf.py), on the same weights, in one
# run.
#
# Models maf (4 x [maf, MADE 128x128 relu, affine tanh; reverse]) and
# nsf_ar (3 x [maf, MADE 64x64 relu, spline 8 bins; reverse]) of
# examples/maf.flow, dim 8. Weights: `flowc init --seed 1` with the last
# layer of every MADE (zero at initialisation: the identity) drawn
# N(0, 0.1^2) by torch_maf.py prepare, so that the check below is not
# trivial.
#
# Check first: `flowc decode` of 256 fixed base draws against PyTorch's
# decode of the same z, in every PyTorch configuration; a difference of 1e-4
# or more stops the script (exit 1).
#
# Then samples/s at batch 1 and 4096:
# - flowc: `flowc bench --op sample` (draws z by Philox and decodes; three
#   warm-up calls, then calls for at least one second) at 1 and 2 threads;
#   the better is shown.
# - PyTorch: torch.randn + the nflows-style decode, eager and
#   torch.jit.script, each with "full" passes (nflows: every column
#   recomputed per pass) and "column" passes (only column i set), at 1 and
#   2 threads (separate processes, OMP_WAIT_POLICY=PASSIVE); median of
#   several runs after warm-up; the best configuration is shown.
# The table gives samples/s, microseconds per call, and flowc / PyTorch.
#
# Environment: FLOWC (default build/flowc, built with ninja if the build
# folder exists), PYTHON (default /usr/bin/python3, with torch and numpy),
# MODELS ("maf nsf_ar"), BATCHES ("1 4096"). A few minutes on two cores.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
MODELS=${MODELS:-maf nsf_ar}
BATCHES=${BATCHES:-1 4096}
M=examples/maf.flow
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
if [ -z "${FLOWC:-}" ]; then
  F=build/flowc
  if [ ! -f build/build.ninja ] && [ ! -x "$F" ]; then
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  fi
  if [ -f build/build.ninja ] && ! ninja -C build flowc > "$T/ninja.log" 2>&1; then
    cat "$T/ninja.log" >&2
    echo "maf_bench: building flowc failed" >&2
    exit 1
  fi
  if ! grep -q '^CMAKE_BUILD_TYPE:STRING=Release$' build/CMakeCache.txt 2>/dev/null; then
    echo "maf_bench: note: build/ is not a Release build" >&2
  fi
else
  F=$FLOWC
fi
[ -x "$F" ] || { echo "maf_bench: no flowc at $F" >&2; exit 1; }
cp "$F" "$T/flowc"        # a rebuild of build/ during the run cannot disturb it
F=$T/flowc

have_torch=1
if ! "$PY" -c 'import torch, numpy' 2>/dev/null; then
  echo "maf_bench: $PY cannot import torch and numpy: PyTorch part skipped" >&2
  have_torch=0
fi

: > "$T/flowc.txt"
batches=$(echo "$BATCHES" | tr ' ' ,)
for m in $MODELS; do
  "$F" init $M --model "$m" --seed 1 -o "$T/${m}0.safetensors"
  if [ "$have_torch" = 1 ]; then
    "$PY" bench/torch_maf.py prepare "$T/${m}0.safetensors" "$T/$m.safetensors" "$T/z.npy"
    "$F" decode $M --model "$m" -w "$T/$m.safetensors" --data "$T/z.npy" -o "$T/${m}_x.npy"
  else
    cp "$T/${m}0.safetensors" "$T/$m.safetensors"
  fi
  for t in 1 2; do
    for b in $BATCHES; do
      "$F" bench $M --model "$m" -w "$T/$m.safetensors" --batch "$b" --op sample --threads "$t" |
        sed "s/^/$t /" >> "$T/flowc.txt"
    done
    if [ "$have_torch" = 1 ]; then
      if ! OMP_WAIT_POLICY=PASSIVE "$PY" bench/torch_maf.py run --flowc "$F" --flow $M --model "$m" \
          -w "$T/$m.safetensors" --z "$T/z.npy" --x "$T/${m}_x.npy" --threads "$t" \
          --batches "$batches" > "$T/torch_${m}_$t.json"; then
        echo "maf_bench: $m: PyTorch and flowc disagree, or torch_maf.py failed" >&2
        exit 1
      fi
    fi
  done
done

echo "flowc bench lines (threads, then flowc's own line):"
cat "$T/flowc.txt"
if [ "$have_torch" = 1 ]; then
  echo
  echo "PyTorch runs (config, batch, threads: samples/s, us per call; max |x_torch - x_flowc| on 256 decoded rows):"
  for f in "$T"/torch_*.json; do
    "$PY" -c 'import json, sys
for l in open(sys.argv[1]):
    j = json.loads(l)
    print("%-7s %-13s batch %5d, %d thread%s: %10.4g samples/s, %10.4g us per call; diff %.2g" % (
        j["model"], j["config"], j["batch"], j["threads"], "s" if j["threads"] > 1 else " ",
        j["samples_per_s"], 1e6 * j["s_per_call"], j["max_abs_diff"]))' "$f"
  done
  echo
  "$PY" bench/torch_maf.py table "$T/flowc.txt" "$T"/torch_*.json
else
  echo
  "$PY" bench/torch_maf.py table "$T/flowc.txt" 2>/dev/null || true
fi
