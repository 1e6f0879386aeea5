#!/usr/bin/python3
"""bench/torch_maf.py: MAF sampling (the sequential direction) in PyTorch, on
the same weights as flowc, for bench/maf_bench.sh.

Usage:
  torch_maf.py prepare IN.safetensors OUT.safetensors Z.npy [--seed S] [--rows N]
      Copies flowc init's weights with the last layer of every MADE (zero at
      initialisation, which would make every layer the identity) drawn
      N(0, 0.1^2), so that the decode check below compares a non-trivial map;
      writes N (256) rows of N(0, 1) base draws to Z.npy (the first 8 times
      3, to reach the tails).
  torch_maf.py run --flowc FLOWC --flow FILE --model NAME -w W.safetensors
                   --z Z.npy --x X.npy [--threads T] [--batches 1,4096]
      Builds the model from `flowc check` (maf layers, affine or spline, and
      permute(reverse)), decodes Z.npy in every configuration and refuses
      (exit 1) if any differs from X.npy (flowc decode of the same z) by
      1e-4 or more; then times sampling and prints one JSON line per
      (configuration, batch): config, batch, threads, s_per_call, samples_per_s,
      max_abs_diff.
  torch_maf.py table FLOWC_BENCH.txt TORCH.json...
      The comparison table (flowc bench lines against the JSON lines).

The model is written from flow-language.md, as nflows samples a MAF:
- MADE (section 5): inputs [y] with degrees 1..D; hidden unit k of every
  hidden layer has degree (k mod (D-1)) + 1; a hidden unit sees previous
  units of degree <= its own; outputs j and D + j (s_j, t_j; affine) or the
  3K-1 outputs from i(3K-1) (spline, dimension i) have degree j+1 (i+1) and
  see last-hidden units of degree < their own. Each layer is
  F.linear(h, W * mask, b) (the masked weights are formed once, at load), with
  the activation after all but the last.
- maf sampling: y = 0; D times: h = MADE(y), and then either every column
  is recomputed from h ("full", nflows' MaskedAutoregressiveTransform
  inverse: y = u * exp(s) + t) or only column i ("column": y[:, i] = ...);
  after pass i, columns 0..i are exact. scale tanh: s = tanh(h); exp: s = h;
  sigmoid: s = log(sigmoid(h + 2)). spline: the rational-quadratic spline of
  section 5a, forward (identity outside [-B, B]).
- permute(reverse) = flip of the columns. The layers are applied in the
  order of the flow block (generative order), z -> ... -> x.
Sampling is z = torch.randn(B, D) followed by that decode, under
torch.inference_mode(), float32.

Configurations: eager or torch.jit.script of the same functions, "full" or
"column" passes; threads from --threads (torch.set_num_threads; run it with
OMP_WAIT_POLICY=PASSIVE). Timing: warm-up calls, then the median over 7 runs
of the mean time per call in a run of at least 0.25 s (5 runs, and 2
warm-up calls after the first, when a call takes over 0.1 s).

Exit status 0; 1 mismatch or bad input; 2 usage; 77 torch or numpy missing.
"""
import json
import re
import statistics
import subprocess
import sys
import time
from typing import List

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import Tensor
except Exception as e:  # pragma: no cover - environment dependent
    if len(sys.argv) > 1 and sys.argv[1] == "table":   # needs neither
        Tensor = object
    else:
        print("torch_maf: torch/numpy not available (%s)" % e, file=sys.stderr)
        sys.exit(77)

TOL = 1e-4
ACTS = ["relu", "tanh", "gelu", "silu", "elu", "softplus", "lipswish", "gelu_tanh"]
SCALES = ["tanh", "exp", "sigmoid"]

# --------------------------------------------------------------------------
# safetensors and .npy, by hand

from torch_st import st_read, st_write  # noqa: E402  (bench/torch_st.py)


# --------------------------------------------------------------------------
# the model (TorchScript-compatible functions)


def act_fn(h: Tensor, act: int) -> Tensor:
    if act == 0:
        return torch.relu(h)
    if act == 1:
        return torch.tanh(h)
    if act == 2:
        return F.gelu(h)
    if act == 3:
        return F.silu(h)
    if act == 4:
        return F.elu(h)
    if act == 5:
        return F.softplus(h)
    if act == 6:
        return F.silu(h) / 1.1
    return F.gelu(h, approximate="tanh")


def made(x: Tensor, Ws: List[Tensor], bs: List[Tensor], act: int) -> Tensor:
    h = x
    n = len(Ws)
    for j in range(n):
        h = F.linear(h, Ws[j], bs[j])
        if j < n - 1:
            h = act_fn(h, act)
    return h


def scale_fn(h: Tensor, scale: int) -> Tensor:
    if scale == 0:
        return torch.tanh(h)
    if scale == 1:
        return h
    return -F.softplus(-(h + 2.0))


def knots(w: Tensor, B: float) -> Tensor:
    """w [..., K] -> [..., K+1] from -B to B exactly (section 5a)."""
    K = w.shape[-1]
    m = 1e-3                    # M_MIN (TorchScript takes no float globals)
    W = m + (1.0 - m * K) * torch.softmax(w, dim=-1)
    k = -B + 2.0 * B * torch.cumsum(W, dim=-1)
    lo = torch.full_like(k[..., :1], -B)
    hi = torch.full_like(k[..., :1], B)
    return torch.cat([lo, k[..., :-1], hi], dim=-1)


def rqs_forward(u: Tensor, row: Tensor, K: int, B: float) -> Tensor:
    """u [N, P], row [N, P, 3K-1] -> y [N, P] (section 5a, forward)."""
    w, v, e = row[..., :K], row[..., K:2 * K], row[..., 2 * K:]
    xk = knots(w, B)
    yk = knots(v, B)
    ones = torch.ones_like(u).unsqueeze(-1)
    delta = torch.cat([ones, 1e-3 + F.softplus(e), ones], dim=-1)
    inside = (u >= -B) & (u <= B)
    uc = torch.where(inside, u, torch.zeros_like(u))
    # a point on a knot belongs to the bin on its right; the last bin keeps x_K
    k = (uc.unsqueeze(-1) >= xk[..., 1:K]).sum(-1, keepdim=True)
    x0 = torch.gather(xk, -1, k).squeeze(-1)
    x1 = torch.gather(xk, -1, k + 1).squeeze(-1)
    y0 = torch.gather(yk, -1, k).squeeze(-1)
    y1 = torch.gather(yk, -1, k + 1).squeeze(-1)
    d0 = torch.gather(delta, -1, k).squeeze(-1)
    d1 = torch.gather(delta, -1, k + 1).squeeze(-1)
    wb, hb = x1 - x0, y1 - y0
    s = hb / wb
    xi = (uc - x0) / wb
    den = s + (d1 + d0 - 2.0 * s) * xi * (1.0 - xi)
    y = y0 + hb * (s * xi * xi + d0 * xi * (1.0 - xi)) / den
    return torch.where(inside, y, u)


def maf_sample(u: Tensor, Ws: List[Tensor], bs: List[Tensor], act: int, scale: int,
               K: int, B: float, column: bool) -> Tensor:
    N, D = u.shape[0], u.shape[1]
    y = torch.zeros_like(u)
    for i in range(D):
        h = made(y, Ws, bs, act)
        if K == 0:
            if column:
                s = scale_fn(h[:, i], scale)
                y[:, i] = u[:, i] * torch.exp(s) + h[:, D + i]
            else:
                y = u * torch.exp(scale_fn(h[:, :D], scale)) + h[:, D:]
        else:
            P = 3 * K - 1
            hp = h.reshape(N, D, P)
            if column:
                y[:, i:i + 1] = rqs_forward(u[:, i:i + 1], hp[:, i:i + 1, :], K, B)
            else:
                y = rqs_forward(u, hp, K, B)
    return y


def decode(z: Tensor, kinds: List[int], Ws: List[List[Tensor]], bs: List[List[Tensor]],
           acts: List[int], scales: List[int], bins: List[int], bounds: List[float],
           column: bool) -> Tensor:
    x = z
    m = 0
    for k in range(len(kinds)):
        if kinds[k] == 0:
            x = torch.flip(x, [1])
        else:
            x = maf_sample(x, Ws[m], bs[m], acts[m], scales[m], bins[m], bounds[m], column)
            m += 1
    return x


def sample(n: int, D: int, kinds: List[int], Ws: List[List[Tensor]], bs: List[List[Tensor]],
           acts: List[int], scales: List[int], bins: List[int], bounds: List[float],
           column: bool) -> Tensor:
    z = torch.randn(n, D)
    return decode(z, kinds, Ws, bs, acts, scales, bins, bounds, column)


# --------------------------------------------------------------------------
# MADE masks (section 5) and the model from `flowc check`


def made_masks(D, sizes, out_deg):
    degs = [list(range(1, D + 1))]
    for n in sizes:
        degs.append([1] * n if D == 1 else [(k % (D - 1)) + 1 for k in range(n)])
    degs.append(out_deg)
    masks = []
    for j in range(len(degs) - 1):
        din = torch.tensor(degs[j]).unsqueeze(0)
        dout = torch.tensor(degs[j + 1]).unsqueeze(1)
        last = j == len(degs) - 2
        masks.append(((din < dout) if last else (din <= dout)).float())
    return masks


def parse_check(text, model):
    """(D, [layer dicts]) of model NAME from flowc check's listing."""
    D, layers, cur = None, [], None
    for line in text.splitlines():
        m = re.match(r"model (\w+): dim (\d+), context (\d+)", line)
        if m:
            cur = m.group(1)
            if cur == model:
                D = int(m.group(2))
                if int(m.group(3)):
                    raise SystemExit("torch_maf: models with context are not supported")
            continue
        m = re.match(r"\s+flow\.(\d+)\s+(\w+)(.*)$", line)
        if not m or cur != model:
            continue
        kind, rest = m.group(2), m.group(3)
        if kind == "permute" and rest.strip() == "(reverse)":
            layers.append({"kind": 0})
        elif kind == "maf":
            hid = re.search(r"hidden = \[([\d, ]*)\]", rest)
            act = re.search(r"act = (\w+)", rest)
            L = {"kind": 1, "K": int(m.group(1)),
                 "hidden": [int(v) for v in hid.group(1).replace(",", " ").split()] if hid else [],
                 "act": act.group(1) if act else "relu", "scale": "tanh", "bins": 0, "bound": 0.0}
            sp = re.search(r"spline\(bins = (\d+), bound = ([-+\d.eE]+)\)", rest)
            if sp:
                L["bins"], L["bound"] = int(sp.group(1)), float(sp.group(2))
            else:
                sc = re.search(r"scale = (\w+)", rest)
                if sc:
                    L["scale"] = sc.group(1)
            layers.append(L)
        else:
            raise SystemExit("torch_maf: layer flow.%s %s%s is not supported" % (m.group(1), kind, rest))
    if D is None:
        raise SystemExit("torch_maf: no model %s in the flowc check listing" % model)
    return D, layers


def build(D, layers, weights):
    """The argument lists of decode(), masked weights formed once."""
    kinds, Ws, bs, acts, scales, bins, bounds = [], [], [], [], [], [], []
    for L in layers:
        kinds.append(L["kind"])
        if L["kind"] == 0:
            continue
        K = L["bins"]
        out_deg = ([i + 1 for i in range(D) for _ in range(3 * K - 1)] if K
                   else [j + 1 for j in range(D)] * 2)
        masks = made_masks(D, L["hidden"], out_deg)
        W, b = [], []
        for j, M in enumerate(masks):
            w = weights["flow.%d.net.%d.weight" % (L["K"], j)]
            if tuple(w.shape) != tuple(M.shape):
                raise SystemExit("torch_maf: flow.%d.net.%d.weight is %s, masks say %s"
                                 % (L["K"], j, list(w.shape), list(M.shape)))
            W.append((w * M).contiguous())
            b.append(weights["flow.%d.net.%d.bias" % (L["K"], j)].contiguous())
        Ws.append(W)
        bs.append(b)
        acts.append(ACTS.index(L["act"]))
        scales.append(SCALES.index(L["scale"]))
        bins.append(K)
        bounds.append(L["bound"])
    return kinds, Ws, bs, acts, scales, bins, bounds


# --------------------------------------------------------------------------
# commands


def cmd_prepare(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="torch_maf.py prepare")
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("z")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=256)
    a = ap.parse_args(argv)
    w, meta = st_read(a.src)
    g = torch.Generator().manual_seed(a.seed)
    last = {}
    for name in w:
        m = re.match(r"flow\.(\d+)\.net\.(\d+)\.", name)
        if m:
            last[m.group(1)] = max(last.get(m.group(1), -1), int(m.group(2)))
    for k, j in last.items():
        for p in ("weight", "bias"):
            name = "flow.%s.net.%d.%s" % (k, j, p)
            w[name] = 0.1 * torch.randn(w[name].shape, generator=g)
    st_write(a.dst, w, meta)
    D = next(v.shape[1] for n, v in sorted(w.items()) if n.endswith(".net.0.weight"))
    z = torch.randn(a.rows, D, generator=g)
    z[:8] *= 3.0          # a few rows far out, to reach the tails
    np.save(a.z, z.numpy().astype(np.float32))
    return 0


def timeit(fn, warm, min_time=0.25, runs=7):
    """Median over runs of the mean time per call in a run of >= min_time s
    (runs=5 and fewer warm-up calls when one call takes over 0.1 s)."""
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    if dt > 0.1:
        warm, runs = min(warm, 2), 5
    for _ in range(warm):
        fn()
    reps = max(1, int(min_time / max(dt, 1e-9)))
    per = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        per.append((time.perf_counter() - t0) / reps)
    return statistics.median(per)


def cmd_run(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="torch_maf.py run")
    ap.add_argument("--flowc", required=True)
    ap.add_argument("--flow", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("-w", required=True)
    ap.add_argument("--z", required=True)
    ap.add_argument("--x", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,4096")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    text = subprocess.run([a.flowc, "check", a.flow], check=True, capture_output=True,
                          text=True).stdout
    D, layers = parse_check(text, a.model)
    w, _ = st_read(a.w)
    args = build(D, layers, w)
    z = torch.from_numpy(np.load(a.z).astype(np.float32))
    x_flowc = torch.from_numpy(np.load(a.x).astype(np.float32))

    fns = {"eager": (decode, sample)}
    try:
        fns["jit"] = (torch.jit.script(decode), torch.jit.script(sample))
    except Exception as e:  # report it and go on with eager
        print("torch_maf: torch.jit.script failed: %s" % str(e).strip().splitlines()[0], file=sys.stderr)
    rc = 0
    for mode, (dec, smp) in fns.items():
        for column in (False, True):
            config = "%s, %s" % (mode, "column" if column else "full")
            with torch.inference_mode():
                for _ in range(3):      # jit: the profiling runs first
                    x = dec(z, *args, column)
            diff = float((x - x_flowc).abs().max())
            if not diff < TOL:
                print("torch_maf: %s %s decode differs from flowc's by %.3g" % (a.model, config, diff),
                      file=sys.stderr)
                rc = 1
                continue
            for B in [int(v) for v in a.batches.split(",")]:
                with torch.inference_mode():
                    t = timeit(lambda: smp(B, D, *args, column), warm=6 if mode == "jit" else 3)
                print(json.dumps({"model": a.model, "config": config, "batch": B,
                                  "threads": a.threads, "s_per_call": t,
                                  "samples_per_s": B / t, "max_abs_diff": diff}), flush=True)
    return rc


def cmd_table(argv):
    """argv: the flowc bench lines file, then JSON files of torch_maf run."""
    fl = {}
    for line in open(argv[0]):
        # "<threads> maf sample batch 1: 1.2e+04 samples/s, 83 us per call (compile ...)"
        m = re.match(r"(\d+) (\w+) sample batch (\d+): ([\d.e+-]+) samples/s, ([\d.e+-]+) us", line)
        if m:
            key = (m.group(2), int(m.group(3)))
            sps, us = float(m.group(4)), float(m.group(5))
            if key not in fl or sps > fl[key][0]:
                fl[key] = (sps, us, int(m.group(1)))
    tr = {}
    for path in argv[1:]:
        for line in open(path):
            if not line.strip():
                continue
            j = json.loads(line)
            key = (j["model"], j["batch"])
            if key not in tr or j["samples_per_s"] > tr[key]["samples_per_s"]:
                tr[key] = j
    th = lambda t: "%d thread%s" % (t, "s" if t > 1 else "")
    print("%-7s %6s %13s %11s %13s %11s %7s  %s" % ("model", "batch", "flowc samp/s", "flowc us",
                                                    "torch samp/s", "torch us", "ratio",
                                                    "best configs (flowc | PyTorch)"))
    for key in sorted(fl, key=lambda k: (k[0] != "maf", k[0], k[1])):
        sps, us, t = fl[key]
        j = tr.get(key)
        if j:
            print("%-7s %6d %13.4g %11.4g %13.4g %11.4g %6.1fx  %s | %s, %s" % (
                key[0], key[1], sps, us, j["samples_per_s"], 1e6 * j["s_per_call"],
                sps / j["samples_per_s"], th(t), j["config"], th(j["threads"])))
        else:
            print("%-7s %6d %13.4g %11.4g %13s %11s %7s  %s" % (key[0], key[1], sps, us, "-", "-", "-", th(t)))
    return 0


def main(argv):
    if len(argv) < 2 or argv[1] not in ("prepare", "run", "table"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    return {"prepare": cmd_prepare, "run": cmd_run, "table": cmd_table}[argv[1]](argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
