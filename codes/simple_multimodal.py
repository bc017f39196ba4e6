"""Naive diffusion on four Gaussians: lesson 2 on four narrow modes, plus EDM's churn between steps.

The data are four equally weighted Gaussians at (+-1, +-1), each with std sigma_data = 0.01. Same
recipe as lesson 2 (Karras et al. 2022, "EDM": the Sigmas ladder, the scaled denoiser, Heun steps),
plus one change that several modes call for: before each step a little fresh noise is added, raising
the noise level from sigma to sigma (1 + gamma) (Karras et al. 2022, Algorithm 2, the "churn").
A deterministic ODE leaves a point that lands near the border between two modes stranded there when
the network is slightly off; the fresh noise nudges it off the border, into one mode. `--gamma 0`
shows this. The script prints the share of samples at each mode, the share far from every mode, and
each mode's std.

    python codes/simple_multimodal.py          # about 13 s on a 2-core CPU; -h lists every flag
"""
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from common import check, check_finite, parse_config, save_figure, save_results, show_figures

sigma_data = 0.01  # std of each of the four Gaussians at (+-1, +-1)
sigma_min = 0.002  # smallest noise level of the ladder
sigma_max = 20.0  # largest noise level: N(0, sigma_max^2 I) must hide the modes, so sigma_max >> 1
N = 40  # noise levels on the ladder = denoising steps
rho = 7.0  # curvature of the ladder: a larger rho spends more steps at small sigma
gamma = 0.41  # churn: each step first raises sigma to sigma (1 + gamma) with fresh noise (0: none)
width = 128  # width of the denoiser's hidden layers
nb_epochs = 3000  # training iterations, each on a fresh batch
batch_size = 512  # samples per training iteration
lr = 2e-3  # Adam learning rate, annealed to 0 along a cosine
test_size = 10000  # samples generated at the end

MODES = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # (4, 2)


# ---------------------------------------------------------------------- data and noise levels
def sample_data(n, cfg):
    which = torch.randint(0, 4, (n,), device=cfg.device)  # (n,): a mode for each sample
    modes = MODES.to(cfg.device)[which]  # (n, 2)
    return modes + cfg.sigma_data * torch.randn(n, 2, device=cfg.device)


def karras_sigmas(sigma_min, sigma_max, N, rho):
    """sigma_i = (top + i / (N - 1) (bottom - top))^rho with top = sigma_max^(1/rho), bottom =
    sigma_min^(1/rho), for i = 0..N-1, then a final 0 (Karras et al. 2022, eq. 5)."""
    check(sigma_min < sigma_max, "--sigma_min must be smaller than --sigma_max")
    ramp = torch.linspace(0, 1, N)
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    Sigmas = (top + ramp * (bottom - top)) ** rho
    return torch.cat([Sigmas, torch.zeros(1)])  # (N + 1,)


# ---------------------------------------------------------------------- denoiser
class Denoiser(nn.Module):
    """D(x, sigma) ~ E[x0 | x0 + sigma n = x], with the scalings of Karras et al. 2022 (Table 1).
    sigma_rms is the data's root mean square per coordinate, sqrt(1 + sigma_data^2): the data are
    not centred on 0."""

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
        x0 = sample_data(cfg.batch_size, cfg)  # (B, 2)
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
def sample(denoiser, Sigmas, x, gamma):
    """Karras et al. 2022, Algorithm 2: at each level, add noise to climb from sigma to sigma_hat =
    sigma (1 + gamma), then take a Heun step from sigma_hat down to the next level. Heun's method is
    an Euler step corrected with the slope at its end. Returns x after each step."""
    trajectory = [x]
    for sigma, sigma_next in zip(Sigmas[:-1], Sigmas[1:]):
        if sigma_next > 0 and gamma > 0:  # churn; none on the last step, which lands on sigma = 0
            sigma_hat = (sigma * (1 + gamma)).clamp(max=Sigmas[0])  # as EDM's S_tmax: D's range
            x = x + (sigma_hat ** 2 - sigma ** 2).sqrt() * torch.randn_like(x)  # now at sigma_hat
            sigma = sigma_hat
        slope = (x - denoiser(x, sigma.expand(len(x), 1))) / sigma  # dx/dsigma at sigma
        x_next = x + (sigma_next - sigma) * slope  # Euler step
        if sigma_next > 0:  # Heun's correction: average with the slope at the arrival point
            slope_next = (x_next - denoiser(x_next, sigma_next.expand(len(x), 1))) / sigma_next
            x_next = x + (sigma_next - sigma) * (slope + slope_next) / 2
        x = x_next
        trajectory.append(x)
    return trajectory


def mode_report(x, sigma_data):
    """Share of samples nearest each mode, share farther than 5 std from every mode, std of each."""
    distance = torch.cdist(x, MODES.to(x.device))  # (n, 4)
    nearest = distance.argmin(1)
    near = distance.min(1).values <= 5 * sigma_data
    shares = [(nearest == k).float().mean().item() for k in range(4)]
    stds = [x[(nearest == k) & near].var(0).mean().sqrt().item() for k in range(4)]  # RMS over axes
    return shares, 1 - near.float().mean().item(), stds


def run(cfg):
    Sigmas = karras_sigmas(cfg.sigma_min, cfg.sigma_max, cfg.N, cfg.rho).to(cfg.device)
    denoiser = Denoiser(2, cfg.width, math.sqrt(1 + cfg.sigma_data ** 2)).to(cfg.device)
    losses = train(denoiser, sample_data, cfg)
    noise = cfg.sigma_max * torch.randn(cfg.test_size, 2, device=cfg.device)  # (n, 2)
    return Sigmas, losses, sample(denoiser, Sigmas, noise, cfg.gamma)


# ---------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    Sigmas, losses, trajectory = run(cfg)
    for i, (sigma, x) in enumerate(zip(Sigmas.tolist(), trajectory)):
        print(f"step {i:2d}  sigma {sigma:9.4f}  std ({x[:, 0].std():.4f}, {x[:, 1].std():.4f})")

    samples, data = trajectory[-1].cpu(), sample_data(cfg.test_size, cfg).cpu()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    axes[0].semilogy(losses)
    axes[0].set(title="training loss", xlabel="iteration")
    for ax, (points, name) in zip(axes[1:], ((data, "data"), (samples, "generated"))):
        ax.scatter(*points.T, s=1, alpha=0.3)
        ax.set(title=name, xlim=(-1.5, 1.5), ylim=(-1.5, 1.5), aspect="equal")
    save_figure(fig, cfg.out / "training_and_sampling.png")
    save_results(cfg.out, samples, data)

    shares, off_mode, stds = mode_report(samples, cfg.sigma_data)
    for mode, share, std in zip(MODES.tolist(), shares, stds):
        print(f"mode ({mode[0]:+.0f}, {mode[1]:+.0f}): share {share:.3f} (target 0.22-0.28)  "
              f"std {std:.4f} (target {0.8 * cfg.sigma_data:.4f}-{1.2 * cfg.sigma_data:.4f})")
    print(f"off-mode (farther than 5 std from every mode): {off_mode:.4f} (target < 0.01)")
    show_figures()
