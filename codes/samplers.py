"""Which sampler, how many steps: five samplers of one denoiser, compared at equal cost.

Lesson 3's denoiser D(x, sigma), trained as there, and the exact denoiser of its four Gaussians
drive five samplers down one noise ladder (Karras et al. 2022, eq. 5): Euler (which is DDIM), Heun
(their Algorithm 1), DPM-Solver++(2M) (Lu et al. 2022), Euler-ancestral (DDPM's step) and EDM's
stochastic sampler (Algorithm 2), at equal NFE (number of function, i.e. denoiser, evaluations).
With the exact denoiser the error is the sampler's own; with the network, what a learner gets.

    python codes/samplers.py                  # about 32 s on a 2-core CPU; -h lists every flag
"""
import math

import matplotlib.pyplot as plt
import torch

from common import check, copy_to_assets, parse_config, save_figure, save_results, show_figures
from multimodal_DDPM import mode_error  # lesson 6's measure of quality
from simple_multimodal import MODES, Denoiser, karras_sigmas, mode_report, sample_data, train

sigma_data = 0.01  # std of each of the four Gaussians at (+-1, +-1)
sigma_min = 0.0005  # smallest noise level, << sigma_data: the last step to 0 narrows the modes
sigma_max = 20.0  # largest noise level: N(0, sigma_max^2 I) must hide the modes
rho = 7.0  # curvature of the ladder: a larger rho spends more steps at small sigma
S_churn = 40.0  # EDM's stochasticity: each step first raises sigma by min(S_churn / N, sqrt 2 - 1)
width = 128  # width of the denoiser's hidden layers (lesson 3's network)
nb_epochs = 3000  # training iterations, each on a fresh batch
batch_size = 512  # samples per training iteration
lr = 2e-3  # Adam learning rate, annealed to 0 along a cosine
denoiser = "exact"  # exact|network: the denoiser of the run saved in samples.npy
sampler = "dpmpp_2m"  # euler|heun|dpmpp_2m|ancestral|edm: the sampler of the saved run
nfe = 20  # denoiser evaluations of the saved run
n_exact = 40000  # samples per table entry with the exact denoiser
n_network = 5000  # samples per table entry with the network
n_floor = 20  # draws of fresh data that measure the floor and its spread
assets = ""  # also write the README's picture to this folder; empty: only --out

BUDGETS = [4, 6, 10, 14, 20, 30, 40, 60, 100]  # NFE of the table


# ---------------------------------------------------------------------- data: the exact denoiser
def exact_denoiser(x, sigma, sigma_data):
    """E[x0 | x0 + sigma n = x] by Bayes' rule: each mode's posterior mean, times p(mode | x)."""
    mu, var = MODES.to(x), sigma_data ** 2 + sigma ** 2  # (4, 2); Var(x | mode) per coordinate
    offset = x[:, None, :] - mu  # (n, 4, 2)
    posterior = (-(offset ** 2).sum(-1, keepdim=True) / (2 * var)).softmax(1)  # (n, 4, 1)
    return (posterior * (mu + sigma_data ** 2 / var * offset)).sum(1)  # (n, 2)


# ---------------------------------------------------------------------- samplers
# Each walks Sigmas[0] > ... > Sigmas[N] = 0 down dx/dsigma = (x - D) / sigma (EDM eqs. 3-4, s = 1)
def euler(D, Sigmas, x):
    """x + (sigma' - sigma) (x - D) / sigma = D + sigma' (x - D) / sigma: DDIM (Song et al. 2021,
    eq. 12, eta = 0) in these coordinates, keeping the predicted noise (x - D) / sigma at sigma'."""
    for sigma, sigma_next in zip(Sigmas[:-1], Sigmas[1:]):
        x = x + (sigma_next - sigma) * (x - D(x, sigma)) / sigma
    return x


def heun(D, Sigmas, x, S_churn=0.0):
    """Algorithm 1: an Euler step, redone with the mean of the slopes at both ends (2 NFE), but on
    the last step (D is undefined at 0). S_churn > 0: Algorithm 2, first noise up to sigma_hat, with
    S_noise = 1, no S_tmin or S_tmax, sigma_hat clamped to sigma_max, and no churn at the end."""
    gamma = min(S_churn / (len(Sigmas) - 1), math.sqrt(2) - 1)
    for sigma, sigma_next in zip(Sigmas[:-1], Sigmas[1:]):
        if gamma > 0 and sigma_next > 0:
            sigma_hat = (sigma * (1 + gamma)).clamp(max=Sigmas[0])  # stay where D was trained
            x, sigma = x + (sigma_hat ** 2 - sigma ** 2).sqrt() * torch.randn_like(x), sigma_hat
        slope = (x - D(x, sigma)) / sigma
        x_next = x + (sigma_next - sigma) * slope
        if sigma_next > 0:
            slope_next = (x_next - D(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * (slope + slope_next) / 2
        x = x_next
    return x


def dpmpp_2m(D, Sigmas, x):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2, data prediction, lambda = -log sigma): the ODE's
    linear part solved exactly, x' = (sigma'/sigma) x + (1 - sigma'/sigma) D, with D extrapolated in
    lambda from the previous evaluation (1 NFE). D alone: Euler again."""
    previous = None
    for i, (sigma, sigma_next) in enumerate(zip(Sigmas[:-1], Sigmas[1:])):
        denoised = D(x, sigma)
        estimate = denoised  # first order on the first step and on the last (lambda' = infinity)
        if previous is not None and sigma_next > 0:
            r = (Sigmas[i - 1] / sigma).log() / (sigma / sigma_next).log()  # previous step / this
            estimate = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * previous
        x = sigma_next / sigma * x + (1 - sigma_next / sigma) * estimate
        previous = denoised
    return x


def ancestral(D, Sigmas, x):
    """Euler-ancestral: Euler down to sigma_down = sigma'^2 / sigma, then fresh noise of std
    sigma_up, sigma_down^2 + sigma_up^2 = sigma'^2: DDPM's posterior q(x' | x, x0 = D), lesson 6."""
    for sigma, sigma_next in zip(Sigmas[:-1], Sigmas[1:]):
        sigma_down = sigma_next ** 2 / sigma
        sigma_up = (sigma_next ** 2 - sigma_down ** 2).sqrt()  # 0 on the last step
        x = x + (sigma_down - sigma) * (x - D(x, sigma)) / sigma
        x = x + sigma_up * torch.randn_like(x)
    return x


SAMPLERS = {"euler": euler, "heun": heun, "dpmpp_2m": dpmpp_2m, "ancestral": ancestral, "edm": heun}


@torch.no_grad()
def generate(D, name, nfe, noise, cfg):
    """Samples from noise ~ N(0, sigma_max^2 I) by sampler `name`, in at most nfe calls of D."""
    N = (nfe + 1) // 2 if SAMPLERS[name] is heun else nfe  # Heun: 2 N - 1 calls, none at 0
    Sigmas = karras_sigmas(cfg.sigma_min, cfg.sigma_max, N, cfg.rho).to(noise)
    churn = {"S_churn": cfg.S_churn} if name == "edm" else {}  # EDM's sampler: Heun with churn
    return SAMPLERS[name](D, Sigmas, noise, **churn)


# ---------------------------------------------------------------------- error and its floor
def error(x, sigma_data):
    """Lesson 6's mode error (shares, stds, off-mode) + the modes' mean shift in sigma_data: a
    sampler can move the modes without widening them. inf: a mode is empty."""
    distance = torch.cdist(x, MODES.to(x))  # (n, 4)
    nearest, near = distance.argmin(1), distance.min(1).values <= 5 * sigma_data  # as mode_report
    if any((near & (nearest == k)).sum() < 2 for k in range(4)):
        return math.inf  # a mode too empty to have a std
    shifts = [(x[near & (nearest == k)].mean(0) - MODES[k].to(x)).norm().item() for k in range(4)]
    return mode_error(x, sigma_data) + sum(shifts) / 4 / sigma_data


def error_table(D, n, cfg):  # {sampler: [error at each budget]}, all from the same noise
    noise = cfg.sigma_max * torch.randn(n, 2, device=cfg.device)
    return {name: [error(generate(D, name, nfe, noise, cfg), cfg.sigma_data) for nfe in BUDGETS]
            for name in SAMPLERS}


def floor(n, cfg):  # mean and standard deviation of the error of n fresh data, n_floor draws
    errors = torch.tensor([error(sample_data(n, cfg), cfg.sigma_data) for _ in range(cfg.n_floor)])
    return errors.mean().item(), errors.std().item()


def verdict(table, top):
    """The best sampler at 20 NFE, and the cheapest whose error stays <= top from its budget on."""
    reached = [(nfe, name) for name, row in table.items() for i, nfe in enumerate(BUDGETS)
               if max(row[i:]) <= top]
    at_20 = min(table, key=lambda name: table[name][BUDGETS.index(20)])
    found = "{1} at {0} NFE".format(*min(reached)) if reached else f"none within {BUDGETS[-1]} NFE"
    return f"best at 20 NFE: {at_20}; cheapest to reach the floor and stay there: {found}"


# ---------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    check(cfg.sigma_min < cfg.sigma_max, "--sigma_min must be smaller than --sigma_max")
    network = Denoiser(2, cfg.width, math.sqrt(1 + cfg.sigma_data ** 2)).to(cfg.device)
    train(network, sample_data, cfg)
    denoisers = {"exact": lambda x, sigma: exact_denoiser(x, sigma, cfg.sigma_data),
                 "network": lambda x, sigma: network(x, sigma.expand(len(x), 1))}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, (label, n) in zip(axes, (("exact", cfg.n_exact), ("network", cfg.n_network))):
        table, (mean, spread) = error_table(denoisers[label], n, cfg), floor(n, cfg)
        top = mean + 3 * spread  # at the floor: within 3 std of the error of fresh data
        print(f"{label} denoiser, {n} samples: error (fresh data {mean:.4f} +- {spread:.4f} over "
              f"{cfg.n_floor} draws: the floor is <= {top:.4f})\nNFE        "
              + "".join(f"{nfe:8d}" for nfe in BUDGETS))
        for name, errors in table.items():
            print(f"{name:10s} " + "".join(f"{e:8.4f}" for e in errors))
            ax.loglog(BUDGETS, errors, "o-", label=name)
        print(verdict(table, top))
        ax.axhspan(mean, top, color="k", alpha=0.15, label="floor: fresh data + 3 std")
        ax.set(title=f"{label} denoiser", xlabel="NFE (denoiser evaluations)", ylabel="error")
        ax.legend()
    save_figure(fig, cfg.out / "samplers.png")
    copy_to_assets(cfg.out / "samplers.png", cfg)

    noise = cfg.sigma_max * torch.randn(cfg.n_exact, 2, device=cfg.device)
    samples = generate(denoisers[cfg.denoiser], cfg.sampler, cfg.nfe, noise, cfg)
    save_results(cfg.out, samples, sample_data(len(samples), cfg))
    shares, off_mode, stds = mode_report(samples, cfg.sigma_data)
    print(f"saved run, {cfg.denoiser} denoiser, {cfg.sampler}, {cfg.nfe} NFE: mode shares "
          + " ".join(f"{s:.3f}" for s in shares) + " (target 0.22-0.28), stds / sigma_data "
          + " ".join(f"{s / cfg.sigma_data:.3f}" for s in stds) + " (target 0.90-1.10), "
          f"off-mode {off_mode:.4f} (target < 0.005)")
    show_figures()
