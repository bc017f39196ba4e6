"""Naive diffusion in 1D: turn noise N(0, sigma_max^2) into samples of N(mu_data, sigma_data^2).

The first lesson. We noise the data at the levels `Sigmas` (Karras et al. 2022, eq. 5), train one
small network D(x, sigma) to guess the clean x0 at any noise level, then walk down the ladder with
Heun's method (an Euler step, then a correction with the slope at its end) on the probability-flow
ODE, the deterministic path that carries N(0, sigma_max^2) into the data through every noise level:
    dx/dsigma = (x - D(x, sigma)) / sigma          (Karras et al. 2022, eq. 4 and Algorithm 1).
`--method tutorial` runs the blog post's own code, which collapses the variance (see the README).

    python codes/simple_1Diffusion.py                    # 10 s on a 2-core CPU; -h lists the flags
    python codes/simple_1Diffusion.py --method tutorial  # the blog post's code: the std collapses
"""
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from common import check, check_finite, parse_config, save_figure, save_results, show_figures

method = "edm"  # edm|tutorial: the fixed recipe (Karras et al. 2022), or the blog post's own code
mu_data = 1.0  # mean of the data distribution N(mu_data, sigma_data^2)
sigma_data = 0.01  # std of the data distribution
sigma_min = 0.002  # smallest noise level of the ladder
sigma_max = 20.0  # largest noise level: N(0, sigma_max^2) must hide mu_data, so sigma_max >> 1
N = 40  # noise levels on the ladder = denoising steps
rho = 7.0  # curvature of the ladder: a larger rho spends more steps at small sigma
width = 64  # width of the denoiser's hidden layers
nb_epochs = 2000  # training iterations, each on a fresh batch
batch_size = 512  # samples per training iteration
lr = 3e-3  # learning rate: Adam's, annealed to 0 along a cosine (tutorial: SGD's, constant)
test_size = 10000  # samples generated at the end
TUTORIAL = dict(sigma_min=0.001, sigma_max=1.0, N=10, width=32, nb_epochs=1000, batch_size=32,
                lr=1e-3, test_size=1000)  # the blog's values, which --method tutorial sets


# ----------------------------------------------------------------------------- data, noise levels
def sample_data(n, cfg):
    return cfg.mu_data + cfg.sigma_data * torch.randn(n, 1, device=cfg.device)  # (n, 1)


def karras_sigmas(sigma_min, sigma_max, N, rho):
    """N levels evenly spaced in sigma^(1/rho) from sigma_max to sigma_min (more of them at small
    sigma), then 0."""
    ramp = torch.linspace(0, 1, N)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    Sigmas = (high + ramp * (low - high)) ** rho
    return torch.cat([Sigmas, torch.zeros(1)])  # (N + 1,)


# ----------------------------------------------------------------------------- denoisers
class Denoiser(nn.Module):
    """D(x, sigma) ~ E[x0 | x0 + sigma n = x] with Karras et al.'s scalings (Table 1). sigma_rms is
    the data's root mean square sqrt(mu^2 + std^2): the data are not centred on 0."""

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
    """The blog post's Denoiser(width): a ReLU MLP on (x, sigma) that returns the noise to
    remove."""

    def __init__(self, width):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, 1))

    def forward(self, x, sigma):
        return self.net(torch.cat([x, sigma * torch.ones_like(x)], dim=1))


# ----------------------------------------------------------------------------- training
def train(denoiser, Sigmas, cfg):
    """edm: denoising score matching (Karras et al. 2022, eq. 2) weighted by 1 / c_out^2, sigma
    log-uniform in [sigma_min, sigma_max]. tutorial: the blog's loop, a random rung i and the target
    n Sigmas[i+1] / Sigmas[i]."""
    optimizer_class = torch.optim.SGD if cfg.method == "tutorial" else torch.optim.Adam
    optimizer = optimizer_class(denoiser.parameters(), lr=cfg.lr)
    losses = []
    for epoch in range(cfg.nb_epochs):
        x0 = sample_data(cfg.batch_size, cfg)  # (B, 1)
        if cfg.method == "tutorial":
            i = torch.randint(0, cfg.N, ()).item()
            n = Sigmas[i] * torch.randn_like(x0)
            loss = ((denoiser(x0 + n, Sigmas[i]) - n * Sigmas[i + 1] / Sigmas[i]) ** 2).sum()
        else:
            cosine = (1 + math.cos(math.pi * epoch / cfg.nb_epochs)) / 2  # the rate decays to 0
            optimizer.param_groups[0]["lr"] = cfg.lr * cosine
            u = torch.rand(cfg.batch_size, 1, device=cfg.device)
            sigma = cfg.sigma_min * (cfg.sigma_max / cfg.sigma_min) ** u  # (B, 1), log-uniform
            x = x0 + sigma * torch.randn_like(x0)
            weight = (sigma ** 2 + denoiser.sigma_rms ** 2) / (sigma * denoiser.sigma_rms) ** 2
            loss = (weight * (denoiser(x, sigma) - x0) ** 2).mean()  # weight = 1 / c_out^2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
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
        denoiser, sampler = TutorialDenoiser(cfg.width), sample_tutorial
    else:
        denoiser, sampler = Denoiser(cfg.width, math.hypot(cfg.mu_data, cfg.sigma_data)), sample
    losses = train(denoiser.to(cfg.device), Sigmas, cfg)
    noise = cfg.sigma_max * torch.randn(cfg.test_size, 1, device=cfg.device)
    return Sigmas, losses, sampler(denoiser, Sigmas, noise)


# ----------------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__, presets={"method": {"tutorial": TUTORIAL}})
    Sigmas, losses, trajectory = run(cfg)
    means = [x.mean().item() for x in trajectory]
    stds = [x.std().item() for x in trajectory]
    for i, (sigma, mean, std) in enumerate(zip(Sigmas.tolist(), means, stds)):
        print(f"step {i:2d}  sigma {sigma:9.4f}  mean {mean:8.4f}  std {std:8.4f}")

    fig, (ax_loss, ax_std) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.semilogy(losses)
    ax_loss.set(title="training loss", xlabel="iteration")
    ax_std.semilogy(stds, "o-", label="generated")
    exact_std = (Sigmas ** 2 + cfg.sigma_data ** 2).sqrt().tolist()  # the noised data's std
    ax_std.semilogy(exact_std, "k--", label="exact: sqrt(sigma_data^2 + sigma^2)")
    ax_std.set(title=f"sample std after each step ({cfg.method})", xlabel="step")
    ax_std.legend()
    save_figure(fig, cfg.out / "training_and_sampling.png")
    save_results(cfg.out, trajectory[-1], sample_data(cfg.test_size, cfg))

    mean, std = means[-1], stds[-1]  # of the final samples
    print(f"{cfg.method}: generated mean {mean:.3f} std {std:.4f} | target: mean {cfg.mu_data:.3f} "
          f"std {cfg.sigma_data:.4f}")
    print(f"|mean error| = {abs(mean - cfg.mu_data) / cfg.sigma_data:.2f} sigma_data "
          f"(target <= 0.30), std ratio = {std / cfg.sigma_data:.3f} (target 0.90-1.10)")
    show_figures()
