"""DDPM on MNIST with a small UNet: the toy lessons' Algorithms 1 and 2 (Ho et al. 2020), now drawing digits.

The cosine schedule of Nichol & Dhariwal 2021 (eq. 17); a tiny UNet like Ho et al.'s: ResNet blocks with GroupNorm, a
sinusoidal time embedding in every block, self-attention at 7x7, skip connections. It predicts v = sqrt(abar_t) eps -
sqrt(1 - abar_t) x0 (Salimans & Ho 2022, sec. 4), not eps: x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v_hat, where
eps_hat would divide its error by sqrt(abar_t), down to 5e-5. Sampling uses an exponential moving average (EMA) of the
weights and 300 steps instead of 1000, ancestral or DDIM (Song et al. 2021, eq. 12).

    python codes/mnist_UNet.py                      # 27 min on a 2-core CPU; --resume continues from the checkpoint
    python codes/mnist_UNet.py --n_train 2000 --nb_epochs 1 --n_samples 64   # a one-minute look
    python codes/mnist_fid.py                       # the quality number of outputs/mnist_UNet/samples.npy

The four MNIST IDX files are read from --data; missing ones are downloaded from --mirror and checked.
"""
import copy
import gzip
import hashlib
import math
import os
import time
import urllib.request
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import check, check_finite, fail, parse_config, save_figure, save_results, show_figures, writable_folder

data = "data/MNIST"  # folder of the four MNIST .gz files; missing ones are downloaded
mirror = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # URL that missing MNIST files are downloaded from
n_train = 60000  # training images used (fewer for a quick run)
channels = 16  # UNet width at 28x28; twice that at 14x14 and 7x7
T = 1000  # diffusion steps
nb_epochs = 10  # passes over the training images
batch_size = 64  # images per optimisation step
lr = 4e-3  # AdamW peak learning rate
ema_decay = 0.999  # the sampling weights are this EMA of the trained ones
sampler = "ddpm"  # ddpm|ddim: ancestral (Algorithm 2) or deterministic DDIM, both on a subsequence of steps
sampling_steps = 300  # steps of the sampler, evenly spaced over 1..T (200: 15.6% 7s, over 15%)
n_samples = 1000  # digits generated at the end
resume = False  # continue training from --out/model.pt instead of starting afresh

MNIST_MD5 = {  # the files as every public mirror serves them
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


# ----------------------------------------------------------------------------- data
def download(folder, mirror, checksums=MNIST_MD5):
    """Fetch each missing file (10 MB at most), check its MD5, write it to a temporary file, and only then rename it
    into place: an interrupted or corrupted download never leaves a file that looks complete."""
    for name, md5 in checksums.items():
        if (folder / name).exists():
            continue
        writable_folder(folder, "--data")  # a file is missing, so the folder must take it
        print(f"downloading {mirror}{name}")
        try:
            with urllib.request.urlopen(mirror + name, timeout=30) as response:
                payload = response.read()
        except OSError as error:  # urllib's URLError is one
            fail(f"cannot download {mirror}{name} ({getattr(error, 'reason', error)}). Offline? "
                 f"Put {', '.join(checksums)} in {folder}, or pass --data with the folder that holds them")
        digest = hashlib.md5(payload).hexdigest()
        check(digest == md5, f"{name} from {mirror} has MD5 {digest}, expected {md5}; nothing was saved")
        (folder / f"{name}.part").write_bytes(payload)
        os.replace(folder / f"{name}.part", folder / name)


def read_idx(path, shape):
    """An IDX file (LeCun's MNIST format), gzipped: magic 0x0000080N (unsigned bytes, N dims), N big-endian sizes,
    then the bytes. `shape` gives the sizes after the first, which counts the items."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        fail(f"{path} is not a complete gzip file ({error}); delete it and run again to download it")
    ndim = len(shape) + 1
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    check(magic == 0x800 + ndim, f"{path} is not an IDX file of {ndim}-D unsigned bytes (magic number {magic})")
    sizes = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    check(tuple(sizes[1:]) == shape, f"{path} holds items of shape {tuple(sizes[1:])}, expected {shape}")
    check(len(raw) == 4 + 4 * ndim + math.prod(sizes), f"{path} is truncated or has trailing bytes")
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).reshape(sizes)


def load_mnist(folder, split, mirror, n=None):
    """Images (n, 1, 28, 28) as floats in [-1, 1] and labels (n,) of the split 'train' or 't10k'."""
    folder = Path(folder)
    download(folder, mirror)
    images = read_idx(folder / f"{split}-images-idx3-ubyte.gz", (28, 28))
    labels = read_idx(folder / f"{split}-labels-idx1-ubyte.gz", ())
    check(len(images) == len(labels), f"{split}: {len(images)} images but {len(labels)} labels in {folder}")
    return images[:n, None].float() / 127.5 - 1, labels[:n].long()


# ----------------------------------------------------------------------------- schedule
def cosine_schedule(T):
    """abar_t = f(t) / f(0), f(t) = cos^2((t / T + s) / (1 + s) pi / 2), s = 0.008 (Nichol & Dhariwal eq. 17), with
    beta_t = 1 - abar_t / abar_{t-1} clipped at 0.999; t = 1..T at index 0..T-1. float64 here, float32 on device."""
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.cumprod(1 - (1 - f[1:] / f[:-1]).clamp(max=0.999), 0).float()  # (T,)


# ----------------------------------------------------------------------------- the UNet
def time_embedding(t, dim):
    """Sinusoidal embedding of the integer step t (Vaswani et al. 2017), as in Ho et al. 2020."""
    angles = t[:, None].float() * torch.exp(-math.log(10000) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (n, dim)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, plus the time embedding as a per-channel shift; twice; plus a skip path."""

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
    """Self-attention over the h*w positions, so that distant strokes of a digit can agree."""

    def __init__(self, c, heads=4):
        super().__init__()
        self.norm, self.heads = nn.GroupNorm(8, c), heads
        self.qkv, self.proj = nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):  # x: (n, c, h, w)
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (n, heads, h*w, c / heads)
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    """v_theta(x_t, t) for 28x28 images: 28 -> 14 -> 7 -> 14 -> 28, each decoder level fed the encoder's output of
    the same size (the skip connections) and every block told t."""

    def __init__(self, c):
        super().__init__()
        self.c, time_dim = c, 4 * c
        self.time_mlp = nn.Sequential(nn.Linear(c, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.down1, self.pool1 = ResBlock(c, c, time_dim), nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.down2, self.pool2 = ResBlock(c, 2 * c, time_dim), nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1)
        self.mid1, self.attention = ResBlock(2 * c, 2 * c, time_dim), Attention(2 * c)
        self.mid2 = ResBlock(2 * c, 2 * c, time_dim)
        self.up2, self.up1 = ResBlock(4 * c, 2 * c, time_dim), ResBlock(3 * c, c, time_dim)
        self.head = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))

    def forward(self, x, t):  # x: (n, 1, 28, 28), t: (n,) integer steps 0..T-1
        emb = self.time_mlp(time_embedding(t, self.c))  # (n, 4c)
        skip1 = self.down1(self.stem(x), emb)  # (n, c, 28, 28)
        skip2 = self.down2(self.pool1(skip1), emb)  # (n, 2c, 14, 14)
        h = self.mid2(self.attention(self.mid1(self.pool2(skip2), emb)), emb)  # (n, 2c, 7, 7)
        h = self.up2(torch.cat([F.interpolate(h, scale_factor=2.0), skip2], 1), emb)  # (n, 2c, 14, 14)
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0), skip1], 1), emb)  # (n, c, 28, 28)
        return self.head(h)  # (n, 1, 28, 28)


# ----------------------------------------------------------------------------- training, with checkpoints
def ddpm_loss(model, x0, alpha_bar, cfg):
    """Algorithm 1 with the target v: |v - v_theta(x_t, t)|^2 = |eps - eps_hat|^2 / abar_t, eps_hat = sqrt(1 - abar_t)
    x_t + sqrt(abar_t) v_theta (x_t by eq. 4). t and eps are drawn on the CPU, whose random state --resume restores."""
    t, eps = torch.randint(0, cfg.T, (len(x0),)).to(cfg.device), torch.randn(x0.shape).to(cfg.device)  # (B,), like x0
    a = alpha_bar[t].reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t), a.sqrt() * eps - (1 - a).sqrt() * x0)  # eq. 4; v


def train(images, loss_fn, cfg, bf16=False):
    """Gradient steps on loss_fn(model, x0) over shuffled epochs, in bfloat16 autocast if bf16 (weights stay float32).
    Each epoch ends with --out/model.pt, from which --resume carries on exactly: shuffles are seeded, the RNG saved."""
    layout = torch.contiguous_format if bf16 or cfg.device.type != "cpu" else torch.channels_last  # NHWC: 13% faster
    model = UNet(cfg.channels).to(cfg.device, memory_format=layout)
    ema, optimizer = copy.deepcopy(model).requires_grad_(False), torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    start, losses = load_checkpoint(cfg.out / "model.pt", model, ema, optimizer, cfg) if cfg.resume else (0, [])
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    total, clock = cfg.nb_epochs * steps_per_epoch, time.time()
    for epoch in range(start, cfg.nb_epochs):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        for i, batch in enumerate(order.split(cfg.batch_size)):
            step = epoch * steps_per_epoch + i
            with torch.autocast(cfg.device.type, dtype=torch.bfloat16, enabled=bf16):  # bf16 in NHWC: 1.8x slower
                loss = loss_fn(model, images[batch].to(cfg.device))
            for group in optimizer.param_groups:  # 100 warm-up steps, then a cosine down to 0
                group["lr"] = cfg.lr * min(1, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / total))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # EMA; the warm-up keeps the decay below 0.999 until step 8990 (weights ~ step^8)
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                for e, p in zip(ema.parameters(), model.parameters()):
                    e.lerp_(p, 1 - decay)
            losses.append(loss.item())
            check_finite(losses[-1], step)
            if (i + 1) % 10 == 0 or i + 1 == steps_per_epoch:  # a progress bar with the loss and the time left
                eta = time.gmtime((time.time() - clock) / (step + 1 - start * steps_per_epoch) * (total - step - 1))
                print(f"\repoch {epoch + 1}/{cfg.nb_epochs} [{'#' * (20 * (i + 1) // steps_per_epoch):20}] "
                      f"loss {np.mean(losses[-50:]):.4f} ETA {time.strftime('%H:%M:%S', eta)}", end="", flush=True)
        print()
        save_checkpoint(cfg.out / "model.pt", model, ema, optimizer, epoch + 1, losses, cfg)
    return ema, losses


def save_checkpoint(path, model, ema, optimizer, epoch, losses, cfg):
    state = {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
             "epoch": epoch, "losses": torch.tensor(losses), "rng": torch.get_rng_state(),
             "target": "v", "config": {name: getattr(cfg, name, None) for name in ("channels", "T")}}  # model shape
    torch.save(state, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)  # an interrupted save never leaves half a checkpoint
    print(f"wrote {path} (epoch {epoch})")


def load_checkpoint(path, model, ema, optimizer, cfg):
    check(path.exists(), f"--resume: there is no checkpoint {path}")
    try:
        state = torch.load(path, map_location=cfg.device, weights_only=True)  # tensors and numbers only, no code
    except Exception as error:  # any damage: a truncated zip, a foreign pickle, a file that is not torch's
        fail(f"cannot read the checkpoint {path} ({type(error).__name__}); delete it to start afresh")
    check(state.get("target") == "v", f"{path} is from an older lesson whose UNet predicted eps; delete it")
    for name, value in state["config"].items():
        check(value == getattr(cfg, name, None), f"{path} was trained with --{name} {value}")
    for part, name in ((model, "model"), (ema, "ema"), (optimizer, "optimizer")):
        part.load_state_dict(state[name])
    torch.set_rng_state(state["rng"].cpu())
    print(f"resumed from {path} after epoch {state['epoch']}")
    return state["epoch"], state["losses"].tolist()


# ----------------------------------------------------------------------------- samplers
@torch.no_grad()
def reverse_process(model, alpha_bar, x, sampler, sampling_steps):
    """From x_T, yield x after each step t -> s on evenly spaced steps of T..1. ddpm: x_s ~ q(x_s | x_t, x0_hat), eqs.
    6-7; ddim: Song et al. eq. 12. x0_hat is not clipped to [-1, 1]: that cuts its errors one way and greys white."""
    steps = torch.linspace(len(alpha_bar) - 1, 0, sampling_steps).round().long().tolist()
    for i, t in enumerate(steps):
        a_t = alpha_bar[t]
        a_s = alpha_bar[steps[i + 1]] if i + 1 < len(steps) else torch.ones_like(a_t)  # abar = 1 after the end
        v = model(x, torch.full((len(x),), t, device=x.device))
        x0_hat = a_t.sqrt() * x - (1 - a_t).sqrt() * v  # eq. 4 and the definition of v, solved for x0
        if sampler == "ddim":
            eps = (1 - a_t).sqrt() * x + a_t.sqrt() * v  # eq. 4 and the definition of v, solved for eps
            x = a_s.sqrt() * x0_hat + (1 - a_s).sqrt() * eps
        else:
            beta = 1 - a_t / a_s  # the respaced beta between visited steps (Nichol & Dhariwal 2021)
            mean = a_s.sqrt() * beta / (1 - a_t) * x0_hat + (1 - beta).sqrt() * (1 - a_s) / (1 - a_t) * x  # eq. 7
            x = mean + ((1 - a_s) / (1 - a_t) * beta).sqrt() * torch.randn_like(x)  # beta~ = 0 at the last step
        yield x


def sample(model, alpha_bar, n, cfg, chunk=100):
    """n digits as (n, 28, 28) floats in [0, 1], `chunk` at a time (on a 2-core CPU, 100 ran 30% faster than 500)."""
    digits = []
    for start in range(0, n, chunk):
        x = torch.randn(min(chunk, n - start), 1, 28, 28, device=cfg.device)
        for x in reverse_process(model, alpha_bar, x, cfg.sampler, cfg.sampling_steps):
            pass
        digits.append(x[:, 0].cpu())
    return ((torch.cat(digits) + 1) / 2).clamp(0, 1)


def run(cfg):
    check(cfg.sampling_steps <= cfg.T, "--sampling_steps cannot exceed --T")
    images, _ = load_mnist(cfg.data, "train", cfg.mirror, cfg.n_train)
    alpha_bar = cosine_schedule(cfg.T).to(cfg.device)
    print(f"{len(images)} training images; abar_T = {alpha_bar[-1].item():.1e}; UNet with "
          f"{sum(p.numel() for p in UNet(cfg.channels).parameters()):,} parameters; device {cfg.device}")
    ema, losses = train(images, lambda model, x0: ddpm_loss(model, x0, alpha_bar, cfg), cfg)
    return ema, alpha_bar, losses


def image_grid(digits, side):
    """The first side * side digits of (n, 28, 28) as one (side * 28, side * 28) image."""
    return digits[:side * side].reshape(side, side, 28, 28).transpose(1, 2).reshape(side * 28, side * 28)


# ----------------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    clock = time.time()
    ema, alpha_bar, losses = run(cfg)
    training_time, clock = time.time() - clock, time.time()
    samples = sample(ema, alpha_bar, cfg.n_samples, cfg)
    print(f"training {training_time / 60:.1f} min; sampling {cfg.n_samples} digits ({cfg.sampler}, "
          f"{cfg.sampling_steps} steps) {(time.time() - clock) / 60:.1f} min")
    test_images = (load_mnist(cfg.data, "t10k", cfg.mirror, cfg.n_samples)[0][:, 0] + 1) / 2  # (n, 28, 28) in [0, 1]
    save_results(cfg.out, samples, test_images)

    plt.imsave(cfg.out / "samples.png", image_grid(samples, min(10, math.isqrt(len(samples)))).numpy(), cmap="gray")
    print(f"wrote {cfg.out / 'samples.png'}, the first {min(10, math.isqrt(len(samples))) ** 2} digits")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(np.convolve(losses, np.ones(50) / 50, mode="valid"))
    ax.set(title="training loss |v - v_theta|^2, mean of 50 steps", xlabel="step")
    save_figure(fig, cfg.out / "loss.png")

    print(f"mean pixel: generated {samples.mean():.3f} | test digits {test_images.mean():.3f}")
    print(f"quality: python codes/mnist_fid.py --samples {cfg.out / 'samples.npy'} (FLD <= 3x the train-vs-test floor)")
    show_figures()
