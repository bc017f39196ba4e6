"""Where diffusion began (Sohl-Dickstein et al. 2015): lesson 8's DDPM, its variance learned too.

"Deep Unsupervised Learning using Nonequilibrium Thermodynamics", on a 2D Swiss roll: T = 40
forward steps q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) on a sigmoid schedule, and
learned reverse steps p(x_{t-1} | x_t) = N(mu(x_t, t), diag(v(x_t, t))), mean and variance (section
2.2). Training minimises the negative ELBO (evidence lower bound), an upper bound on -log p(x0), as
Ho et al. 2020 write it (eq. 5):
    KL(q(x_T | x0) || N(0, I)) + sum_{t>=2} KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))
    - log p(x0 | x1),
each KL divergence between Gaussians in closed form, in nats. The paper's K (eq. 14) is this bound
in entropies, with the step x1 -> x0 fixed to mirror the forward one; here it is learned.

    python codes/nonequilibrium_2015.py        # 54 s on a 2-core CPU; -h lists every flag
"""
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn

from common import (check_finite, copy_to_assets, parse_config, save_figure, save_results,
                    show_figures)
from spiral_DDPM import sliced_wasserstein  # lesson 8's measure

noise_data = 0.05  # std of the Gaussian noise around the Swiss roll (which spans about [-1.3, 1.5])
T = 40  # diffusion steps, as in the paper
beta_min = 1e-4  # bottom of the sigmoid: beta_t = beta_min + (beta_max - beta_min) sigmoid(u_t)
beta_max = 0.3  # top of the sigmoid, with u_t evenly spaced from -6 to 6
hidden = 128  # width of the network's hidden layers
n_frequencies = 4  # Fourier features of x_t at frequencies 2^k pi, k < n_frequencies
nb_epochs = 6000  # training iterations, each on a fresh batch
batch_size = 512  # samples per training iteration
lr = 2e-3  # Adam learning rate, annealed to 0 along a cosine
n_samples = 4000  # samples generated at the end
assets = ""  # also write the README's picture to this folder; empty: only --out


# ---------------------------------------------------------------------- data and forward process
def swiss_roll(n, noise, rng):
    """(s cos s, s sin s) / 10 for s uniform in [1.5 pi, 4.5 pi], plus Gaussian noise (numpy)."""
    s = 1.5 * np.pi * (1 + 2 * rng.random(n))
    roll = np.stack([s * np.cos(s), s * np.sin(s)], 1) / 10  # (n, 2)
    return torch.from_numpy(roll + noise * rng.standard_normal((n, 2))).float()


def sigmoid_schedule(T, beta_min, beta_max):
    """beta_t rising along a sigmoid, and abar_t = prod_{s <= t} (1 - beta_s), for t = 1..T."""
    u = torch.linspace(-6, 6, T, dtype=torch.float64)
    betas = beta_min + (beta_max - beta_min) * torch.sigmoid(u)
    return betas.float(), torch.cumprod(1 - betas, 0).float()


def posterior(x0, x_t, t, betas, alpha_bar):
    """q(x_{t-1} | x_t, x0) = N(mean, var I), t >= 2 (index >= 1): Bayes' rule (Ho et al. eq. 7)."""
    b, a, a_prev = betas[t, None], alpha_bar[t, None], alpha_bar[t - 1, None]
    mean = (a_prev.sqrt() * b * x0 + (1 - b).sqrt() * (1 - a_prev) * x_t) / (1 - a)
    return mean, (1 - a_prev) / (1 - a) * b


# ---------------------------------------------------------------------- the reverse process
class Reverse(nn.Module):
    """mu and v of p(x_{t-1} | x_t): an MLP on Fourier features of x_t (sin, cos at growing
    frequencies) for all steps, then a linear readout per step (the paper's temporal readout), into
    its mu = sqrt(1 - beta_t) x_t + sqrt(beta_t) f_mu and v = sigmoid(f_v + logit(beta_t))."""

    def __init__(self, hidden, T, n_frequencies):
        super().__init__()
        self.register_buffer("frequencies", 2.0 ** torch.arange(n_frequencies) * math.pi)
        self.trunk = nn.Sequential(nn.Linear(2 * (1 + 2 * n_frequencies), hidden), nn.SiLU(),
                                   nn.Linear(hidden, hidden), nn.SiLU(),
                                   nn.Linear(hidden, hidden), nn.SiLU())
        self.readout = nn.Parameter(torch.randn(T, hidden, 4) / math.sqrt(hidden))  # (T, h, 2 + 2)
        self.readout_bias = nn.Parameter(torch.zeros(T, 4))

    def forward(self, x, t, betas):  # x: (n, 2), t: (n,) step indices 0..T-1
        angles = (x[:, :, None] * self.frequencies).flatten(1)  # (n, 2K)
        h = self.trunk(torch.cat([x, angles.sin(), angles.cos()], 1))  # (n, hidden)
        out = torch.einsum("nh,nho->no", h, self.readout[t]) + self.readout_bias[t]  # (n, 4)
        b = betas[t, None]
        mean = (1 - b).sqrt() * x + b.sqrt() * out[:, :2]
        return mean, torch.sigmoid(out[:, 2:] + torch.logit(b))  # mean and variance, (n, 2) each


def gaussian_kl(m1, v1, m2, v2):
    """KL(N(m1, diag v1) || N(m2, diag v2)), the relative entropy in nats, summed over axes."""
    return 0.5 * (torch.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1).sum(-1)


def step_losses(model, x0, t, betas, alpha_bar):
    """The bound's step terms per sample, in nats: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for
    t >= 2, and -log p(x0 | x1) at t = 1 (index 0), with x_t drawn from q(x_t | x0)."""
    a = alpha_bar[t, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn_like(x0)  # q(x_t | x0) in one jump
    mean, var = model(x_t, t, betas)
    q_mean, q_var = posterior(x0, x_t, t.clamp(min=1), betas, alpha_bar)  # used for t >= 2 only
    nll = 0.5 * (torch.log(2 * math.pi * var) + (x0 - mean) ** 2 / var).sum(-1)
    return torch.where(t == 0, nll, gaussian_kl(q_mean, q_var.expand_as(q_mean), mean, var))


def bound(model, x0, betas, alpha_bar):
    """The negative ELBO, E[-log p(x0)] <= sum_t E[L_t] + E KL(q(x_T | x0) || N(0, I)) (Ho et al.
    eq. 5), every term exact but the expectations over x0 and x_t, which are sample means."""
    with torch.no_grad():
        steps = sum(step_losses(model, x0, torch.full((len(x0),), t), betas, alpha_bar).mean()
                    for t in range(len(betas)))
        a, zero, one = alpha_bar[-1], torch.zeros_like(x0), torch.ones_like(x0)
        prior = gaussian_kl(a.sqrt() * x0, (1 - a) * one, zero, one).mean()  # q(x_T | x0), N(0, I)
    return (steps + prior).item()


def train(model, betas, alpha_bar, cfg, rng):
    """Descent on the negative ELBO: a random t per sample, its term scaled by T."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.nb_epochs)
    held_out, history = swiss_roll(4000, cfg.noise_data, rng), []
    for epoch in range(cfg.nb_epochs):
        x0 = swiss_roll(cfg.batch_size, cfg.noise_data, rng)  # (B, 2)
        t = torch.randint(0, cfg.T, (cfg.batch_size,))
        loss = cfg.T * step_losses(model, x0, t, betas, alpha_bar).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        check_finite(loss.item(), epoch)
        if (epoch + 1) % max(1, cfg.nb_epochs // 6) == 0 or epoch + 1 == cfg.nb_epochs:
            history.append((epoch + 1, bound(model, held_out, betas, alpha_bar)))
            print(f"iteration {epoch + 1}: negative ELBO {history[-1][1]:.3f} nats on held-out "
                  "data (an upper bound on -log p(x0): lower is better)")
    return history


@torch.no_grad()
def sample(model, betas, n):
    """Ancestral sampling: x_T ~ N(0, I), then each x_{t-1} ~ p(x_{t-1} | x_t); [x_T, ..., x_0]."""
    trajectory = [torch.randn(n, 2)]
    for t in reversed(range(len(betas))):
        mean, var = model(trajectory[-1], torch.full((n,), t), betas)
        trajectory.append(mean + var.sqrt() * torch.randn_like(mean))
    return trajectory


# ---------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    rng = np.random.default_rng(cfg.seed)
    betas, alpha_bar = sigmoid_schedule(cfg.T, cfg.beta_min, cfg.beta_max)
    print(f"sigmoid schedule: beta {betas[0]:.1e} to {betas[-1]:.2f}; abar_T = {alpha_bar[-1]:.1e}")
    model = Reverse(cfg.hidden, cfg.T, cfg.n_frequencies)
    history = train(model, betas, alpha_bar, cfg, rng)
    trajectory = sample(model, betas, cfg.n_samples)
    samples, data = trajectory[-1], swiss_roll(cfg.n_samples, cfg.noise_data, rng)
    save_results(cfg.out, samples, data)

    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    for ax, t in zip(axes[0], [0, cfg.T // 4, cfg.T]):
        a = alpha_bar[t - 1] if t else torch.tensor(1.0)
        ax.scatter(*(a.sqrt() * data + (1 - a).sqrt() * torch.randn_like(data)).T, s=1, alpha=0.3)
        ax.set(title=f"forward: q(x_t), t = {t}", xlim=(-3, 3), ylim=(-3, 3), aspect="equal")
    for ax, t in zip(axes[1], [cfg.T, cfg.T // 4, 0]):
        ax.scatter(*trajectory[cfg.T - t].T, s=1, alpha=0.3, color="C1")
        ax.set(title=f"reverse: p(x_t), t = {t}", xlim=(-3, 3), ylim=(-3, 3), aspect="equal")
    save_figure(fig, cfg.out / "nonequilibrium_2015.png")
    copy_to_assets(cfg.out / "nonequilibrium_2015.png", cfg)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*zip(*history), marker="o")
    ax.set(title="negative ELBO on held-out data (nats)", xlabel="iteration")
    save_figure(fig, cfg.out / "bound.png")

    gaussian_nll = 0.5 * torch.logdet(2 * math.pi * math.e * torch.cov(data.T)).item()
    print(f"negative ELBO: {history[-1][1]:.3f} nats per point; the best single Gaussian scores "
          f"{gaussian_nll:.3f}")
    half = cfg.n_samples // 2
    model_sw = sliced_wasserstein(samples[:half], data[:half])
    floor_sw = sliced_wasserstein(data[:half], data[half:2 * half])
    print(f"sliced Wasserstein to fresh data: generated {model_sw:.4f} | data half against half "
          f"{floor_sw:.4f} | ratio {model_sw / floor_sw:.2f} (target <= 2.5)")
    show_figures()
