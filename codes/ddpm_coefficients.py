"""The numbers behind lesson 8's DDPM: beta_t, abar_t, and the forward and posterior coefficients.

Plotted against t for the linear (Ho et al. 2020) and cosine (Nichol & Dhariwal 2021) schedules,
from the schedule and posterior of spiral_DDPM.py; it writes assets/ddpm_coefficients.png. There is
nothing to train or sample here, so it writes no samples.npy. How the end value of beta is chosen:
x_T must be N(0, I), i.e. abar_T = prod_t (1 - beta_t) ~ exp(-sum_t beta_t) must be ~ 0. For the
linear schedule the sum is T (beta_1 + beta_T) / 2, so T = 1000, beta_1 = 1e-4 and beta_T = 0.02
give abar_T ~ exp(-10), about 4e-5 (the printout checks it). The cosine schedule's f(T) =
cos^2(pi/2) = 0 would make abar_T = 0 and beta_T = 1; clipping beta at 0.999 keeps the last step
finite, so abar_T is 0.001 abar_{T-1}: tiny, not 0 (the printout shows it).

    python codes/ddpm_coefficients.py          # about 5 s
"""
import math

import matplotlib.pyplot as plt

from common import parse_config, save_figure, show_figures, writable_folder
from spiral_DDPM import make_schedule, posterior

T = 1000  # diffusion steps
assets = "assets"  # folder for the figure that the README shows

if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    t = range(1, cfg.T + 1)
    for name, style in (("linear", "-"), ("cosine", "--")):  # a line style per schedule
        betas, alphas, alpha_bar = make_schedule(name, cfg.T)
        steps = range(1, cfg.T)
        coef_x0, coef_xt, _ = zip(*(posterior(i, betas, alphas, alpha_bar) for i in steps))
        axes[0].semilogy(t, betas, style, color="C0", label=f"beta_t, {name}")
        for curve, label, color in ((alpha_bar, "abar_t", "C0"),
                                    (alpha_bar.sqrt(), "sqrt(abar_t)", "C1"),
                                    ((1 - alpha_bar).sqrt(), "sqrt(1 - abar_t)", "C2")):
            axes[1].plot(t, curve, style, color=color, label=f"{label}, {name}")  # a colour each
        axes[2].semilogy(t[1:], coef_x0, style, color="C1", label=f"coef_x0, {name}")
        axes[2].semilogy(t[1:], coef_xt, style, color="C2", label=f"coef_xt, {name}")
        estimate = math.exp(-betas.double().sum())
        print(f"{name}: beta_1 = {betas[0]:.2e}, beta_T = {betas[-1]:.3f}, abar_T = "
              f"{alpha_bar[-1]:.2e} (abar_(T-1) = {alpha_bar[-2]:.2e}; "
              f"exp(-sum beta) = {estimate:.2e})")
    axes[0].set(title="beta_t: noise added at step t", xlabel="t")
    axes[1].set(title="x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps", xlabel="t")
    axes[2].set(title="posterior mean: coef_x0 x0 + coef_xt x_t", xlabel="t")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle("DDPM schedules: linear (solid, Ho et al. 2020) and cosine (dashed, "
                 "Nichol & Dhariwal 2021)")
    fig.tight_layout()
    save_figure(fig, writable_folder(cfg.assets, "--assets") / "ddpm_coefficients.png")
    show_figures()
