"""DDPM on a 2D spiral: the beta schedule, the forward and backward Gaussian processes, and a trained denoiser.

Part 1 of "denoising diffusion from first principles" (Ho et al. 2020): a beta schedule, the forward process in
closed form (eq. 4), the posterior q(x_{t-1} | x_t, x0) (eqs. 6-7), an MLP trained and sampled by Algorithms 1, 2.

    python codes/spiral_DDPM.py                       # about 50 s on a 2-core CPU; -h lists every flag
    python codes/spiral_DDPM.py --schedule cosine --sampler ddim
"""
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from common import check, check_finite, parse_config, save_figure, save_results, show_figures

noise_data = 0.02  # std of the Gaussian noise around the spiral curve (the curve spans about [-1, 1])
schedule = "linear"  # linear|cosine: Ho et al. 2020, or Nichol & Dhariwal 2021
T = 1000  # diffusion steps
hidden = 128  # width of the network's hidden layers
n_frequencies = 6  # Fourier features of the input at frequencies 2^k pi, k < n_frequencies
nb_epochs = 10000  # training iterations, each on a fresh batch
batch_size = 256  # samples per training iteration
lr = 3e-3  # Adam learning rate, annealed to 0 along a cosine
sampler = "ddpm"  # ddpm|ddim: ancestral sampling (Algorithm 2) or deterministic DDIM (Song et al. 2021, eq. 12)
sampling_steps = 100  # steps of the DDIM sampler (ancestral sampling takes all T)
n_samples = 4000  # samples generated at the end


# ----------------------------------------------------------------------------- data
def spiral_curve(s):
    """The spiral (s cos s, s sin s) for s in [1.5 pi, 4.5 pi], scaled by 1 / (4.5 pi) to fit in [-1, 1]."""
    return torch.stack([s * torch.cos(s), s * torch.sin(s)], dim=-1) / (4.5 * math.pi)  # (..., 2)


def sample_data(n, cfg):
    s = 1.5 * math.pi + 3 * math.pi * torch.rand(n, device=cfg.device)  # uniform along the parameter
    return spiral_curve(s) + cfg.noise_data * torch.randn(n, 2, device=cfg.device)  # (n, 2)


# ----------------------------------------------------------------------------- schedule
def make_schedule(name, T):
    """beta_t, alpha_t = 1 - beta_t, abar_t = prod alpha_s, t = 1..T (index 0..T-1). linear: Ho et al., abar_T ~ 4e-5
    (see ddpm_coefficients.py); cosine: abar_t = f(t) / f(0) (Nichol & Dhariwal, eq. 17), beta clipped at 0.999."""
    if name == "linear":
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    else:
        f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    alphas = 1 - betas
    return betas.float(), alphas.float(), torch.cumprod(alphas, 0).float()


def q_sample(x0, t, eps, alpha_bar):
    """Eq. 4 in one jump: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; the noise std is sqrt(1 - abar_t), 1 at t = T."""
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


# ----------------------------------------------------------------------------- network
class EpsModel(nn.Module):
    """eps_theta(x_t, t): an MLP on a sinusoidal embedding of t and Fourier features sin(2^k pi x), cos(2^k pi x)
    of x_t (Tancik et al. 2020). A plain MLP learns smooth functions first: on these thin arms it drew a blob."""

    def __init__(self, hidden, n_frequencies, n_embedding=64):
        super().__init__()
        self.register_buffer("time_frequencies", torch.exp(-math.log(1000) * torch.arange(n_embedding // 2) / (n_embedding // 2)))
        self.register_buffer("space_frequencies", 2.0 ** torch.arange(n_frequencies) * math.pi)
        self.net = nn.Sequential(nn.Linear(2 * (1 + 2 * n_frequencies) + n_embedding, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2))

    def forward(self, x, t):  # x: (n, 2), t: (n,) integer steps 0..T-1
        time = t[:, None].float() * self.time_frequencies  # (n, n_embedding / 2)
        space = (x[:, :, None] * self.space_frequencies).flatten(1)  # (n, 2 * n_frequencies)
        return self.net(torch.cat([x, space.sin(), space.cos(), time.sin(), time.cos()], dim=1))


# ----------------------------------------------------------------------------- training
def train(model, alpha_bar, cfg):
    """Algorithm 1: t ~ Uniform, eps ~ N(0, I), gradient step on |eps - eps_theta(q_sample(x0, t, eps), t)|^2."""
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


# ----------------------------------------------------------------------------- samplers
@torch.no_grad()
def sample(model, betas, alphas, alpha_bar, x, sampler, sampling_steps):
    """From x_T ~ N(0, I) to x_0, returning [x_T, ..., x_0]. ddpm: Algorithm 2 through all T steps; ddim: Song et al.
    2021, eq. 12 with eta = 0, on `sampling_steps` evenly spaced steps."""
    n_steps = len(betas) if sampler == "ddpm" else sampling_steps
    steps = torch.linspace(len(betas) - 1, 0, n_steps).round().long().tolist()  # T-1 down to 0
    trajectory = [x]
    for i, t in enumerate(steps):
        t_batch = torch.full((len(x),), t, device=x.device)
        eps = model(x, t_batch)
        x0_hat = predict_x0(x, t_batch, eps, alpha_bar)
        if sampler == "ddpm" and t > 0:
            coef_x0, coef_xt, variance = posterior(t, betas, alphas, alpha_bar)
            x = coef_x0 * x0_hat + coef_xt * x + variance.sqrt() * torch.randn_like(x)
        elif sampler == "ddpm":
            x = x0_hat  # the last step: the posterior mean at t = 1 is x0_hat itself, and no noise is added
        else:
            a_s = alpha_bar[steps[i + 1]] if i + 1 < len(steps) else torch.ones_like(alpha_bar[0])
            x = a_s.sqrt() * x0_hat + (1 - a_s).sqrt() * eps
        trajectory.append(x)
    return trajectory


# ----------------------------------------------------------------------------- metrics
def distance_to_curve(x, n_curve=20000):
    """Mean distance from each point of x to the nearest point of the noiseless spiral (sampled densely)."""
    curve = spiral_curve(torch.linspace(1.5 * math.pi, 4.5 * math.pi, n_curve, device=x.device))
    return torch.cat([torch.cdist(chunk, curve).min(1).values for chunk in x.split(1000)]).mean().item()


def sliced_wasserstein(x, y, n_directions=512):
    """Mean over random directions of the 1D Wasserstein-1 distance between the projections of x and y (same n)."""
    directions = nn.functional.normalize(torch.randn(2, n_directions, device=x.device), dim=0)
    return ((x @ directions).sort(0).values - (y @ directions).sort(0).values).abs().mean().item()


def run(cfg):
    check(cfg.sampler == "ddpm" or cfg.sampling_steps <= cfg.T, "--sampling_steps cannot exceed --T")
    betas, alphas, alpha_bar = (v.to(cfg.device) for v in make_schedule(cfg.schedule, cfg.T))
    model = EpsModel(cfg.hidden, cfg.n_frequencies).to(cfg.device)
    losses = train(model, alpha_bar, cfg)
    x_T = torch.randn(cfg.n_samples, 2, device=cfg.device)
    return alpha_bar, losses, sample(model, betas, alphas, alpha_bar, x_T, cfg.sampler, cfg.sampling_steps)


# ----------------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    alpha_bar, losses, trajectory = run(cfg)
    print(f"{cfg.schedule} schedule: abar_T = {alpha_bar[-1].item():.2e}; sampler {cfg.sampler}")
    samples, data = trajectory[-1], sample_data(cfg.n_samples, cfg)

    fig, axes = plt.subplots(2, 3, figsize=(13, 8.5))  # top: the forward process in closed form; bottom: results
    for ax, t in zip(axes[0], [0, cfg.T // 10, cfg.T - 1]):
        x_t = q_sample(data, torch.full((len(data),), t, device=cfg.device), torch.randn_like(data), alpha_bar)
        ax.scatter(*x_t.cpu().T, s=1, alpha=0.3)
        ax.set(title=f"q(x_t | x0), t = {t + 1}", xlim=(-2.5, 2.5), ylim=(-2.5, 2.5), aspect="equal")
    axes[1, 0].semilogy(losses)
    axes[1, 0].set(title="training loss", xlabel="iteration")
    for ax, (points, name) in zip(axes[1, 1:], ((data, "data"), (samples, f"generated ({cfg.sampler})"))):
        ax.scatter(*points.cpu().T, s=1, alpha=0.5)
        ax.set(title=name, xlim=(-1.2, 1.2), ylim=(-1.2, 1.2), aspect="equal")
    save_figure(fig, cfg.out / "spiral_DDPM.png")
    save_results(cfg.out, samples, data)

    half = cfg.n_samples // 2
    model_distance, data_distance = distance_to_curve(samples), distance_to_curve(data)
    model_sw, floor_sw = sliced_wasserstein(samples[:half], data[:half]), sliced_wasserstein(data[:half], data[half:2 * half])
    print(f"mean distance to the curve: generated {model_distance:.4f} | fresh data {data_distance:.4f} "
          f"| ratio {model_distance / data_distance:.2f} (target <= 1.5)")
    print(f"sliced Wasserstein to fresh data: generated {model_sw:.4f} | data half against half {floor_sw:.4f} "
          f"| ratio {model_sw / floor_sw:.2f} (target <= 2.5)")
    show_figures()
