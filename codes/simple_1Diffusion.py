"""Naive diffusion in 1D: turn noise N(0, sigma_max^2) into samples of the data N(mu_data, sigma_data^2).

The first lesson. We noise the data at the levels `Sigmas` (the ladder of Karras et al. 2022, eq. 5), train one small
network D(x, sigma) to guess the clean x0 at any noise level, then walk down the ladder with Heun's method (a
second-order ODE solver: an Euler step, then a correction with the slope at its end) on the probability-flow ODE
    dx/dsigma = (x - D(x, sigma)) / sigma          (Karras et al. 2022, eq. 4 and Algorithm 1),
the deterministic path that carries N(0, sigma_max^2) into the data, every noise level along the way matched.
`--method tutorial` runs the blog post's own code instead: a network that predicts the noise to remove, subtracted at
each step. It collapses the variance; the README explains why.

    python codes/simple_1Diffusion.py                    # about 11 s on a 2-core CPU; -h lists every flag
    python codes/simple_1Diffusion.py --method tutorial  # the blog post's code and constants: watch the std collapse
"""
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from common import check, check_finite, parse_config, save_figure, save_results, show_figures

method = "edm"  # edm|tutorial: the fixed recipe (Karras et al. 2022), or the blog post's code and constants
mu_data = 1.0  # mean of the data distribution N(mu_data, sigma_data^2)
sigma_data = 0.01  # std of the data distribution
sigma_min = 0.002  # smallest noise level of the ladder
sigma_max = 20.0  # largest noise level: N(0, sigma_max^2) must hide |mu_data|, so sigma_max >> |mu_data|
N = 40  # noise levels on the ladder = denoising steps
rho = 7.0  # curvature of the ladder: a larger rho spends more steps at small sigma
width = 64  # width of the denoiser's hidden layers
nb_epochs = 2000  # training iterations, each on a fresh batch
batch_size = 512  # samples per training iteration
lr = 3e-3  # learning rate (Adam, annealed to 0 along a cosine; the tutorial's plain SGD)
test_size = 10000  # samples generated at the end
TUTORIAL = dict(sigma_min=0.001, sigma_max=1.0, N=10, width=32,  # the blog post's values: --method tutorial sets
                nb_epochs=1000, batch_size=32, lr=1e-3, test_size=1000)  # them, unless a flag is given


# ----------------------------------------------------------------------------- data and noise levels
def sample_data(n, cfg):
    return cfg.mu_data + cfg.sigma_data * torch.randn(n, 1, device=cfg.device)  # (n, 1)


def karras_sigmas(sigma_min, sigma_max, N, rho):
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, then a final 0."""
    ramp = torch.linspace(0, 1, N)
    Sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([Sigmas, torch.zeros(1)])  # (N + 1,)


# ----------------------------------------------------------------------------- denoisers
class Denoiser(nn.Module):
    """D(x, sigma) ~ E[x0 | x0 + sigma n = x]: the clean point (the blog's Denoiser returned the noise to remove).
    Karras et al. 2022 (Table 1) wrap the network F so that its input and its target have unit scale at every sigma.
    sigma_rms is the data's root mean square, sqrt(mu^2 + std^2): the data are not centred on 0."""

    def __init__(self, width, sigma_rms):
        super().__init__()
        self.sigma_rms = sigma_rms
        self.net = nn.Sequential(nn.Linear(2, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 1))

    def forward(self, x, sigma):  # x: (n, 1), sigma: (n, 1)
        total = sigma ** 2 + self.sigma_rms ** 2
        c_skip = self.sigma_rms ** 2 / total  # Table 1: how much of x passes straight through
        c_out = sigma * self.sigma_rms / total.sqrt()  # the scale of what the network adds
        c_in = total.rsqrt()  # makes the network's input of unit variance
        return c_skip * x + c_out * self.net(torch.cat([c_in * x, sigma.log() / 4], dim=1))


class TutorialDenoiser(nn.Module):
    """The blog post's Denoiser(width): a ReLU MLP on (x, sigma) that returns the noise to remove at this step."""

    def __init__(self, width):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, 1))

    def forward(self, x, sigma):
        return self.net(torch.cat([x, sigma * torch.ones_like(x)], dim=1))


# ----------------------------------------------------------------------------- training
def train(denoiser, Sigmas, cfg):
    """edm: denoising score matching (Karras et al. 2022, eq. 2), weighted by 1 / c_out^2 so that every sigma counts
    alike, with sigma drawn log-uniformly over [sigma_min, sigma_max]. tutorial: the blog's loop, a random rung i
    of the ladder and the target n Sigmas[i+1] / Sigmas[i], the part of the noise n that the next rung should lose."""
    if cfg.method == "tutorial":
        optimizer, schedule = torch.optim.SGD(denoiser.parameters(), lr=cfg.lr), None
    else:
        optimizer = torch.optim.Adam(denoiser.parameters(), lr=cfg.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.nb_epochs)
    losses = []
    for epoch in range(cfg.nb_epochs):
        x0 = sample_data(cfg.batch_size, cfg)  # (B, 1)
        if cfg.method == "tutorial":
            i = torch.randint(0, cfg.N, ()).item()
            n = Sigmas[i] * torch.randn_like(x0)
            loss = ((denoiser(x0 + n, Sigmas[i]) - n * Sigmas[i + 1] / Sigmas[i]) ** 2).sum()
        else:
            log_ratio = math.log(cfg.sigma_max / cfg.sigma_min)
            sigma = cfg.sigma_min * (log_ratio * torch.rand(cfg.batch_size, 1, device=cfg.device)).exp()  # (B, 1)
            x = x0 + sigma * torch.randn_like(x0)
            weight = (sigma ** 2 + denoiser.sigma_rms ** 2) / (sigma * denoiser.sigma_rms) ** 2  # 1 / c_out^2
            loss = (weight * (denoiser(x, sigma) - x0) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if schedule:
            schedule.step()
        losses.append(loss.item())
        check_finite(losses[-1], epoch)
    return losses


# ----------------------------------------------------------------------------- samplers
@torch.no_grad()
def sample(denoiser, Sigmas, x):
    """Heun's method (Karras et al. 2022, Algorithm 1) from x ~ N(0, Sigmas[0]^2) down to sigma = 0.
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


@torch.no_grad()
def sample_tutorial(denoiser, Sigmas, x):
    """The blog's sampler: at each rung, x -= denoiser(x, Sigmas[i]). Returns the trajectory."""
    trajectory = [x]
    for sigma in Sigmas[:-1]:
        x = x - denoiser(x, sigma)
        trajectory.append(x)
    return trajectory


def run(cfg):
    check(cfg.sigma_min < cfg.sigma_max, "--sigma_min must be smaller than --sigma_max")
    Sigmas = karras_sigmas(cfg.sigma_min, cfg.sigma_max, cfg.N, cfg.rho).to(cfg.device)
    if cfg.method == "tutorial":
        denoiser, sampler = TutorialDenoiser(cfg.width).to(cfg.device), sample_tutorial
    else:
        denoiser, sampler = Denoiser(cfg.width, math.hypot(cfg.mu_data, cfg.sigma_data)).to(cfg.device), sample
    losses = train(denoiser, Sigmas, cfg)
    trajectory = sampler(denoiser, Sigmas, cfg.sigma_max * torch.randn(cfg.test_size, 1, device=cfg.device))
    return Sigmas, losses, trajectory


# ----------------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__, presets={"method": {"tutorial": TUTORIAL}})
    Sigmas, losses, trajectory = run(cfg)
    means = [x.mean().item() for x in trajectory]
    stds = [x.std().item() for x in trajectory]
    for i, (sigma, mean, std) in enumerate(zip(Sigmas.tolist(), means, stds)):
        print(f"step {i:2d}  sigma {sigma:9.4f}  mean {mean:8.4f}  std {std:8.4f}")

    fig, (ax_loss, ax_mean, ax_std) = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss.semilogy(losses)
    ax_loss.set(title="training loss", xlabel="iteration")
    ax_mean.plot(means, "o-", label="generated")
    ax_mean.axhline(cfg.mu_data, color="k", ls="--", label="target mu_data")
    ax_mean.set(title="sample mean after each step", xlabel="step")
    exact_std = (Sigmas ** 2 + cfg.sigma_data ** 2).sqrt().tolist()  # std of the noised data at each level
    ax_std.semilogy(stds, "o-", label="generated")
    ax_std.semilogy(exact_std, "k--", label="exact: sqrt(sigma_data^2 + sigma^2)")
    ax_std.set(title=f"sample std after each step ({cfg.method})", xlabel="step")
    for ax in (ax_mean, ax_std):
        ax.legend()
    save_figure(fig, cfg.out / "training_and_sampling.png")
    save_results(cfg.out, trajectory[-1], sample_data(cfg.test_size, cfg))

    mean, std = means[-1], stds[-1]
    print(f"{cfg.method}: generated mean {mean:.3f} std {std:.4f} | target: mean {cfg.mu_data:.3f} "
          f"std {cfg.sigma_data:.4f}")
    print(f"|mean error| = {abs(mean - cfg.mu_data) / cfg.sigma_data:.2f} sigma_data (target <= 0.30), "
          f"std ratio = {std / cfg.sigma_data:.3f} (target 0.90-1.10)")
    show_figures()
