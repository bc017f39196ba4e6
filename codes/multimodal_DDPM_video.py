"""Lesson 6 as a GIF: the four-Gaussian DDPM's reverse process carries N(0, I) into four spikes.

It imports the training and the samplers of multimodal_DDPM.py (every flag of that lesson works here
too, among them --sampler and --sampling_steps) and renders assets/multimodal_DDPM.gif from the
sampler's trajectory. DDPM's x_t is variance-preserving (a total variance near 1 at every t), so
fixed axes hold every frame.

    python codes/multimodal_DDPM_video.py      # about 40 s on a 2-core CPU
"""
import matplotlib.pyplot as plt
import torch

import multimodal_DDPM as lesson
from common import figure_to_frame, parse_config, save_results, writable_folder, write_gif

assets = "assets"  # folder for the GIF that the README shows
n_frames = 50  # frames of the reverse process, evenly spaced over the sampler's steps
n_shown = 2000  # points drawn in each frame


def frame(x, step, cfg):
    """One GIF frame: the points x (n, 2) after `step` of the sampler's steps."""
    fig, ax = plt.subplots(figsize=(4.5, 4.8))
    ax.scatter(*x.T, s=2, alpha=0.4)
    ax.set(xlim=(-2.5, 2.5), ylim=(-2.5, 2.5), aspect="equal", xticks=[-1, 0, 1], yticks=[-1, 0, 1])
    ax.set_title(f"DDPM reverse process ({cfg.sampler})\nstep {step}/{cfg.sampling_steps}",
                 fontsize=10)
    image = figure_to_frame(fig)
    plt.close(fig)
    return image


if __name__ == "__main__":
    cfg = parse_config(__doc__, lesson.__file__, __file__)
    folder = writable_folder(cfg.assets, "--assets")
    model, alpha_bar, trajectory = lesson.run(cfg)
    n_frames = min(cfg.n_frames, cfg.sampling_steps + 1)
    steps = torch.linspace(0, cfg.sampling_steps, n_frames).round().long().tolist()
    frames = [frame(trajectory[step][:cfg.n_shown].cpu(), step, cfg) for step in steps]
    write_gif(folder / "multimodal_DDPM.gif", frames, frame_ms=100)
    save_results(cfg.out, trajectory[-1], lesson.sample_data(cfg.n_samples, cfg))
    shares, off_mode, stds = lesson.mode_report(trajectory[-1], cfg.sigma_data)
    print("mode shares " + " ".join(f"{s:.3f}" for s in shares) + " (target 0.22-0.28 each), "
          f"off-mode {off_mode:.4f} (target < 0.01)")
