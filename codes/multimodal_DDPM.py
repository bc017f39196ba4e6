"""DDPM on four Gaussians in 2D, with two samplers: ancestral (Ho et al. 2020, Algorithm 2) and DDIM (Song et al.
2021, eq. 12 with eta = 0), and a figure of quality against the number of sampling steps for both.

One network eps_theta(x_t, t) is trained once (Algorithm 1); the samplers differ only in how they step from t to
an earlier s: ancestral sampling draws x_s from the posterior q(x_s | x_t, x0_hat), adding fresh noise; DDIM moves
deterministically, keeping the predicted noise. Both can visit a subsequence of t; the figure shows the cost.

    python codes/multimodal_DDPM.py                       # ancestral, all T steps; about 25 s on a 2-core CPU
    python codes/multimodal_DDPM.py --sampler ddim --sampling_steps 50
"""
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from common import check, check_finite, parse_config, save_figure, save_results, show_figures, writable_folder

sigma_data = 0.01  # std of each of the four Gaussians at (+-1, +-1)
T = 500  # diffusion steps of training
sigma_min = 0.002  # noise-to-signal ratio sqrt((1 - abar_t) / abar_t) at t = 1, far below sigma_data
sigma_max = 20.0  # noise-to-signal ratio at t = T: abar_T = 0.0025, so x_T ~ N(0, I)
hidden = 96  # width of the network's hidden layers
n_frequencies = 7  # Fourier features of the input at frequencies 2^k pi, k < n_frequencies
nb_epochs = 2000  # training iterations, each on a fresh batch
batch_size = 1536  # samples per training iteration
lr = 8e-3  # Adam learning rate, annealed to 0 along a cosine
sampler = "ddpm"  # ddpm|ddim: ancestral sampling (Algorithm 2) or deterministic DDIM (eta = 0)
sampling_steps = 500  # steps the sampler takes, on an evenly spaced subsequence of 1..T
n_samples = 4000  # samples generated at the end
n_curve = 2000  # samples per point of the quality-against-steps curve
assets = "assets"  # folder for the quality-against-steps figure that the README shows

MODES = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # (4, 2)


# ----------------------------------------------------------------------------- data and schedule
def sample_data(n, cfg):
    modes = MODES.to(cfg.device)[torch.randint(0, 4, (n,), device=cfg.device)]  # (n, 2): a mode per sample
    return modes + cfg.sigma_data * torch.randn(n, 2, device=cfg.device)


def noise_schedule(T, sigma_min, sigma_max):
    """abar_t (Ho et al., eq. 4) for t = 1..T, with sigma_t = sqrt((1 - abar_t) / abar_t) log-spaced in [sigma_min, sigma_max]."""
    sigmas = torch.logspace(math.log10(sigma_min), math.log10(sigma_max), T, dtype=torch.float64)
    return (1 / (1 + sigmas ** 2)).float()  # (T,)


# ----------------------------------------------------------------------------- network
class EpsModel(nn.Module):
    """eps_theta(x_t, t) = sqrt(1 - abar_t) x_t + MLP(x_t, t): the first term, the best linear guess (exact for unit-
    variance data), keeps DDIM's paths true at high noise; Fourier features (Tancik 2020), FiLM by t: narrow modes."""

    def __init__(self, dim, hidden, alpha_bar, n_frequencies):
        super().__init__()
        self.register_buffer("alpha_bar", alpha_bar)  # (T,)
        self.register_buffer("frequencies", 2.0 ** torch.arange(n_frequencies) * math.pi)  # (K,)
        self.register_buffer("time_frequencies", torch.arange(1, 9) * math.pi)  # (8,)
        self.input = nn.Linear(dim * (1 + 2 * n_frequencies) + 1, hidden)
        self.film = nn.Linear(17, 4 * hidden)  # (t/T, 8 sines, 8 cosines) -> scale and shift of both hidden layers
        self.hidden = nn.ModuleList([nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)])
        self.output = nn.Linear(hidden, dim)

    def forward(self, x, t):  # x: (n, dim), t: (n,) integer steps 0..T-1
        angles = (x[:, :, None] * self.frequencies).flatten(1)  # (n, dim * K)
        s = t[:, None].float() / len(self.alpha_bar)  # (n, 1)
        time = torch.cat([s, (s * self.time_frequencies).sin(), (s * self.time_frequencies).cos()], dim=1)  # (n, 17)
        film = self.film(time).chunk(4, dim=1)  # 4 x (n, hidden)
        h = nn.functional.silu(self.input(torch.cat([x, angles.sin(), angles.cos(), s], dim=1)))  # (n, hidden)
        for layer, scale, shift in zip(self.hidden, film[::2], film[1::2]):
            h = nn.functional.silu(layer(h) * (1 + scale) + shift)
        return (1 - self.alpha_bar[t, None]).sqrt() * x + self.output(h)  # (n, dim)


# ----------------------------------------------------------------------------- training
def train(model, sample_data, alpha_bar, cfg):
    """Algorithm 1: t ~ Uniform, eps ~ N(0, I), gradient step on |eps - eps_theta(sqrt(abar) x0 + sqrt(1-abar) eps, t)|^2."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.nb_epochs)
    for epoch in range(cfg.nb_epochs):
        x0 = sample_data(cfg.batch_size, cfg)  # (B, 2)
        t = torch.randint(0, cfg.T, (cfg.batch_size,), device=cfg.device)  # (B,)
        eps = torch.randn_like(x0)
        a = alpha_bar[t, None]  # (B, 1)
        loss = ((eps - model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t)) ** 2).mean()  # eq. 4 in one jump
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        check_finite(loss.item(), epoch)


# ----------------------------------------------------------------------------- samplers
@torch.no_grad()
def sample(eps_model, alpha_bar, x, sampler, steps):
    """From x = x_T ~ N(0, I) down to x_0, visiting `steps` evenly spaced t. With steps = T and sampler = "ddpm" this
    is exactly Algorithm 2. Returns the trajectory [x_T, ..., x_0]."""
    ts = torch.linspace(len(alpha_bar) - 1, 0, steps).round().long().tolist()  # visited steps, T-1 down to 0
    trajectory = [x]
    for i, t in enumerate(ts):
        a_t = alpha_bar[t]
        a_s = alpha_bar[ts[i + 1]] if i + 1 < len(ts) else torch.ones_like(a_t)  # abar of the next step; 1 at x_0
        eps = eps_model(x, torch.full((len(x),), t, device=x.device))
        if sampler == "ddim":  # Song et al. 2021, eq. 12 with sigma_t = 0
            x0_hat = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            x = a_s.sqrt() * x0_hat + (1 - a_s).sqrt() * eps
        else:  # Algorithm 2 on the subsequence: beta = 1 - abar_t / abar_s from t to s
            beta = 1 - a_t / a_s
            x = (x - beta / (1 - a_t).sqrt() * eps) / (1 - beta).sqrt()  # posterior mean, eq. 11
            if i + 1 < len(ts):  # no noise at the last step
                x = x + ((1 - a_s) / (1 - a_t) * beta).sqrt() * torch.randn_like(x)  # sqrt(beta~), eq. 7
        trajectory.append(x)
    return trajectory


# ----------------------------------------------------------------------------- metrics
def mode_report(x, sigma_data):
    """Share of samples nearest each mode, share farther than 5 std from every mode, std of each mode."""
    distance = torch.cdist(x, MODES.to(x.device))  # (n, 4)
    nearest, near = distance.argmin(1), distance.min(1).values <= 5 * sigma_data
    shares = [(nearest == k).float().mean().item() for k in range(4)]
    stds = [x[(nearest == k) & near].var(0).mean().sqrt().item() for k in range(4)]  # RMS over coordinates
    return shares, 1 - near.float().mean().item(), stds


def mode_error(x, sigma_data):
    """One number for the curve: total mode-weight error + mean relative std error + off-mode share (0 is perfect)."""
    shares, off_mode, stds = mode_report(x, sigma_data)
    return sum(abs(s - 0.25) for s in shares) + sum(abs(s / sigma_data - 1) for s in stds) / 4 + off_mode


def run(cfg):
    check(cfg.sigma_min < cfg.sigma_max, "--sigma_min must be smaller than --sigma_max")
    check(cfg.sampling_steps <= cfg.T, "--sampling_steps cannot exceed --T")
    alpha_bar = noise_schedule(cfg.T, cfg.sigma_min, cfg.sigma_max).to(cfg.device)
    model = EpsModel(2, cfg.hidden, alpha_bar, cfg.n_frequencies).to(cfg.device)
    train(model, sample_data, alpha_bar, cfg)
    noise = torch.randn(cfg.n_samples, 2, device=cfg.device)
    return model, alpha_bar, sample(model, alpha_bar, noise, cfg.sampler, cfg.sampling_steps)


# ----------------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    model, alpha_bar, trajectory = run(cfg)
    print(f"abar_T = {alpha_bar[-1].item():.2e}; sampler {cfg.sampler}, {cfg.sampling_steps} steps")
    samples, data = trajectory[-1], sample_data(cfg.n_samples, cfg)
    save_results(cfg.out, samples, data)

    # Quality against sampling steps, same network, both samplers, measured against fresh data.
    step_counts = sorted(k for k in {5, 10, 20, 50, cfg.T} if k <= cfg.T)  # a sampler cannot take more than T steps
    floor = mode_error(data[:cfg.n_curve], cfg.sigma_data)  # the same measure on fresh data: its sampling noise
    noise = torch.randn_like(data[:cfg.n_curve])  # one x_T for every point: the curves differ by sampler, not by draw
    curves = {name: [mode_error(sample(model, alpha_bar, noise, name, k)[-1], cfg.sigma_data) for k in step_counts]
              for name in ("ddpm", "ddim")}
    for name, curve in curves.items():
        print(f"{name}: mode error at {step_counts} steps: {' '.join(f'{v:.4f}' for v in curve)} (data floor {floor:.4f})")
    if 50 in step_counts:
        ratio = curves["ddim"][step_counts.index(50)] / curves["ddpm"][-1]
        print(f"DDIM at 50 steps / ancestral at {cfg.T} steps: {ratio:.2f} (target <= 1.5; noisy: both near the floor)")

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(*samples.cpu().T, s=1, alpha=0.3)
    ax.set(title=f"generated ({cfg.sampler}, {cfg.sampling_steps} steps)", xlim=(-1.5, 1.5), ylim=(-1.5, 1.5))
    save_figure(fig, cfg.out / "multimodal_DDPM.png")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, label in (("ddpm", "ancestral (Ho et al. Alg. 2)"), ("ddim", "DDIM, eta = 0 (Song et al. eq. 12)")):
        ax.loglog(step_counts, curves[name], "o-", label=label)
    ax.axhline(floor, color="k", ls="--", label="fresh data (sampling noise)")
    ax.set(title="four Gaussians, one network", xlabel="sampling steps", ylabel="mode weight + std + off-mode error")
    ax.legend()
    save_figure(fig, writable_folder(cfg.assets, "--assets") / "ddpm_vs_ddim_steps.png")

    shares, off_mode, stds = mode_report(samples, cfg.sigma_data)
    for mode, share, std in zip(MODES.tolist(), shares, stds):
        print(f"mode ({mode[0]:+.0f}, {mode[1]:+.0f}): share {share:.3f} (target 0.22-0.28)  "
              f"std {std:.4f} (target {0.8 * cfg.sigma_data:.4f}-{1.2 * cfg.sigma_data:.4f})")
    print(f"off-mode (farther than 5 std from every mode): {off_mode:.4f} (target < 0.01)")
    show_figures()
