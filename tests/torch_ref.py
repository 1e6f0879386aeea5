#!/usr/bin/python3
"""tests/torch_ref.py: an independent PyTorch (float64) check of flowc.

Usage:
  torch_ref.py FLOWC_EXE MODEL.flow WORKDIR [--model NAME] [--seed S] [--n N]
  torch_ref.py --selftest            (no flowc: the reference checks itself)

The layer mathematics of flow-language.md (sections 2-6, 9; maf and iaf as
docs/choices.md "Autoregressive layers" extends them; residual layers with
the exact log-det that evaluation uses, docs/choices.md "Residual layers";
cnf layers with the fixed-step solvers euler / heun / rk4 and the exact
trace, section 7 and docs/choices.md "Continuous flows")
is written here again, from the spec, in torch float64; nothing is taken
from flowc but the layer list (`flowc check`) and the tensor names and
shapes (`flowc init`). The weights are then replaced by random values so
that no layer is near the identity (residual weights large enough that the
spectral normalisation acts), written as safetensors by hand (F32/I64,
F64/I32, F16 and BF16 copies; with residual layers also a copy without the
`sn_u` vectors), and flowc's logprob, encode, decode and sample are
compared with the reference: max |a-b|/max(1,|b|) <= 1e-4 (1e-3 for
sample's own log_prob against the density of the x it returned). The
reference's residual inverse runs its fixed point to float64 convergence;
flowc's stops at the layer's tol, well inside 1e-4 for the contractions
tested. Log-densities may in addition differ by their float32 error budget
(see fp32_budget): only rows where a steep spline bin amplifies float32
rounding ever need it, and the report says how many did.

cnf: the reference runs the layer's own solver (same tableau, grid and
stage times), so flowc's few-step map is compared with the same map in
float64 to the same 1e-4, not with the continuous flow; sample's log_prob,
log N(u) - (decode log-det at its draw u), is checked at the u that Newton
finds on the reference's decode map (a few-step encode inverts decode only
up to the solver error). The reference checks its inverses and log-dets on
the flow refined to a fine rk4 grid, its forward-mode trace against
autograd's full Jacobian, and that a deliberate error (another solver, a
wrong time embedding, all stages at t_n, the log-det's sign) moves its
results by more than 10 times the tolerance.

Exit status: 0 all checks agree; 1 a mismatch or a failure of flowc;
2 usage; 77 torch (or numpy) is not available, so the caller can skip.
"""
import json
import math
import os
import re
import struct
import subprocess
import sys

try:
    import numpy as np
    import torch
except Exception as e:  # pragma: no cover - environment dependent
    print("torch_ref: torch/numpy not available (%s): skipping" % e)
    sys.exit(77)

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)    # small tensors; the tests run several at once
F64 = torch.float64
TOL = 1e-4          # flowc (float32) against the float64 reference
TOL_SAMPLE = 1e-3   # sample's own log_prob against the reference density
M_MIN = 1e-3        # spline minimum width/height/derivative (section 5a)
FP_TOL = 1e-12      # residual: the reference's fixed point runs until no
FP_MAX = 5000       # coordinate changes by more than FP_TOL * max(1, |y|), in at most FP_MAX steps
CNF_WS = 1.0        # cnf: the velocity net's last layer, N(0, CNF_WS^2 / fan_in)
CNF_FINE = 1024     # cnf: rk4 steps of the reference's self-checks (close to the continuous
                    # flow: h w = 1.5 for sincos' shortest period, 4e-3; errors of
                    # 1e-7 measured, so the self-checks allow 1e-5 (a sign or direction
                    # error in the reference gives 1e-2 and more)
CNF_FINE_SCALAR = 128   # the same with `time = scalar` (smooth in t)
RES_ACTS = ("lipswish", "relu", "elu", "tanh", "softplus")   # 1-Lipschitz

# --------------------------------------------------------------------------
# safetensors, by hand


def to_half(a, dt):
    """float32 values rounded to F16 or BF16 (nearest even), as float32."""
    a = np.asarray(a, dtype=np.float32)
    if dt == "F16":
        return a.astype(np.float16).astype(np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)


_ST_DT = {"F32": np.float32, "F64": np.float64, "F16": np.float16,
          "I64": np.int64, "I32": np.int32}


def st_read(path):
    with open(path, "rb") as f:
        buf = f.read()
    (hlen,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + hlen].decode("utf-8"))
    base = 8 + hlen
    out, meta = {}, header.pop("__metadata__", None)
    for name, t in header.items():
        a, b = t["data_offsets"]
        raw = buf[base + a: base + b]
        if t["dtype"] == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(_ST_DT[t["dtype"]]).newbyteorder("<"))
        out[name] = (t["dtype"], arr.reshape(t["shape"]).copy())
    return out, meta


def st_write(path, tensors, metadata=None):
    """tensors: name -> (dtype string, numpy array)."""
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        dt, arr = tensors[name]
        if dt == "BF16":    # the upper half of the (already rounded) float32
            raw = (to_half(arr, "BF16").view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            raw = np.ascontiguousarray(arr, dtype=np.dtype(_ST_DT[dt]).newbyteorder("<")).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# --------------------------------------------------------------------------
# the mathematics of the spec


def softplus(x):
    return torch.clamp(x, min=0) + torch.log1p(torch.exp(-torch.abs(x)))


def sigmoid(x):
    return torch.where(x >= 0, 1 / (1 + torch.exp(-x)), torch.exp(x) / (1 + torch.exp(x)))


def activation(name, x):
    if name == "relu":
        return torch.clamp(x, min=0)
    if name == "gelu":
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2.0)))
    if name == "gelu_tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if name == "silu":
        return x * sigmoid(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "elu":
        return torch.where(x > 0, x, torch.expm1(torch.clamp(x, max=0)))
    if name == "softplus":
        return softplus(x)
    if name == "lipswish":
        return x * sigmoid(x) / 1.1
    raise ValueError("unknown activation " + name)


def activation_deriv(name, x):
    """d activation / dx, elementwise (for the cnf's forward-mode trace)."""
    if name == "relu":
        return (x > 0).to(x.dtype)
    if name == "gelu":
        return 0.5 * (1 + torch.erf(x / math.sqrt(2.0))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    if name == "gelu_tanh":
        k = math.sqrt(2.0 / math.pi)
        th = torch.tanh(k * (x + 0.044715 * x ** 3))
        return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * k * (1 + 3 * 0.044715 * x * x)
    if name in ("silu", "lipswish"):
        s = sigmoid(x)
        return s * (1 + x * (1 - s)) / (1.1 if name == "lipswish" else 1.0)
    if name == "tanh":
        return 1 - torch.tanh(x) ** 2
    if name == "elu":
        return torch.where(x > 0, torch.ones_like(x), torch.exp(torch.clamp(x, max=0)))
    if name == "softplus":
        return sigmoid(x)
    raise ValueError("unknown activation " + name)


def mlp(inp, layers, act, masks=None):
    """layers: list of (W [out, in], b [out]); act after all but the last.
    masks: optional list of 0/1 matrices shaped like the W (MADE)."""
    h = inp
    for j, (W, b) in enumerate(layers):
        if masks is not None:
            W = W * masks[j]
        h = h @ W.T + b if W.shape[1] > 0 else b.expand(h.shape[0], -1).clone()
        if j < len(layers) - 1:
            h = activation(act, h)
    return h


def scale_fn(name, h):
    if name == "tanh":
        return torch.tanh(h)
    if name == "exp":
        return h
    if name == "sigmoid":   # log(sigmoid(h + 2)), computed stably
        return -softplus(-(h + 2))
    raise ValueError("unknown scale " + name)


def made_degrees(D, C, sizes, out_deg):
    """Degrees of section 5: inputs [u, c], hidden layers of the given sizes,
    outputs with the given degrees."""
    degs = [list(range(1, D + 1)) + [0] * C]
    for n in sizes:
        if C:
            degs.append([k % D for k in range(n)])
        elif D == 1:
            degs.append([1] * n)
        else:
            degs.append([(k % (D - 1)) + 1 for k in range(n)])
    degs.append(list(out_deg))
    return degs


def made_masks(D, C, sizes, out_deg):
    """One 0/1 matrix [out, in] per linear layer: hidden units see previous
    units of degree <= their own, outputs units of degree < their own."""
    degs = made_degrees(D, C, sizes, out_deg)
    masks = []
    for j in range(len(degs) - 1):
        din = torch.tensor(degs[j], dtype=F64)
        dout = torch.tensor(degs[j + 1], dtype=F64)
        if j == len(degs) - 2:
            M = (din.unsqueeze(0) < dout.unsqueeze(1))
        else:
            M = (din.unsqueeze(0) <= dout.unsqueeze(1))
        masks.append(M.to(F64))
    return masks


def ar_out_degrees(D, opts):
    """maf/iaf output degrees (docs/choices.md): affine, outputs j and D + j
    (s_j, t_j) have degree j + 1; spline, dim i's 3K-1 outputs from i(3K-1)
    have degree i + 1."""
    if opts.get("transform") == "spline":
        K = int(opts.get("bins", 8))
        return [i + 1 for i in range(D) for _ in range(3 * K - 1)]
    return [j + 1 for j in range(D)] * 2


def rqs_knots(w, B):
    """w [..., K] -> knots [..., K+1] from -B to B exactly (section 5a)."""
    K = w.shape[-1]
    W = M_MIN + (1 - M_MIN * K) * torch.softmax(w, dim=-1)
    cum = torch.cumsum(W, dim=-1)
    knots = -B + 2 * B * cum
    knots = torch.cat([torch.full_like(knots[..., :1], -B), knots], dim=-1)
    knots[..., -1] = B
    return knots


def rqs(u, row, K, B, inverse):
    """u [N, P], row [N, P, 3K-1]; returns (out, log|d out / d u|)."""
    w, v, e = row[..., :K], row[..., K:2 * K], row[..., 2 * K:]
    xk = rqs_knots(w, B)
    yk = rqs_knots(v, B)
    ones = torch.ones_like(u).unsqueeze(-1)
    delta = torch.cat([ones, M_MIN + softplus(e), ones], dim=-1)   # [N, P, K+1]
    inside = (u >= -B) & (u <= B)
    uc = torch.where(inside, u, torch.zeros_like(u))
    knots = yk if inverse else xk
    # a point on a knot belongs to the bin on its right; the last bin keeps x_K
    k = (uc.unsqueeze(-1) >= knots[..., 1:K]).sum(-1, keepdim=True)
    g = lambda t: torch.gather(t, -1, k).squeeze(-1)
    g1 = lambda t: torch.gather(t, -1, k + 1).squeeze(-1)
    x0, x1, y0, y1 = g(xk), g1(xk), g(yk), g1(yk)
    d0, d1 = g(delta), g1(delta)
    wb, hb = x1 - x0, y1 - y0
    s = hb / wb
    if not inverse:
        xi = (uc - x0) / wb
        den = s + (d1 + d0 - 2 * s) * xi * (1 - xi)
        out = y0 + hb * (s * xi ** 2 + d0 * xi * (1 - xi)) / den
    else:
        dy = uc - y0
        a = hb * (s - d0) + dy * (d1 + d0 - 2 * s)
        b = hb * d0 - dy * (d1 + d0 - 2 * s)
        c = -s * dy
        disc = torch.clamp(b * b - 4 * a * c, min=0)
        xi = (2 * c) / (-b - torch.sqrt(disc))
        out = x0 + xi * wb
        den = s + (d1 + d0 - 2 * s) * xi * (1 - xi)
    deriv = s ** 2 * (d1 * xi ** 2 + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2) / den ** 2
    ld = torch.log(deriv)
    if inverse:
        ld = -ld
    out = torch.where(inside, out, u)
    ld = torch.where(inside, ld, torch.zeros_like(ld))
    return out, ld


# explicit Butcher tableaux (A strictly lower, b, c) of the fixed-step solvers
CNF_TABLEAU = {
    "euler": ([[]], [1.0], [0.0]),
    "heun": ([[], [1.0]], [0.5, 0.5], [0.0, 1.0]),
    "rk4": ([[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
            [1 / 6, 1 / 3, 1 / 3, 1 / 6], [0.0, 0.5, 0.5, 1.0]),
}


def cnf_temb_row(kind, K, t):
    if kind == "scalar":
        return [t]
    n = K // 2
    w = [2 * math.pi / (4e-3 * (4 / 4e-3) ** (k / (n - 1))) for k in range(n)]
    return [math.sin(wk * t) for wk in w] + [math.cos(wk * t) for wk in w]


class Layer:
    def __init__(self, kind, opts):
        self.kind, self.opts = kind, opts
        self.net = None       # [(W, b)]
        self.masks = None     # MADE masks (maf, iaf), made on first use
        self.p = {}
        self.rnet = None      # residual: the spectrally normalised net
        self.sigmas = None    # residual: sigma(W) of each stored weight
        self.fp_steps = 0     # residual: most steps a sample needed to reach tol
        self.variant = None   # cnf: a deliberate error (cnf_sensitivity), else None

    # forward: generative direction u -> y, returns (y, log|det J_f|)
    def forward(self, u, c, D):
        return self._apply(u, c, D, False)

    def inverse(self, y, c, D):
        return self._apply(y, c, D, True)

    def _cond(self, u, c, D):
        d = D // 2
        inp = u[:, :d]
        if c is not None:
            inp = torch.cat([inp, c], dim=1)
        return mlp(inp, self.net, self.opts.get("act", "relu"))

    def _made(self, v, c, D):
        """The MADE network on [v, c], masked as section 5 says."""
        C = 0 if c is None else c.shape[1]
        if self.masks is None:
            sizes = [W.shape[0] for W, _ in self.net[:-1]]
            self.masks = made_masks(D, C, sizes, ar_out_degrees(D, self.opts))
        inp = v if c is None else torch.cat([v, c], dim=1)
        return mlp(inp, self.net, self.opts.get("act", "relu"), self.masks)

    def _ar_step(self, v, h, D, inv):
        """The elementwise transform of every dim of v with the parameters h
        (computed from the conditioning values); returns (out, log|d out/d v|)."""
        N = v.shape[0]
        if self.opts.get("transform") == "spline":
            K, B = int(self.opts.get("bins", 8)), float(self.opts.get("bound", 3))
            out, ld = rqs(v, h.reshape(N, D, 3 * K - 1), K, B, inv)
            return out, ld.sum(1)
        s = scale_fn(self.opts.get("scale", "tanh"), h[:, :D])
        t = h[:, D:2 * D]
        if inv:
            return (v - t) * torch.exp(-s), -s.sum(1)
        return v * torch.exp(s) + t, s.sum(1)

    def _autoregressive(self, v, c, D, inv):
        """maf: y_i = f(u_i; net(y)_i); iaf: y_i = f(u_i; net(u)_i). The
        parallel direction is one pass; the sequential one is solved by D
        sweeps (after sweep i dims 0..i are exact, the masks making dim i
        depend only on dims < i)."""
        parallel = (self.kind == "maf") == inv
        if parallel:
            return self._ar_step(v, self._made(v, c, D), D, inv)
        out = torch.zeros_like(v)
        for _ in range(D):
            out, ld = self._ar_step(v, self._made(out, c, D), D, inv)
        return out, ld

    # ---- residual (section 6): u = y + g(y), g(y) = net([y, c]) ----

    def lipschitz(self):
        return float(self.opts.get("lipschitz", 0.97))

    def res_net(self):
        """Every weight W (the last too) replaced by W / max(1, sigma(W)/c),
        sigma the largest singular value."""
        if self.rnet is None:
            c = self.lipschitz()
            if not (0 < c < 1 and self.opts.get("act", "relu") in RES_ACTS):
                raise ValueError("residual: lipschitz %g or act %s outside section 6 / docs/choices.md"
                                 % (c, self.opts.get("act", "relu")))
            self.sigmas = [float(torch.linalg.matrix_norm(W, ord=2)) for W, _ in self.net]
            self.rnet = [(W / max(1.0, s / c), b) for (W, b), s in zip(self.net, self.sigmas)]
        return self.rnet

    def res_g(self, y, c):
        inp = y if c is None else torch.cat([y, c], dim=1)
        return mlp(inp, self.res_net(), self.opts.get("act", "relu"))

    def res_g_jac(self, y, c):
        """g(y) and its Jacobian J [N, D, D] (J[n, i, j] = d g_i / d y_j of
        sample n), by one backward pass per output (the samples do not
        mix). The result keeps its graph only when y or c carries one (the
        log-det must then be differentiable, as fp32_budget needs)."""
        graph = torch.is_grad_enabled() and (y.requires_grad or (c is not None and c.requires_grad))
        with torch.enable_grad():
            yv = y if (graph and y.requires_grad) else y.detach().requires_grad_(True)
            g = self.res_g(yv, c if graph or c is None else c.detach())
            rows = [torch.autograd.grad(g[:, i].sum(), yv, create_graph=graph, retain_graph=True)[0]
                    for i in range(y.shape[1])]
            J = torch.stack(rows, dim=1)
        if not graph:
            g, J = g.detach(), J.detach()
        return g, J

    def res_logdet(self, J):
        """log det(I + J_g): g is a contraction, so the determinant is > 0."""
        sign, ld = torch.linalg.slogdet(torch.eye(J.shape[-1], dtype=J.dtype) + J)
        if not bool(torch.all(sign > 0)):
            raise ValueError("residual: det(I + J_g) <= 0: g is not a contraction")
        return ld

    def _residual(self, v, c, D, inv):
        if inv:     # density direction y -> u = y + g(y)
            g, J = self.res_g_jac(v, c)
            return v + g, self.res_logdet(J)
        # generative direction: y <- u - g(y) from y = u, to convergence in
        # float64; also counts the steps each sample needs to move by less
        # than the layer's tol (flowc's criterion, for the report)
        tol = float(self.opts.get("tol", 1e-6))
        y = v.clone()
        steps = torch.full((v.shape[0],), -1, dtype=torch.int64)
        for n in range(1, FP_MAX + 1):
            y_new = v - self.res_g(y, c)
            ch = (y_new - y).abs().amax(dim=1)
            y = y_new
            steps = torch.where((steps < 0) & (ch < tol), torch.full_like(steps, n), steps)
            if float(ch.max()) < FP_TOL * max(1.0, float(y.detach().abs().max())):
                break
        else:
            raise ValueError("residual: the fixed point did not converge in %d steps (change %.3g)"
                             % (FP_MAX, float(ch.max())))
        self.fp_steps = max(self.fp_steps, int(steps.max()))
        _, J = self.res_g_jac(y, c)
        return y, -self.res_logdet(J)

    # ---- cnf (section 7): dz/dt = v(z, t) = net([z, c, temb(t)]) ----

    def cnf_temb(self, t, N):
        """temb(t) as N equal rows: scalar [t]; sincos(K) [sin(w_k t)..,
        cos(w_k t)..], period_k = 4e-3 (4 / 4e-3)^(k / (n - 1)), n = K / 2."""
        kind, K = self.opts["time"]
        if self.variant == "temb":      # a wrong embedding (sensitivity check)
            if kind == "scalar":
                t = 1 - t
            else:
                n = K // 2
                row = cnf_temb_row(kind, K, t)
                return torch.tensor(row[n:] + row[:n], dtype=F64).expand(N, K)
        return torch.tensor(cnf_temb_row(kind, K, t), dtype=F64).expand(N, K)

    def cnf_v(self, z, c, t):
        parts = [z] + ([] if c is None else [c]) + [self.cnf_temb(t, z.shape[0])]
        return mlp(torch.cat(parts, dim=1), self.net, self.opts.get("act", "relu"))

    def cnf_vtr(self, z, c, t):
        """v(z, t) and the exact tr(dv/dz) of every sample: the D tangents
        d/dz_i carried through the net in forward mode with the derivatives
        of the activations (cnf_trace_check tests it against autograd's
        full Jacobian). Plain torch operations: differentiable where z or c
        carries a graph."""
        N, D = z.shape
        parts = [z] + ([] if c is None else [c]) + [self.cnf_temb(t, N)]
        h = torch.cat(parts, dim=1)
        act = self.opts.get("act", "relu")
        T = None    # T[n, i, :] = d (current layer) / d z_i of sample n
        for j, (W, b) in enumerate(self.net):
            h = h @ W.T + b
            if j == 0:
                T = W[:, :D].T.unsqueeze(0)
            else:   # one plain matmul (a batched one is slow on small slices)
                T = (T.reshape(-1, T.shape[2]) @ W.T).reshape(T.shape[0], D, -1)
            if j < len(self.net) - 1:
                T = T * activation_deriv(act, h).unsqueeze(1)
                h = activation(act, h)
        return h, torch.diagonal(T.expand(N, D, D), dim1=1, dim2=2).sum(-1)

    def _cnf(self, v, c, D, inv):
        """The layer's fixed-step solver (Butcher tableau) on the grid t_n =
        n/N, h = 1/N from t = 0 (generative direction); from t = 1 back to
        0 with h = -1/N (density direction), t_n = 1 - n/N, stages at t_n +
        c_i h. The log-det is integrated jointly: ld += h sum_i b_i tr_i,
        so with h < 0 it is log|det dz/dx| directly."""
        name, N = self.opts["solver"]
        if self.variant == "solver":
            name = {"euler": "heun", "heun": "euler", "rk4": "heun"}[name]
        A, b, cs = CNF_TABLEAU[name]
        if self.variant == "stage":
            cs = [0.0] * len(cs)
        h = -1.0 / N if inv else 1.0 / N
        z, ld = v, torch.zeros(v.shape[0], dtype=v.dtype)
        for n in range(N):
            t = 1.0 - n / N if inv else n / N
            ks, trs = [], []
            for i in range(len(b)):
                zi = z
                for j in range(i):
                    if A[i][j]:
                        zi = zi + (h * A[i][j]) * ks[j]
                k, tr = self.cnf_vtr(zi, c, t + cs[i] * h)
                ks.append(k)
                trs.append(tr)
            z = z + h * sum(bi * k for bi, k in zip(b, ks))
            ld = ld + h * sum(bi * tr for bi, tr in zip(b, trs))
        if self.variant == "ldsign":
            ld = -ld
        return z, ld

    def _apply(self, u, c, D, inv):
        N, d = u.shape[0], D // 2
        zero = torch.zeros(N, dtype=u.dtype)
        k = self.kind
        if k in ("maf", "iaf"):
            return self._autoregressive(u, c, D, inv)
        if k == "residual":
            return self._residual(u, c, D, inv)
        if k == "cnf":
            return self._cnf(u, c, D, inv)
        if k in ("affine_coupling", "additive_coupling", "spline_coupling"):
            h = self._cond(u, c, D)
            a, b = u[:, :d], u[:, d:]
            if k == "affine_coupling":
                s = scale_fn(self.opts.get("scale", "tanh"), h[:, :D - d])
                t = h[:, D - d:]
                nb = (b - t) * torch.exp(-s) if inv else b * torch.exp(s) + t
                ld = s.sum(1)
                return torch.cat([a, nb], 1), (-ld if inv else ld)
            if k == "additive_coupling":
                nb = b - h if inv else b + h
                return torch.cat([a, nb], 1), zero
            K, B = int(self.opts.get("bins", 8)), float(self.opts.get("bound", 3))
            row = h.reshape(N, D - d, 3 * K - 1)
            nb, ld = rqs(b, row, K, B, inv)
            return torch.cat([a, nb], 1), ld.sum(1)
        if k == "permute":
            perm = self.perm(D)
            if inv:
                return u[:, torch.argsort(perm)], zero
            return u[:, perm], zero
        if k == "actnorm":
            ls, bias = self.p["log_scale"], self.p["bias"]
            if inv:
                return (u - bias) * torch.exp(-ls), zero - ls.sum()
            return u * torch.exp(ls) + bias, zero + ls.sum()
        if k == "linear_lu":
            L, U, perm = self.lu_factors(D)
            ld = self.p["log_diag"].sum()
            if not inv:
                W = self.lu_matrix(D)
                return u @ W.T, zero + ld
            # y = P L U u: (P v)[i] = v[perm[i]]  =>  v[perm[i]] = y[i]
            v = torch.empty_like(u)
            v[:, perm] = u
            w = torch.linalg.solve_triangular(L, v.T, upper=False, unitriangular=True)
            x = torch.linalg.solve_triangular(U, w, upper=True)
            return x.T.contiguous(), zero - ld
        raise ValueError("unknown layer " + k)

    def perm(self, D):
        if self.opts.get("perm_kind") == "reverse":
            return torch.arange(D - 1, -1, -1)
        return self.p["perm"].long()

    def lu_factors(self, D):
        L = torch.tril(self.p["lower"], -1) + torch.eye(D)
        U = torch.triu(self.p["upper"], 1) + torch.diag(self.p["sign"] * torch.exp(self.p["log_diag"]))
        return L, U, self.p["perm"].long()

    def lu_matrix(self, D):
        L, U, perm = self.lu_factors(D)
        LU = L @ U
        return LU[perm]     # (P M)[i, :] = M[perm[i], :]


class Flow:
    def __init__(self, D, C, layers):
        self.D, self.C, self.layers = D, C, layers

    def has_cnf(self):
        return any(L.kind == "cnf" for L in self.layers)

    def refined(self):
        """The same flow (shared weights) with every cnf solved by rk4 on
        CNF_FINE (CNF_FINE_SCALAR) steps: close to the continuous flow,
        whose inverse and log-det the self-checks can test."""
        layers = []
        for L in self.layers:
            if L.kind == "cnf":
                steps = CNF_FINE_SCALAR if L.opts["time"][0] == "scalar" else CNF_FINE
                R = Layer(L.kind, dict(L.opts, solver=("rk4", steps)))
                R.net, R.p = L.net, L.p
                L = R
            layers.append(L)
        return Flow(self.D, self.C, layers)

    def variant(self, k, what):
        """The flow with layer k computed with a deliberate error."""
        layers = list(self.layers)
        R = Layer(layers[k].kind, layers[k].opts)
        R.net, R.p, R.variant = layers[k].net, layers[k].p, what
        layers[k] = R
        return Flow(self.D, self.C, layers)

    def decode(self, z, c):
        ld = torch.zeros(z.shape[0], dtype=z.dtype)
        for L in self.layers:
            z, l = L.forward(z, c, self.D)
            ld = ld + l
        return z, ld

    def encode(self, x, c):
        ld = torch.zeros(x.shape[0], dtype=x.dtype)
        for L in reversed(self.layers):
            x, l = L.inverse(x, c, self.D)
            ld = ld + l
        return x, ld

    def log_prob(self, x, c):
        z, ld = self.encode(x, c)
        return -0.5 * (z ** 2).sum(1) - 0.5 * self.D * math.log(2 * math.pi) + ld


# --------------------------------------------------------------------------
# parsing `flowc check`

LAYER_RE = re.compile(r"^\s+flow\.(\d+)\s+(\w+)(.*)$")
HEAD_RE = re.compile(r"^model (\w+): dim (\d+)(?: \[[^\]]*\])?, context (\d+),")


def parse_check(text, want):
    models, cur = [], None
    for line in text.splitlines():
        m = HEAD_RE.match(line)
        if m:
            cur = {"name": m.group(1), "D": int(m.group(2)), "C": int(m.group(3)), "layers": []}
            models.append(cur)
            continue
        m = LAYER_RE.match(line)
        if m and cur is not None:
            k, kind, rest = int(m.group(1)), m.group(2), m.group(3)
            if k != len(cur["layers"]):
                raise ValueError("check output: layer %d out of order" % k)
            opts = {}
            if kind in ("maf", "iaf"):
                opts["transform"] = "spline" if re.search(r"\btransform = spline\b", rest) else "affine"
            for key in ("act", "scale", "bins", "bound", "seed", "lipschitz", "logdet", "iters", "tol"):
                mm = re.search(r"\b%s = ([-+\w.]+)" % key, rest)
                if mm:
                    opts[key] = mm.group(1)
            mm = re.search(r"hidden = \[([^\]]*)\]", rest)
            if mm:
                opts["hidden"] = [int(s) for s in mm.group(1).split(",") if s.strip()]
            if kind == "permute":
                opts["perm_kind"] = re.match(r"\((\w+)", rest.strip()).group(1)
            if kind == "cnf":
                mm = re.search(r"\btime = (scalar|sincos\((\d+)\))", rest)
                opts["time"] = ("scalar", 1) if mm.group(1) == "scalar" else ("sincos", int(mm.group(2)))
                mm = re.search(r"\bsolver = (euler|heun|rk4)\(steps = (\d+)\)", rest)
                if not mm:
                    raise ValueError("cnf solver not covered by torch_ref.py: " + rest.strip())
                opts["solver"] = (mm.group(1), int(mm.group(2)))
                mm = re.search(r"\btrace = (\w+)", rest)
                opts["trace"] = mm.group(1) if mm else "exact"
            cur["layers"].append((kind, opts))
    if not models:
        raise ValueError("no model in `flowc check` output:\n" + text)
    if want is None:
        return models[0]
    for m in models:
        if m["name"] == want:
            return m
    raise ValueError("model %s not in `flowc check` output" % want)


NET_KINDS = ("affine_coupling", "additive_coupling", "spline_coupling", "maf", "iaf", "residual", "cnf")


def is_spline(kind, opts):
    return kind == "spline_coupling" or (kind in ("maf", "iaf") and opts.get("transform") == "spline")


def net_out(kind, D, opts):
    d = D // 2
    if kind in ("residual", "cnf"):
        return D
    if kind in ("maf", "iaf"):
        return D * (3 * int(opts.get("bins", 8)) - 1) if opts.get("transform") == "spline" else 2 * D
    if kind == "affine_coupling":
        return 2 * (D - d)
    if kind == "additive_coupling":
        return D - d
    return (D - d) * (3 * int(opts.get("bins", 8)) - 1)


def expected_names(model):
    """The tensor names and shapes that section 8 asks for."""
    D, C, out = model["D"], model["C"], {}
    for k, (kind, o) in enumerate(model["layers"]):
        p = "flow.%d." % k
        if kind in NET_KINDS:
            nin = D + C if kind in ("maf", "iaf", "residual") else D // 2 + C
            if kind == "cnf":   # [z, c, temb(t)]
                nin = D + C + o["time"][1]
            sizes = [nin] + o.get("hidden", []) + [net_out(kind, D, o)]
            for j in range(len(sizes) - 1):
                out[p + "net.%d.weight" % j] = ("F32", [sizes[j + 1], sizes[j]])
                out[p + "net.%d.bias" % j] = ("F32", [sizes[j + 1]])
                if kind == "residual":   # the power-iteration vector (section 6)
                    out[p + "net.%d.sn_u" % j] = ("F32", [sizes[j + 1]])
        elif kind == "permute":
            if o["perm_kind"] != "reverse":
                out[p + "perm"] = ("I64", [D])
        elif kind == "actnorm":
            out[p + "log_scale"] = ("F32", [D])
            out[p + "bias"] = ("F32", [D])
        elif kind == "linear_lu":
            for n in ("lower", "upper"):
                out[p + n] = ("F32", [D, D])
            for n in ("log_diag", "sign"):
                out[p + n] = ("F32", [D])
            out[p + "perm"] = ("I64", [D])
        else:
            raise ValueError("layer kind %s is not covered by torch_ref.py" % kind)
    return out


def build_flow(model, weights):
    """weights: name -> numpy array (already float32-rounded where float)."""
    layers = []
    for k, (kind, o) in enumerate(model["layers"]):
        L = Layer(kind, o)
        p = "flow.%d." % k
        if kind in NET_KINDS:
            net, j = [], 0
            while p + "net.%d.weight" % j in weights:   # sizes from the shapes
                net.append((torch.tensor(weights[p + "net.%d.weight" % j], dtype=F64),
                            torch.tensor(weights[p + "net.%d.bias" % j], dtype=F64)))
                j += 1
            L.net = net
        else:
            for name, arr in weights.items():
                if name.startswith(p) and "." not in name[len(p):]:
                    L.p[name[len(p):]] = torch.tensor(arr, dtype=torch.int64 if arr.dtype.kind == "i" else F64)
        layers.append(L)
    return Flow(model["D"], model["C"], layers)


# --------------------------------------------------------------------------
# random weights, far from the identity


def randomize(model, w0, rng):
    D = model["D"]
    out = {}
    for k, (kind, o) in enumerate(model["layers"]):
        p = "flow.%d." % k
        if kind == "residual":
            randomize_residual(k, o, D, w0, rng, out)
        elif kind in NET_KINDS:
            j = 0
            while p + "net.%d.weight" % j in w0:
                W = w0[p + "net.%d.weight" % j][1]
                last = p + "net.%d.weight" % (j + 1) not in w0
                fan = max(W.shape[1], 1)
                if not last:
                    ws, bs = 1.0, 0.3
                elif kind == "cnf":
                    ws, bs = CNF_WS, 0.3  # zero after init; |v| of order 1, not stiff
                elif is_spline(kind, o):
                    ws, bs = 0.6, 0.3     # uneven bins, derivatives far from 1
                elif o.get("scale") == "exp":
                    ws, bs = 0.1, 0.2     # s = h is unbounded: keep it small
                elif o.get("scale") == "sigmoid":
                    ws, bs = 0.15, 0.3    # -s grows like |h| for h << 0
                else:
                    ws, bs = 0.5, 0.3
                out[p + "net.%d.weight" % j] = rng.normal(0, ws / math.sqrt(fan), W.shape)
                if kind == "cnf" and j == 0:
                    # [z, c] and temb(t) each of unit weight whatever the
                    # embedding's width: v depends on z (and on t) strongly
                    nzc, K = W.shape[1] - o["time"][1], o["time"][1]
                    out[p + "net.0.weight"][:, :nzc] *= math.sqrt(fan / max(nzc, 1))
                    out[p + "net.0.weight"][:, nzc:] *= math.sqrt(fan / K)
                out[p + "net.%d.bias" % j] = rng.normal(0, bs, W.shape[0])
                j += 1
        elif kind == "permute":
            if o["perm_kind"] == "random":   # the file's permutation is used
                out[p + "perm"] = rng.permutation(D).astype(np.int64)
            elif o["perm_kind"] == "list":   # must agree with the model
                out[p + "perm"] = w0[p + "perm"][1].astype(np.int64)
        elif kind == "actnorm":
            out[p + "log_scale"] = 0.3 * rng.normal(size=D)
            out[p + "bias"] = 0.5 * rng.normal(size=D)
        elif kind == "linear_lu":
            out[p + "lower"] = 0.3 * rng.normal(size=(D, D)) / math.sqrt(D)
            out[p + "upper"] = 0.3 * rng.normal(size=(D, D)) / math.sqrt(D)
            out[p + "log_diag"] = 0.2 * rng.normal(size=D)
            out[p + "sign"] = w0[p + "sign"][1].astype(np.float64)
            out[p + "perm"] = w0[p + "perm"][1].astype(np.int64)
    # float tensors are used as F32: round them now, so that every copy holds
    # the same numbers
    for n, a in out.items():
        if a.dtype.kind == "f":
            out[n] = a.astype(np.float32)
    return out


def randomize_residual(k, o, D, w0, rng, out):
    """Gaussian weights plus a rank-one part that chains one direction
    through the layers (from a direction of y to one of the output), three
    times the Gaussian's sigma: independent Gaussian layers alone would lose
    most of their gain between the hidden layers' many directions and the
    few of the output, and leave J_g close to 0. Every weight has sigma(W)
    well above the Lipschitz constant c, so that the normalisation acts,
    except every fourth matrix (counting over the layers), scaled to sigma =
    c/2 so that the max(1, .) keeps it as it is. Biases of 0.3; random
    power-iteration vectors (any nonzero start reaches the same sigma)."""
    p, c, j = "flow.%d." % k, float(o.get("lipschitz", 0.97)), 0
    a = np.zeros(w0[p + "net.0.weight"][1].shape[1])    # a direction of y in [y, c]
    a[:D] = rng.normal(size=D)
    a /= np.linalg.norm(a)
    while p + "net.%d.weight" % j in w0:
        shape = w0[p + "net.%d.weight" % j][1].shape
        last = p + "net.%d.weight" % (j + 1) not in w0
        b = rng.normal(size=shape[0]) if last else np.abs(rng.normal(size=shape[0]))
        b /= np.linalg.norm(b)
        G = rng.normal(0, 1.0 / math.sqrt(max(shape[1], 1)), shape)
        W = G + 3.0 * np.linalg.norm(G, 2) * np.outer(b, a)
        W *= 3.0 * c / np.linalg.norm(W, 2)
        if (k + j) % 4 == 3:
            W *= 0.5 / 3.0
        out[p + "net.%d.weight" % j] = W
        out[p + "net.%d.bias" % j] = rng.normal(0, 0.3, shape[0])
        out[p + "net.%d.sn_u" % j] = rng.normal(0, 1, shape[0])
        a = b
        j += 1


def residual_info(rep, flow):
    """The spectral normalisation acts on most residual weights (and is
    exercised both ways), and the normalised weights have sigma = min(sigma, c)."""
    res = [L for L in flow.layers if L.kind == "residual"]
    if not res:
        return
    acted = total = 0
    worst = 0.0
    for L in res:
        c = L.lipschitz()
        for (W, _), s in zip(L.res_net(), L.sigmas):
            total += 1
            acted += s > c
            worst = max(worst, abs(float(torch.linalg.matrix_norm(W, ord=2)) - min(s, c)))
    rep.ok(2 * acted > total and worst < 1e-12, "torch: spectral normalisation acts (sigma > c)",
           "on %d of %d weights; normalised sigma = min(sigma, c) to %.2g" % (acted, total, worst))


# --------------------------------------------------------------------------
# checks

class Report:
    def __init__(self):
        self.failed = 0

    def ok(self, cond, name, detail=""):
        print("  %-4s %-44s %s" % ("ok" if cond else "FAIL", name, detail))
        sys.stdout.flush()
        if not cond:
            self.failed += 1
        return cond


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape != b.shape:
        return float("inf"), 0, None
    e = np.abs(a - b) / np.maximum(1.0, np.abs(b))
    e = np.where(np.isnan(e), np.inf, e)
    row = int(np.argmax(e.max(axis=1))) if e.size else 0
    return (float(e.max()) if e.size else 0.0), row, e


def compare(rep, name, got, ref, tol, inputs=None, slack=None):
    """slack: optional per-row absolute allowance (float32 error budget)."""
    err, row, e = rel_err(got, ref)
    detail = "max rel err %.3g (tol %.0e)" % (err, tol)
    if slack is not None and e is not None and e.size:
        r = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
        allow = tol + np.asarray(slack).reshape(-1, 1) / np.maximum(1.0, np.abs(r))
        ratio = (e / allow).max(axis=1)
        row = int(np.argmax(ratio))
        nb = int(np.sum((e.max(axis=1) > tol) & (ratio <= 1)))
        good = bool(ratio.max() <= 1)
        detail += "; %d row(s) within their float32 error budget only; worst err/allowed %.2f" % (nb, ratio.max())
    else:
        good = err <= tol
    rep.ok(good, name, detail)
    if not good:
        g = np.asarray(got).reshape(len(got), -1)
        r = np.asarray(ref).reshape(len(ref), -1)
        np.set_printoptions(precision=7, linewidth=150)
        print("       worst row %d:" % row)
        if inputs is not None:
            for nm, arr in inputs:
                if arr is not None:
                    print("         %-8s %s" % (nm, np.asarray(arr).reshape(len(arr), -1)[min(row, len(arr) - 1)]))
        print("         flowc    %s" % (g[row] if g.shape == r.shape else g.shape))
        print("         torch    %s" % r[row])
        if slack is not None:
            print("         budget   %.3g" % np.asarray(slack).reshape(-1)[row])
    return good


def fp32_budget(flow, x, c, ulps=4.0):
    """Per row, how much a float32 evaluation of log p(x) may honestly be off.

    The output of each layer's inverse carries a rounding error of a few
    float32 ulps of the quantities it was computed from (for a spline, its
    knots, of size B); later layers amplify it by the gradient of the rest of
    log p with respect to that value. Samples sit where the density is high,
    which is where the inverse of a steep-walled spline bin is steep, so the
    sample check allows this much on top of its relative tolerance."""
    vals, u = [], x
    with torch.no_grad():
        for k in reversed(range(len(flow.layers))):
            u, _ = flow.layers[k].inverse(u, c, flow.D)
            vals.append((k, u))
    budget = torch.zeros(x.shape[0])
    for k, v in vals:
        v = v.clone().requires_grad_(True)
        u, ld = v, torch.zeros(x.shape[0])
        for j in reversed(range(k)):
            u, l = flow.layers[j].inverse(u, c, flow.D)
            ld = ld + l
        lp = -0.5 * (u ** 2).sum(1) + ld
        (g,) = torch.autograd.grad(lp.sum(), v)
        L = flow.layers[k]
        scale = float(L.opts.get("bound", 3)) if is_spline(L.kind, L.opts) else 1.0
        budget += (g.abs() * torch.clamp(v.detach().abs(), min=scale)).sum(1) * ulps * 2.0 ** -24
    return budget.numpy()


def batch_jac(fn, v, c):
    """J [n, D, D], J[r, i, j] = d fn(v)_i / d v_j of row r: one backward
    pass per output (no layer mixes samples)."""
    with torch.enable_grad():
        vv = v.detach().clone().requires_grad_(True)
        out = fn(vv, c)
        rows = [torch.autograd.grad(out[:, i].sum(), vv, retain_graph=True)[0] for i in range(v.shape[1])]
    return torch.stack(rows, dim=1).detach()


def self_checks(rep, flow, x, c, rows=6):
    """The reference against itself: inverses and autograd Jacobians. With
    cnf layers, on the flow refined to CNF_FINE rk4 steps (the layer's own
    few-step map is the inverse of its encode only up to the solver error),
    to the tolerances that this solver error allows; and the cnf's trace
    against the trace of the full per-sample Jacobian."""
    if flow.has_cnf():
        cnf_trace_check(rep, flow, x, c)
        flow = flow.refined()
        tag, tol_rt, tol_ld = " [cnf as fine rk4]", 1e-5, 1e-5
    else:
        tag, tol_rt, tol_ld = "", 1e-9, 1e-8
    z, ld_e = flow.encode(x, c)
    xb, ld_d = flow.decode(z, c)
    e, _, _ = rel_err(xb.numpy(), x.numpy())
    rep.ok(e < tol_rt, "torch: decode(encode(x)) = x" + tag, "max rel err %.3g" % e)
    e = float((ld_e + ld_d).abs().max())
    rep.ok(e < tol_rt, "torch: encode logdet = -decode logdet" + tag, "max abs err %.3g" % e)
    n = min(rows, x.shape[0])
    cn = None if c is None else c[:n]
    enc = lambda v, cc: flow.encode(v, cc)[0]
    dec = lambda v, cc: flow.decode(v, cc)[0]
    ld_j = torch.linalg.slogdet(batch_jac(enc, x[:n], cn))[1]
    worst_e = float(((ld_j - ld_e[:n]).abs() / torch.clamp(ld_e[:n].abs(), min=1)).max())
    ld_j = torch.linalg.slogdet(batch_jac(dec, z[:n], cn))[1]
    worst_d = float(((ld_j - ld_d[:n]).abs() / torch.clamp(ld_d[:n].abs(), min=1)).max())
    rep.ok(worst_e < tol_ld, "torch: encode logdet = log|det dz/dx| (autograd)" + tag, "max rel err %.3g" % worst_e)
    rep.ok(worst_d < tol_ld, "torch: decode logdet = log|det dx/dz| (autograd)" + tag, "max rel err %.3g" % worst_d)
    # finite differences on one row, to check autograd does not share a bug
    # (the 2D shifted copies of row 0 in one batch)
    h, i, D = 1e-6, 0, flow.D
    E = h * torch.eye(D)
    zs = torch.cat([z[i] + E, z[i] - E], dim=0)
    ci = None if c is None else c[i:i + 1].expand(2 * D, -1)
    xs = flow.decode(zs, ci)[0]
    J = ((xs[:D] - xs[D:]) / (2 * h)).T     # J[:, j] = d x / d z_j
    fd = abs(float(torch.linalg.slogdet(J)[1]) - float(ld_d[i]))
    rep.ok(fd < 1e-5, "torch: decode logdet (finite differences)" + tag, "abs err %.3g" % fd)


def cnf_info(flow, x, c):
    """How far from the identity (and how stiff) each cnf is, over the data."""
    u = x
    for k in reversed(range(len(flow.layers))):
        L = flow.layers[k]
        if L.kind == "cnf":
            ts = [i / 8 for i in range(9)]
            vs = [L.cnf_vtr(u, c, t) for t in ts]
            J = batch_jac(lambda v, cc: L.cnf_v(v, cc, 0.5), u, c)
            y, ld = L.inverse(u, c, flow.D)
            pr = ("  info flow.%d cnf over the data: mean |v| %.3f, max |v| %.3f, mean |tr dv/dz| %.3f, "
                  "max ||dv/dz|| %.3f (t = 0.5), mean |z(0) - z(1)| %.3f, mean |ld| %.3f" %
                  (k, float(np.mean([float(v.norm(dim=1).mean()) for v, _ in vs])),
                   max(float(v.norm(dim=1).max()) for v, _ in vs),
                   float(np.mean([float(tr.abs().mean()) for _, tr in vs])),
                   float(torch.linalg.matrix_norm(J, ord=2).max()),
                   float((y - u).norm(dim=1).mean()), float(ld.abs().mean())))
            print(pr)
            u = y
        else:
            u, _ = L.inverse(u, c, flow.D)


def cnf_trace_check(rep, flow, x, c, rows=5):
    """v and tr(dv/dz) of cnf_vtr (forward mode, explicit derivatives of
    the activations) against the mlp and the trace of autograd's full
    Jacobian of one sample's v, at a few times."""
    worst = 0.0
    for L in flow.layers:
        if L.kind != "cnf":
            continue
        for t in (0.0, 0.37, 1.0):
            v, tr = L.cnf_vtr(x[:rows], None if c is None else c[:rows], t)
            worst = max(worst, float((v - L.cnf_v(x[:rows], None if c is None else c[:rows], t)).abs().max()))
            for r in range(min(rows, x.shape[0])):
                cr = None if c is None else c[r:r + 1]
                J = torch.autograd.functional.jacobian(lambda u: L.cnf_v(u.unsqueeze(0), cr, t)[0], x[r])
                worst = max(worst, abs(float(torch.trace(J)) - float(tr[r])))
    rep.ok(worst < 1e-12, "torch: cnf v, trace = tr(full Jacobian of v)", "max abs err %.3g" % worst)


def check_init(rep, model, w0):
    """flowc init: names, shapes and the initialisation rule (section 3)."""
    want = expected_names(model)
    got = {n: (dt, list(a.shape)) for n, (dt, a) in w0.items()}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    bad = sorted(n for n in set(want) & set(got) if want[n] != got[n])
    rep.ok(not missing and not extra and not bad, "init: tensor names, dtypes, shapes",
           "" if not (missing or extra or bad) else
           "missing %s extra %s wrong %s" % (missing[:4], extra[:4],
                                           [(n, got[n], want[n]) for n in bad[:4]]))
    if missing or bad:
        return False
    D, problems = model["D"], []
    for k, (kind, o) in enumerate(model["layers"]):
        p = "flow.%d." % k
        if kind in NET_KINDS:
            nl = len(o.get("hidden", [])) + 1
            for j in range(nl):
                W, b = w0[p + "net.%d.weight" % j][1], w0[p + "net.%d.bias" % j][1]
                if j == nl - 1:
                    if np.any(W != 0) or np.any(b != 0):
                        problems.append(p + "net.%d is not zero" % j)
                else:
                    fan = W.shape[1]
                    # nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both;
                    # torch leaves the bias at 0 when fan_in = 0
                    bound = 1 / math.sqrt(fan) if fan > 0 else 0.0
                    if W.size and (np.abs(W).max() > bound * (1 + 1e-6) or np.all(W == 0)):
                        problems.append(p + "net.%d.weight not U(-1/sqrt(fan_in), ..)" % j)
                    if np.abs(b).max() > bound * (1 + 1e-6) or (fan > 0 and np.all(b == 0)):
                        problems.append(p + "net.%d.bias not U(-%g, %g) (fan_in %d, max |b| %g)"
                                        % (j, bound, bound, fan, np.abs(b).max()))
                if kind == "residual":
                    su = w0[p + "net.%d.sn_u" % j][1]
                    if not (np.all(np.isfinite(su)) and np.any(su != 0)):
                        problems.append(p + "net.%d.sn_u is not a nonzero vector" % j)
        elif kind == "permute" and o["perm_kind"] != "reverse":
            pm = w0[p + "perm"][1]
            if sorted(pm.tolist()) != list(range(D)):
                problems.append(p + "perm is not a permutation")
        elif kind == "actnorm":
            if np.any(w0[p + "log_scale"][1] != 0) or np.any(w0[p + "bias"][1] != 0):
                problems.append(p + " actnorm not zero")
        elif kind == "linear_lu":
            L = Layer(kind, o)
            for n in ("lower", "upper", "log_diag", "sign", "perm"):
                a = w0[p + n][1]
                L.p[n] = torch.tensor(a, dtype=torch.int64 if a.dtype.kind == "i" else F64)
            s = L.p["sign"]
            if not bool(torch.all(s.abs() == 1)):
                problems.append(p + "sign not +-1")
            elif sorted(L.p["perm"].tolist()) != list(range(D)):
                problems.append(p + "perm is not a permutation")
            else:
                W = L.lu_matrix(D)
                e = float((W @ W.T - torch.eye(D)).abs().max())
                if e > 1e-5:
                    problems.append(p + "W = P L U is not orthogonal (err %.2g)" % e)
                if (float(torch.tril(L.p["lower"], -1).abs().max()) if D > 1 else 0.0) > 1 + 1e-6:
                    problems.append(p + "lower has |l| > 1 (not partial pivoting)")
    return rep.ok(not problems, "init: initialisation rule", "; ".join(problems[:5]))


def run_flowc(rep, exe, args, what):
    r = subprocess.run([exe] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        rep.ok(False, what, "flowc exit %d: %s" % (r.returncode, r.stdout.strip()[:800]))
        return None
    return r.stdout


def main(argv):
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("flowc", nargs="?")
    ap.add_argument("flow", nargs="?")
    ap.add_argument("workdir", nargs="?")
    ap.add_argument("--model")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=257)
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args(argv)
    if a.selftest:
        return selftest()
    if not (a.flowc and a.flow and a.workdir):
        ap.print_usage()
        return 2
    os.makedirs(a.workdir, exist_ok=True)
    rep = Report()
    W = lambda f: os.path.join(a.workdir, f)
    margs = ["--model", a.model] if a.model else []

    out = run_flowc(rep, a.flowc, ["check", a.flow], "flowc check")
    if out is None:
        return 1
    model = parse_check(out, a.model)
    D, C = model["D"], model["C"]
    print("torch_ref: %s model %s: D %d, context %d, %d layers: %s" % (
        os.path.basename(a.flow), model["name"], D, C, len(model["layers"]),
        ", ".join(k + ("(%s)" % o["perm_kind"] if k == "permute" else "") for k, o in model["layers"])))

    # (a) names and shapes from flowc init
    if run_flowc(rep, a.flowc, ["init", a.flow] + margs + ["--seed", str(a.seed), "-o", W("w0.safetensors")],
                 "flowc init") is None:
        return 1
    w0, _ = st_read(W("w0.safetensors"))
    want = expected_names(model)
    check_init(rep, model, w0)
    if any(n not in w0 or list(w0[n][1].shape) != s for n, (_, s) in want.items()):
        return 1     # the comparisons need every tensor

    # (b) random weights; F32/I64 and F64/I32 copies
    rng = np.random.default_rng(1000 + a.seed)
    wr = randomize(model, w0, rng)
    st_write(W("w.safetensors"), {n: ("I64" if v.dtype.kind == "i" else "F32", v) for n, v in wr.items()},
             {"source": "torch_ref.py"})
    st_write(W("w64.safetensors"), {n: ("I32" if v.dtype.kind == "i" else "F64", v) for n, v in wr.items()})
    flow = build_flow(model, wr)
    residual_info(rep, flow)

    # (c) data
    N = a.n
    x = (1.5 * rng.normal(size=(N, D))).astype(np.float32)
    B = max([float(o.get("bound", 3)) for k, o in model["layers"] if is_spline(k, o)] or [3.0])
    x[0, :] = 0
    x[1, :] = B
    x[2, :] = -B
    x[3, :] = B + 1.5
    x[4, :] = -(B + 2.5)
    x[5, ::2] = 3 * B
    x[6, :] = np.linspace(-2 * B, 2 * B, D)
    np.save(W("x.npy"), x)
    np.save(W("x64.npy"), x.astype(np.float64))
    z = rng.normal(size=(N, D)).astype(np.float32)
    z[0, :] = 0
    z[1, :] = 3.5
    z[2, :] = -3.5
    np.save(W("z.npy"), z)
    c = None
    cargs = []
    if C:
        c = rng.normal(size=(N, C)).astype(np.float32)
        np.save(W("c.npy"), c)
        cargs = ["--context", W("c.npy")]
    xt = torch.tensor(x, dtype=F64)
    zt = torch.tensor(z, dtype=F64)
    ct = None if c is None else torch.tensor(c, dtype=F64)

    # the reference against itself
    self_checks(rep, flow, xt, ct)
    if any(L.kind in ("maf", "iaf") for L in flow.layers):
        made_structure(rep, flow, xt[7:], None if ct is None else ct[7:])

    ref_lp = flow.log_prob(xt, ct).numpy()
    bud = fp32_budget(flow, xt, ct)     # only matters where a spline is steep
    print("  info float32 error budget of log p over the data: median %.2g, max %.2g" %
          (float(np.median(bud)), float(bud.max())))
    ref_z, ref_lde = [t.numpy() for t in flow.encode(xt, ct)]
    for L in flow.layers:
        L.fp_steps = 0
    ref_x, ref_ldd = [t.numpy() for t in flow.decode(zt, ct)]
    for k, L in enumerate(flow.layers):
        if L.kind == "residual":
            it = int(L.opts.get("iters", 50))
            rep.ok(L.fp_steps <= it, "torch: flow.%d fixed point within iters" % k,
                   "at most %d steps to a change < tol = %g (iters %d)" % (L.fp_steps, float(L.opts.get("tol", 1e-6)), it))
    u = xt
    for k in reversed(range(len(flow.layers))):     # how far from the identity
        L = flow.layers[k]
        if L.kind == "residual":
            g, J = L.res_g_jac(u, ct)
            print("  info flow.%d residual over the data: max ||J_g|| %.3f (bound c^n %.3f), "
                  "mean |g| %.3f, mean |log det(I + J_g)| %.3f" %
                  (k, float(torch.linalg.matrix_norm(J, ord=2).max()), L.lipschitz() ** len(L.net),
                   float(g.abs().mean()), float(L.res_logdet(J).abs().mean())))
        u, _ = L.inverse(u, ct, D)
    if not (np.all(np.isfinite(ref_lp)) and np.all(np.isfinite(ref_x))):
        rep.ok(False, "torch: reference values finite")
        return 1
    if flow.has_cnf():
        cnf_info(flow, xt, ct)
        cnf_sensitivity(rep, flow, xt, zt, ct, ref_lp, ref_x, ref_ldd)

    # (d, e) flowc against the reference
    common = [a.flow] + margs + ["-w", W("w.safetensors")]
    ins = [("x", x)] + ([("c", c)] if c is not None else [])
    if run_flowc(rep, a.flowc, ["logprob"] + common + ["--data", W("x.npy"), "-o", W("lp.npy")] + cargs,
                 "flowc logprob") is not None:
        compare(rep, "logprob", np.load(W("lp.npy")), ref_lp, TOL, ins, slack=bud)
    if run_flowc(rep, a.flowc, ["encode"] + common + ["--data", W("x.npy"), "-o", W("ez.npy"),
                                                       "--logdet", W("eld.npy")] + cargs,
                 "flowc encode") is not None:
        compare(rep, "encode z", np.load(W("ez.npy")), ref_z, TOL, ins)
        compare(rep, "encode logdet", np.load(W("eld.npy")), ref_lde, TOL, ins, slack=bud)
    insz = [("z", z)] + ([("c", c)] if c is not None else [])
    if run_flowc(rep, a.flowc, ["decode"] + common + ["--data", W("z.npy"), "-o", W("dx.npy"),
                                                       "--logdet", W("dld.npy")] + cargs,
                 "flowc decode") is not None:
        compare(rep, "decode x", np.load(W("dx.npy")), ref_x, TOL, insz)
        compare(rep, "decode logdet", np.load(W("dld.npy")), ref_ldd, TOL, insz)

    # conversions: F64 weights with I32 perms, float64 data, one thread
    if run_flowc(rep, a.flowc, ["logprob", a.flow] + margs + ["-w", W("w64.safetensors"), "--data", W("x64.npy"),
                                                             "-o", W("lp64.npy"), "--threads", "1"] + cargs,
                 "flowc logprob (F64/I32 weights, f64 data)") is not None:
        compare(rep, "logprob, F64/I32 weights, f64 data", np.load(W("lp64.npy")), ref_lp, TOL, ins, slack=bud)
        if os.path.exists(W("lp.npy")):
            e, _, _ = rel_err(np.load(W("lp64.npy")), np.load(W("lp.npy")))
            rep.ok(e <= 1e-6, "  same as the F32 run", "max rel err %.3g" % e)
    # half-precision weights: F16 and BF16 files, against the reference
    # evaluated with the same rounded values
    for dt in ("F16", "BF16"):
        wh = {n: (to_half(v, dt) if v.dtype.kind == "f" else v) for n, v in wr.items()}
        fn = W("w_%s.safetensors" % dt.lower())
        st_write(fn, {n: (dt if v.dtype.kind == "f" else "I64", v) for n, v in wh.items()})
        if run_flowc(rep, a.flowc, ["logprob", a.flow] + margs + ["-w", fn, "--data", W("x.npy"),
                                                                 "-o", W("lp_%s.npy" % dt.lower())] + cargs,
                     "flowc logprob (%s weights)" % dt) is not None:
            fh = build_flow(model, wh)
            compare(rep, "logprob, %s weights" % dt, np.load(W("lp_%s.npy" % dt.lower())),
                    fh.log_prob(xt, ct).numpy(), TOL, ins, slack=fp32_budget(fh, xt, ct))
    if any(k == "residual" for k, _ in model["layers"]):
        residual_weight_files(rep, a, W, margs, cargs, wr, ref_lp, ins, bud)
    if C:   # one context row for all samples
        np.save(W("c1.npy"), c[:1])
        if run_flowc(rep, a.flowc, ["logprob"] + common + ["--data", W("x.npy"), "-o", W("lpc1.npy"),
                                                            "--context", W("c1.npy")],
                     "flowc logprob (one context row)") is not None:
            ref1 = flow.log_prob(xt, ct[:1].expand(N, C)).numpy()
            compare(rep, "logprob, one context row for all", np.load(W("lpc1.npy")), ref1, TOL, ins,
                    slack=fp32_budget(flow, xt, ct[:1].expand(N, C)))

    # sample: its log_prob is the reference density of what it returns
    ns = 64
    scargs = []
    cs = None
    if C:
        cs = rng.normal(size=(ns, C)).astype(np.float32)
        np.save(W("cs.npy"), cs)
        scargs = ["--context", W("cs.npy")]
    if run_flowc(rep, a.flowc, ["sample"] + common + ["-n", str(ns), "--seed", "3", "-o", W("sx.npy"),
                                                       "--logprob", W("slp.npy")] + scargs,
                 "flowc sample") is not None:
        sx = np.load(W("sx.npy")).reshape(ns, D)
        slp = np.load(W("slp.npy"))
        ok = rep.ok(sx.shape == (ns, D) and np.all(np.isfinite(sx)) and np.all(np.isfinite(slp)),
                    "sample: shape and finite values")
        if ok and flow.has_cnf():
            # sample's log_prob is log N(u) - (decode logdet at u), u its base
            # draw; a fixed-step cnf's encode inverts it only up to the solver
            # error, so u is found by Newton on the reference's decode map
            sxt = torch.tensor(sx, dtype=F64)
            cst = None if cs is None else torch.tensor(cs, dtype=F64)
            us, res = newton_base(flow, sxt, cst)
            rep.ok(res < 1e-9, "torch: base draws of the samples (Newton on decode)",
                   "max |decode(u) - x| %.3g" % res)
            _, ldu = flow.decode(us, cst)
            ref_s = (-0.5 * (us ** 2).sum(1) - 0.5 * D * math.log(2 * math.pi) - ldu).numpy()
            compare(rep, "sample log_prob = log N(u) - decode logdet", slp, ref_s, TOL,
                    [("x", sx)] + ([("c", cs)] if cs is not None else []))
            e, _, _ = rel_err(slp, flow.log_prob(sxt, cst).numpy())
            print("  info sample log_prob against the (encode) density of its x: max rel err %.3g "
                  "(the solver's error)" % e)
        elif ok:
            ref_s = flow.log_prob(torch.tensor(sx, dtype=F64),
                                  None if cs is None else torch.tensor(cs, dtype=F64)).numpy()
            budget = fp32_budget(flow, torch.tensor(sx, dtype=F64),
                                 None if cs is None else torch.tensor(cs, dtype=F64))
            compare(rep, "sample log_prob = density of its x", slp, ref_s, TOL_SAMPLE,
                    [("x", sx)] + ([("c", cs)] if cs is not None else []), slack=budget)
        if ok:
            # the base draws behind the samples should look standard normal
            zs = flow.encode(torch.tensor(sx, dtype=F64), None if cs is None else torch.tensor(cs, dtype=F64))[0]
            m, v = float(zs.mean()), float(zs.var())
            rep.ok(abs(m) < 0.5 and 0.5 < v < 1.6, "sample: encoded samples look N(0, 1)",
                   "mean %.3f var %.3f over %d values" % (m, v, zs.numel()))
        if run_flowc(rep, a.flowc, ["sample"] + common + ["-n", str(ns), "--seed", "3", "-o", W("sx2.npy"),
                                                           "--threads", "1"] + scargs,
                     "flowc sample (1 thread)") is not None:
            same = np.array_equal(np.load(W("sx2.npy")).reshape(ns, D), sx)
            rep.ok(same, "sample: same draws with --threads 1")

    print("torch_ref: %s: %s" % (model["name"], "all checks agree" if not rep.failed
                                 else "%d check(s) FAILED" % rep.failed))
    return 1 if rep.failed else 0


def newton_base(flow, x, c, iters=50):
    """u with decode(u) = x (float64), from u = encode(x) by Newton steps;
    returns u and the largest residual |decode(u) - x|."""
    dec = lambda v, cc: flow.decode(v, cc)[0]
    u = flow.encode(x, c)[0]
    for _ in range(iters):
        r = dec(u, c) - x
        du = torch.linalg.solve(batch_jac(dec, u, c), r.unsqueeze(-1)).squeeze(-1)
        u = u - du
        if float(du.abs().max()) < 1e-14 * max(1.0, float(u.abs().max())):
            break
    return u, float((dec(u, c) - x).abs().max())


CNF_VARIANTS = {"solver": "solver swapped (euler<->heun, rk4->heun)",
                "temb": "time embedding (sin<->cos / 1-t)",
                "stage": "all stages at t_n",
                "ldsign": "log-det sign"}


def cnf_sensitivity(rep, flow, xt, zt, ct, ref_lp, ref_x, ref_ldd):
    """The comparison can see an error in a cnf: the reference with one
    deliberate mistake in one layer moves logprob or decode by more than
    10 TOL (so flowc with that mistake would fail)."""
    for k, L in enumerate(flow.layers):
        if L.kind != "cnf":
            continue
        for what in CNF_VARIANTS:
            if what == "stage" and L.opts["solver"][0] == "euler":
                continue    # one stage, at t_n
            f = flow.variant(k, what)
            e1 = rel_err(f.log_prob(xt, ct).numpy(), ref_lp)[0]
            xv, ldv = f.decode(zt, ct)
            e2 = rel_err(xv.numpy(), ref_x)[0]
            e3 = rel_err(ldv.numpy(), ref_ldd)[0]
            rep.ok(max(e1, e2, e3) > 10 * TOL, "torch: flow.%d %s: %s" % (k, L.opts["solver"][0], CNF_VARIANTS[what]),
                   "would be seen: logprob %.2g, decode x %.2g, logdet %.2g" % (e1, e2, e3))


def residual_weight_files(rep, a, W, margs, cargs, wr, ref_lp, ins, bud):
    """Section 6/8: weights files for evaluation may omit `sn_u` (the same
    density follows); a misshapen `sn_u` is refused with its name."""
    common = [a.flow] + margs + ["--data", W("x.npy")] + cargs
    nosn = {n: ("I64" if v.dtype.kind == "i" else "F32", v) for n, v in wr.items() if not n.endswith(".sn_u")}
    st_write(W("w_nosn.safetensors"), nosn)
    if run_flowc(rep, a.flowc, ["logprob"] + common + ["-w", W("w_nosn.safetensors"), "-o", W("lp_nosn.npy")],
                 "flowc logprob (weights without sn_u)") is not None:
        compare(rep, "logprob, weights without sn_u", np.load(W("lp_nosn.npy")), ref_lp, TOL, ins, slack=bud)
        if os.path.exists(W("lp.npy")):
            e, _, _ = rel_err(np.load(W("lp_nosn.npy")), np.load(W("lp.npy")))
            rep.ok(e <= 1e-5, "  same as with sn_u", "max rel err %.3g" % e)
    name = sorted(n for n in wr if n.endswith(".sn_u"))[0]
    bad = dict(nosn)
    for n, v in wr.items():
        if n.endswith(".sn_u"):
            bad[n] = ("F32", np.concatenate([v, v[:1]]) if n == name else v)
    st_write(W("w_badsn.safetensors"), bad)
    r = subprocess.run([a.flowc, "logprob"] + common + ["-w", W("w_badsn.safetensors"), "-o", W("lp_bad.npy")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rep.ok(r.returncode != 0 and name in r.stdout, "flowc refuses a misshapen sn_u, naming it",
           "exit %d: %s" % (r.returncode, r.stdout.strip()[:200]))


# --------------------------------------------------------------------------
# --selftest: the reference alone, on models built here


def selftest():
    rep = Report()
    rng = np.random.default_rng(5)
    acts = ["relu", "gelu", "gelu_tanh", "silu", "tanh", "elu", "softplus", "lipswish"]
    cases = []
    for D, C in ((1, 0), (1, 2), (2, 0), (5, 0), (6, 3), (16, 0)):
        layers = []
        for i, act in enumerate(acts):
            layers.append(("affine_coupling", {"act": act, "scale": ["tanh", "exp", "sigmoid"][i % 3], "hidden": [8, 7]}))
            layers.append(("permute", {"perm_kind": "reverse"}))
        cases.append({"name": "self_D%d_C%d_acts" % (D, C), "D": D, "C": C, "layers": layers})
        layers = [("additive_coupling", {"act": "elu", "hidden": [5]}),
                   ("permute", {"perm_kind": "random"}),
                   ("spline_coupling", {"act": "gelu", "hidden": [9, 9], "bins": 8, "bound": 3}),
                   ("permute", {"perm_kind": "list"}),
                   ("spline_coupling", {"act": "tanh", "hidden": [4], "bins": 1, "bound": 0.5}),
                   ("actnorm", {}), ("linear_lu", {}),
                   ("spline_coupling", {"act": "silu", "hidden": [6], "bins": 3, "bound": 1.0})]
        cases.append({"name": "self_D%d_C%d" % (D, C), "D": D, "C": C, "layers": layers})
        layers = [("maf", {"act": "gelu", "hidden": [9, 9], "transform": "affine", "scale": "tanh"}),
                  ("iaf", {"act": "elu", "hidden": [7], "transform": "affine", "scale": "sigmoid"}),
                  ("permute", {"perm_kind": "reverse"}),
                  ("maf", {"act": "silu", "hidden": [8], "transform": "spline", "bins": 5, "bound": 2.5}),
                  ("iaf", {"act": "tanh", "hidden": [6, 5], "transform": "spline", "bins": 3, "bound": 2.0}),
                  ("maf", {"act": "relu", "hidden": [], "transform": "affine", "scale": "exp"}),
                  ("iaf", {"act": "relu", "hidden": [], "transform": "spline", "bins": 2, "bound": 1.0})]
        cases.append({"name": "self_D%d_C%d_ar" % (D, C), "D": D, "C": C, "layers": layers})
        layers = [("actnorm", {}),
                  ("residual", {"act": "lipswish", "hidden": [16, 16], "lipschitz": "0.9", "tol": "1e-06"}),
                  ("affine_coupling", {"act": "relu", "scale": "tanh", "hidden": [8]}),
                  ("residual", {"act": "elu", "hidden": [8], "lipschitz": "0.5"}),
                  ("permute", {"perm_kind": "reverse"}),
                  ("residual", {"act": "relu", "hidden": [12, 10, 8], "lipschitz": "0.97"}),
                  ("residual", {"act": "tanh", "hidden": [], "lipschitz": "0.8"}),
                  ("linear_lu", {}),
                  ("residual", {"act": "softplus", "hidden": [9], "lipschitz": "0.7"})]
        cases.append({"name": "self_D%d_C%d_res" % (D, C), "D": D, "C": C, "layers": layers})
        if D in (1, 2, 6):  # cnf: scalar time here (sincos needs a finer grid, seconds a model:
            # the flowc cases check it); every activation: the trace check below
            layers = [("cnf", {"act": "gelu", "hidden": [8, 8], "time": ("scalar", 1), "solver": ("euler", 3)}),
                      ("actnorm", {}),
                      ("cnf", {"act": "softplus", "hidden": [6], "time": ("scalar", 1), "solver": ("heun", 2)}),
                      ("permute", {"perm_kind": "reverse"}),
                      ("cnf", {"act": "elu", "hidden": [], "time": ("scalar", 1), "solver": ("rk4", 2)})]
            cases.append({"name": "self_D%d_C%d_cnf" % (D, C), "D": D, "C": C, "layers": layers})
    for model in cases:
        D, C = model["D"], model["C"]
        print("torch_ref selftest: D %d, context %d, %d layers" % (D, C, len(model["layers"])))
        w0 = {}
        for n, (dt, shape) in expected_names(model).items():
            if n.endswith("perm"):
                w0[n] = (dt, rng.permutation(D).astype(np.int64))
            elif n.endswith("sign"):
                w0[n] = (dt, rng.choice([-1.0, 1.0], size=D))
            else:
                w0[n] = (dt, np.zeros(shape))
        wr = randomize(model, w0, rng)
        flow = build_flow(model, wr)
        x = torch.tensor(1.5 * rng.normal(size=(40, D)))
        x[0] = 3.0
        x[1] = -3.0
        x[2] = 0.5
        x[3] = 7.0
        c = torch.tensor(rng.normal(size=(40, C))) if C else None
        self_checks(rep, flow, x, c, rows=8)
        lp = flow.log_prob(x, c)
        rep.ok(bool(torch.all(torch.isfinite(lp))), "torch: log_prob finite")
        if any(L.kind in ("maf", "iaf") for L in flow.layers):
            made_structure(rep, flow, x, c)
        if any(L.kind == "residual" for L in flow.layers):
            residual_info(rep, flow)
            residual_structure(rep, flow, x, c)
    # the cnf's forward-mode trace with every activation, against autograd
    for D, C in ((1, 0), (3, 2)):
        model = {"name": "self_cnf_acts", "D": D, "C": C,
                 "layers": [("cnf", {"act": act, "hidden": [7, 5][:1 + i % 2],
                                     "time": ("sincos", 6) if i % 2 else ("scalar", 1), "solver": ("euler", 1)})
                            for i, act in enumerate(acts)]}
        w0 = {n: (dt, np.zeros(shape)) for n, (dt, shape) in expected_names(model).items()}
        flow = build_flow(model, randomize(model, w0, rng))
        x = torch.tensor(1.5 * rng.normal(size=(12, D)))
        x[0] = 0.0
        cnf_trace_check(rep, flow, x, torch.tensor(rng.normal(size=(12, C))) if C else None)
    # the spline alone against a direct, scalar transcription of section 5a
    K, B = 5, 2.0
    row = torch.tensor(rng.normal(size=(1, 1, 3 * K - 1)) * 1.5)
    worst = 0.0
    for u in list(np.linspace(-2.5, 2.5, 41)) + [-2.0, 2.0]:
        y, ld = rqs(torch.tensor([[u]]), row, K, B, False)
        ys, lds = rqs_scalar(float(u), row[0, 0].tolist(), K, B)
        worst = max(worst, abs(float(y) - ys), abs(float(ld) - lds))
        ub, ldb = rqs(y, row, K, B, True)
        worst = max(worst, abs(float(ub) - u), abs(float(ldb) + float(ld)))
    rep.ok(worst < 1e-12, "torch: vectorised RQS = scalar RQS, inverse", "max abs err %.3g" % worst)
    # sigmoid scale and the activations at a few points, against math
    pts = [-30.0, -3.0, -0.5, 0.0, 0.7, 4.0, 30.0]
    ref = {"relu": lambda t: max(t, 0.0), "gelu": lambda t: 0.5 * t * (1 + math.erf(t / math.sqrt(2))),
           "gelu_tanh": lambda t: 0.5 * t * (1 + math.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t ** 3))),
           "silu": lambda t: t / (1 + math.exp(-t)), "tanh": math.tanh,
           "elu": lambda t: t if t > 0 else math.expm1(t), "softplus": lambda t: math.log1p(math.exp(t)),
           "lipswish": lambda t: t / (1 + math.exp(-t)) / 1.1}
    worst = 0.0
    for name, f in ref.items():
        got = activation(name, torch.tensor(pts))
        worst = max(worst, max(abs(float(g) - f(t)) for g, t in zip(got, pts)))
    got = scale_fn("sigmoid", torch.tensor(pts))
    worst = max(worst, max(abs(float(g) - math.log(1 / (1 + math.exp(-(t + 2))))) for g, t in zip(got, pts)))
    rep.ok(worst < 1e-12, "torch: activations and sigmoid scale", "max abs err %.3g" % worst)
    # safetensors writer and reader agree (every dtype used here)
    import tempfile
    with tempfile.TemporaryDirectory() as td:
        t = {"a.b": ("F32", np.arange(6, dtype=np.float32).reshape(2, 3) / 7),
             "c": ("F64", np.array([1.5, -2.25])), "p": ("I64", np.array([2, 0, 1])),
             "q": ("I32", np.array([1, 0])), "e": ("F32", np.zeros((4, 0), dtype=np.float32)),
             "h": ("F16", np.array([0.5, -3.0, 1 / 3], dtype=np.float16)),
             "g": ("BF16", to_half(np.array([0.5, -3.0, 1 / 3, 1e-3]), "BF16"))}
        st_write(os.path.join(td, "t.safetensors"), t, {"k": "v"})
        back, meta = st_read(os.path.join(td, "t.safetensors"))
        same = meta == {"k": "v"} and all(back[n][0] == dt and back[n][1].shape == a.shape and
                                           np.array_equal(back[n][1], a) for n, (dt, a) in t.items())
        same = same and float(to_half(np.array([1 + 2 ** -9]), "BF16")[0]) == 1.0 \
            and float(to_half(np.array([1 + 3 * 2 ** -9]), "BF16")[0]) == 1 + 2 ** -7
        rep.ok(same, "safetensors write/read round trip")
    print("torch_ref selftest: %s" % ("all checks agree" if not rep.failed else "%d FAILED" % rep.failed))
    return 1 if rep.failed else 0


def made_structure(rep, flow, x, c):
    """The masked networks are autoregressive (output o of degree m depends
    on no u_i with i + 1 >= m) and depend on exactly the inputs that a path
    through the masks reaches (so the masks are applied, and no more is cut:
    with context, every output sees every context value through the units of
    degree 0)."""
    D, C = flow.D, 0 if c is None else c.shape[1]
    bad = []
    for k, L in enumerate(flow.layers):
        if L.kind not in ("maf", "iaf"):
            continue
        deg = torch.tensor(ar_out_degrees(D, L.opts))
        nz_u = torch.zeros(len(deg), D, dtype=torch.bool)
        nz_c = torch.zeros(len(deg), max(C, 1), dtype=torch.bool)
        for r in range(4):
            ci = None if c is None else c[r:r + 1]
            J = torch.autograd.functional.jacobian(lambda v: L._made(v.unsqueeze(0), ci, D)[0], x[r])
            nz_u |= J.abs() > 1e-12
            if C:
                J = torch.autograd.functional.jacobian(lambda w: L._made(x[r:r + 1], w.unsqueeze(0), D)[0], c[r])
                nz_c |= J.abs() > 1e-12
        reach = L.masks[0] > 0
        for M in L.masks[1:]:
            reach = (M @ reach.to(F64)) > 0
        causal = torch.arange(D).unsqueeze(0) + 1 < deg.unsqueeze(1)
        if bool((reach[:, :D] & ~causal).any()):
            bad.append("flow.%d (%s): masks are not autoregressive" % (k, L.kind))
        if not torch.equal(nz_u, reach[:, :D]):
            bad.append("flow.%d (%s): d net / d u pattern differs from the masks" % (k, L.kind))
        if C and not (bool(nz_c.all()) and bool(reach[:, D:].all())):
            bad.append("flow.%d (%s): some output ignores the context" % (k, L.kind))
    rep.ok(not bad, "torch: MADE nets autoregressive, masks applied", "; ".join(bad))


def residual_structure(rep, flow, x, c):
    """Each residual g is a contraction where evaluated (||J_g||_2 <= c^n,
    n its linear layers, the activations being 1-Lipschitz); log det(I + J_g)
    equals the power series sum_k (-1)^(k+1) tr(J_g^k) / k that Residual
    Flows estimates; the decode output is a fixed point y = u - g(y)."""
    worst_lip = worst_ser = worst_fp = 0.0
    u = x
    for L in reversed(flow.layers):
        if L.kind == "residual":
            _, J = L.res_g_jac(u, c)
            bound = L.lipschitz() ** len(L.net)
            worst_lip = max(worst_lip, float(torch.linalg.matrix_norm(J, ord=2).max()) / bound)
            ld = L.res_logdet(J)
            ser, P = torch.zeros_like(ld), torch.eye(flow.D).expand_as(J)
            for k in range(1, 2000):
                P = P @ J
                ser = ser + (-1) ** (k + 1) * torch.diagonal(P, dim1=1, dim2=2).sum(1) / k
                if bound ** k / k < 1e-15:
                    break
            worst_ser = max(worst_ser, float((ser - ld).abs().max()))
            y, _ = L.forward(u, c, flow.D)
            worst_fp = max(worst_fp, float((y + L.res_g(y, c) - u).abs().max()))
        u, _ = L.inverse(u, c, flow.D)
    rep.ok(worst_lip <= 1 + 1e-9, "torch: residual g a contraction (||J_g|| <= c^n)",
           "max ||J_g|| / c^n %.3g" % worst_lip)
    rep.ok(worst_ser < 1e-10, "torch: log det(I + J_g) = power series", "max abs err %.3g" % worst_ser)
    rep.ok(worst_fp < 1e-10, "torch: decode is a fixed point y + g(y) = u", "max abs err %.3g" % worst_fp)


def rqs_scalar(u, row, K, B):
    m = M_MIN
    if u < -B or u > B:
        return u, 0.0

    def knots(r):
        mx = max(r)
        ex = [math.exp(t - mx) for t in r]
        sm = [e / sum(ex) for e in ex]
        W = [m + (1 - m * K) * s for s in sm]
        ks = [-B]
        acc = 0.0
        for i in range(K):
            acc += W[i]
            ks.append(-B + 2 * B * acc)
        ks[K] = B
        return ks
    xk, yk = knots(row[:K]), knots(row[K:2 * K])
    delta = [1.0] + [m + math.log1p(math.exp(t)) for t in row[2 * K:]] + [1.0]
    k = 0
    while k < K - 1 and u >= xk[k + 1]:
        k += 1
    xi = (u - xk[k]) / (xk[k + 1] - xk[k])
    s = (yk[k + 1] - yk[k]) / (xk[k + 1] - xk[k])
    den = s + (delta[k + 1] + delta[k] - 2 * s) * xi * (1 - xi)
    y = yk[k] + (yk[k + 1] - yk[k]) * (s * xi * xi + delta[k] * xi * (1 - xi)) / den
    dy = s * s * (delta[k + 1] * xi * xi + 2 * s * xi * (1 - xi) + delta[k] * (1 - xi) ** 2) / den ** 2
    return y, math.log(dy)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
