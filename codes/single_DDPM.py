"""DDPM in 1D (Ho et al. 2020): lesson 1's data, now noised and denoised in T small Gaussian steps.

Lessons 1-3 noise the data with one jump to each level sigma. DDPM's forward process is a chain of T
small steps x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, whose marginal has a closed form
    q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I),  abar_t = prod_{s<=t} (1 - beta_s)   (eq. 4).
Training is Algorithm 1: jump from x0 to x_t with eq. 4 and regress the noise eps. Sampling is
Algorithm 2, ancestral sampling: from x_T ~ N(0, 1), draw each x_{t-1} in turn from the posterior
q(x_{t-1} | x_t, x0), the Gaussian that Bayes' rule gives for the previous step once x_t and x0 are
known, with x0 replaced by the network's estimate (eqs. 6-7, 11). One network serves all T steps.
The schedule: Ho et al.'s linear betas were made for images in [-1, 1]; their first step adds noise
of std 0.01, as wide as our whole data distribution, and the noise-free last step would collapse the
variance. We space the noise-to-signal ratio sigma_t = sqrt((1 - abar_t) / abar_t) log-uniformly
instead, like the Sigmas ladder of lessons 1-3, from sigma_min to sigma_max.

    python codes/single_DDPM.py                # about 26 s on a 2-core CPU; -h lists every flag
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
T = 1000  # diffusion steps
sigma_min = 0.001  # noise-to-signal ratio at t = 1: << sigma_data, so the last step barely matters
sigma_max = 100.0  # noise-to-signal ratio at t = T: abar_T = 1 / (1 + sigma_max^2), x_T ~ N(0, 1)
hidden = 128  # width of the network's hidden layers
nb_epochs = 2000  # training iterations, each on a fresh batch
batch_size = 1024  # samples per training iteration
lr = 2e-3  # Adam learning rate, annealed to 0 along a cosine
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


# ---------------------------------------------------------------------- network
class EpsModel(nn.Module):
    """eps_theta(x_t, t): one MLP for every step, told t as the scalar t / T in [0, 1]. With our
    schedule t / T is an affine function of log sigma_t, the natural coordinate of noise levels."""

    def __init__(self, dim, hidden, T):
        super().__init__()
        self.T = T
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, t):  # x: (n, dim), t: (n,) integer steps 0..T-1
        return self.net(torch.cat([x, t[:, None].float() / self.T], dim=1))


# ---------------------------------------------------------------------- training
def train(model, sample_data, alpha_bar, cfg):
    """Algorithm 1: t ~ Uniform, eps ~ N(0, I), a gradient step on |eps - eps_theta(x_t, t)|^2 with
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.nb_epochs)
    losses = []
    for epoch in range(cfg.nb_epochs):
        x0 = sample_data(cfg.batch_size, cfg)  # (B, dim)
        t = torch.randint(0, cfg.T, (cfg.batch_size,), device=cfg.device)  # (B,)
        eps = torch.randn_like(x0)
        a = alpha_bar[t, None]  # (B, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps  # eq. 4, sampled in one jump
        loss = ((eps - model(x_t, t)) ** 2).mean()
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
        eps = eps_model(x, torch.full((len(x),), t, device=x.device))
        x = (x - betas[t] / (1 - alpha_bar[t]).sqrt() * eps) / alphas[t].sqrt()  # eq. 11
        if t > 0:
            posterior_var = (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * betas[t]  # beta~_t
            x = x + posterior_var.sqrt() * torch.randn_like(x)  # the std is sqrt(beta~_t)
        trajectory.append(x)
    return trajectory


def run(cfg):
    check(cfg.sigma_min < cfg.sigma_max, "--sigma_min must be smaller than --sigma_max")
    schedule = noise_schedule(cfg.T, cfg.sigma_min, cfg.sigma_max)
    betas, alphas, alpha_bar = (v.to(cfg.device) for v in schedule)
    model = EpsModel(1, cfg.hidden, cfg.T).to(cfg.device)
    start = time.perf_counter()
    losses = train(model, sample_data, alpha_bar, cfg)
    print(f"trained 1 network ({sum(p.numel() for p in model.parameters())} parameters) "
          f"in {time.perf_counter() - start:.1f} s")
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
    save_figure(fig, cfg.out / "single_DDPM.png")
    copy_to_assets(cfg.out / "single_DDPM.png", cfg)
    save_results(cfg.out, samples, data)

    mean, std = samples.mean().item(), samples.std().item()
    print(f"generated: mean {mean:.3f} std {std:.4f} | target: mean {cfg.mu_data:.3f} "
          f"std {cfg.sigma_data:.4f}")
    mean_error, std_ratio = abs(mean - cfg.mu_data) / cfg.sigma_data, std / cfg.sigma_data
    print(f"|mean error| = {mean_error:.2f} sigma_data (target <= 0.30), "
          f"std ratio = {std_ratio:.3f} (target 0.90-1.10)")
    show_figures()
