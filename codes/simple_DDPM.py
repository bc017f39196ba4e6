"""DDPM with one network per step: lesson 4's DDPM in 1D, with T small networks in place of one.

Training is Ho et al. 2020's Algorithm 1: jump from x0 to x_t with the closed-form marginal
    q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I)                           (Ho et al., eq. 4)
and regress the noise. Sampling is Algorithm 2, ancestral sampling: from x_T ~ N(0, 1), draw each
x_{t-1} in turn from the posterior q(x_{t-1} | x_t, x0), Bayes' rule for the previous step given
x_t and x0, with x0 replaced by the network's estimate (eqs. 6-7, 11). The schedule is lesson 4's:
the noise-to-signal ratio sigma_t = sqrt((1 - abar_t) / abar_t) log-spaced from sigma_min to
sigma_max. What changes from lesson 4: step t has a network of its own, in an nn.ModuleList, so no
network needs to be told t, but each one sees only 1/T of the data, and T networks cost T forward
passes. The script prints lesson 4's numbers and its training time, so that the two compare.

    python codes/simple_DDPM.py                # about 20 s on a 2-core CPU; -h lists every flag
"""
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from common import (check, check_finite, copy_to_assets, parse_config, save_figure, save_results,
                    show_figures)

mu_data = 1.0  # mean of the data distribution N(mu_data, sigma_data^2)
sigma_data = 0.01  # std of the data distribution
T = 100  # diffusion steps = networks; fewer, coarser steps bias the ancestral sampler
sigma_min = 0.001  # noise-to-signal ratio at t = 1: << sigma_data, so the last step barely matters
sigma_max = 100.0  # noise-to-signal ratio at t = T: abar_T = 1 / (1 + sigma_max^2), x_T ~ N(0, 1)
hidden = 32  # width of each per-step network
nb_epochs = 250  # training iterations: each trains all T networks on a fresh batch
batch_size = 256  # samples per network per training iteration
lr = 1e-2  # Adam learning rate, annealed to 0 along a cosine
n_samples = 5000  # samples generated at the end
assets = ""  # also write the README's picture to this folder; empty: only --out


# ---------------------------------------------------------------------- data and schedule
def sample_data(n, cfg):
    return cfg.mu_data + cfg.sigma_data * torch.randn(n, 1, device=cfg.device)  # (n, 1)


def noise_schedule(T, sigma_min, sigma_max):
    """beta_t, alpha_t = 1 - beta_t and abar_t = prod_{s<=t} alpha_s (Ho et al., eq. 4) for t = 1..T
    (index 0..T-1), from sigma_t = sqrt((1 - abar_t) / abar_t) log-spaced from sigma_min to
    sigma_max."""
    sigmas = torch.logspace(math.log10(sigma_min), math.log10(sigma_max), T, dtype=torch.float64)
    alpha_bar = 1 / (1 + sigmas ** 2)  # (T,)
    alpha_bar_before = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])  # abar_{t-1}
    betas = 1 - alpha_bar / alpha_bar_before
    return betas.float(), (1 - betas).float(), alpha_bar.float()


# ---------------------------------------------------------------------- networks
class EpsModels(nn.Module):
    """eps_theta(x_t, t) = the t-th of T small MLPs: nothing is shared between steps. Each network
    first standardises its input with a BatchNorm (it subtracts the batch's mean and divides by its
    std, and keeps their running averages for sampling): x_t is 1 +- 0.01 at the low steps and
    N(0, 1) at the high ones, and a network that sees only one step need not learn that scale."""

    def __init__(self, dim, hidden, T):
        super().__init__()
        self.nets = nn.ModuleList(nn.Sequential(nn.BatchNorm1d(dim), nn.Linear(dim, hidden),
                                                nn.SiLU(), nn.Linear(hidden, dim))
                                  for _ in range(T))

    def forward(self, x, t):  # x: (n, dim), t: one integer step 0..T-1, shared by the batch
        return self.nets[t](x)


# ---------------------------------------------------------------------- training
def train(model, sample_data, alpha_bar, cfg):
    """Algorithm 1, for every t at once: each network gets its own fresh batch, and the losses of
    the T networks are summed (they share no parameters: T independent regressions side by side)."""
    # fused: Adam updates all the T networks' tensors in one go, not in a Python loop over them
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.nb_epochs)
    losses = []
    for epoch in range(cfg.nb_epochs):
        x0 = sample_data(cfg.batch_size * cfg.T, cfg).reshape(cfg.T, cfg.batch_size, 1)  # (T, B, 1)
        eps = torch.randn_like(x0)
        a = alpha_bar[:, None, None]  # (T, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps  # eq. 4, for every t
        eps_hat = torch.stack([model(x_t[t], t) for t in range(cfg.T)])  # (T, B, 1): t sees step t
        loss = ((eps - eps_hat) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        check_finite(losses[-1], epoch)
    return losses


# ---------------------------------------------------------------------- sampler
@torch.no_grad()
def sample(eps_model, betas, alphas, alpha_bar, x):
    """Algorithm 2 from x = x_T ~ N(0, I): x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) /
    sqrt(alpha_t) + sqrt(beta~_t) z, with beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t (eq. 7)
    and no noise at the last step. Returns the trajectory x_T, ..., x_0."""
    trajectory = [x]
    for t in reversed(range(len(betas))):
        eps = eps_model(x, t)
        x = (x - betas[t] / (1 - alpha_bar[t]).sqrt() * eps) / alphas[t].sqrt()  # eq. 11
        if t > 0:
            posterior_var = (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * betas[t]  # beta~_t
            x = x + posterior_var.sqrt() * torch.randn_like(x)  # the std is sqrt(beta~_t)
        trajectory.append(x)
    return trajectory


def run(cfg):
    check(cfg.sigma_min < cfg.sigma_max, "--sigma_min must be smaller than --sigma_max")
    check(cfg.batch_size >= 2, "--batch_size must be at least 2: each network's BatchNorm "
          "standardises a batch")
    schedule = noise_schedule(cfg.T, cfg.sigma_min, cfg.sigma_max)
    betas, alphas, alpha_bar = (v.to(cfg.device) for v in schedule)
    model = EpsModels(1, cfg.hidden, cfg.T).to(cfg.device)
    start = time.perf_counter()
    losses = train(model, sample_data, alpha_bar, cfg)
    print(f"trained {cfg.T} networks ({sum(p.numel() for p in model.parameters())} parameters) "
          f"in {time.perf_counter() - start:.1f} s")
    model.eval()  # BatchNorm now uses the statistics of each step gathered in training
    x_T = torch.randn(cfg.n_samples, 1, device=cfg.device)
    return alpha_bar, losses, sample(model, betas, alphas, alpha_bar, x_T)


# ---------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    alpha_bar, losses, trajectory = run(cfg)
    a_T = alpha_bar[-1].item()
    print(f"abar_T = {a_T:.2e}: x_T = sqrt(abar_T) x0 + sqrt(1 - abar_T) eps is N(0, 1) to within "
          f"{math.sqrt(a_T) * cfg.mu_data:.3f} in mean")
    for t in range(cfg.T, -1, -max(1, cfg.T // 10)):
        x = trajectory[cfg.T - t]
        print(f"t = {t:4d}  mean {x.mean():7.4f}  std {x.std():.4f}")

    fig, (ax_loss, ax_hist) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.semilogy(losses)
    ax_loss.set(title="training loss", xlabel="iteration")
    samples, data = trajectory[-1].cpu(), sample_data(cfg.n_samples, cfg).cpu()
    ax_hist.hist([data[:, 0], samples[:, 0]], bins=60, density=True, label=["data", "generated"],
                 alpha=0.7)
    ax_hist.set(title="final samples")
    ax_hist.legend()
    save_figure(fig, cfg.out / "simple_DDPM.png")
    copy_to_assets(cfg.out / "simple_DDPM.png", cfg)
    save_results(cfg.out, samples, data)

    mean, std = samples.mean().item(), samples.std().item()
    print(f"generated: mean {mean:.3f} std {std:.4f} | target: mean {cfg.mu_data:.3f} "
          f"std {cfg.sigma_data:.4f}")
    mean_error, std_ratio = abs(mean - cfg.mu_data) / cfg.sigma_data, std / cfg.sigma_data
    print(f"|mean error| = {mean_error:.2f} sigma_data (target <= 0.30), "
          f"std ratio = {std_ratio:.3f} (target 0.90-1.10)")
    show_figures()
