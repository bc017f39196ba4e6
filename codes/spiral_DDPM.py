"""DDPM on a 2D spiral: the DDPM of lessons 4-7 on data along a thin curve, with two beta schedules.

Part 1 of Lior Sinai's "Denoising diffusion probabilistic models from first principles" (Ho et al.
2020): a beta schedule (linear as in Ho et al., or cosine: Nichol & Dhariwal 2021), eq. 4's forward
process, the posterior q(x_{t-1} | x_t, x0) of eqs. 6-7 (Bayes' rule for the step before x_t, given
x0), an MLP trained by Algorithm 1, and ancestral sampling (Algorithm 2: each x_{t-1} drawn from
the posterior, x0 replaced by the network's guess) or DDIM (Song et al. 2021: deterministic steps).

    python codes/spiral_DDPM.py                # about 50 s on a 2-core CPU; -h lists every flag
    python codes/spiral_DDPM.py --schedule cosine --sampler ddim
"""
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from common import check, check_finite, parse_config, save_figure, save_results, show_figures

noise_data = 0.02  # std of the Gaussian noise around the spiral (which spans about [-1, 1])
schedule = "linear"  # linear|cosine: Ho et al. 2020, or Nichol & Dhariwal 2021
T = 1000  # diffusion steps
hidden = 128  # width of the network's hidden layers
n_frequencies = 6  # Fourier features of the input at frequencies 2^k pi, k < n_frequencies
nb_epochs = 10000  # training iterations, each on a fresh batch
batch_size = 256  # samples per training iteration
lr = 3e-3  # Adam learning rate, annealed to 0 along a cosine
sampler = "ddpm"  # ddpm|ddim: ancestral sampling (Algorithm 2) or DDIM (Song et al. 2021, eq. 12)
sampling_steps = 100  # steps of the DDIM sampler (ancestral sampling takes all T)
n_samples = 4000  # samples generated at the end


# ---------------------------------------------------------------------- data
def spiral_curve(s):
    """The spiral (s cos s, s sin s), s in [1.5 pi, 4.5 pi], scaled by 1 / (4.5 pi) into [-1, 1]."""
    return torch.stack([s * torch.cos(s), s * torch.sin(s)], dim=-1) / (4.5 * math.pi)  # (..., 2)


def sample_data(n, cfg):
    s = 1.5 * math.pi + 3 * math.pi * torch.rand(n, device=cfg.device)  # (n,), uniform in s
    return spiral_curve(s) + cfg.noise_data * torch.randn(n, 2, device=cfg.device)  # (n, 2)


# ---------------------------------------------------------------------- schedule
def make_schedule(name, T):
    """beta_t, alpha_t = 1 - beta_t, abar_t = prod alpha_s for t = 1..T (index 0..T-1). linear: Ho
    et al.; cosine: abar_t = f(t) / f(0) (Nichol & Dhariwal, eq. 17), beta clipped at 0.999."""
    if name == "linear":
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    else:
        s = torch.arange(T + 1, dtype=torch.float64) / T  # t / T for t = 0..T
        f = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return betas.float(), (1 - betas).float(), torch.cumprod(1 - betas, 0).float()


def q_sample(x0, t, eps, alpha_bar):
    """Eq. 4 in one jump: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, noise std sqrt(1 - abar)."""
    a = alpha_bar[t].reshape(-1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def predict_x0(x_t, t, eps, alpha_bar):
    """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t): eq. 4 solved for x0."""
    a = alpha_bar[t].reshape(-1, 1)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def posterior(t, betas, alphas, alpha_bar):
    """q(x_{t-1} | x_t, x0) = N(coef_x0 x0 + coef_xt x_t, beta~_t I), eq. 7 (t >= 1, index >= 1)."""
    coef_x0 = alpha_bar[t - 1].sqrt() * betas[t] / (1 - alpha_bar[t])
    coef_xt = alphas[t].sqrt() * (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t])
    return coef_x0, coef_xt, (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * betas[t]


# ---------------------------------------------------------------------- network
class EpsModel(nn.Module):
    """eps_theta(x_t, t): an MLP on sin, cos of t at frequencies 1 to 1/1000 (as Transformers do)
    and on Fourier features sin(2^k pi x), cos(2^k pi x) of x_t (Tancik 2020), for the thin arms."""

    def __init__(self, hidden, n_frequencies, n_embedding=64):
        super().__init__()
        half = n_embedding // 2
        time_frequencies = torch.exp(-math.log(1000) * torch.arange(half) / half)  # (half,)
        self.register_buffer("time_frequencies", time_frequencies)
        self.register_buffer("space_frequencies", 2.0 ** torch.arange(n_frequencies) * math.pi)
        self.net = nn.Sequential(nn.Linear(2 * (1 + 2 * n_frequencies) + n_embedding, hidden),
                                 nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x, t):  # x: (n, 2), t: (n,) integer steps 0..T-1
        time = t[:, None].float() * self.time_frequencies  # (n, n_embedding / 2)
        space = (x[:, :, None] * self.space_frequencies).flatten(1)  # (n, 2 * n_frequencies)
        return self.net(torch.cat([x, space.sin(), space.cos(), time.sin(), time.cos()], 1))


# ---------------------------------------------------------------------- training
def train(model, alpha_bar, cfg):
    """Algorithm 1: t ~ Uniform, eps ~ N(0, I), descend on |eps - eps_theta(x_t, t)|^2."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.nb_epochs)
    losses = []
    for epoch in range(cfg.nb_epochs):
        x0 = sample_data(cfg.batch_size, cfg)  # (B, 2)
        t = torch.randint(0, cfg.T, (cfg.batch_size,), device=cfg.device)  # (B,)
        eps = torch.randn_like(x0)
        loss = ((eps - model(q_sample(x0, t, eps, alpha_bar), t)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        losses.append(loss.item())
        check_finite(losses[-1], epoch)
    return losses


# ---------------------------------------------------------------------- samplers and metrics
@torch.no_grad()
def sample(model, betas, alphas, alpha_bar, x, sampler, sampling_steps):
    """From x_T ~ N(0, I) to x_0, returning [x_T, ..., x_0]. ddpm: Algorithm 2 through all T steps;
    ddim: Song et al. 2021, eq. 12 with eta = 0, on `sampling_steps` evenly spaced steps."""
    n_steps = len(betas) if sampler == "ddpm" else sampling_steps
    steps = torch.linspace(len(betas) - 1, 0, n_steps).round().long().tolist()  # T-1 down to 0
    trajectory = [x]
    for i, t in enumerate(steps):
        eps = model(x, torch.full((len(x),), t, device=x.device))
        x0_hat = predict_x0(x, t, eps, alpha_bar)
        if sampler == "ddpm" and t > 0:
            coef_x0, coef_xt, variance = posterior(t, betas, alphas, alpha_bar)
            x = coef_x0 * x0_hat + coef_xt * x + variance.sqrt() * torch.randn_like(x)
        elif sampler == "ddpm":
            x = x0_hat  # the last step: the posterior mean at t = 1 is x0_hat itself, no noise
        else:
            a_s = alpha_bar[steps[i + 1]] if i + 1 < len(steps) else torch.ones_like(alpha_bar[0])
            x = a_s.sqrt() * x0_hat + (1 - a_s).sqrt() * eps
        trajectory.append(x)
    return trajectory


def distance_to_curve(x, n_curve=20000):
    """Mean distance from the points x to the nearest point of the noiseless spiral (dense)."""
    curve = spiral_curve(torch.linspace(1.5 * math.pi, 4.5 * math.pi, n_curve, device=x.device))
    return torch.cat([torch.cdist(c, curve).min(1).values for c in x.split(1000)]).mean().item()


def sliced_wasserstein(x, y, n_directions=512):
    """Mean over random directions of the 1D W1 (mean gap of sorted values) between projections."""
    directions = nn.functional.normalize(torch.randn(2, n_directions, device=x.device), dim=0)
    return ((x @ directions).sort(0).values - (y @ directions).sort(0).values).abs().mean().item()


def run(cfg):
    check(cfg.sampler == "ddpm" or cfg.sampling_steps <= cfg.T, "--sampling_steps exceeds --T")
    betas, alphas, alpha_bar = (v.to(cfg.device) for v in make_schedule(cfg.schedule, cfg.T))
    model = EpsModel(cfg.hidden, cfg.n_frequencies).to(cfg.device)
    losses = train(model, alpha_bar, cfg)
    x_T = torch.randn(cfg.n_samples, 2, device=cfg.device)
    trajectory = sample(model, betas, alphas, alpha_bar, x_T, cfg.sampler, cfg.sampling_steps)
    return alpha_bar, losses, trajectory


# ---------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    alpha_bar, losses, trajectory = run(cfg)
    samples, data = trajectory[-1], sample_data(cfg.n_samples, cfg)

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))  # the forward process: spiral_DDPM_video.py
    axes[0].semilogy(losses)
    axes[0].set(title="training loss", xlabel="iteration")
    for ax, points, name in zip(axes[1:], (data, samples), ("data", f"generated ({cfg.sampler})")):
        ax.scatter(*points.cpu().T, s=1, alpha=0.5)
        ax.set(title=name, xlim=(-1.2, 1.2), ylim=(-1.2, 1.2), aspect="equal")
    save_figure(fig, cfg.out / "spiral_DDPM.png")
    save_results(cfg.out, samples, data)

    half = cfg.n_samples // 2
    model_distance, data_distance = distance_to_curve(samples), distance_to_curve(data)
    model_sw = sliced_wasserstein(samples[:half], data[:half])
    floor_sw = sliced_wasserstein(data[:half], data[half:2 * half])
    print(f"mean distance to the curve: generated {model_distance:.4f} | fresh data "
          f"{data_distance:.4f} | ratio {model_distance / data_distance:.2f} (target <= 1.5)")
    print(f"sliced Wasserstein to fresh data: generated {model_sw:.4f} | data half against half "
          f"{floor_sw:.4f} | ratio {model_sw / floor_sw:.2f} (target <= 2.5)")
    show_figures()
