"""Lesson 3 as a GIF: four Gaussians noised out to N(0, I), then denoised back into four spikes.

It imports the training and the sampler of simple_multimodal.py (every flag of that lesson works
here too) and renders assets/denoising_4.gif. The forward half noises fresh data along the same
Sigmas ladder; the reverse half is the sampler's trajectory. Points are drawn as
x / sqrt(1 + sigma^2), the variance-preserving scale of DDPM (a total variance near 1 at every
level), so that the noise is N(0, I) and the axes stay fixed.

    python codes/simple_multimodal_video.py    # about 42 s on a 2-core CPU
"""
import matplotlib.pyplot as plt
import torch

import simple_multimodal as lesson
from common import figure_to_frame, parse_config, save_results, writable_folder, write_gif

assets = "assets"  # folder for the GIF that the README shows
n_shown = 2000  # points drawn in each frame


def frame(x, sigma, title):
    """One GIF frame: the points x (n, 2) at noise level sigma, in the variance-preserving scale."""
    fig, ax = plt.subplots(figsize=(4.5, 4.8))
    ax.scatter(*(x / (1 + sigma ** 2) ** 0.5).T, s=2, alpha=0.4)
    ax.set(xlim=(-2.5, 2.5), ylim=(-2.5, 2.5), aspect="equal", xticks=[-1, 0, 1], yticks=[-1, 0, 1])
    ax.set_title(f"{title}\nsigma = {sigma:.4f}", fontsize=10)
    image = figure_to_frame(fig)
    plt.close(fig)
    return image


if __name__ == "__main__":
    cfg = parse_config(__doc__, lesson.__file__, __file__)
    folder = writable_folder(cfg.assets, "--assets")
    Sigmas, _, trajectory = lesson.run(cfg)
    levels = Sigmas.cpu().flip(0)[::2].tolist()  # forward half: every other level, 0 to sigma_max
    data = lesson.sample_data(cfg.n_shown, cfg).cpu()
    noise = torch.randn_like(data)
    frames = [frame(data + sigma * noise, sigma, "forward: noising the data") for sigma in levels]
    frames += [frame(x[:cfg.n_shown].cpu(), sigma, f"reverse: denoising step {step}/{cfg.N}")
               for step, (sigma, x) in enumerate(zip(Sigmas.tolist(), trajectory))]
    write_gif(folder / "denoising_4.gif", frames, frame_ms=120)
    save_results(cfg.out, trajectory[-1], lesson.sample_data(cfg.test_size, cfg))
    shares, off_mode, stds = lesson.mode_report(trajectory[-1], cfg.sigma_data)
    print("mode shares " + " ".join(f"{s:.3f}" for s in shares) + " (target 0.22-0.28 each), "
          f"off-mode {off_mode:.4f} (target < 0.01)")
