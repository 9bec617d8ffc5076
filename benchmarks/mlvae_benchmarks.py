"""ML-VAE speed benchmarks, measured side by side in one run.

1. One SVI step (Pyro, TraceMeanField_ELBO) vs a hand-written PyTorch step with the same networks, the same loss
   (analytic KLs, one reparameterised sample) and the same Adam: ratio = Pyro / hand-written.
2. The vectorised product-of-normals group posterior vs a per-group Python loop, 256 groups.
3. Test-time inference: amortised encoder vs non-amortised SVI fitting of local parameters.

Usage: python benchmarks/mlvae_benchmarks.py [--repeats 200] [--threads 1] [--device cpu]
"""
import argparse
import time

import pyro
import torch

from pyro_groupvae.data import GroupBatchSampler, load_dataset
from pyro_groupvae.distributions import product_of_normals
from pyro_groupvae.infer.optim import FusedAdam, adam
from timing import time_pair
from pyro_groupvae.models import MLVAE


def timeit(fn, repeats, warmup=10, sync=lambda: None):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]  # median


def hand_written_loss(m, x, gi, g):
    """-ELBO of the ML-VAE written directly in PyTorch (same networks and estimator as the Pyro version)."""
    h = m.trunk(x)
    s_loc, s_lv = m.style_head(h)
    c_loc, c_lv = m.content_head(h)
    gc_loc, gc_lv = product_of_normals(c_loc, c_lv, gi, g)
    c = gc_loc + torch.exp(0.5 * gc_lv) * torch.randn_like(gc_loc)
    s = s_loc + torch.exp(0.5 * s_lv) * torch.randn_like(s_loc)
    out, lv = m.decoder(torch.cat([c[gi], s], -1))
    rec = m.likelihood(out, lv).log_prob(x).sum()
    kl_c = 0.5 * (gc_lv.exp() + gc_loc ** 2 - 1 - gc_lv).sum()
    kl_s = 0.5 * (s_lv.exp() + s_loc ** 2 - 1 - s_lv).sum()
    return -(rec - kl_c - kl_s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    data = load_dataset("mnist", "train")
    batch = next(iter(GroupBatchSampler(data.y, batch_groups=16, group_size=16, seed=0)))
    x, gi, g = data.x[batch.indices].to(dev), batch.group_index.to(dev), batch.num_groups
    print(f"device {dev}, threads {args.threads}, batch {x.shape[0]} images in {g} groups, "
          f"median of {args.repeats} steps")

    # 1. SVI step vs hand-written step
    torch.manual_seed(0)
    m = MLVAE().to(dev)
    pyro.clear_param_store()
    # the optimiser of pyro_groupvae.infer.fit (one Adam over all parameters), and the same Adam below
    svi = pyro.infer.SVI(m.model, m.guide, FusedAdam({"lr": 1e-3}), pyro.infer.TraceMeanField_ELBO())
    torch.manual_seed(0)
    m2 = MLVAE().to(dev)
    opt = adam(m2.parameters(), lr=1e-3)

    def torch_step():
        opt.zero_grad()
        loss = hand_written_loss(m2, x, gi, g)
        loss.backward()
        opt.step()
        return loss.item()

    # as in pyro_groupvae.infer.fit: data validated once, no per-step checks (both sides)
    with m.trusted_inputs(), pyro.validation_enabled(False):
        t_pyro, t_torch = time_pair(lambda: svi.step(x, gi, g), torch_step, args.repeats, sync=sync)
    # the same loss: compare values on fixed noise
    torch.manual_seed(1)
    lp = pyro.infer.TraceMeanField_ELBO().loss(m2.model, m2.guide, x, gi, g)
    torch.manual_seed(1)
    lt = hand_written_loss(m2, x, gi, g).item()
    print(f"[1] SVI step {t_pyro * 1e3:.2f} ms | hand-written PyTorch step {t_torch * 1e3:.2f} ms | "
          f"ratio {t_pyro / t_torch:.3f} (target <= 1.10) | same loss: pyro {lp:.2f} vs torch {lt:.2f}")

    # 2. vectorised group posterior vs per-group loop, 256 groups
    G, per, D = 256, 8, 10
    loc = torch.randn(G * per, D, device=dev)
    lv = torch.randn(G * per, D, device=dev)
    gidx = torch.arange(G, device=dev).repeat_interleave(per)

    def loop():
        out = []
        for k in range(G):
            mask = gidx == k
            prec = torch.exp(-lv[mask])
            v = 1.0 / prec.sum(0)
            out.append((v * (prec * loc[mask]).sum(0), v.log()))
        return out

    t_vec = timeit(lambda: product_of_normals(loc, lv, gidx, G), args.repeats, sync=sync)
    t_loop = timeit(loop, max(10, args.repeats // 10), sync=sync)
    print(f"[2] group posterior, {G} groups x {per}: vectorised {t_vec * 1e3:.3f} ms | loop {t_loop * 1e3:.2f} ms | "
          f"speed-up {t_loop / t_vec:.1f}x")

    # 3. amortised vs SVI test-time inference on 100 test images in 10 groups
    test = load_dataset("mnist", "test")
    xt, yt = test.x[:100].to(dev), test.y[:100].to(dev)
    m.eval()
    t_enc = timeit(lambda: m.encode(xt, yt), 20, warmup=3, sync=sync)
    t0 = time.perf_counter()
    m.infer_local(xt, yt, steps=200)
    t_svi = time.perf_counter() - t0
    print(f"[3] test-time inference, 100 images: amortised encode {t_enc * 1e3:.2f} ms | "
          f"SVI 200 steps {t_svi:.2f} s | ratio {t_svi / t_enc:.0f}x")


if __name__ == "__main__":
    main()
