#!/usr/bin/python3
"""bench/torch_train.py: the RealNVP of examples/moons.flow, trained in PyTorch.

Usage:
  torch_train.py --train X.npy --valid V.npy [--steps 2000] [--batch 256]
                 [--lr 1e-3] [--threads 1] [--seed 0] [--eval-every N]

A plain, hand-written PyTorch formulation (eager mode, float32) of

    model moons {
        dim 2; base normal;
        flow { repeat 4 { affine_coupling(net = mlp(hidden = [64, 64], act = relu),
                                          scale = tanh);
                          permute(reverse); }
               actnorm; }
    }

with the mathematics of flow-language.md sections 2-4: layers are listed in
generative order; the density direction applies their inverses from the last
to the first.  Coupling (D = 2, d = 1): h = net(y[:, :d]), s = tanh(h[:, :D-d]),
t = h[:, D-d:], u[:, d:] = (y[:, d:] - t) * exp(-s), log-det -sum(s).  Actnorm:
u = (y - bias) * exp(-log_scale), log-det -sum(log_scale).  Base N(0, I).

Initialised like flowc: nn.Linear defaults except the last linear layer of
every network, which is zero; actnorm from the first batch (bias = mean,
log_scale = log std, population variance, of its input in the density
direction; the actnorm is the data-side layer, so its input is the batch).
Trained by torch.optim.Adam (beta 0.9/0.999, eps 1e-8) on minibatches of a
fresh random permutation each epoch (as flowc: steps per epoch =
rows // batch).

Prints one JSON line: samples_per_s (steps * batch / wall time of the
training loop, setup excluded; validation every --eval-every steps, as flowc
does, is inside the loop), valid_nll (mean -log p of --valid after the last
step), train_loss (last minibatch), threads, steps, batch, seconds.

Exit status 0; 2 usage; 77 torch or numpy not available.
"""
import argparse
import json
import math
import sys
import time

try:
    import numpy as np
    import torch
    from torch import nn
except Exception as e:  # pragma: no cover - environment dependent
    print("torch_train: torch/numpy not available (%s)" % e, file=sys.stderr)
    sys.exit(77)

LOG_2PI = math.log(2 * math.pi)


def mlp(n_in, hidden, n_out):
    """Linear layers in -> h_1 -> ... -> out with ReLU between; last one zero."""
    layers, k = [], n_in
    for h in hidden:
        layers += [nn.Linear(k, h), nn.ReLU()]
        k = h
    last = nn.Linear(k, n_out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class AffineCoupling(nn.Module):
    def __init__(self, D, hidden):
        super().__init__()
        self.D, self.d = D, D // 2
        self.net = mlp(self.d, hidden, 2 * (D - self.d))

    def inverse(self, y):
        """Density direction: u and log|det du/dy|."""
        d, D = self.d, self.D
        h = self.net(y[:, :d])
        s = torch.tanh(h[:, :D - d])
        t = h[:, D - d:]
        u = torch.cat([y[:, :d], (y[:, d:] - t) * torch.exp(-s)], dim=1)
        return u, -s.sum(dim=1)


class Reverse(nn.Module):
    def inverse(self, y):
        return y.flip(1), None


class ActNorm(nn.Module):
    def __init__(self, D):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(D))
        self.bias = nn.Parameter(torch.zeros(D))

    def inverse(self, y):
        u = (y - self.bias) * torch.exp(-self.log_scale)
        return u, -self.log_scale.sum().expand(y.shape[0])


class RealNVP(nn.Module):
    def __init__(self, D=2, blocks=4, hidden=(64, 64)):
        super().__init__()
        layers = []
        for _ in range(blocks):
            layers += [AffineCoupling(D, list(hidden)), Reverse()]
        layers.append(ActNorm(D))
        self.layers = nn.ModuleList(layers)   # generative order
        self.D = D

    def log_prob(self, x):
        u, ld = x, torch.zeros(x.shape[0], dtype=x.dtype)
        for layer in reversed(self.layers):
            u, l = layer.inverse(u)
            if l is not None:
                ld = ld + l
        return -0.5 * (u * u).sum(dim=1) - 0.5 * self.D * LOG_2PI + ld

    @torch.no_grad()
    def init_actnorm(self, batch):
        """bias = mean, log_scale = log std of each actnorm's input (density
        direction) over one batch, from the data side inwards."""
        for k in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[k]
            if not isinstance(layer, ActNorm):
                continue
            u = batch.double()
            for j in range(len(self.layers) - 1, k, -1):
                u, _ = self.layers[j].inverse(u.to(batch.dtype))
            u = u.double()
            mu = u.mean(dim=0)
            var = ((u - mu) ** 2).mean(dim=0)
            layer.bias.copy_(mu.to(batch.dtype))
            layer.log_scale.copy_((0.5 * torch.log(var + 1e-12)).to(batch.dtype))


def load(path):
    a = np.load(path).astype(np.float32)
    if a.ndim != 2 or a.shape[1] != 2 or a.shape[0] == 0:
        print("torch_train: %s: expected N x 2 rows, got shape %s" % (path, a.shape), file=sys.stderr)
        sys.exit(2)
    return torch.from_numpy(np.ascontiguousarray(a))


@torch.no_grad()
def mean_nll(model, x):
    return float(-model.log_prob(x).double().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--valid", required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=0,
                    help="validate every N steps inside the timed loop (0: only after the last)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    x, v = load(a.train), load(a.valid)
    n, B = x.shape[0], min(a.batch, x.shape[0])
    spe = n // B
    gen = torch.Generator().manual_seed(a.seed)

    model = RealNVP()
    perm = torch.randperm(n, generator=gen)
    model.init_actnorm(x[perm[:B]])
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8)

    loss = float("nan")
    t0 = time.perf_counter()
    for s in range(a.steps):
        k = s % spe
        if k == 0 and s > 0:
            perm = torch.randperm(n, generator=gen)
        xb = x[perm[k * B:(k + 1) * B]]
        opt.zero_grad(set_to_none=True)
        l = -model.log_prob(xb).mean()
        l.backward()
        opt.step()
        if a.eval_every and (s + 1) % a.eval_every == 0 and s + 1 != a.steps:
            mean_nll(model, v)
        if s + 1 == a.steps:
            loss = float(l)
    valid = mean_nll(model, v)   # the last evaluation, as flowc's at the last step
    el = time.perf_counter() - t0

    print(json.dumps({"samples_per_s": a.steps * B / el, "valid_nll": valid, "train_loss": loss,
                      "threads": a.threads, "steps": a.steps, "batch": B, "seconds": el}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
