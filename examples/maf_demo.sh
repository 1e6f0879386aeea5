#!/bin/sh
# Autoregressive flows on tabular data: make the 8-D tabular8 toy set
# (nonlinear dependencies, bimodal, skewed and ring-shaped parts; see
# runtime/rt_toy.c), train the maf (affine MADE) and nsf_ar (spline MADE)
# models of examples/maf.flow on it, and the model gauss of the same file
# (linear_lu + actnorm: a full-covariance Gaussian) as the baseline. Prints,
# for each flow, the validation NLL (mean -log p, nats, by `flowc logprob`)
# of its untrained weights (flowc init: the identity map, so N(0, I)), of its
# trained weights, and of the trained Gaussian; then draws samples from the
# trained maf (the sequential direction).
#
# Environment: FLOWC (default build/flowc, built if missing), STEPS (1500),
# NTRAIN (20000), NVALID (5000), OUT (build/maf_demo). About a minute on two
# cores.
set -eu
cd "$(dirname "$0")/.."
STEPS=${STEPS:-1500}
NTRAIN=${NTRAIN:-20000}
NVALID=${NVALID:-5000}
OUT=${OUT:-build/maf_demo}
M=examples/maf.flow
mkdir -p "$OUT"
if [ -z "${FLOWC:-}" ]; then
  F=build/flowc
  if [ ! -f build/CMakeCache.txt ]; then
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
  fi
  if ! cmake --build build --target flowc > "$OUT/build.log" 2>&1; then
    cat "$OUT/build.log" >&2
    echo "maf_demo: building flowc failed" >&2
    exit 1
  fi
else
  F=$FLOWC
fi
[ -x "$F" ] || { echo "maf_demo: no flowc at $F" >&2; exit 1; }

# mean -log p of a float32 .npy of log-densities (header length at bytes 8-9)
mean_nll() {
  hl=$(od -An -v -t u1 -j 8 -N 2 "$1" | awk '{ print $1 + 256 * $2 + 10 }')
  od -An -v -t f4 -j "$hl" "$1" |
    awk '{ for (i = 1; i <= NF; i++) { s -= $i; n++ } } END { printf "%.4f", s / n }'
}

# NLL of model $1 with weights $2 on the validation rows
nll() {
  "$F" logprob $M --model "$1" -w "$2" --data "$OUT/valid.npy" -o "$OUT/lp.npy"
  mean_nll "$OUT/lp.npy"
}

train() {   # model lr
  echo "== flowc train $1 ($STEPS steps, batch 256, lr $2, cosine)"
  "$F" train $M --model "$1" --data "$OUT/train.npy" --valid "$OUT/valid.npy" --steps "$STEPS" \
    --batch 256 --lr "$2" --schedule cosine --seed 1 -o "$OUT/$1.safetensors" 2>&1 | tail -n 1
}

"$F" toy tabular8 -n "$NTRAIN" --seed 1 -o "$OUT/train.npy"
"$F" toy tabular8 -n "$NVALID" --seed 2 -o "$OUT/valid.npy"
echo "tabular8: $NTRAIN training rows, $NVALID validation rows of 8 values"

train gauss 1e-2
train maf 1e-3
train nsf_ar 1e-3
G=$(nll gauss "$OUT/gauss.safetensors")

echo
printf '%-8s %16s %14s %16s\n' model "untrained NLL" "trained NLL" "Gaussian NLL"
for m in maf nsf_ar; do
  "$F" init $M --model $m --seed 1 -o "$OUT/${m}0.safetensors"
  printf '%-8s %16s %14s %16s\n' $m "$(nll $m "$OUT/${m}0.safetensors")" \
    "$(nll $m "$OUT/$m.safetensors")" "$G"
done
echo "(validation NLL in nats, mean -log p over $NVALID rows; lower is better)"

"$F" sample $M --model maf -w "$OUT/maf.safetensors" -n 2000 --seed 7 -o "$OUT/maf_samples.npy"
echo "samples of the trained maf: $OUT/maf_samples.npy (2000 x 8); weights in $OUT/"
