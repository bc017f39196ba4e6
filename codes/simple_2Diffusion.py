"""Naive diffusion in 2D: the 1D lesson with minimal changes, now for data N(mu_data, sigma_data^2 I) in 2D.

We noise the data at the levels `Sigmas`, the ladder of Karras et al. 2022 (eq. 5, rho = 7), train one small
network D(x, sigma) to guess the clean x0 at every level, then walk down the ladder with Heun's method on the
probability-flow ODE (Karras et al. 2022, eq. 4 and Algorithm 1):
    dx/dsigma = (x - D(x, sigma)) / sigma.
The original tutorial instead subtracted the predicted noise at each step; that collapses the variance (see the
README). Only the dimension changes from the 1D lesson: the data, the network's input/output width, and the
metrics, now per coordinate.

    python codes/simple_2Diffusion.py          # about 17 s on a 2-core CPU; -h lists every flag
"""
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from common import check, check_finite, parse_config, save_figure, save_results, show_figures

mu_data = (-1.0, 1.0)  # mean of the data distribution N(mu_data, sigma_data^2 I)
sigma_data = 0.01  # std of each coordinate of the data
sigma_min = 0.002  # smallest noise level of the ladder
sigma_max = 20.0  # largest noise level: N(0, sigma_max^2 I) must hide mu_data, so sigma_max >> |mu_data|
N = 40  # noise levels on the ladder = denoising steps
rho = 7.0  # curvature of the ladder: a larger rho spends more steps at small sigma
width = 64  # width of the denoiser's hidden layers
nb_epochs = 3000  # training iterations, each on a fresh batch (2D needs a little more than 1D)
batch_size = 1024  # samples per training iteration
lr = 2e-3  # Adam learning rate, annealed to 0 along a cosine
test_size = 10000  # samples generated at the end


# ----------------------------------------------------------------------------- data and noise levels
def sample_data(n, cfg):
    return torch.tensor(cfg.mu_data, device=cfg.device) + cfg.sigma_data * torch.randn(n, 2, device=cfg.device)


def karras_sigmas(sigma_min, sigma_max, N, rho):
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, then a final 0."""
    ramp = torch.linspace(0, 1, N)
    Sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([Sigmas, torch.zeros(1)])  # (N + 1,)


# ----------------------------------------------------------------------------- denoiser
class Denoiser(nn.Module):
    """D(x, sigma) ~ E[x0 | x0 + sigma * n = x], with the scalings of Karras et al. 2022 (Table 1): they keep
    the network's input and its regression target at unit scale at every sigma. sigma_rms is the data's root
    mean square per coordinate: the data are not centred, so their std alone would be the wrong scale."""

    def __init__(self, dim, width, sigma_rms):
        super().__init__()
        self.sigma_rms = sigma_rms
        self.net = nn.Sequential(nn.Linear(dim + 1, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x, sigma):  # x: (n, dim), sigma: (n, 1)
        total = sigma ** 2 + self.sigma_rms ** 2
        c_skip, c_out, c_in = self.sigma_rms ** 2 / total, sigma * self.sigma_rms / total.sqrt(), total.rsqrt()
        return c_skip * x + c_out * self.net(torch.cat([c_in * x, sigma.log() / 4], dim=1))


# ----------------------------------------------------------------------------- training
def train(denoiser, sample_data, cfg):
    """Denoising score matching (Karras et al. 2022, eq. 2), weighted by 1/c_out^2 so every sigma counts alike;
    sigma is drawn log-uniformly over [sigma_min, sigma_max], the range the ladder walks."""
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.nb_epochs)
    losses = []
    for epoch in range(cfg.nb_epochs):
        x0 = sample_data(cfg.batch_size, cfg)  # (B, dim)
        log_sigma = torch.rand(cfg.batch_size, 1, device=cfg.device) * math.log(cfg.sigma_max / cfg.sigma_min)
        sigma = cfg.sigma_min * log_sigma.exp()  # (B, 1)
        x = x0 + sigma * torch.randn_like(x0)
        weight = (sigma ** 2 + denoiser.sigma_rms ** 2) / (sigma * denoiser.sigma_rms) ** 2  # 1 / c_out^2
        loss = (weight * (denoiser(x, sigma) - x0) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        check_finite(losses[-1], epoch)
    return losses


# ----------------------------------------------------------------------------- sampler
@torch.no_grad()
def sample(denoiser, Sigmas, x):
    """Heun's method (Karras et al. 2022, Algorithm 1) from x ~ N(0, Sigmas[0]^2) down to sigma = 0.
    Returns the trajectory: x after each step, starting with the noise."""
    trajectory = [x]
    for sigma, sigma_next in zip(Sigmas[:-1], Sigmas[1:]):
        slope = (x - denoiser(x, sigma.expand(len(x), 1))) / sigma  # dx/dsigma at sigma
        x_next = x + (sigma_next - sigma) * slope  # Euler step
        if sigma_next > 0:  # second-order correction: average with the slope at the arrival point
            slope_next = (x_next - denoiser(x_next, sigma_next.expand(len(x), 1))) / sigma_next
            x_next = x + (sigma_next - sigma) * (slope + slope_next) / 2
        x = x_next
        trajectory.append(x)
    return trajectory


def run(cfg):
    check(cfg.sigma_min < cfg.sigma_max, "--sigma_min must be smaller than --sigma_max")
    Sigmas = karras_sigmas(cfg.sigma_min, cfg.sigma_max, cfg.N, cfg.rho).to(cfg.device)
    sigma_rms = math.sqrt(sum(m ** 2 for m in cfg.mu_data) / 2 + cfg.sigma_data ** 2)
    denoiser = Denoiser(2, cfg.width, sigma_rms).to(cfg.device)
    losses = train(denoiser, sample_data, cfg)
    trajectory = sample(denoiser, Sigmas, cfg.sigma_max * torch.randn(cfg.test_size, 2, device=cfg.device))
    return Sigmas, losses, trajectory


# ----------------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    Sigmas, losses, trajectory = run(cfg)
    means = torch.stack([x.mean(0) for x in trajectory]).tolist()  # (N + 1, 2)
    stds = torch.stack([x.std(0) for x in trajectory]).tolist()
    for i, (sigma, mean, std) in enumerate(zip(Sigmas.tolist(), means, stds)):
        print(f"step {i:2d}  sigma {sigma:9.4f}  mean ({mean[0]:7.4f}, {mean[1]:7.4f})  std ({std[0]:.4f}, {std[1]:.4f})")

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
    save_figure(fig, cfg.out / "training_and_sampling.png")
    save_results(cfg.out, samples, data)

    for axis, (mu, mean, std) in enumerate(zip(cfg.mu_data, means[-1], stds[-1])):
        print(f"coordinate {axis}: generated: mean {mean:.3f} std {std:.4f} | target: mean {mu:.3f} "
              f"std {cfg.sigma_data:.4f} | |mean error| = {abs(mean - mu) / cfg.sigma_data:.2f} sigma_data "
              f"(target <= 0.30), std ratio = {std / cfg.sigma_data:.3f} (target 0.90-1.10)")
    show_figures()
