"""DDPM on MNIST with a UNet: the toy lessons' Algorithms 1 and 2 (Ho et al. 2020) on real images.

The cosine schedule of Nichol & Dhariwal 2021 (eq. 17); a small UNet like Ho et al.'s (ResNet
blocks, t embedded in every block, self-attention at 7x7, skip connections that hand each decoder
level the encoder's features of its size). It predicts v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0
(Salimans & Ho 2022), not eps: then x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v_hat never divides
by sqrt(abar_t), which falls to 5e-5. Sampling visits 300 of the 1000 steps with an exponential
moving average (EMA) of the weights, which smooths out the noise of the last updates. It ends with
the Frechet LeNet Distance (FLD) of its digits, computed by mnist_fid.py.

    python codes/mnist_UNet.py               # 20 min on a 2-core CPU; a checkpoint every epoch
    python codes/mnist_UNet.py --resume      # carries on from outputs/mnist_UNet/model.pt
"""
import copy
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import mnist_fid
from common import check, check_finite, parse_config, save_figure, save_results, show_figures
from mnist_plumbing import (Progress, autocast, image_grid, load_mnist, resume_training,
                            save_checkpoint, use_bf16)

data = "data/MNIST"  # folder of the four MNIST .gz files; missing ones are downloaded
mirror = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # where missing MNIST files come from
n_train = 60000  # training images used (fewer for a quick run)
channels = 16  # UNet width at 28x28; twice that at 14x14 and 7x7
T = 1000  # diffusion steps
nb_epochs = 10  # passes over the training images
batch_size = 64  # images per optimisation step
lr = 4e-3  # AdamW peak learning rate
ema_decay = 0.999  # the sampling weights are this EMA of the trained ones
sampler = "ddpm"  # ddpm|ddim: ancestral (Algorithm 2) or deterministic DDIM, on a subsequence of t
sampling_steps = 300  # steps of the sampler, evenly spaced over 1..T
n_samples = 1000  # digits generated at the end
bf16 = "auto"  # auto|on|off: compute in bfloat16, weights in float32; auto: where the chip has it
resume = False  # continue training from --out/model.pt instead of starting afresh
CHECKPOINT = {"lesson": "mnist_UNet.py", "predicts": "v", "shape": ("channels", "T")}  # its tag


# ----------------------------------------------------------------------------- data and schedule
def cosine_schedule(T):
    """abar_t = f(t) / f(0), f(t) = cos^2((t / T + 0.008) / 1.008 pi / 2) (Nichol & Dhariwal, eq.
    17), with beta_t = 1 - abar_t / abar_{t-1} clipped at 0.999; t = 1..T at index 0..T-1."""
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()  # (T,)


# ----------------------------------------------------------------------------- the UNet
def time_embedding(t, dim):
    """Ho et al.'s sinusoidal embedding of the step t (Vaswani et al. 2017): (n,) -> (n, dim)."""
    frequencies = torch.exp(-math.log(10000) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    angles = t[:, None].float() * frequencies  # (n, dim / 2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, the time embedding added as a per-channel shift; twice; a skip."""

    def __init__(self, c_in, c_out, time_dim):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(time_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):  # x: (n, c_in, h, w), emb: (n, time_dim)
        h = self.conv1(F.silu(self.norm1(x))) + self.time(emb)[:, :, None, None]
        return self.conv2(F.silu(self.norm2(h))) + self.skip(x)  # (n, c_out, h, w)


class Attention(nn.Module):
    """Self-attention over the h * w positions, so that distant strokes of a digit can agree."""

    def __init__(self, c, heads=4):
        super().__init__()
        self.norm, self.heads = nn.GroupNorm(8, c), heads
        self.qkv, self.proj = nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):  # x: (n, c, h, w)
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (n, heads, h * w, c / heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    """v_theta(x_t, t) for 28x28 images: 28 -> 14 -> 7 -> 14 -> 28, every block told t."""

    def __init__(self, c, c_mid=None):  # c_mid: the width at 7x7, 2c unless given
        super().__init__()
        self.c, time_dim, c_mid = c, 4 * c, c_mid or 2 * c
        check(c % 8 == c_mid % 8 == 0, f"UNet widths {c}, {c_mid}: not multiples of 8 (GroupNorm)")
        self.time_mlp = nn.Sequential(nn.Linear(c, time_dim), nn.SiLU(),
                                      nn.Linear(time_dim, time_dim))
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.down1, self.pool1 = ResBlock(c, c, time_dim), nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.down2 = ResBlock(c, 2 * c, time_dim)
        self.pool2 = nn.Conv2d(2 * c, c_mid, 3, stride=2, padding=1)
        self.mid1, self.attention = ResBlock(c_mid, c_mid, time_dim), Attention(c_mid)
        self.mid2 = ResBlock(c_mid, c_mid, time_dim)
        self.up2, self.up1 = ResBlock(c_mid + 2 * c, 2 * c, time_dim), ResBlock(3 * c, c, time_dim)
        self.head = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))

    def forward(self, x, t):  # x: (n, 1, 28, 28), t: (n,) steps 0..T-1
        return self.body(x, self.time_mlp(time_embedding(t, self.c)))

    def body(self, x, emb):  # emb: (n, 4c), what every block is told
        skip1 = self.down1(self.stem(x), emb)  # (n, c, 28, 28)
        skip2 = self.down2(self.pool1(skip1), emb)  # (n, 2c, 14, 14)
        h = self.mid2(self.attention(self.mid1(self.pool2(skip2), emb)), emb)  # (n,c_mid,7,7)
        h = self.up2(torch.cat([F.interpolate(h, scale_factor=2.0), skip2], 1), emb)  # (n,2c,14,14)
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0), skip1], 1), emb)  # (n,c,28,28)
        return self.head(h)  # (n, 1, 28, 28)


# ----------------------------------------------------------------------------- training
def ddpm_loss(model, x0, alpha_bar, cfg):
    """Algorithm 1 with the target v: |v - v_theta(x_t, t)|^2, which is |eps - eps_hat|^2 / abar_t.
    t and eps are drawn on the CPU, whose random state --resume restores."""
    t = torch.randint(0, cfg.T, (len(x0),)).to(cfg.device)  # (B,)
    eps = torch.randn(x0.shape).to(cfg.device)  # like x0
    a = alpha_bar[t].reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps  # eq. 4, in one jump
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    return F.mse_loss(model(x_t, t), v)


def train(images, alpha_bar, bf16, cfg):
    """AdamW over shuffled epochs, the learning rate warmed up for 100 steps, then annealed along a
    cosine; the EMA follows the weights. Each epoch ends with a checkpoint, from which --resume
    carries on exactly: the shuffles are seeded and the random state is saved."""
    model = UNet(cfg.channels).to(cfg.device)
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
                loss = ddpm_loss(model, images[batch].to(cfg.device), alpha_bar, cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # a short memory at first
            with torch.no_grad():
                for e, p in zip(ema.parameters(), model.parameters()):
                    e.lerp_(p, 1 - decay)  # e <- decay e + (1 - decay) p
            losses.append(loss.item())
            check_finite(losses[-1], step)
            progress.show(epoch, i, np.mean(losses[-50:]))
        save_checkpoint(checkpoint, CHECKPOINT, cfg, epoch + 1, losses, **parts)
    return ema, losses


# ----------------------------------------------------------------------------- samplers
def visited_steps(T, sampling_steps):
    """sampling_steps steps evenly spaced from T - 1 down to 0, then -1, the clean image."""
    return torch.linspace(T - 1, 0, sampling_steps).round().long().tolist() + [-1]


@torch.no_grad()
def reverse_step(model, alpha_bar, x, t, s, sampler):
    """From x_t to x_s, s < t. ddpm: a draw from q(x_s | x_t, x0_hat) (eqs. 6-7), with the respaced
    beta = 1 - abar_t / abar_s between visited steps (Nichol & Dhariwal 2021); ddim: Song et al.
    eq. 12, deterministic. x0_hat is not clipped to [-1, 1]: clipping cuts its errors one way."""
    a_t = alpha_bar[t]
    a_s = alpha_bar[s] if s >= 0 else torch.ones_like(a_t)
    v = model(x, torch.full((len(x),), t, device=x.device)).float()
    x0_hat = a_t.sqrt() * x - (1 - a_t).sqrt() * v  # eq. 4 and the definition of v, solved for x0
    if sampler == "ddim":
        eps = (1 - a_t).sqrt() * x + a_t.sqrt() * v  # ... and solved for eps
        return a_s.sqrt() * x0_hat + (1 - a_s).sqrt() * eps
    beta = 1 - a_t / a_s
    coef_x0 = a_s.sqrt() * beta / (1 - a_t)  # eq. 7
    coef_xt = (1 - beta).sqrt() * (1 - a_s) / (1 - a_t)
    posterior_std = ((1 - a_s) / (1 - a_t) * beta).sqrt()  # sqrt(beta~): 0 at the last step
    return coef_x0 * x0_hat + coef_xt * x + posterior_std * torch.randn_like(x)


def sample(model, alpha_bar, n, bf16, cfg, chunk=100):
    """n digits as (n, 28, 28) in [0, 1], drawn `chunk` at a time from x_T ~ N(0, I)."""
    steps, digits = visited_steps(cfg.T, cfg.sampling_steps), []
    for start in range(0, n, chunk):
        x = torch.randn(min(chunk, n - start), 1, 28, 28, device=cfg.device)
        with autocast(cfg.device, bf16):
            for t, s in zip(steps[:-1], steps[1:]):
                x = reverse_step(model, alpha_bar, x, t, s, cfg.sampler)
        digits.append(x[:, 0].cpu())
    return ((torch.cat(digits) + 1) / 2).clamp(0, 1)  # [-1, 1] -> [0, 1]


# ----------------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    check(cfg.sampling_steps <= cfg.T, "--sampling_steps cannot exceed --T")
    images, _ = load_mnist(cfg.data, "train", cfg.mirror, cfg.n_train)
    alpha_bar, bf16 = cosine_schedule(cfg.T).to(cfg.device), use_bf16(cfg.bf16, cfg.device)
    n_weights = sum(p.numel() for p in UNet(cfg.channels).parameters())
    print(f"{len(images)} training images; abar_T = {alpha_bar[-1].item():.1e}; UNet of "
          f"{n_weights:,} weights; {cfg.device}, {'bfloat16' if bf16 else 'float32'}")
    clock = time.time()
    ema, losses = train(images, alpha_bar, bf16, cfg)
    training_time, clock = time.time() - clock, time.time()
    samples = sample(ema, alpha_bar, cfg.n_samples, bf16, cfg)
    print(f"training {training_time / 60:.1f} min; sampling {cfg.n_samples} digits ({cfg.sampler}, "
          f"{cfg.sampling_steps} steps) {(time.time() - clock) / 60:.1f} min")
    test_digits = (load_mnist(cfg.data, "t10k", cfg.mirror, cfg.n_samples)[0][:, 0] + 1) / 2
    save_results(cfg.out, samples, test_digits)

    side = min(10, math.isqrt(len(samples)))
    plt.imsave(cfg.out / "samples.png", image_grid(samples, side).numpy(), cmap="gray")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(np.convolve(losses, np.ones(50) / 50, mode="valid"))
    ax.set(title="training loss |v - v_theta|^2, mean of 50 steps", xlabel="step")
    save_figure(fig, cfg.out / "loss.png")
    print(f"mean pixel: generated {samples.mean():.3f} | test digits {test_digits.mean():.3f}")
    mnist_fid.score({f"{cfg.sampler}, {cfg.sampling_steps} steps": samples}, cfg)
    show_figures()
