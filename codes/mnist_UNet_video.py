"""The GIF of the MNIST lesson: a grid of digits emerging from noise, x_t at each step of the reverse process; and
a grid of 100 digits of the same model.

It samples with the EMA weights of a checkpoint written by mnist_UNet.py (or, without --checkpoint, of a quick model
trained first with the flags of mnist_UNet.py, whose values here default to a one-epoch run on 10,000 digits).
Most frames show the last steps, where the strokes take shape; the early steps all look like noise.

    python codes/mnist_UNet_video.py --checkpoint outputs/mnist_UNet/model.pt  # assets/mnist_UNet.gif and _samples.png
"""
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import mnist_UNet as lesson
from common import check, fail, figure_to_frame, parse_config, write_gif, writable_folder

checkpoint = ""  # a model.pt written by mnist_UNet.py; empty: train a quick model first
n_train = 10000  # training images of the quick model (only without --checkpoint)
nb_epochs = 1  # epochs of the quick model (only without --checkpoint)
sampling_steps = 100  # DDIM steps of the reverse process shown
n_shown = 36  # digits in the grid, a square number
n_frames = 48  # frames of the GIF, denser towards t = 0
assets = "assets"  # folder for the GIF that the README shows


def load_ema(path, cfg):
    """The EMA weights of a checkpoint, checked against --channels and --T like --resume does."""
    model = lesson.UNet(cfg.channels).to(cfg.device)
    check(Path(path).exists(), f"--checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=cfg.device, weights_only=True)
        check(state.get("target") == "v", f"{path} is from an older lesson whose UNet predicted eps; delete it")
        model.load_state_dict(state["ema"])
    except Exception as error:  # a damaged file, or weights of another shape
        fail(f"cannot load the EMA weights of --checkpoint {path} ({type(error).__name__}); same --channels and --T?")
    return model.eval()


if __name__ == "__main__":
    cfg = parse_config(__doc__, lesson.__file__, __file__)
    check(cfg.sampling_steps <= cfg.T, "--sampling_steps cannot exceed --T")
    check(round(cfg.n_shown ** 0.5) ** 2 == cfg.n_shown, f"--n_shown must be a square number, got {cfg.n_shown}")
    assets = writable_folder(cfg.assets, "--assets")
    alpha_bar = lesson.cosine_schedule(cfg.T).to(cfg.device)
    model = load_ema(cfg.checkpoint, cfg) if cfg.checkpoint else lesson.run(cfg)[0]
    digits = lesson.sample(model, alpha_bar, 100, cfg)  # (100, 28, 28), the README's sample grid
    plt.imsave(assets / "mnist_UNet_samples.png", lesson.image_grid(digits, 10).numpy(), cmap="gray")
    print(f"wrote {assets / 'mnist_UNet_samples.png'}")

    x = torch.randn(cfg.n_shown, 1, 28, 28, device=cfg.device)  # x_T
    trajectory = [x] + list(lesson.reverse_process(model, alpha_bar, x, "ddim", cfg.sampling_steps))
    times = np.append(np.linspace(cfg.T - 1, 0, cfg.sampling_steps).round() + 1, 0).astype(int)  # t of trajectory[k]
    u = np.linspace(0, 1, cfg.n_frames)
    chosen = sorted(set(np.round(cfg.sampling_steps * (1 - (1 - u) ** 2)).astype(int)))  # dense near the end

    fig, ax = plt.subplots(figsize=(4, 4.3), dpi=64)  # 256 pixels wide: the noisy frames keep the GIF under 2 MB
    frames = []
    for i in chosen:
        grid = lesson.image_grid(((trajectory[i][:, 0].cpu() + 1) / 2).clamp(0, 1), round(cfg.n_shown ** 0.5))
        ax.clear()
        ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
        ax.set(title=f"x_t, t = {times[i]}", xticks=[], yticks=[])
        frames.append(figure_to_frame(fig))
    write_gif(assets / "mnist_UNet.gif", frames, frame_ms=80, hold_ms=2500)
