"""Noise reinjection on MNIST: the "simple diffusion model" of the seed documents, with a number for "it helps".

A denoiser conditioned on the noise level sigma (not on a step t) predicts the noise eps of x = x0 + sigma eps,
trained on sigma drawn log-uniformly in [sigma_min, sigma_max]. Its UNet's output is scaled as in Karras et al. 2022
(EDM, Table 1), so that an error of the network moves x0_hat = x - sigma eps_hat by at most sigma_data, not by sigma
(up to 20); the loss weighs the noise levels like lesson 10's cosine schedule, but centred on sigma_data = 0.5, the
pixels' std, as in EDM, not on 1: at half the noise, where the strokes are drawn. Sampling starts at
x ~ N(0, sigma_max^2 I) and repeats, until sigma < sigma_min,
    x <- x - alpha sigma eps_hat(x, sigma) + beta sigma z,     z ~ N(0, I)
    sigma <- sigma sqrt((1 - alpha)^2 + beta^2)
Each step removes a fraction alpha of the predicted noise and puts back fresh noise of std beta sigma. If eps_hat
were the noise itself, (1 - alpha) sigma of it would be left, and independent noise adds in quadrature: hence the
recursion, a geometric decay. beta = 0 is a deterministic sampler; beta > 0 lets the fresh noise correct the
denoiser's mistakes (like the churn of Karras et al. 2022). After the stop, one jump to x0_hat = x - sigma eps_hat
removes the noise that is left, of std sigma < sigma_min (the final denoising of Jolicoeur-Martineau et al.
2021). The lesson trains once and samples both ways, from the same starting noise, and prints the Frechet LeNet
Distance (FLD) of each. Where the chip computes bfloat16 natively, the UNet runs in it (--bf16), weights in float32.

    python codes/mnist_reinjection.py        # 26 min on a 2-core CPU; writes assets/mnist_reinjection.png
"""
import math
from argparse import Namespace

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import mnist_fid
from common import check, parse_config, save_figure, save_results, show_figures, writable_folder
from mnist_UNet import image_grid, load_mnist, train

data = "data/MNIST"  # folder of the four MNIST .gz files; missing ones are downloaded
mirror = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # URL that missing MNIST files are downloaded from
n_train = 60000  # training images used (fewer for a quick run)
channels = 16  # UNet width at 32x32; twice that at 16x16 and 8x8
sigma_min = 0.02  # smallest noise level, in units of the pixel range [-1, 1]; the sampler stops below it
sigma_max = 20.0  # largest noise level: N(0, sigma_max^2) hides the digits (pixel std 0.55) completely
sigma_data = 0.5  # about the std of the pixels (0.55), as EDM's; the loss weighs most the sigma near it
nb_epochs = 10  # passes over the training images
batch_size = 64  # images per optimisation step
lr = 4e-3  # AdamW peak learning rate
ema_decay = 0.999  # the sampling weights are this EMA of the trained ones
alpha = 0.05  # fraction of the predicted noise removed per step (270 steps with beta; 0.15's 67: FLD 24-30% higher)
beta = 0.218  # std of the reinjected noise, in units of sigma: sqrt(alpha (1 - alpha)), DDPM's step (ablation: 0)
n_samples = 1000  # digits generated with each beta
bf16 = "auto"  # auto|on|off: the UNet computes in bfloat16, its weights stay float32; auto: where the chip has it
resume = False  # continue training from --out/model.pt instead of starting afresh
assets = "assets"  # folder for the ablation grid that the README shows


# ----------------------------------------------------------------------------- data: MNIST padded to 32x32
def padded_mnist(cfg, split, n=None):
    images, _ = load_mnist(cfg.data, split, cfg.mirror, n)  # (n, 1, 28, 28) in [-1, 1]
    return F.pad(images, (2, 2, 2, 2), value=-1.0)  # (n, 1, 32, 32): a black border, as the seed's 32x32


# ----------------------------------------------------------------------------- the sigma-conditioned denoiser
def predict_noise(model, x, sigma, cfg):
    """eps_hat(x, sigma) = (x - D) / sigma, with EDM's denoised guess D = c_skip x + c_out F of x0 from the UNet's
    output F. The UNet sees x / sqrt(sigma^2 + sigma_data^2), of unit scale at every sigma (c_in), and log sigma mapped
    onto [0, 1000], the range its sinusoidal embedding expects. c_out <= sigma_data bounds what an error of F costs."""
    level = 1000 * (sigma.log() - math.log(cfg.sigma_min)) / math.log(cfg.sigma_max / cfg.sigma_min)  # (n,)
    s, s_data = sigma.reshape(-1, 1, 1, 1), cfg.sigma_data  # (n, 1, 1, 1)
    c_skip, c_out = s_data ** 2 / (s ** 2 + s_data ** 2), s * s_data / (s ** 2 + s_data ** 2).sqrt()
    return (x - c_skip * x - c_out * model(x / (s ** 2 + s_data ** 2).sqrt(), level)) / s


def reinjection_loss(model, x0, cfg):
    """|eps - eps_hat(x0 + sigma eps, sigma)|^2 with log sigma uniform, weighted by (sigma^2 + sigma_data^2) /
    sigma_data^2, which makes it |F - F*|^2, the UNet's own error, and by w = 2 sigma sigma_data / (sigma^2 +
    sigma_data^2), which peaks at sigma_data. With sigma_data = 1 the log-uniform draw would train like lesson 10's
    cosine schedule, whose log sigma has the density ~ sigma / (1 + sigma^2); 0.5 moves it to half the noise. Drawn
    on the CPU, as --resume expects."""
    log_sigma = math.log(cfg.sigma_min) + torch.rand(len(x0)) * math.log(cfg.sigma_max / cfg.sigma_min)
    sigma, eps = log_sigma.exp().to(cfg.device), torch.randn(x0.shape).to(cfg.device)  # (B,), like x0
    s, s_data = sigma.reshape(-1, 1, 1, 1), cfg.sigma_data  # (B, 1, 1, 1)
    weight = (s ** 2 + s_data ** 2) / s_data ** 2 * 2 * s * s_data / (s ** 2 + s_data ** 2)  # to |F - F*|^2, times w
    return (weight * (predict_noise(model, x0 + s * eps, sigma, cfg) - eps) ** 2).mean()


# ----------------------------------------------------------------------------- the sampler
@torch.no_grad()
def reinjection_sampler(eps_hat, x, alpha, beta, sigma_max, sigma_min):
    """From x ~ N(0, sigma_max^2 I), yield (x, sigma) after each step of the update in the docstring at the top."""
    sigma = sigma_max
    while sigma > sigma_min:
        eps = eps_hat(x, torch.full((len(x),), sigma, device=x.device))
        x = x - alpha * sigma * eps + beta * sigma * torch.randn_like(x)
        sigma = sigma * math.sqrt((1 - alpha) ** 2 + beta ** 2)
        yield x, sigma


def generate(model, x, beta, cfg, chunk=100):
    """Digits (n, 28, 28) in [0, 1]: the sampler, then x0_hat at its last sigma, cropped back from 32x32. On a 2-core
    CPU, chunks of 100 ran 20% faster than 500."""
    digits = []
    for start in range(0, len(x), chunk):
        for x_k, sigma_k in reinjection_sampler(lambda x, s: predict_noise(model, x, s, cfg), x[start:start + chunk],
                                                cfg.alpha, beta, cfg.sigma_max, cfg.sigma_min):
            pass
        sigma = torch.full((len(x_k),), sigma_k, device=x.device)
        x_k = x_k - sigma.reshape(-1, 1, 1, 1) * predict_noise(model, x_k, sigma, cfg)  # the final denoising jump
        digits.append(x_k[:, 0, 2:30, 2:30].cpu())
    return ((torch.cat(digits) + 1) / 2).clamp(0, 1)


def native_bf16(device):
    """Whether the chip computes bfloat16 natively: CUDA since Ampere, x86 CPUs with AVX512-BF16. On a 2-core Xeon with
    AMX it cut the time of an epoch by 32% and of sampling by 30%, at the same FLD; emulated, it can be slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and torch.cpu._is_avx512_bf16_supported()


# ----------------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    check(cfg.sigma_min < cfg.sigma_max and cfg.alpha < 1, "need --sigma_min < --sigma_max and --alpha < 1")
    check(cfg.beta > 0, f"--beta must be positive: the lesson compares it with beta = 0, got {cfg.beta}")
    check((1 - cfg.alpha) ** 2 + cfg.beta ** 2 < 1, "need (1 - alpha)^2 + beta^2 < 1, or sigma never falls")
    assets = writable_folder(cfg.assets, "--assets")
    bf16 = cfg.bf16 == "on" or cfg.bf16 == "auto" and native_bf16(cfg.device)
    print(f"the UNet computes in {'bfloat16' if bf16 else 'float32'} on {cfg.device}")
    images = padded_mnist(cfg, "train", cfg.n_train)
    ema, _ = train(images, lambda model, x0: reinjection_loss(model, x0, cfg), cfg, bf16)
    x_start = cfg.sigma_max * torch.randn(cfg.n_samples, 1, 32, 32, device=cfg.device)  # the same noise for both
    with torch.autocast(cfg.device.type, dtype=torch.bfloat16, enabled=bf16):  # x and sigma stay float32
        samples = {beta: generate(ema, x_start, beta, cfg) for beta in (0.0, cfg.beta)}
    test_digits = (padded_mnist(cfg, "t10k", cfg.n_samples)[:, 0, 2:30, 2:30] + 1) / 2
    save_results(cfg.out, samples[cfg.beta], test_digits)

    # mnist_fid's settings and --seed: the LeNet, cached in --out, is the one that scores lesson 10, the same ruler
    fid_cfg = Namespace(data=cfg.data, mirror=cfg.mirror, out=cfg.out, seed=cfg.seed, lr=mnist_fid.lr,
                        lenet_epochs=mnist_fid.lenet_epochs, batch_size=mnist_fid.batch_size,
                        floor_draws=mnist_fid.floor_draws)
    lenet, accuracy = mnist_fid.load_classifier(fid_cfg)
    print(f"LeNet test accuracy {accuracy:.2%}")
    scores = mnist_fid.report(lenet, {f"beta = {beta:g}": digits for beta, digits in samples.items()}, fid_cfg)
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, (beta, digits) in zip(axes, samples.items()):
        ax.imshow(image_grid(digits, min(8, math.isqrt(len(digits)))), cmap="gray")
        ax.set(title=f"beta = {beta:g}: FLD {scores[f'beta = {beta:g}']:.1f}", xticks=[], yticks=[])
    save_figure(fig, assets / "mnist_reinjection.png")
    show_figures()
