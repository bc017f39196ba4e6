"""DDPM on four Gaussians: lesson 5's DDPM on lesson 3's data, sampled two ways, ancestral and DDIM.

One network eps_theta(x_t, t) (Ho et al. 2020, Algorithm 1). Ancestral sampling (Algorithm 2)
draws each x_s from the posterior q(x_s | x_t, x0) around the network's x0, with fresh noise; DDIM
(Song et al. 2021, eq. 12, eta = 0) keeps the predicted noise. Both are measured against steps.

    python codes/multimodal_DDPM.py         # ancestral, all T steps; about 25 s on a 2-core CPU
    python codes/multimodal_DDPM.py --sampler ddim --sampling_steps 50
"""
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from common import (check, check_finite, copy_to_assets, parse_config, save_figure, save_results,
                    show_figures)
from simple_multimodal import MODES, mode_report, sample_data  # lesson 3's data and its measure

sigma_data = 0.01  # std of each of the four Gaussians at (+-1, +-1)
T = 500  # diffusion steps of training
sigma_min = 0.002  # noise-to-signal ratio sqrt((1 - abar_t) / abar_t) at t = 1: << sigma_data
sigma_max = 20.0  # noise-to-signal ratio at t = T: abar_T = 1 / (1 + sigma_max^2), so x_T ~ N(0, I)
hidden = 96  # width of the network's hidden layers
n_frequencies = 7  # Fourier features of the input at frequencies 2^k pi, k < n_frequencies
nb_epochs = 2000  # training iterations, each on a fresh batch
batch_size = 1536  # samples per training iteration
lr = 8e-3  # Adam learning rate, annealed to 0 along a cosine
sampler = "ddpm"  # ddpm|ddim: ancestral sampling (Algorithm 2) or deterministic DDIM (eta = 0)
sampling_steps = 500  # steps the sampler takes, on an evenly spaced subsequence of 1..T
n_samples = 4000  # samples generated at the end
n_curve = 2000  # samples per point of the quality-against-steps curve
n_floor = 20  # draws of n_curve fresh data points that measure the curve's floor and its spread
assets = ""  # also write the README's picture to this folder; empty: only --out


# ---------------------------------------------------------------------- schedule
def noise_schedule(T, sigma_min, sigma_max):
    """abar_t (Ho et al., eq. 4), t = 1..T: sigma_t = sqrt((1 - abar_t) / abar_t) log-spaced."""
    sigmas = torch.logspace(math.log10(sigma_min), math.log10(sigma_max), T, dtype=torch.float64)
    return (1 / (1 + sigmas ** 2)).float()  # (T,)


# ---------------------------------------------------------------------- network
class EpsModel(nn.Module):
    """eps_theta(x_t, t) = sqrt(1 - abar_t) x_t + MLP(x_t, t). The first term, the best linear
    guess of eps (exact for unit-variance data), keeps DDIM true at high noise. The MLP reads
    Fourier features of x_t (sin, cos at growing frequencies; Tancik et al. 2020) to draw narrow
    modes; t scales and shifts its layers (FiLM, Perez 2018; AdaGN, Dhariwal & Nichol 2021)."""

    def __init__(self, dim, hidden, alpha_bar, n_frequencies):
        super().__init__()
        self.register_buffer("alpha_bar", alpha_bar)  # (T,)
        self.register_buffer("frequencies", 2.0 ** torch.arange(n_frequencies) * math.pi)  # (K,)
        self.input = nn.Linear(dim * (1 + 2 * n_frequencies) + 1, hidden)
        self.film = nn.Linear(17, 4 * hidden)  # (t/T, 8 sines, 8 cosines) -> 2 scales, 2 shifts
        self.hidden = nn.ModuleList([nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)])
        self.output = nn.Linear(hidden, dim)

    def forward(self, x, t):  # x: (n, dim), t: (n,) integer steps 0..T-1
        angles = (x[:, :, None] * self.frequencies).flatten(1)  # (n, dim * K)
        s = t[:, None].float() / len(self.alpha_bar)  # (n, 1)
        waves = s * (torch.arange(1, 9, device=x.device) * math.pi)  # (n, 8): t/T at 8 frequencies
        film = self.film(torch.cat([s, waves.sin(), waves.cos()], 1)).chunk(4, dim=1)  # 4 x (n, h)
        h = nn.functional.silu(self.input(torch.cat([x, angles.sin(), angles.cos(), s], dim=1)))
        for layer, scale, shift in zip(self.hidden, film[::2], film[1::2]):
            h = nn.functional.silu(layer(h) * (1 + scale) + shift)
        return (1 - self.alpha_bar[t, None]).sqrt() * x + self.output(h)  # (n, dim)


# ---------------------------------------------------------------------- training
def train(model, sample_data, alpha_bar, cfg):
    """Algorithm 1: t ~ Uniform, eps ~ N(0, I), a gradient step on |eps - eps_theta(x_t, t)|^2."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.nb_epochs)
    for epoch in range(cfg.nb_epochs):
        x0 = sample_data(cfg.batch_size, cfg)  # (B, 2)
        t = torch.randint(0, cfg.T, (cfg.batch_size,), device=cfg.device)  # (B,)
        eps = torch.randn_like(x0)
        a = alpha_bar[t, None]  # (B, 1); x_t below is eq. 4, in one jump
        loss = ((eps - model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        check_finite(loss.item(), epoch)


# ---------------------------------------------------------------------- samplers
@torch.no_grad()
def sample(eps_model, alpha_bar, x, sampler, steps):
    """From x = x_T ~ N(0, I) down to x_0, visiting `steps` evenly spaced t. With steps = T and
    sampler = "ddpm" this is exactly Algorithm 2. Returns the trajectory [x_T, ..., x_0]."""
    ts = torch.linspace(len(alpha_bar) - 1, 0, steps).round().long().tolist()  # T-1 down to 0
    trajectory = [x]
    for i, t in enumerate(ts):
        a_t = alpha_bar[t]
        a_s = alpha_bar[ts[i + 1]] if i + 1 < len(ts) else torch.ones_like(a_t)  # 1 at x_0
        eps = eps_model(x, torch.full((len(x),), t, device=x.device))
        if sampler == "ddim":  # Song et al. 2021, eq. 12 with sigma_t = 0
            x0_hat = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            x = a_s.sqrt() * x0_hat + (1 - a_s).sqrt() * eps
        else:  # Algorithm 2 on the subsequence: the step from t to s has beta = 1 - abar_t / abar_s
            beta = 1 - a_t / a_s
            x = (x - beta / (1 - a_t).sqrt() * eps) / (1 - beta).sqrt()  # posterior mean, eq. 11
            if i + 1 < len(ts):  # noise of std sqrt(beta~) (eq. 7); none at the last step
                x = x + ((1 - a_s) / (1 - a_t) * beta).sqrt() * torch.randn_like(x)
        trajectory.append(x)
    return trajectory


# ---------------------------------------------------------------------- metrics
def mode_error(x, sigma_data):
    """One number: the modes' total weight error + mean relative std error + off-mode share."""
    shares, off_mode, stds = mode_report(x, sigma_data)
    std_error = sum(abs(s / sigma_data - 1) for s in stds) / 4
    return sum(abs(s - 0.25) for s in shares) + std_error + off_mode


def run(cfg):
    check(cfg.sigma_min < cfg.sigma_max, "--sigma_min must be smaller than --sigma_max")
    check(cfg.sampling_steps <= cfg.T, "--sampling_steps cannot exceed --T")
    alpha_bar = noise_schedule(cfg.T, cfg.sigma_min, cfg.sigma_max).to(cfg.device)
    model = EpsModel(2, cfg.hidden, alpha_bar, cfg.n_frequencies).to(cfg.device)
    train(model, sample_data, alpha_bar, cfg)
    noise = torch.randn(cfg.n_samples, 2, device=cfg.device)
    return model, alpha_bar, sample(model, alpha_bar, noise, cfg.sampler, cfg.sampling_steps)


# ---------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    model, alpha_bar, trajectory = run(cfg)
    samples, data = trajectory[-1], sample_data(cfg.n_samples, cfg)
    save_results(cfg.out, samples, data)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(*samples.cpu().T, s=1, alpha=0.3)
    ax.set(title=f"{cfg.sampler}, {cfg.sampling_steps} steps", xlim=(-1.5, 1.5), ylim=(-1.5, 1.5))
    save_figure(fig, cfg.out / "multimodal_DDPM.png")

    steps = sorted(k for k in {5, 10, 20, 50, cfg.T} if k <= cfg.T)
    noise = torch.randn(cfg.n_curve, 2, device=cfg.device)  # the same for every point
    curves = {name: [mode_error(sample(model, alpha_bar, noise, name, k)[-1], cfg.sigma_data)
                     for k in steps] for name in ("ddpm", "ddim")}
    fresh = torch.tensor([mode_error(sample_data(cfg.n_curve, cfg), cfg.sigma_data)
                          for _ in range(cfg.n_floor)])  # what a perfect sampler would score
    floor, spread = fresh.mean().item(), fresh.std().item()
    above = floor + 3 * spread  # more than the sampling noise of n_curve points explains
    resolution = 3 * math.sqrt(2) * spread  # two draws differ by sqrt(2) std; 3 of those resolve
    print(f"mode error (0: perfect), {cfg.n_curve} samples; fresh data {floor:.3f} +- {spread:.3f}")
    for name, curve in curves.items():
        print(f"{name}: error at {steps} steps:", *(f"{v:.3f}" + "*" * (v > above) for v in curve))
    print(f"* = above the floor (fresh data's mean + 3 std, {cfg.n_floor} draws: {above:.3f}); a "
          f"gap under {resolution:.3f} (3 std of two independent draws' gap) is not resolved")
    if 20 in steps:
        gap = curves["ddpm"][steps.index(20)] - curves["ddim"][steps.index(20)]
        print(f"at 20 steps DDIM's error is lower by {gap:.3f} (target > {resolution:.3f})")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, label in (("ddpm", "ancestral (Ho et al. Alg. 2)"), ("ddim", "DDIM, eta = 0")):
        ax.errorbar(steps, curves[name], yerr=resolution / 2, fmt="o-", capsize=3, label=label)
    ax.axhline(above, color="k", ls="--", label="fresh data: mean + 3 std (the floor's top)")
    ax.set(title=f"{cfg.n_curve} samples per point\nbars that overlap: a gap not resolved",
           xlabel="sampling steps", ylabel="mode error", xscale="log", xlim=(3, 1.5 * cfg.T))
    ax.legend()
    save_figure(fig, cfg.out / "ddpm_vs_ddim_steps.png")
    copy_to_assets(cfg.out / "ddpm_vs_ddim_steps.png", cfg)

    shares, off_mode, stds = mode_report(samples, cfg.sigma_data)
    for mode, share, std in zip(MODES.tolist(), shares, stds):
        print(f"mode ({mode[0]:+.0f}, {mode[1]:+.0f}): share {share:.3f} (target 0.22-0.28)  "
              f"std {std:.4f} (target {0.8 * cfg.sigma_data:.4f}-{1.2 * cfg.sigma_data:.4f})")
    print(f"off-mode (farther than 5 std from every mode): {off_mode:.4f} (target < 0.01)")
    show_figures()
