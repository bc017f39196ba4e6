"""Lesson 3 with a class label: one network learns p(x | c) and p(x), and guidance extrapolates.

Class 0 puts 40, 30, 20, 10 % on lesson 3's four modes, class 1 the reverse. Classifier-free
guidance (Ho and Salimans 2022): labels dropped to a null class teach the network p(x)'s denoiser
D(x, sigma, NULL) too (Algorithm 1); lesson 3's sampler runs on D(NULL) + w (D(c) - D(NULL)) (eq. 6;
their w + 1 is our w), and on the exact denoisers. Read it with part 3 of Lior Sinai's tutorial.

    python codes/guidance_multimodal.py          # about 27 s on a 2-core CPU; -h lists every flag
"""
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn

from common import (check, check_finite, copy_to_assets, parse_config, save_figure, save_results,
                    show_figures)
from simple_multimodal import MODES, karras_sigmas, mode_report, sample  # lesson 3's, unchanged

sigma_data = 0.01  # std of each of the four Gaussians at (+-1, +-1)
sigma_min = 0.002  # smallest noise level of the ladder
sigma_max = 20.0  # largest noise level: N(0, sigma_max^2 I) must hide the modes, so sigma_max >> 1
N = 40  # noise levels on the ladder = denoising steps
rho = 7.0  # curvature of the ladder: a larger rho spends more steps at small sigma
gamma = 0.41  # churn: each step first raises sigma to sigma (1 + gamma) with fresh noise (0: none)
width = 128  # width of the denoiser's hidden layers
n_frequencies = 6  # sin, cos at 2^k pi / 2 (k < n_frequencies): a small MLP draws sharp modes
p_uncond = 0.1  # label dropout: share of training points whose class is replaced by the null class
guidance = 1.0  # w of samples.npy: 0 samples p(x), 1 samples p(x | c), > 1 sharpens
guidances = (0.0, 1.0, 2.0)  # the w at which the network is set beside the exact answer
nb_epochs = 3000  # training iterations, each on a fresh batch
batch_size = 512  # samples per training iteration
lr = 2e-3  # Adam learning rate, annealed to 0 along a cosine
test_size = 4000  # network samples per class at each w
exact_size = 10000  # exact-denoiser samples per class at each w (they need no training)
assets = ""  # also write the README's picture to this folder; empty: only --out

CLASS_WEIGHTS = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])  # (2, 4): pi_k(c)
NULL = 2  # the null class, "no class given": its weights are p(x)'s, the mean as p(c) = 1/2
WEIGHTS = torch.cat([CLASS_WEIGHTS, CLASS_WEIGHTS.mean(0, keepdim=True)])  # (3, 4): 0, 1, NULL


# ---------------------------------------------------------------------- data
def sample_data(labels, cfg):
    """x0 ~ p(x | c) for each label c (NULL: p(x)): mode k with probability pi_k(c), then noise."""
    which = torch.multinomial(WEIGHTS.to(cfg.device)[labels], 1)[:, 0]  # (n,): a mode per sample
    return MODES.to(cfg.device)[which] + cfg.sigma_data * torch.randn(len(which), 2).to(cfg.device)


# ---------------------------------------------------------------------- denoisers: exact, learned
def exact_denoiser(x, sigma, labels, sigma_data):
    """E[x0 | x0 + sigma n = x, c] by Bayes' rule: mode k's posterior ~ pi_k(c) N(x; mu_k, var), and
    there x0's mean is mu_k + sigma_data^2 / var (x - mu_k). NULL has p(x)'s weights: E[x0 | x]."""
    var = sigma_data ** 2 + sigma ** 2  # (n, 1)
    offsets = x[:, None, :] - MODES.to(x)  # (n, 4, 2)
    log_posterior = WEIGHTS.to(x)[labels].log() - (offsets ** 2).sum(-1) / (2 * var)  # (n, 4)
    mode_means = MODES.to(x) + (sigma_data ** 2 / var)[:, :, None] * offsets  # (n, 4, 2)
    return (log_posterior.softmax(1)[:, :, None] * mode_means).sum(1)  # (n, 2)


class Denoiser(nn.Module):
    """Lesson 3's D (Table 1) fed Fourier features of c_in x, and a learned vector per label."""

    def __init__(self, dim, width, sigma_rms, n_frequencies):
        super().__init__()
        self.sigma_rms = sigma_rms  # the data's root mean square per coordinate
        self.register_buffer("frequencies", 2.0 ** torch.arange(n_frequencies) * math.pi / 2)
        inputs = (dim * (1 + 2 * n_frequencies) + 1, width, width)  # x, its sines, cosines, c_noise
        self.layers = nn.ModuleList(nn.Linear(n, width) for n in inputs)
        self.classes = nn.Embedding(len(WEIGHTS), len(inputs) * width)  # 0, 1, NULL: layer biases
        self.output = nn.Linear(width, dim)

    def forward(self, x, sigma, labels):  # x: (n, dim), sigma: (n, 1), labels: (n,)
        total = sigma ** 2 + self.sigma_rms ** 2
        c_skip = self.sigma_rms ** 2 / total  # Table 1: how much of x passes straight through
        c_out = sigma * self.sigma_rms / total.sqrt()  # Table 1: the scale of what the network adds
        c_in = total.rsqrt()  # Table 1: makes the network's input of unit variance
        c_noise = sigma.log() / 4  # Table 1: how the network is told the noise level
        angles = ((c_in * x)[:, :, None] * self.frequencies).flatten(1)  # (n, dim K)
        h = torch.cat([c_in * x, angles.sin(), angles.cos(), c_noise], dim=1)  # (n, inputs[0])
        for layer, bias in zip(self.layers, self.classes(labels).chunk(len(self.layers), dim=1)):
            h = nn.functional.silu(layer(h) + bias)  # (n, width)
        return c_skip * x + c_out * self.output(h)  # (n, dim)


def guided(denoiser, w, labels):
    """D_w = D(NULL) + w (D(c) - D(NULL)), c = labels. As D is x + sigma^2 times the score, D_w
    follows that of p_sigma(x | c)^w p_sigma(x)^(1-w), not of p(x | c)^w p(x)^(1-w) noised."""
    null = torch.full_like(labels, NULL)

    def guided_denoiser(x, sigma):
        if w in (0, 1):  # one of the two terms has weight 0: a single call of D is enough
            return denoiser(x, sigma, labels if w == 1 else null)
        both = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([labels, null]))
        conditional, unconditional = both.chunk(2)  # (n, 2) each
        return unconditional + w * (conditional - unconditional)
    return guided_denoiser


# ---------------------------------------------------------------------- training
def train(denoiser, cfg):
    """Lesson 3's training (Karras et al. 2022, eq. 2), each label dropped to NULL with probability
    p_uncond: such a point hides its class, so the best D(x, sigma, NULL) is p(x)'s E[x0 | x]."""
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.nb_epochs)
    for epoch in range(cfg.nb_epochs):
        labels = torch.randint(0, 2, (cfg.batch_size,), device=cfg.device)  # (B,): p(c) = 1/2
        x0 = sample_data(labels, cfg)  # (B, 2)
        dropped = torch.rand(cfg.batch_size, device=cfg.device) < cfg.p_uncond  # (B,)
        labels = labels.masked_fill(dropped, NULL)  # label dropout
        sigma = cfg.sigma_min * (cfg.sigma_max / cfg.sigma_min) ** torch.rand_like(x0[:, :1])
        x = x0 + sigma * torch.randn_like(x0)
        weight = (sigma ** 2 + denoiser.sigma_rms ** 2) / (sigma * denoiser.sigma_rms) ** 2
        loss = (weight * (denoiser(x, sigma, labels) - x0) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        check_finite(loss.item(), epoch)


# ---------------------------------------------------------------------- sampler
def guided_samples(denoiser, w, n, Sigmas, cfg):  # n samples of each class: lesson 3's sampler
    labels = torch.arange(2, device=cfg.device).repeat_interleave(n)  # (2n,): n of class 0, then 1
    noise = cfg.sigma_max * torch.randn(2 * n, 2, device=cfg.device)  # (2n, 2)
    return sample(guided(denoiser, w, labels), Sigmas, noise, cfg.gamma)[-1], labels


def sharpened_weights(c, w):
    """Mode weights of p(x | c)^w p(x)^(1-w) for well-separated modes, all of std sigma_data: near k
    (pi_k(c) N_k)^w (pi_k N_k)^(1-w) = pi_k(c)^w pi_k^(1-w) N_k; each mode keeps std sigma_data."""
    weights = WEIGHTS[c] ** w * WEIGHTS[NULL] ** (1 - w)  # (4,)
    return (weights / weights.sum()).tolist()


# ---------------------------------------------------------------------- results
def numbers(values, digits=3):
    return " ".join(f"{v:.{digits}f}" for v in values)


if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    check(0 < cfg.p_uncond < 1, f"--p_uncond must lie strictly between 0 and 1, got {cfg.p_uncond}")
    Sigmas = karras_sigmas(cfg.sigma_min, cfg.sigma_max, cfg.N, cfg.rho).to(cfg.device)
    denoiser = Denoiser(2, cfg.width, math.sqrt(1 + cfg.sigma_data ** 2), cfg.n_frequencies)
    train(denoiser.to(cfg.device), cfg)
    ws = sorted(set(cfg.guidances) | {cfg.guidance, 1.0})  # the w sampled and printed; 1 is checked
    runs = {(name, w): guided_samples(D, w, size, Sigmas, cfg) for w in ws for name, D, size in (
        ("network", denoiser, cfg.test_size),
        ("exact", lambda x, sigma, c: exact_denoiser(x, sigma, c, cfg.sigma_data), cfg.exact_size))}
    samples, labels = runs["network", cfg.guidance]
    save_results(cfg.out, samples, sample_data(labels, cfg))  # data.npy: p(x | c), same labels
    np.save(cfg.out / "labels.npy", labels.cpu().numpy())  # the class each sample asked for
    points = {(w, c, name): x[y == c].cpu() for (name, w), (x, y) in runs.items() for c in (0, 1)}
    report = {key: mode_report(points[key], cfg.sigma_data) for key in sorted(points)}
    fig, axes = plt.subplots(len(ws), 4, figsize=(13, 3.5 * len(ws)), layout="constrained")
    for ax, (w, c, name) in zip(axes.flat, report):  # per w: class 0 exact, network, then class 1
        ax.scatter(*points[w, c, name].T, s=1, alpha=0.2)
        ax.set(title=f"{name}, class {c}, w = {w:g}\nshares {numbers(report[w, c, name][0], 2)}")
    save_figure(fig, cfg.out / "guidance_multimodal.png")
    copy_to_assets(cfg.out / "guidance_multimodal.png", cfg)

    print(f"shares (1,1) (1,-1) (-1,1) (-1,-1), standard error <= {.5 / cfg.test_size ** .5:.4f}")
    for (w, c, name), (shares, off_mode, stds) in report.items():
        print(f"w {w:g} class {c} {name:>7}: shares {numbers(shares)}  off-mode {off_mode:.4f}  "
              f"std {numbers(stds, 4)}")
        if (c, name) == (1, "network"):  # the sharpened law: does exact guidance land on it?
            print(f"w {w:g} sharpened: class 0 {numbers(sharpened_weights(0, w))}, class 1 "
                  f"{numbers(sharpened_weights(1, w))}, each std {cfg.sigma_data:.4f}")
    shares, off_mode, stds = zip(*(report[1, c, "network"] for c in (0, 1)))  # w = 1, both classes
    error = abs(np.subtract(shares, WEIGHTS[:2].tolist())).max()
    print(f"w 1 network: share error {error:.3f} (target <= 0.03), off-mode {max(off_mode):.4f} "
          f"(target < 0.01), std {np.min(stds):.4f}-{np.max(stds):.4f} (target 0.8-1.2 sigma_data)")
    worst = max(abs(np.subtract(report[w, c, "network"][0], report[w, c, "exact"][0])).max()
                for w, c, _ in report)
    print(f"largest |network - exact| share, every w and class: {worst:.3f} (target <= 0.05)")
    show_figures()
