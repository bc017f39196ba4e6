"""Naive diffusion in 2D: lesson 1's recipe for data N(mu, s^2 I) in 2D, changed only where it must.

We noise the data at the levels `Sigmas` (the ladder of Karras et al. 2022, eq. 5), train one small
network D(x, sigma) to guess the clean x0 at every level, then walk down the ladder with Heun's
method (a second-order ODE solver: an Euler step, then a correction with the slope at its end) on
the probability-flow ODE
    dx/dsigma = (x - D(x, sigma)) / sigma          (Karras et al. 2022, eq. 4 and Algorithm 1),
the deterministic path that carries N(0, sigma_max^2 I) into the data, every noise level along the
way matched. What changes from lesson 1: the data, the width of the network's input and output, and
the numbers printed, now one per coordinate.

    python codes/simple_2Diffusion.py          # about 11 s on a 2-core CPU; -h lists every flag
"""
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from common import (check, check_finite, copy_to_assets, parse_config, save_figure, save_results,
                    show_figures)

mu_data = (-1.0, 1.0)  # mean of the data distribution N(mu_data, sigma_data^2 I)
sigma_data = 0.01  # std of each coordinate of the data
sigma_min = 0.002  # smallest noise level of the ladder
sigma_max = 20.0  # largest noise level: N(0, sigma_max^2 I) must hide mu_data, so sigma_max >> |mu|
N = 40  # noise levels on the ladder = denoising steps
rho = 7.0  # curvature of the ladder: a larger rho spends more steps at small sigma
width = 64  # width of the denoiser's hidden layers
nb_epochs = 3000  # training iterations, each on a fresh batch
batch_size = 1024  # samples per training iteration
lr = 2e-3  # Adam learning rate, annealed to 0 along a cosine
test_size = 10000  # samples generated at the end
assets = ""  # also write the README's picture to this folder; empty: only --out


# ---------------------------------------------------------------------- data and noise levels
def sample_data(n, cfg):
    mu = torch.tensor(cfg.mu_data, device=cfg.device)  # (2,)
    return mu + cfg.sigma_data * torch.randn(n, 2, device=cfg.device)  # (n, 2)


def karras_sigmas(sigma_min, sigma_max, N, rho):
    """sigma_i = (top + i / (N - 1) (bottom - top))^rho with top = sigma_max^(1/rho), bottom =
    sigma_min^(1/rho), for i = 0..N-1, then a final 0 (Karras et al. 2022, eq. 5)."""
    ramp = torch.linspace(0, 1, N)
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    Sigmas = (top + ramp * (bottom - top)) ** rho
    return torch.cat([Sigmas, torch.zeros(1)])  # (N + 1,)


# ---------------------------------------------------------------------- denoiser
class Denoiser(nn.Module):
    """D(x, sigma) ~ E[x0 | x0 + sigma n = x], the clean point. Karras et al. 2022 (Table 1) wrap
    the network F so that its input and its target have unit scale at every sigma. sigma_rms is the
    data's root mean square per coordinate: the data are not centred on 0, so their std would be
    the wrong scale."""

    def __init__(self, dim, width, sigma_rms):
        super().__init__()
        self.sigma_rms = sigma_rms
        self.net = nn.Sequential(nn.Linear(dim + 1, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x, sigma):  # x: (n, dim), sigma: (n, 1)
        total = sigma ** 2 + self.sigma_rms ** 2
        c_skip = self.sigma_rms ** 2 / total  # Table 1: how much of x passes straight through
        c_out = sigma * self.sigma_rms / total.sqrt()  # Table 1: the scale of what the network adds
        c_in = total.rsqrt()  # Table 1: makes the network's input of unit variance
        c_noise = sigma.log() / 4  # Table 1: how the network is told the noise level
        return c_skip * x + c_out * self.net(torch.cat([c_in * x, c_noise], dim=1))  # (n, dim)


# ---------------------------------------------------------------------- training
def train(denoiser, sample_data, cfg):
    """Denoising score matching (Karras et al. 2022, eq. 2: regress x0 from x0 + sigma n), weighted
    by 1 / c_out^2 so that every sigma counts alike; sigma is drawn log-uniformly between sigma_min
    and sigma_max, the range the ladder walks."""
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.nb_epochs)
    losses = []
    for epoch in range(cfg.nb_epochs):
        x0 = sample_data(cfg.batch_size, cfg)  # (B, dim)
        log_ratio = math.log(cfg.sigma_max / cfg.sigma_min)
        u = torch.rand(cfg.batch_size, 1, device=cfg.device)  # (B, 1)
        sigma = cfg.sigma_min * (log_ratio * u).exp()  # (B, 1), log-uniform
        x = x0 + sigma * torch.randn_like(x0)
        rms = denoiser.sigma_rms
        weight = (sigma ** 2 + rms ** 2) / (sigma * rms) ** 2  # 1 / c_out^2
        loss = (weight * (denoiser(x, sigma) - x0) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        check_finite(losses[-1], epoch)
    return losses


# ---------------------------------------------------------------------- sampler
@torch.no_grad()
def sample(denoiser, Sigmas, x):
    """Heun's method (Karras et al. 2022, Algorithm 1) from x ~ N(0, Sigmas[0]^2 I) to sigma = 0.
    Returns the trajectory: x after each step, starting with the noise."""
    trajectory = [x]
    for sigma, sigma_next in zip(Sigmas[:-1], Sigmas[1:]):
        slope = (x - denoiser(x, sigma.expand(len(x), 1))) / sigma  # dx/dsigma at sigma
        x_next = x + (sigma_next - sigma) * slope  # Euler step
        if sigma_next > 0:  # Heun's correction: average with the slope at the arrival point
            slope_next = (x_next - denoiser(x_next, sigma_next.expand(len(x), 1))) / sigma_next
            x_next = x + (sigma_next - sigma) * (slope + slope_next) / 2
        x = x_next
        trajectory.append(x)
    return trajectory


def run(cfg):
    check(cfg.sigma_min < cfg.sigma_max, "--sigma_min must be smaller than --sigma_max")
    check(len(cfg.mu_data) == 2, f"--mu_data takes two coordinates, got {cfg.mu_data}")
    Sigmas = karras_sigmas(cfg.sigma_min, cfg.sigma_max, cfg.N, cfg.rho).to(cfg.device)
    sigma_rms = math.sqrt(sum(m ** 2 for m in cfg.mu_data) / 2 + cfg.sigma_data ** 2)
    denoiser = Denoiser(2, cfg.width, sigma_rms).to(cfg.device)
    losses = train(denoiser, sample_data, cfg)
    noise = cfg.sigma_max * torch.randn(cfg.test_size, 2, device=cfg.device)  # (n, 2)
    return Sigmas, losses, sample(denoiser, Sigmas, noise)


# ---------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    Sigmas, losses, trajectory = run(cfg)
    means = torch.stack([x.mean(0) for x in trajectory]).tolist()  # (N + 1, 2)
    stds = torch.stack([x.std(0) for x in trajectory]).tolist()
    for i, (sigma, mean, std) in enumerate(zip(Sigmas.tolist(), means, stds)):
        print(f"step {i:2d}  sigma {sigma:9.4f}  mean ({mean[0]:7.4f}, {mean[1]:7.4f})  "
              f"std ({std[0]:.4f}, {std[1]:.4f})")

    fig, (ax_loss, ax_std, ax_cloud) = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss.semilogy(losses)
    ax_loss.set(title="training loss", xlabel="iteration")
    ax_std.semilogy(stds, "o-", label=["generated, x", "generated, y"])
    ax_std.semilogy((Sigmas ** 2 + cfg.sigma_data ** 2).sqrt().tolist(), "k--", label="exact")
    ax_std.set(title="sample std after each step", xlabel="step")
    ax_std.legend()
    samples, data = trajectory[-1].cpu(), sample_data(cfg.test_size, cfg).cpu()
    ax_cloud.scatter(*data.T, s=1, alpha=0.3, label="data")
    ax_cloud.scatter(*samples.T, s=1, alpha=0.3, label="generated")
    ax_cloud.set(title="final samples", aspect="equal")
    ax_cloud.legend()
    save_figure(fig, cfg.out / "simple_2Diffusion.png")
    copy_to_assets(cfg.out / "simple_2Diffusion.png", cfg)
    save_results(cfg.out, samples, data)

    for axis, (mu, mean, std) in enumerate(zip(cfg.mu_data, means[-1], stds[-1])):
        mean_error, std_ratio = abs(mean - mu) / cfg.sigma_data, std / cfg.sigma_data
        print(f"coordinate {axis}: generated: mean {mean:.3f} std {std:.4f} | target: "
              f"mean {mu:.3f} std {cfg.sigma_data:.4f} | |mean error| = {mean_error:.2f} "
              f"sigma_data (target <= 0.30), std ratio = {std_ratio:.3f} (target 0.90-1.10)")
    show_figures()
