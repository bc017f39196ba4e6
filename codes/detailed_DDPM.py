"""DDPM in detail: lesson 4's DDPM, checked against the exact density at every level of its sampler.

For Gaussian data the forward marginal is closed form at every t (Ho et al. 2020, eq. 4):
    q(x_t) = N(sqrt(abar_t) mu_data, abar_t sigma_data^2 + 1 - abar_t).
A correct sampler must produce exactly these densities on its way down. This script trains the
network of single_DDPM.py (every flag of that lesson works here too), runs its ancestral sampler
(each x_{t-1} drawn in turn from the model's Gaussian step), and at each level compares the
histogram of x_t with q(x_t): it prints their Wasserstein distance W1 (the mean gap between the
sorted samples and the exact quantiles: how far the samples must move, on average, to match q), in
units of the std of q(x_t), and renders detailed_DDPM.gif into --out. The bottom panel of each
frame zooms on the target.

    python codes/detailed_DDPM.py              # about 28 s on a 2-core CPU
    python codes/detailed_DDPM.py --assets assets    # also refresh the README's GIF
"""
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

import single_DDPM as lesson
from common import copy_to_assets, figure_to_frame, parse_config, save_results, write_gif

assets = ""  # also write the README's GIF to this folder; empty: only --out
n_frames = 40  # noise levels shown and measured, evenly spaced in t
n_samples = 2000  # samples in each histogram (fewer than single_DDPM.py's, for a cheaper run)


def exact_marginal(t, alpha_bar, cfg):
    """Mean and std of q(x_t), eq. 4 applied to N(mu_data, sigma_data^2); t = -1: the data."""
    a = alpha_bar[t].item() if t >= 0 else 1.0
    return math.sqrt(a) * cfg.mu_data, math.sqrt(a * cfg.sigma_data ** 2 + 1 - a)


def wasserstein_to_gaussian(x, mean, std):
    """W1 between the samples x and N(mean, std^2): mean gap between the sorted samples and the
    Gaussian's quantiles at the levels (i + 1/2) / n."""
    levels = (torch.arange(len(x), dtype=torch.float64) + 0.5) / len(x)
    quantiles = mean + std * math.sqrt(2) * torch.erfinv(2 * levels - 1)
    return (x.double().sort().values - quantiles).abs().mean().item()


def frame(x, t, mean, std, distance, cfg):
    """One GIF frame: histogram of x_t (numpy) against the exact density, full view and zoom."""
    fig, (ax_full, ax_zoom) = plt.subplots(2, 1, figsize=(6, 5))
    zoom = (cfg.mu_data - 6 * cfg.sigma_data, cfg.mu_data + 6 * cfg.sigma_data)
    for ax, (low, high), top in ((ax_full, (-3.5, 3.5), 1.0), (ax_zoom, zoom, 48.0)):
        grid = np.linspace(low, high, 300)
        density = np.exp(-0.5 * ((grid - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
        ax.hist(x, bins=80, range=(low, high), density=True, histtype="stepfilled", alpha=0.6,
                label="model samples x_t")
        ax.plot(grid, density, "k", lw=1, label="exact q(x_t)")
        ax.set(xlim=(low, high), ylim=(0, top), yticks=[])
    ax_full.legend(loc="upper left", fontsize=8)
    ax_full.set_title(f"t = {t + 1:4d}   exact q(x_t): mean {mean:.3f}, std {std:.4f}\n"
                      f"W1(samples, q(x_t)) = {distance:.3f} std", fontsize=10)
    image = figure_to_frame(fig)
    plt.close(fig)
    return image


if __name__ == "__main__":
    cfg = parse_config(__doc__, lesson.__file__, __file__)
    alpha_bar, _, trajectory = lesson.run(cfg)  # trajectory[i] is x at t = T - 1 - i; last: x_0
    shown = torch.linspace(cfg.T - 1, -1, cfg.n_frames).round().long().tolist()  # t = T down to 0
    frames, distances = [], {}
    print("   t   exact mean  exact std   W1 / exact std")
    for t in shown:
        x = trajectory[cfg.T - 1 - t].cpu()[:, 0]  # (n,) samples at level t; t = -1: the final ones
        mean, std = exact_marginal(t, alpha_bar, cfg)
        distances[t + 1] = wasserstein_to_gaussian(x, mean, std) / std
        print(f"{t + 1:4d}   {mean:9.4f}  {std:9.4f}   {distances[t + 1]:.3f}")
        frames.append(frame(x.numpy(), t, mean, std, distances[t + 1], cfg))
    write_gif(cfg.out / "detailed_DDPM.gif", frames, frame_ms=150)
    copy_to_assets(cfg.out / "detailed_DDPM.gif", cfg)
    data = lesson.sample_data(cfg.n_samples, cfg)
    save_results(cfg.out, trajectory[-1], data)

    worst = max(distances, key=distances.get)  # the level t whose W1 is the largest
    print(f"largest W1 over the levels: {distances[worst]:.3f} std, at t = {worst}")
    final = wasserstein_to_gaussian(trajectory[-1].cpu()[:, 0], cfg.mu_data, cfg.sigma_data)
    fresh = wasserstein_to_gaussian(data.cpu()[:, 0], cfg.mu_data, cfg.sigma_data)
    print(f"W1 of the final samples to N(mu_data, sigma_data^2): {final / cfg.sigma_data:.3f} std "
          f"(target <= 0.10; {cfg.n_samples} fresh data points: {fresh / cfg.sigma_data:.3f})")
