"""DDPM in detail: at every noise level of the reverse process, the model's samples against the exact density.

For Gaussian data the forward marginal is closed form at every t (Ho et al. 2020, eq. 4):
    q(x_t) = N(sqrt(abar_t) mu_data, abar_t sigma_data^2 + 1 - abar_t).
A correct sampler must produce exactly these densities on its way down, not only at t = 0. This script trains
the network of single_DDPM.py (every flag of that lesson works here too), runs its sampler, and at each level
compares the histogram of x_t with q(x_t): it prints their 1D Wasserstein distance, in units of the std of
q(x_t), and renders assets/detailed_DDPM.gif. The bottom panel of each frame zooms on the target.

    python codes/detailed_DDPM.py              # about 28 s on a 2-core CPU
"""
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

import single_DDPM as lesson
from common import figure_to_frame, parse_config, save_results, writable_folder, write_gif

assets = "assets"  # folder for the GIF that the README shows
n_frames = 40  # noise levels shown and measured, evenly spaced in t
n_samples = 2000  # samples in each histogram (single_DDPM.py draws 5000; 1000 steps of 2000 are 2.5x cheaper)


def exact_marginal(t, alpha_bar, cfg):
    """Mean and std of q(x_t), eq. 4 applied to N(mu_data, sigma_data^2); t = -1 is the data itself."""
    a = alpha_bar[t].item() if t >= 0 else 1.0
    return math.sqrt(a) * cfg.mu_data, math.sqrt(a * cfg.sigma_data ** 2 + 1 - a)


def wasserstein_to_gaussian(x, mean, std):
    """W1 between the samples x and N(mean, std^2): mean gap between sorted samples and the Gaussian's quantiles."""
    levels = (torch.arange(len(x), dtype=torch.float64) + 0.5) / len(x)
    quantiles = mean + std * math.sqrt(2) * torch.erfinv(2 * levels - 1)
    return (x.double().sort().values - quantiles).abs().mean().item()


def frame(x, t, mean, std, distance, cfg):
    """One GIF frame: histogram of x_t (numpy) against the exact density, full view and zoom on the target."""
    fig, (ax_full, ax_zoom) = plt.subplots(2, 1, figsize=(6, 5))
    zoom = (cfg.mu_data - 6 * cfg.sigma_data, cfg.mu_data + 6 * cfg.sigma_data)
    for ax, (low, high), top in ((ax_full, (-3.5, 3.5), 1.0), (ax_zoom, zoom, 48.0)):
        grid = np.linspace(low, high, 300)
        ax.hist(x, bins=80, range=(low, high), density=True, histtype="stepfilled", alpha=0.6, label="model samples x_t")
        ax.plot(grid, np.exp(-0.5 * ((grid - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)), "k", lw=1,
                label="exact q(x_t)")
        ax.set(xlim=(low, high), ylim=(0, top), yticks=[])
    ax_full.legend(loc="upper left", fontsize=8)
    ax_full.set_title(f"t = {t + 1:4d}   exact q(x_t): mean {mean:.3f}, std {std:.4f}\n"
                      f"W1(samples, q(x_t)) = {distance:.3f} std", fontsize=10)
    image = figure_to_frame(fig)
    plt.close(fig)
    return image


if __name__ == "__main__":
    cfg = parse_config(__doc__, lesson.__file__, __file__)
    folder = writable_folder(cfg.assets, "--assets")
    alpha_bar, _, trajectory = lesson.run(cfg)  # trajectory[i] is x at t = T - 1 - i; the last is x_0
    shown = torch.linspace(cfg.T - 1, -1, cfg.n_frames).round().long().tolist()  # from t = T down to the data
    frames = []
    print("   t   exact mean  exact std   W1 / exact std")
    for t in shown:
        x = trajectory[cfg.T - 1 - t].cpu()[:, 0]  # (n,) samples at level t (t = -1: the final samples)
        mean, std = exact_marginal(t, alpha_bar, cfg)
        distance = wasserstein_to_gaussian(x, mean, std) / std
        print(f"{t + 1:4d}   {mean:9.4f}  {std:9.4f}   {distance:.3f}")
        frames.append(frame(x.numpy(), t, mean, std, distance, cfg))
    write_gif(folder / "detailed_DDPM.gif", frames, frame_ms=150)
    save_results(cfg.out, trajectory[-1], lesson.sample_data(cfg.n_samples, cfg))
