"""Noise reinjection on MNIST: a denoiser told the noise level sigma, and the tutorial's sampler.

Lesson 10's network was told a step t of a schedule; this one is told sigma itself, as the toy
lessons' denoiser was, and predicts the noise eps of x = x0 + sigma eps. Its UNet, lesson 10's with
twice the width at 7x7 (where a digit's overall shape is settled), is wrapped in the scalings of
Karras et al. 2022 (EDM, Table 1), so that an error of the network moves the guess of x0 by at most
sigma_data, the data's std, instead of sigma (up to 20). The tutorial's sampler repeats, from
x ~ N(0, sigma_max^2 I),
    x <- x - alpha sigma eps_hat(x, sigma) + beta sigma z,        z ~ N(0, I)
removing a fraction alpha of the predicted noise and putting back fresh noise of std beta sigma. If
eps_hat were the noise itself, (1 - alpha) sigma of it would be left, and independent noises add in
quadrature: the next noise level is sigma sqrt((1 - alpha)^2 + beta^2). The tutorial keeps alpha and
beta fixed, so sigma falls geometrically; here a ladder of noise levels sets them at each step, and
eta how much noise is put back: eta = 1 makes each step DDPM's ancestral step, eta = 0 the
deterministic DDIM step (Song et al. 2021's eta). A last jump to x - sigma eps_hat removes the noise
left (the final denoising of Jolicoeur-Martineau et al. 2021). The lesson trains once, samples with
eta and with eta = 0 on the same ladder (the same number of network evaluations), and prints the
Frechet LeNet Distance (FLD) of each.

    python codes/mnist_reinjection.py        # 26 min on a 2-core CPU; a checkpoint every epoch
    python codes/mnist_reinjection.py --resume --n_samples 3000   # eta's FLD as the mean of 3 sets
"""
import copy
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import mnist_fid
from common import (check, check_finite, copy_to_assets, parse_config, save_figure, save_results,
                    show_figures)
from mnist_plumbing import (Progress, autocast, image_grid, load_mnist, resume_training,
                            save_checkpoint, use_bf16)
from mnist_UNet import UNet  # lesson 10's UNet, told log sigma in place of t

data = "data/MNIST"  # folder of the four MNIST .gz files; missing ones are downloaded
mirror = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # where missing MNIST files come from
n_train = 60000  # training images used (fewer for a quick run)
channels = 16  # UNet width at 28x28; twice that at 14x14
channels_mid = 64  # UNet width at 7x7, where a digit's overall shape is settled (lesson 10: 32)
sigma_min = 0.02  # smallest noise level (pixels span [-1, 1]); the final jump starts there
sigma_max = 20.0  # largest noise level: N(0, sigma_max^2 I) hides a digit completely
nb_epochs = 12  # passes over the training images
batch_size = 64  # images per optimisation step
lr = 4e-3  # AdamW peak learning rate
ema_decay = 0.9998  # cap on the decay of the sampling weights' EMA: a memory of at most 5000 steps
ladder = "tan"  # tan|geometric: sigma spaced like the training draws, or the tutorial's fixed alpha
N = 270  # sampler steps, sigma_max to sigma_min; geometric: 270 gives the tutorial's alpha 0.05
eta = 1.0  # fresh noise: 1 is DDPM's step, 0 the deterministic DDIM step, in between a mix
n_samples = 1000  # digits generated with eta; more score the mean FLD of their sets of 1000
n_compared = 1000  # digits generated with eta = 0 (at most n_samples), from the same first noises
bf16 = "auto"  # auto|on|off: compute in bfloat16, weights in float32; auto: where the chip has it
resume = False  # continue training from --out/model.pt instead of starting afresh
assets = ""  # also write the README's picture into this folder (empty: only into --out)
CHECKPOINT = {"lesson": "mnist_reinjection.py",  # the tag of its checkpoints
              "predicts": "EDM's F (eps via c_skip, c_out)",
              "shape": ("channels", "channels_mid", "sigma_min", "sigma_max")}


# ----------------------------------------------------------------------------- data
def centred_mnist(cfg):
    """The training digits (n, 1, 28, 28), in [-1, 1] minus their pixels' mean; that mean; and their
    std, sigma_data. Karras et al.'s scalings assume data of mean 0 and std sigma_data: centred, the
    std is also the root mean square, as lessons 1-3 required of sigma_rms."""
    images, _ = load_mnist(cfg.data, "train", cfg.mirror, cfg.n_train)
    return images - images.mean(), images.mean().item(), images.std().item()


# ----------------------------------------------------------------------------- the denoiser
def predict_noise(model, x, sigma, sigma_data, cfg):
    """eps_hat(x, sigma) = (x - D) / sigma, where D = c_skip x + c_out F(c_in x, sigma) is EDM's
    guess of x0 from the UNet's output F. The UNet is told log sigma, mapped onto [0, 1000], the
    range of lesson 10's t that its sinusoidal embedding expects."""
    s = sigma.reshape(-1, 1, 1, 1)  # (n, 1, 1, 1)
    c_skip = sigma_data ** 2 / (s ** 2 + sigma_data ** 2)  # Table 1: how much of x passes through
    c_out = s * sigma_data / (s ** 2 + sigma_data ** 2).sqrt()  # the scale of what the UNet adds
    c_in = (s ** 2 + sigma_data ** 2).rsqrt()  # makes the UNet's input of unit variance
    level = 1000 * (sigma.log() - math.log(cfg.sigma_min)) / math.log(cfg.sigma_max / cfg.sigma_min)
    denoised = c_skip * x + c_out * model(c_in * x, level).float()
    return (x - denoised) / s


# ----------------------------------------------------------------------------- training
def draw_sigma(n, sigma_data, cfg):
    """sigma = sigma_data tan(u), u uniform: lesson 10's cosine schedule in units of sigma (there,
    sigma_t is about tan(pi t / 2T), with sigma_data = 1). Per unit of log sigma its density is
    ~ sigma sigma_data / (sigma^2 + sigma_data^2), highest at sigma_data: it spends the training
    where a digit takes shape, not where it is already clean or still absent."""
    low, high = math.atan(cfg.sigma_min / sigma_data), math.atan(cfg.sigma_max / sigma_data)
    return sigma_data * torch.tan(low + (high - low) * torch.rand(n))  # (n,)


def reinjection_loss(model, x0, sigma_data, cfg):
    """|eps - eps_hat(x0 + sigma eps, sigma)|^2, weighted by (sigma^2 + sigma_data^2) /
    sigma_data^2, which makes it |F - F*|^2, the UNet's own error, the same at every sigma. sigma
    and eps are drawn on the CPU, whose random state --resume restores."""
    sigma = draw_sigma(len(x0), sigma_data, cfg).to(cfg.device)  # (B,)
    eps = torch.randn(x0.shape).to(cfg.device)  # like x0
    s = sigma.reshape(-1, 1, 1, 1)
    weight = (s ** 2 + sigma_data ** 2) / sigma_data ** 2  # 1 / c_out^2, times sigma^2
    return (weight * (predict_noise(model, x0 + s * eps, sigma, sigma_data, cfg) - eps) ** 2).mean()


def ema_decay_at(step, longest):
    """The EMA's decay after `step`: (1 + step) / (4 + step) gives the weights of step k a share
    ~ k^2 of the average, so that it averages the whole run so far, on average its last quarter
    (Karras et al. 2024's power-function EMA with gamma = 2); at most `longest`."""
    return min(longest, (1 + step) / (4 + step))


def train(images, sigma_data, bf16, cfg):
    """Lesson 10's loop with this lesson's loss and a longer EMA: AdamW over shuffled epochs, 100
    warm-up steps and a cosine decay of the learning rate, a checkpoint every epoch."""
    model = UNet(cfg.channels, cfg.channels_mid).to(cfg.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    checkpoint, parts = cfg.out / "model.pt", dict(model=model, ema=ema, optimizer=optimizer)
    start, losses = resume_training(checkpoint, CHECKPOINT, cfg, **parts) if cfg.resume else (0, [])
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    total = cfg.nb_epochs * steps_per_epoch
    progress = Progress(cfg.nb_epochs, steps_per_epoch, start)
    for epoch in range(start, cfg.nb_epochs):
        shuffle = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        batches = torch.randperm(len(images), generator=shuffle).split(cfg.batch_size)
        for i, batch in enumerate(batches):
            step = epoch * steps_per_epoch + i
            warmup, cosine = min(1, (step + 1) / 100), (1 + math.cos(math.pi * step / total)) / 2
            optimizer.param_groups[0]["lr"] = cfg.lr * warmup * cosine
            with autocast(cfg.device, bf16):
                loss = reinjection_loss(model, images[batch].to(cfg.device), sigma_data, cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            decay = ema_decay_at(step, cfg.ema_decay)
            with torch.no_grad():
                for e, p in zip(ema.parameters(), model.parameters()):
                    e.lerp_(p, 1 - decay)  # e <- decay e + (1 - decay) p
            losses.append(loss.item())
            check_finite(losses[-1], step)
            progress.show(epoch, i, np.mean(losses[-50:]))
        save_checkpoint(checkpoint, CHECKPOINT, cfg, epoch + 1, losses, **parts)
    return ema


# ----------------------------------------------------------------------------- the sampler
def noise_ladder(kind, N, sigma_data, cfg):
    """N + 1 noise levels from sigma_max down to sigma_min. tan: sigma_data tan(u), u evenly spaced,
    the levels the training draws most often (lesson 10's cosine schedule), many steps near
    sigma_data; geometric: a constant factor per step, the tutorial's fixed alpha and beta."""
    if kind == "geometric":
        return torch.logspace(math.log10(cfg.sigma_max), math.log10(cfg.sigma_min), N + 1).tolist()
    low, high = math.atan(cfg.sigma_min / sigma_data), math.atan(cfg.sigma_max / sigma_data)
    return (sigma_data * torch.tan(torch.linspace(high, low, N + 1, dtype=torch.float64))).tolist()


def step_sizes(sigma, sigma_next, eta):
    """alpha and beta that take the noise level from sigma to sigma_next = r sigma. The fresh noise
    beta = eta r sqrt(1 - r^2) is, for eta = 1, the std of DDPM's posterior q(x' | x, x0) in units
    of sigma; then alpha follows from (1 - alpha)^2 + beta^2 = r^2."""
    r = sigma_next / sigma
    beta = eta * r * math.sqrt(1 - r ** 2)
    alpha = 1 - math.sqrt(r ** 2 - beta ** 2)
    return alpha, beta


@torch.no_grad()
def reinjection_sampler(eps_hat, x, sigmas, eta, trajectory=None):
    """From x ~ N(0, sigmas[0]^2 I), the tutorial's steps down the ladder `sigmas`, then the final
    jump x - sigma eps_hat. Appends (x, sigma) after each step to `trajectory` if one is given."""
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        alpha, beta = step_sizes(sigma, sigma_next, eta)
        eps = eps_hat(x, torch.full((len(x),), sigma, device=x.device))
        x = x - alpha * sigma * eps + beta * sigma * torch.randn_like(x)
        if trajectory is not None:
            trajectory.append((x, sigma_next))
    return x - sigmas[-1] * eps_hat(x, torch.full((len(x),), sigmas[-1], device=x.device))


def generate(model, x_start, sigmas, eta, sigma_data, mean, bf16, cfg, chunk=100):
    """Digits (n, 28, 28) in [0, 1] from the starting noise x_start, `chunk` at a time."""
    eps_hat, digits = lambda x, sigma: predict_noise(model, x, sigma, sigma_data, cfg), []
    for start in range(0, len(x_start), chunk):
        with autocast(cfg.device, bf16):
            x = reinjection_sampler(eps_hat, x_start[start:start + chunk], sigmas, eta)
        digits.append((x[:, 0] + mean).cpu())  # back from the centred data
    return ((torch.cat(digits) + 1) / 2).clamp(0, 1)  # [-1, 1] -> [0, 1]


# ----------------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    check(cfg.sigma_min < cfg.sigma_max, "--sigma_min must be smaller than --sigma_max")
    check(0 < cfg.eta <= 1, f"--eta must lie in (0, 1]: it is compared with 0, got {cfg.eta}")
    check(min(cfg.n_samples, cfg.n_compared) > 1, "--n_samples and --n_compared: at least 2 each")
    images, mean, sigma_data = centred_mnist(cfg)
    bf16 = use_bf16(cfg.bf16, cfg.device)
    print(f"{len(images)} training digits, pixel mean {mean:.3f}, sigma_data {sigma_data:.3f}; "
          f"{cfg.device}, {'bfloat16' if bf16 else 'float32'}")
    clock = time.time()
    ema = train(images, sigma_data, bf16, cfg)
    print(f"training {(time.time() - clock) / 60:.1f} min")
    x_start = cfg.sigma_max * torch.randn(cfg.n_samples, 1, 28, 28, device=cfg.device)  # for both
    sigmas, samples = noise_ladder(cfg.ladder, cfg.N, sigma_data, cfg), {}
    compared = min(cfg.n_compared, cfg.n_samples)
    for eta, n in ((cfg.eta, cfg.n_samples), (0.0, compared)):  # the same ladder, the same
        clock = time.time()  # N + 1 evaluations per digit: only the fresh noise differs
        samples[f"eta = {eta:g}"] = generate(ema, x_start[:n], sigmas, eta, sigma_data, mean, bf16,
                                             cfg)
        print(f"eta = {eta:g}: {n} digits, {cfg.N + 1} network evaluations each, {cfg.ladder} "
              f"ladder, {(time.time() - clock) / 60:.1f} min")
    test_digits = (load_mnist(cfg.data, "t10k", cfg.mirror, cfg.n_samples)[0][:, 0] + 1) / 2
    save_results(cfg.out, samples[f"eta = {cfg.eta:g}"], test_digits)
    np.save(cfg.out / "samples_eta0.npy", samples["eta = 0"].numpy())  # the comparison's digits
    print(f"wrote {cfg.out / 'samples_eta0.npy'}: the digits of eta = 0")

    scores = mnist_fid.score(samples, cfg, compared=("eta = 0",))  # the target is eta's
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, (name, digits) in zip(axes, samples.items()):
        ax.imshow(image_grid(digits, min(8, math.isqrt(len(digits)))), cmap="gray")
        ax.set(title=f"{name}: FLD {scores[name]:.1f}", xticks=[], yticks=[])
    save_figure(fig, cfg.out / "mnist_reinjection.png")
    copy_to_assets(cfg.out / "mnist_reinjection.png", cfg)
    show_figures()
