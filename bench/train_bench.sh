#!/bin/sh
# Training throughput and quality: `flowc train` against a plain PyTorch
# formulation of the same model (bench/torch_train.py), in one run.
#
# Model examples/moons.flow (RealNVP: 4 x [affine coupling, mlp 64x64 relu,
# scale tanh; reverse], actnorm); two-moons data from `flowc toy` (NTRAIN
# training rows, seed 1; NVALID validation rows, seed 2); Adam, lr LR, batch
# BATCH, STEPS steps, validation once after the last step in both. flowc at
# 1 and 2 threads; PyTorch at 1 and 2 threads (OMP_WAIT_POLICY=PASSIVE),
# the better of the two being the reference. samples/s is steps * batch /
# the wall time of the training loop (compilation and setup excluded: flowc
# train's summary line; torch_train.py's own clock). Validation NLL of the
# flowc-trained weights is computed by `flowc logprob` on the validation
# file; PyTorch's by its own model. Also printed: `flowc bench --op train`
# (steady-state steps on model-drawn data, no validation).
#
# Environment: FLOWC (default BUILD/flowc, built Release if missing), BUILD
# (default build), PYTHON (default /usr/bin/python3, with torch 1.13+),
# STEPS (2000), BATCH (256), LR (1e-3), NTRAIN (20000), NVALID (5000),
# REPEAT (1: each configuration runs REPEAT times and its best speed is
# shown; training is deterministic, so the NLL is the same every time).
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PY=${PYTHON:-/usr/bin/python3}
STEPS=${STEPS:-2000}
BATCH=${BATCH:-256}
LR=${LR:-1e-3}
NTRAIN=${NTRAIN:-20000}
NVALID=${NVALID:-5000}
REPEAT=${REPEAT:-1}
MODEL=examples/moons.flow

if [ -z "${FLOWC:-}" ]; then
  F=$BUILD/flowc
  if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
  fi
  if ! grep -q '^CMAKE_BUILD_TYPE:STRING=Release$' "$BUILD/CMakeCache.txt"; then
    echo "train_bench: warning: $BUILD is not a Release build" >&2
  fi
  cmake --build "$BUILD" -j"$(nproc)" --target flowc >/dev/null
else
  F=$FLOWC
fi
[ -x "$F" ] || { echo "train_bench: no flowc at $F" >&2; exit 1; }

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
"$F" toy moons -n "$NTRAIN" --seed 1 -o "$T/train.npy"
"$F" toy moons -n "$NVALID" --seed 2 -o "$T/valid.npy"

# mean -log p of a log-prob .npy
mean_nll() {
  "$PY" -c 'import sys, numpy as np; print("%.4f" % -np.load(sys.argv[1]).astype(np.float64).mean())' "$1"
}

echo "model $MODEL, $NTRAIN train / $NVALID valid rows of two moons, batch $BATCH, Adam lr $LR, $STEPS steps, best of $REPEAT"
echo

# flowc train at 1 and 2 threads: samples/s from its summary line
# "trained N steps in T s (X samples/s); ..."
# (the runs of each configuration alternate, so that a burst of load on a
# shared machine does not hit all the runs of one of them)
have_torch=1
r=1
while [ "$r" -le "$REPEAT" ]; do
  for t in 1 2; do
    "$F" train "$MODEL" --data "$T/train.npy" --valid "$T/valid.npy" --steps "$STEPS" \
      --batch "$BATCH" --lr "$LR" --seed 0 --eval-every "$STEPS" --threads "$t" \
      -o "$T/flowc$t.safetensors" 2>"$T/flowc$t.log" || { cat "$T/flowc$t.log" >&2; exit 1; }
    sed -n 's/^trained .*(\([0-9.]*\) samples\/s).*/\1/p' "$T/flowc$t.log" >> "$T/flowc$t.sps"
    "$F" bench "$MODEL" --batch "$BATCH" --op train --lr "$LR" --threads "$t" |
      sed -n 's/.*: \([0-9.e+]*\) samples\/s.*/\1/p' >> "$T/bench$t.sps"
  done
  # PyTorch at 1 and 2 threads
  for t in 1 2; do
    [ "$have_torch" = 1 ] || break
    if ! OMP_WAIT_POLICY=PASSIVE "$PY" bench/torch_train.py --train "$T/train.npy" \
        --valid "$T/valid.npy" --steps "$STEPS" --batch "$BATCH" --lr "$LR" --threads "$t" \
        --seed 0 >> "$T/torch$t.json" 2>"$T/torch$t.log"; then
      cat "$T/torch$t.log" >&2
      have_torch=0
    fi
  done
  r=$((r + 1))
done
for t in 1 2; do
  "$F" logprob "$MODEL" -w "$T/flowc$t.safetensors" --data "$T/valid.npy" -o "$T/lp$t.npy"
  mean_nll "$T/lp$t.npy" > "$T/flowc$t.nll"
done

"$PY" - "$T" "$have_torch" <<'EOF'
import json, sys
T, have_torch = sys.argv[1], sys.argv[2] == "1"
rd = lambda name: open("%s/%s" % (T, name)).read().split()
best_of = lambda name: max(float(v) for v in rd(name))
rows = []
for t in (1, 2):
    rows.append(("flowc train, %d thread%s" % (t, "s" if t > 1 else ""),
                 best_of("flowc%d.sps" % t), float(rd("flowc%d.nll" % t)[0])))
ref = None
if have_torch:
    tj = {t: [json.loads(l) for l in open("%s/torch%d.json" % (T, t))] for t in (1, 2)}
    sps = {t: max(j["samples_per_s"] for j in tj[t]) for t in (1, 2)}
    for t in (1, 2):
        rows.append(("PyTorch, %d thread%s" % (t, "s" if t > 1 else ""), sps[t], tj[t][-1]["valid_nll"]))
    best = max((1, 2), key=lambda t: sps[t])
    ref = sps[best]
for t in (1, 2):
    rows.append(("flowc bench --op train, %d thread%s" % (t, "s" if t > 1 else ""),
                 best_of("bench%d.sps" % t), None))
print("%-34s %12s %18s %10s" % ("", "samples/s", "vs PyTorch best", "valid NLL"))
for name, sps, nll in rows:
    ratio = "%.2fx" % (sps / ref) if ref else "-"
    print("%-34s %12.0f %18s %10s" % (name, sps, ratio, "%.4f" % nll if nll is not None else "-"))
if ref:
    print("\nPyTorch best: %d thread%s (%.0f samples/s)" % (best, "s" if best > 1 else "", ref))
else:
    print("\nPyTorch not available: no reference")
EOF
