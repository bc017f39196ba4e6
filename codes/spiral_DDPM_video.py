"""Lesson 8 as a GIF: the spiral dissolves into noise, then the reverse process draws it back.

It imports the schedule, the forward process, the training and the samplers of spiral_DDPM.py
(every flag of that lesson works here too) and renders assets/spiral_DDPM.gif, and
assets/spiral_forward.png: the spiral noised in closed form at several t. The forward half is
q(x_t | x0) in closed form (eq. 4); the reverse half is the sampler's trajectory. DDPM's x_t is
variance-preserving (a total variance near 1 at every t), so fixed axes hold every frame.

    python codes/spiral_DDPM_video.py          # about 60 s on a 2-core CPU
"""
import matplotlib.pyplot as plt
import torch

import spiral_DDPM as lesson
from common import (check, figure_to_frame, parse_config, save_figure, save_results,
                    writable_folder, write_gif)

assets = "assets"  # folder for the GIF that the README shows
n_frames = 30  # frames of each half, forward and reverse
n_shown = 2000  # points drawn in each frame


def frame(x, title):
    """One GIF frame: the points x (n, 2)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.8))
    ax.scatter(*x.T, s=2, alpha=0.4)
    ax.set(xlim=(-2.5, 2.5), ylim=(-2.5, 2.5), aspect="equal", xticks=[-1, 0, 1], yticks=[-1, 0, 1])
    ax.set_title(title, fontsize=10)
    image = figure_to_frame(fig)
    plt.close(fig)
    return image


def forward_figure(x0, eps, alpha_bar, cfg):
    """The forward process q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I) at six t, for the same
    x0 and eps."""
    shown_t = [0, cfg.T // 100, cfg.T // 40, cfg.T // 20, cfg.T // 10, cfg.T - 1]
    fig, axes = plt.subplots(1, len(shown_t), figsize=(3 * len(shown_t), 3.3))
    for ax, t in zip(axes, shown_t):
        x_t = lesson.q_sample(x0, torch.full((len(x0),), t, device=x0.device), eps, alpha_bar).cpu()
        ax.scatter(*x_t.T, s=1, alpha=0.4)
        ax.set(title=f"t = {t + 1}\nsqrt(abar_t) = {alpha_bar[t].sqrt():.2f}", xlim=(-2.5, 2.5),
               ylim=(-2.5, 2.5), aspect="equal", xticks=[], yticks=[])
    return fig


if __name__ == "__main__":
    cfg = parse_config(__doc__, lesson.__file__, __file__)
    check(cfg.n_frames >= 2, "--n_frames must be at least 2: a first and a last frame")
    folder = writable_folder(cfg.assets, "--assets")
    alpha_bar, _, trajectory = lesson.run(cfg)
    # Frames at t = T (i / n)^2: most of the picture changes at small t, while the spiral shows.
    ramp = [(i / (cfg.n_frames - 1)) ** 2 for i in range(cfg.n_frames)]  # 0 to 1, dense near 0
    shown_t = sorted({round((cfg.T - 1) * r) for r in ramp})
    x0 = lesson.sample_data(cfg.n_shown, cfg)
    eps = torch.randn_like(x0)
    save_figure(forward_figure(x0, eps, alpha_bar, cfg), folder / "spiral_forward.png")
    frames = []
    for t in shown_t:
        x_t = lesson.q_sample(x0, torch.full((cfg.n_shown,), t, device=cfg.device), eps, alpha_bar)
        frames.append(frame(x_t.cpu(), f"forward: q(x_t | x0), t = {t + 1}"))
    steps = len(trajectory) - 1  # T for ancestral sampling, sampling_steps for DDIM
    shown_steps = sorted({steps - round(steps * r) for r in ramp})
    frames += [frame(trajectory[step][:cfg.n_shown].cpu(), f"reverse ({cfg.sampler}): step "
                     f"{step}/{steps}") for step in shown_steps]
    write_gif(folder / "spiral_DDPM.gif", frames, frame_ms=100)
    save_results(cfg.out, trajectory[-1], lesson.sample_data(cfg.n_samples, cfg))
    print(f"mean distance to the curve: generated {lesson.distance_to_curve(trajectory[-1]):.4f} "
          f"| fresh data {lesson.distance_to_curve(lesson.sample_data(cfg.n_samples, cfg)):.4f}")
