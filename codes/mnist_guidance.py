"""Classifier-free guidance on MNIST: lesson 10's UNet, told which digit to draw ("draw me a 7").

The UNet also gets a learned embedding of the label c, added to its embedding of t. An eleventh
label, "null", stands for "any digit": in training, the label is replaced by null a fraction
p_uncond of the time (label dropout, Ho & Salimans 2022), so that one network learns both the
conditional prediction v(x_t, t, c) and the unconditional one v(x_t, t). Sampling is lesson 10's
ancestral sampler on the guided prediction
    v_w = v(x_t, t) + w (v(x_t, t, c) - v(x_t, t)):
w = 1 is plain conditional sampling, w = 0 ignores c, and w > 1 pushes each digit further from "any
digit" (Ho & Salimans' eq. 6, with their w = our w - 1; they guide eps, which is the same: at a
given x_t and t, eps and v are affine in each other). Guidance acts only at the steps t in
--guided_steps (Kynkaenniemi et al. 2024): at the noisiest ones it would flatten every digit into
its class's most typical shape. The run draws 100 of each digit at several w and prints, for each,
the share that a LeNet reads as the digit asked for, and their Frechet LeNet Distance (FLD) to the
test digits.

    python codes/mnist_guidance.py               # 20 min on a 2-core CPU; a checkpoint every epoch
    python codes/mnist_guidance.py --resume --digit 7 --guidance 3   # 7s from the trained UNet
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
from common import check, check_finite, parse_config, save_results, show_figures
from mnist_plumbing import (Progress, autocast, load_mnist, resume_training, save_checkpoint,
                            use_bf16)
from mnist_UNet import UNet, cosine_schedule, reverse_step, time_embedding, visited_steps

data = "data/MNIST"  # folder of the four MNIST .gz files; missing ones are downloaded
mirror = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # where missing MNIST files come from
n_train = 60000  # training images used (fewer for a quick run)
channels = 16  # UNet width at 28x28; twice that at 14x14 and 7x7
T = 1000  # diffusion steps
nb_epochs = 10  # passes over the training images
batch_size = 64  # images per optimisation step
lr = 4e-3  # AdamW peak learning rate
ema_decay = 0.999  # the sampling weights are this EMA of the trained ones
p_uncond = 0.1  # share of training labels replaced by the null label, "any digit"
guidance = 2.0  # w of the digits saved in samples.npy: 1 is conditional, 0 unconditional
compare = (1.0,)  # other values of w that the run samples and scores
guided_steps = (0, 750)  # the t where w acts (first, last); elsewhere w = 1, the label alone
sampling_steps = 100  # steps of lesson 10's ancestral sampler, evenly spaced over 1..T
digit = "all"  # all|0|1|2|3|4|5|6|7|8|9: the digit to draw, or all of them
n_per_digit = 100  # digits generated per digit asked for (and per w)
bf16 = "auto"  # auto|on|off: compute in bfloat16, weights in float32; auto: where the chip has it
resume = False  # continue training from --out/model.pt instead of starting afresh
NULL = 10  # the label that means "any digit"
CHECKPOINT = {"lesson": "mnist_guidance.py", "predicts": "v, given a digit or the null label",
              "shape": ("channels", "T")}  # the tag of its checkpoints


# ----------------------------------------------------------------------------- the conditional UNet
class ConditionalUNet(UNet):
    """Lesson 10's UNet, plus an embedding of the label (0-9, or NULL) added to the one of t."""

    def __init__(self, c):
        super().__init__(c)
        self.label_embedding = nn.Embedding(11, 4 * c)

    def forward(self, x, t, label):  # x: (n, 1, 28, 28), t: (n,), label: (n,)
        return self.body(x, self.time_mlp(time_embedding(t, self.c)) + self.label_embedding(label))


def guidance_at(t, w, cfg):
    """w at the steps t inside --guided_steps, 1 (the conditional prediction alone) outside them:
    guidance in a limited interval (Kynkaenniemi et al. 2024). At large t every class still looks
    like a blob, and pushing it w times as far as the label would make each digit's overall shape
    the class's most typical one."""
    first, last = cfg.guided_steps
    return w if first <= t <= last else 1.0


def guided(model, x, t, label, w):
    """v_w = v_uncond + w (v_cond - v_uncond), both from one batch of twice the size."""
    if w == 1:  # the conditional prediction alone
        return model(x, t, label)
    both_labels = torch.cat([label, torch.full_like(label, NULL)])  # (2n,)
    v = model(torch.cat([x, x]), torch.cat([t, t]), both_labels)
    v_cond, v_uncond = v.chunk(2)  # each like x
    return v_uncond + w * (v_cond - v_uncond)


# ----------------------------------------------------------------------------- training
def guidance_loss(model, x0, label, alpha_bar, cfg):
    """Lesson 10's loss |v - v_theta(x_t, t, c)|^2, with c replaced by NULL a fraction p_uncond of
    the time. The labels, t and eps are drawn on the CPU, whose random state --resume restores."""
    dropped = torch.rand(len(x0)) < cfg.p_uncond  # (B,)
    label = torch.where(dropped, NULL, label).to(cfg.device)
    t = torch.randint(0, cfg.T, (len(x0),)).to(cfg.device)  # (B,)
    eps = torch.randn(x0.shape).to(cfg.device)  # like x0
    a = alpha_bar[t].reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps  # eq. 4, in one jump
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    return F.mse_loss(model(x_t, t, label), v)


def train(images, labels, alpha_bar, bf16, cfg):
    """Lesson 10's loop: AdamW over shuffled epochs, 100 warm-up steps and a cosine decay of the
    learning rate, an EMA of the weights, a checkpoint every epoch; the labels come along."""
    model = ConditionalUNet(cfg.channels).to(cfg.device)
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
                x0 = images[batch].to(cfg.device)
                loss = guidance_loss(model, x0, labels[batch], alpha_bar, cfg)
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
    return ema


# ----------------------------------------------------------------------------- the guided sampler
def sample(model, alpha_bar, labels, w, bf16, cfg, chunk=100):
    """Digits (n, 28, 28) in [0, 1], one per label: lesson 10's ancestral steps on v_w, with w
    applied inside --guided_steps only."""
    steps, digits = visited_steps(cfg.T, cfg.sampling_steps), []
    for start in range(0, len(labels), chunk):
        label = labels[start:start + chunk].to(cfg.device)
        x = torch.randn(len(label), 1, 28, 28, device=cfg.device)
        with autocast(cfg.device, bf16):
            for t, s in zip(steps[:-1], steps[1:]):
                w_t = guidance_at(t, w, cfg)
                guided_v = lambda x, t: guided(model, x, t, label, w_t)  # lesson 10 calls it
                x = reverse_step(guided_v, alpha_bar, x, t, s, "ddpm")
        digits.append(x[:, 0].cpu())
    return ((torch.cat(digits) + 1) / 2).clamp(0, 1)  # [-1, 1] -> [0, 1]


# ----------------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    check(cfg.sampling_steps <= cfg.T, "--sampling_steps cannot exceed --T")
    check(0 <= cfg.p_uncond < 1, f"--p_uncond must be in [0, 1), got {cfg.p_uncond}")
    check(len(cfg.guided_steps) == 2 and cfg.guided_steps[0] <= cfg.guided_steps[1],
          f"--guided_steps takes two steps, first <= last, got {cfg.guided_steps}")
    for w in (cfg.guidance, *cfg.compare):
        check(w >= 0, f"a guidance scale w must be at least 0, got {w}")
        check(w == 1 or cfg.p_uncond > 0, f"w = {w:g} needs the null label: --p_uncond must be > 0")
    images, labels = load_mnist(cfg.data, "train", cfg.mirror, cfg.n_train)
    alpha_bar, bf16 = cosine_schedule(cfg.T).to(cfg.device), use_bf16(cfg.bf16, cfg.device)
    print(f"{len(images)} training digits; {cfg.device}, {'bfloat16' if bf16 else 'float32'}")
    clock = time.time()
    ema = train(images, labels, alpha_bar, bf16, cfg)
    print(f"training {(time.time() - clock) / 60:.1f} min")
    asked = range(10) if cfg.digit == "all" else [int(cfg.digit)]
    wanted = torch.tensor(asked).repeat_interleave(cfg.n_per_digit)  # (n,): each sample's digit
    samples = {}
    for w in sorted({cfg.guidance, *cfg.compare}):
        clock = time.time()
        samples[f"w = {w:g}"] = sample(ema, alpha_bar, wanted, w, bf16, cfg)
        print(f"w = {w:g}: {len(wanted)} digits in {(time.time() - clock) / 60:.1f} min")
    chosen = samples[f"w = {cfg.guidance:g}"]
    test_images, test_labels = load_mnist(cfg.data, "t10k", cfg.mirror)
    same_digits = torch.cat([torch.nonzero(test_labels == d)[:cfg.n_per_digit, 0] for d in asked])
    save_results(cfg.out, chosen, (test_images[same_digits, 0] + 1) / 2)
    np.save(cfg.out / "labels.npy", wanted.numpy())

    side = min(10, cfg.n_per_digit)  # one row per digit asked for
    rows = torch.stack([chosen[wanted == d][:side] for d in asked])  # (digits, side, 28, 28)
    grid = rows.transpose(1, 2).reshape(len(asked) * 28, side * 28)
    plt.imsave(cfg.out / "samples.png", grid.numpy(), cmap="gray")
    print(f"wrote {cfg.out / 'samples.png'}, one row per digit, w = {cfg.guidance:g}")
    mnist_fid.score(samples, cfg, labels=wanted)
    show_figures()
