"""Lesson 1 as a GIF: the histogram of the samples after each Heun step, from noise to N(1, 0.01^2).

It imports the training and the sampler of simple_1Diffusion.py (every flag of that lesson works
here too) and renders assets/pdf_diffusion_gif.gif. It also draws assets/noise_scales.png, the data
at several noise levels. The GIF shows x / sqrt(1 + sigma^2): the same samples in the
variance-preserving scale of DDPM (a total variance near 1 at every level), so that the first frame
is N(0, 1) whatever sigma_max is, and the axes can stay fixed. The bottom panel zooms on the target.

    python codes/simple_1Diffusion_video.py    # about 30 s on a 2-core CPU
"""
import matplotlib.pyplot as plt
import numpy as np

import simple_1Diffusion as lesson
from common import (figure_to_frame, parse_config, save_figure, save_results, writable_folder,
                    write_gif)

assets = "assets"  # folder for the GIF and noise_scales.png that the README shows


def gaussian_pdf(x, mean, std):
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))


def noise_scales_figure(cfg, levels=(0.0, 0.1, 0.3, 1.0, 3.0)):
    """Histograms of x0 + sigma n for a few sigma, each with the exact density
    N(mu, sigma_data^2 + sigma^2), on one shared x axis so that the spreading shows."""
    fig, axes = plt.subplots(1, len(levels), figsize=(3 * len(levels), 2.8), sharex=True)
    x0 = lesson.sample_data(cfg.test_size, cfg).cpu().numpy()[:, 0]
    grid = np.linspace(cfg.mu_data - 8, cfg.mu_data + 8, 2000)
    for ax, sigma in zip(axes, levels):
        x = x0 + sigma * np.random.randn(len(x0))
        ax.hist(x, bins=np.linspace(grid[0], grid[-1], 400), density=True, alpha=0.6)
        ax.plot(grid, gaussian_pdf(grid, cfg.mu_data, np.hypot(cfg.sigma_data, sigma)), "k", lw=1)
        ax.set(title=f"sigma = {sigma:g}", yticks=[], xlim=(grid[0], grid[-1]))
    fig.suptitle(f"the data N({cfg.mu_data:g}, {cfg.sigma_data:g}^2) at several noise levels: "
                 "the network learns to undo each one", y=1.04)
    return fig


def frame(x, sigma, step, cfg):
    """One GIF frame: the samples x (numpy, raw scale) at noise level sigma."""
    scale = np.sqrt(1 + sigma ** 2)  # variance-preserving view x / sqrt(1 + sigma^2)
    mean = cfg.mu_data / scale  # the exact law of the scaled samples
    std = np.hypot(cfg.sigma_data, sigma) / scale
    fig, (ax_full, ax_zoom) = plt.subplots(2, 1, figsize=(6, 5))
    peak = 1.2 * gaussian_pdf(0, 0, cfg.sigma_data)  # the zoom's fixed height: the target's peak
    zoom = (cfg.mu_data - 6 * cfg.sigma_data, cfg.mu_data + 6 * cfg.sigma_data)
    for ax, (low, high), top in ((ax_full, (-3.5, 3.5), 1.0), (ax_zoom, zoom, peak)):
        grid = np.linspace(low, high, 300)
        ax.hist(x / scale, bins=80, range=(low, high), density=True, alpha=0.6, label="samples")
        ax.plot(grid, gaussian_pdf(grid, mean, std), "k", lw=1, label="exact density at this sigma")
        ax.plot(grid, gaussian_pdf(grid, cfg.mu_data, cfg.sigma_data), "r--", lw=1, label="target")
        ax.set(xlim=(low, high), ylim=(0, top), yticks=[])
    ax_full.legend(loc="upper left", fontsize=8)
    ax_zoom.set_xlabel("x / sqrt(1 + sigma^2)   (bottom: zoom on the target)")
    ax_full.set_title(f"step {step:2d}/{cfg.N}  sigma = {sigma:8.4f}\nmean {x.mean():.3f} "
                      f"(target {cfg.mu_data:g})  std {x.std():.4f} (target {cfg.sigma_data:g})")
    image = figure_to_frame(fig)
    plt.close(fig)
    return image


if __name__ == "__main__":
    cfg = parse_config(__doc__, lesson.__file__, __file__)
    folder = writable_folder(cfg.assets, "--assets")
    save_figure(noise_scales_figure(cfg), folder / "noise_scales.png")
    Sigmas, _, trajectory = lesson.run(cfg)
    frames = [frame(x.cpu().numpy()[:, 0], sigma, step, cfg)
              for step, (sigma, x) in enumerate(zip(Sigmas.tolist(), trajectory))]
    write_gif(folder / "pdf_diffusion_gif.gif", frames, frame_ms=150)
    save_results(cfg.out, trajectory[-1], lesson.sample_data(cfg.test_size, cfg))
    x = trajectory[-1]
    print(f"generated: mean {x.mean():.3f} std {x.std():.4f} | target: mean {cfg.mu_data:.3f} "
          f"std {cfg.sigma_data:.4f}")
