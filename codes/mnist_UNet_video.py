"""Lesson 10 as a GIF: digits emerging from noise, x_t after each step of the reverse process.

It also draws a grid of 100 digits of the same model, the README's picture.

It samples with the EMA weights of a checkpoint of mnist_UNet.py (or, without --checkpoint, of a
quick model trained first with the flags of mnist_UNet.py, which default here to one epoch on 10,000
digits). Most frames show the last steps, where the strokes take shape; the early ones look alike.

    python codes/mnist_UNet_video.py --checkpoint outputs/mnist_UNet/model.pt   # about 1 minute
"""
import matplotlib.pyplot as plt
import numpy as np
import torch

import mnist_UNet as lesson
from common import check, figure_to_frame, parse_config, write_gif, writable_folder
from mnist_plumbing import autocast, image_grid, load_checkpoint, load_mnist, use_bf16

checkpoint = ""  # a model.pt written by mnist_UNet.py; empty: train a quick model first
n_train = 10000  # training images of the quick model (only without --checkpoint)
nb_epochs = 1  # epochs of the quick model (only without --checkpoint)
n_shown = 36  # digits in the GIF's grid, a square number
n_frames = 48  # frames of the GIF, denser towards t = 0
assets = "assets"  # folder for the GIF and the grid that the README shows


def trained_model(alpha_bar, bf16, cfg):
    """The EMA weights of --checkpoint, refused if another lesson wrote it; or a quick model."""
    if not cfg.checkpoint:
        images, _ = load_mnist(cfg.data, "train", cfg.mirror, cfg.n_train)
        return lesson.train(images, alpha_bar, bf16, cfg)[0]
    state = load_checkpoint(cfg.checkpoint, lesson.CHECKPOINT, cfg, "--checkpoint")
    model = lesson.UNet(cfg.channels).to(cfg.device)
    model.load_state_dict(state["ema"])
    return model.eval()


if __name__ == "__main__":
    cfg = parse_config(__doc__, lesson.__file__, __file__)
    check(cfg.sampling_steps <= cfg.T, "--sampling_steps cannot exceed --T")
    side = round(cfg.n_shown ** 0.5)
    check(side ** 2 == cfg.n_shown, f"--n_shown must be a square number, got {cfg.n_shown}")
    assets = writable_folder(cfg.assets, "--assets")
    alpha_bar, bf16 = lesson.cosine_schedule(cfg.T).to(cfg.device), use_bf16(cfg.bf16, cfg.device)
    model = trained_model(alpha_bar, bf16, cfg)
    digits = lesson.sample(model, alpha_bar, 100, bf16, cfg)  # (100, 28, 28), the README's grid
    plt.imsave(assets / "mnist_UNet_samples.png", image_grid(digits, 10).numpy(), cmap="gray")
    print(f"wrote {assets / 'mnist_UNet_samples.png'}")

    steps = lesson.visited_steps(cfg.T, cfg.sampling_steps)
    x, trajectory = torch.randn(cfg.n_shown, 1, 28, 28, device=cfg.device), []  # x_T
    with autocast(cfg.device, bf16):
        for t, s in zip(steps[:-1], steps[1:]):
            x = lesson.reverse_step(model, alpha_bar, x, t, s, cfg.sampler)
            trajectory.append((s + 1, x))  # x after the step, at t = s + 1 (0: the digits)
    u = np.linspace(0, 1, cfg.n_frames)
    shown = sorted(set(np.round((len(trajectory) - 1) * (1 - (1 - u) ** 2)).astype(int)))
    fig, ax = plt.subplots(figsize=(4, 4.3), dpi=64)  # 256 pixels wide keeps the GIF small
    frames = []
    for i in shown:
        t, x = trajectory[i]
        ax.clear()
        grid = image_grid(((x[:, 0].cpu() + 1) / 2).clamp(0, 1), side)
        ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
        ax.set(title=f"x_t, t = {t}", xticks=[], yticks=[])
        frames.append(figure_to_frame(fig))
    write_gif(assets / "mnist_UNet.gif", frames, frame_ms=80, hold_ms=2500)
