"""Lesson 13 as a GIF: digits emerging under classifier-free guidance, one row per digit asked for.

It shows x_t after each step of the reverse process, and draws the 10 x 10 grid of the same model.

It samples with the EMA weights of a checkpoint of mnist_guidance.py (or, without --checkpoint, of a
quick model trained first with the flags of mnist_guidance.py, which default here to one epoch on
10,000 digits), at --guidance w.

    python codes/mnist_guidance_video.py --checkpoint outputs/mnist_guidance/model.pt   # 1 minute
"""
import matplotlib.pyplot as plt
import numpy as np
import torch

import mnist_guidance as lesson
from common import figure_to_frame, parse_config, write_gif, writable_folder
from mnist_plumbing import autocast, load_checkpoint, load_mnist, use_bf16

checkpoint = ""  # a model.pt written by mnist_guidance.py; empty: train a quick model first
n_train = 10000  # training images of the quick model (only without --checkpoint)
nb_epochs = 1  # epochs of the quick model (only without --checkpoint)
n_columns = 6  # digits per row of the GIF, one row per digit 0-9
n_frames = 48  # frames of the GIF, denser towards t = 0
assets = "assets"  # folder for the GIF and the grid that the README shows


def trained_model(alpha_bar, bf16, cfg):
    """The EMA weights of --checkpoint, refused if another lesson wrote it; or a quick model."""
    if not cfg.checkpoint:
        images, labels = load_mnist(cfg.data, "train", cfg.mirror, cfg.n_train)
        return lesson.train(images, labels, alpha_bar, bf16, cfg)
    state = load_checkpoint(cfg.checkpoint, lesson.CHECKPOINT, cfg, "--checkpoint")
    model = lesson.ConditionalUNet(cfg.channels).to(cfg.device)
    model.load_state_dict(state["ema"])
    return model.eval()


def rows_of_digits(x, n_columns):
    """(10 * n_columns, 1, 28, 28) in [-1, 1], digit-major, as one image with a row per digit."""
    x = ((x[:, 0].cpu() + 1) / 2).clamp(0, 1).reshape(10, n_columns, 28, 28)
    return x.transpose(1, 2).reshape(10 * 28, n_columns * 28)


if __name__ == "__main__":
    cfg = parse_config(__doc__, lesson.__file__, __file__)
    assets = writable_folder(cfg.assets, "--assets")
    alpha_bar, bf16 = lesson.cosine_schedule(cfg.T).to(cfg.device), use_bf16(cfg.bf16, cfg.device)
    model = trained_model(alpha_bar, bf16, cfg)
    digits = lesson.sample(model, alpha_bar, torch.arange(10).repeat_interleave(10), cfg.guidance,
                           bf16, cfg)  # (100, 28, 28), ten of each digit
    grid = digits.reshape(10, 10, 28, 28).transpose(1, 2).reshape(280, 280)
    plt.imsave(assets / "mnist_guidance_samples.png", grid.numpy(), cmap="gray")
    print(f"wrote {assets / 'mnist_guidance_samples.png'}, one row per digit, w = {cfg.guidance:g}")

    label = torch.arange(10).repeat_interleave(cfg.n_columns).to(cfg.device)  # (10 * n_columns,)
    steps = lesson.visited_steps(cfg.T, cfg.sampling_steps)
    x, trajectory = torch.randn(len(label), 1, 28, 28, device=cfg.device), []  # x_T
    with autocast(cfg.device, bf16):
        for t, s in zip(steps[:-1], steps[1:]):
            w_t = lesson.guidance_at(t, cfg.guidance, cfg)
            guided_v = lambda x, t: lesson.guided(model, x, t, label, w_t)
            x = lesson.reverse_step(guided_v, alpha_bar, x, t, s, "ddpm")
            trajectory.append((s + 1, x))  # x after the step, at t = s + 1 (0: the digits)
    u = np.linspace(0, 1, cfg.n_frames)
    shown = sorted(set(np.round((len(trajectory) - 1) * (1 - (1 - u) ** 2)).astype(int)))
    fig, ax = plt.subplots(figsize=(3.2, 5), dpi=64)
    frames = []
    for i in shown:
        t, x = trajectory[i]
        ax.clear()
        ax.imshow(rows_of_digits(x, cfg.n_columns), cmap="gray", vmin=0, vmax=1)
        ax.set(title=f"w = {cfg.guidance:g}, t = {t}", xticks=[], yticks=range(14, 280, 28),
               yticklabels=range(10))
        frames.append(figure_to_frame(fig))
    write_gif(assets / "mnist_guidance.gif", frames, frame_ms=80, hold_ms=2500)
