"""Flow matching as a GIF: noise flows along nearly straight paths into the four narrow modes.

It imports flow_matching.py (every flag of that lesson works here too), trains its network and
renders assets/flow_matching.gif from the Euler trajectory: each frame shows the points at time t
and, for some of them, the path drawn so far. The frames are evenly spaced in t, not in steps,
since the karras spacing spends most of its steps near t = 0. x_t = (1 - t) x0 + t eps stays
within a few units, so fixed axes hold every frame.

    python codes/flow_matching_video.py    # about 30 s on a 2-core CPU
"""
import matplotlib.pyplot as plt
import torch

import flow_matching as lesson
from common import figure_to_frame, parse_config, save_results, writable_folder, write_gif

assets = "assets"  # folder for the GIF that the README shows
n_frames = 50  # frames of the flow, evenly spaced in t from 1 to 0
n_shown = 2000  # points drawn in each frame
n_paths = 150  # points whose path so far is drawn as a line


def frame(positions, t, n_paths):
    """One GIF frame: positions (k, n, 2) after each step so far, the last at time t."""
    fig, ax = plt.subplots(figsize=(4.5, 4.8))
    lines = positions[:, :n_paths]  # (k, n_paths, 2)
    ax.plot(lines[..., 0], lines[..., 1], lw=0.5, alpha=0.5, color="tab:orange")
    ax.scatter(*positions[-1].T, s=2, alpha=0.4, color="tab:blue")
    ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xticks=[-1, 0, 1], yticks=[-1, 0, 1])
    ax.set_title(f"flow matching, Euler steps of the network\nt = {t:.3f}", fontsize=10)
    image = figure_to_frame(fig)
    plt.close(fig)
    return image


if __name__ == "__main__":
    cfg = parse_config(__doc__, lesson.__file__, __file__)
    folder = writable_folder(cfg.assets, "--assets")
    model, ts, trajectory = lesson.run(cfg)
    positions = torch.stack(trajectory)[:, :cfg.n_shown].cpu()  # (steps + 1, n_shown, 2)
    times = torch.linspace(1, 0, cfg.n_frames).to(ts)
    steps = sorted({(ts - time).abs().argmin().item() for time in times})  # nearest step to each
    frames = [frame(positions[:step + 1], ts[step].item(), cfg.n_paths) for step in steps]
    write_gif(folder / "flow_matching.gif", frames, frame_ms=100)
    save_results(cfg.out, trajectory[-1], lesson.sample_data(cfg.n_samples, cfg))
    shares, off_mode, stds = lesson.mode_report(trajectory[-1], cfg.sigma_data)
    print("mode shares " + " ".join(f"{s:.3f}" for s in shares) + " (target 0.22-0.28 each), "
          f"off-mode {off_mode:.4f} (target < 0.01)")
