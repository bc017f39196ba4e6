"""The Frechet LeNet Distance (FLD): how far generated digits are from real ones, to a LeNet.

FID (Heusel et al. 2017) with a small LeNet-5-style MNIST classifier (LeCun et al. 1998) in place of
Inception: fit a Gaussian to the classifier's penultimate features of each set of images, then take
the Frechet distance between the two Gaussians (Dowson & Landau 1982),
    d^2 = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)),
with the true matrix square root, not an element-wise one. An FLD alone means little: at a finite n
even real digits score above 0. So it also prints the floor (real training digits against the test
set, at the same n; the mean of many draws, since one alone is noisy) and a ceiling (noise
with the digits' pixel mean and std), which digits a sample set contains, and how real digits in
those proportions score: a wrong class mix alone costs more than a reader would guess. Since even
the floor falls as n grows, every FLD is taken at one n: a larger sample scores the mean over its
sets of n, which is less noisy than one set.

    python codes/mnist_fid.py                       # scores outputs/mnist_UNet/samples.npy
    python codes/mnist_fid.py --samples other/samples.npy
"""
from argparse import Namespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import check, check_finite, fail, parse_config
from mnist_plumbing import load_mnist

samples = "outputs/mnist_UNet/samples.npy"  # the digits to score: (n, 28, 28) floats in [0, 1]
data = "data/MNIST"  # folder of the four MNIST .gz files; missing ones are downloaded
mirror = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # where missing MNIST files come from
lenet_epochs = 5  # epochs of the classifier's training, done once and cached as --out/lenet.pt
lenet_seed = 0  # the classifier's own seed, whatever --seed: every run is measured with one ruler
batch_size = 128  # images per step of the classifier's training
lr = 1e-3  # Adam learning rate of the classifier
set_size = 1000  # n, the digits in one FLD; a sample k times larger scores the mean of k sets
floor_draws = 100  # draws of n training digits whose mean FLD is the floor (one draw is noisy)


# ----------------------------------------------------------------------------- the classifier
class LeNet(nn.Module):
    """LeNet-5 with ReLU and max-pooling: 28x28 -> 6@14x14 -> 16@5x5 -> 120 -> 84 features -> 10
    classes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (n, 6, 14, 14)
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),  # (n, 400)
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())  # (n, 84)
        self.classify = nn.Linear(84, 10)

    def forward(self, x):  # x: (n, 28, 28) in [0, 1]
        return self.classify(self.features(x[:, None] - 0.5))  # (n, 10)


def train_lenet(images, labels, cfg):
    model = LeNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for epoch in range(cfg.lenet_epochs):
        for step, batch in enumerate(torch.randperm(len(images)).split(cfg.batch_size)):
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            check_finite(loss.item(), step)
    return model.eval()


def load_classifier(cfg):
    """The cached LeNet and its test accuracy, training it first if --out has none trained for
    --lenet_epochs from --lenet_seed. It starts from --lenet_seed alone, not from --seed nor from
    whatever the caller drew before: one ruler for every run, as FID has one Inception network."""
    path = cfg.out / "lenet.pt"
    with torch.random.fork_rng():  # the caller's random state is left as it was
        wanted = {"epochs": cfg.lenet_epochs, "seed": cfg.lenet_seed}
        if not path.exists() or {k: read_classifier(path)[1].get(k) for k in wanted} != wanted:
            torch.manual_seed(cfg.lenet_seed)  # here, past read_classifier's draws: stale or none
            (train_x, train_y), (test_x, test_y) = mnist(cfg, "train"), mnist(cfg, "t10k")
            model = train_lenet(train_x, train_y, cfg)
            with torch.no_grad():
                accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
            state = {"model": model.state_dict(), "accuracy": accuracy, **wanted}
            torch.save(state, path)
            print(f"trained the LeNet for {cfg.lenet_epochs} epochs; wrote {path}")
        model, state = read_classifier(path)
    return model, state["accuracy"]


def read_classifier(path):
    try:
        state = torch.load(path, weights_only=True)
        model = LeNet()
        model.load_state_dict(state["model"])
    except Exception as error:  # any damage to the cache: say which file, and how to mend it
        fail(f"cannot read the classifier {path} ({type(error).__name__}); delete it")
    return model.eval(), state


def mnist(cfg, split):
    """Images (n, 28, 28) in [0, 1] and labels of a split."""
    images, labels = load_mnist(cfg.data, split, cfg.mirror)
    return (images[:, 0] + 1) / 2, labels


# ----------------------------------------------------------------------------- the distance
@torch.no_grad()
def features(model, images):
    """The classifier's 84 penultimate features of each image, as float64 numpy (n, 84)."""
    chunks = [model.features(chunk[:, None] - 0.5) for chunk in images.split(1000)]
    return torch.cat(chunks).double().numpy()


def frechet_distance(f1, f2):
    """d^2 between N(mu_1, S_1) and N(mu_2, S_2) fitted to the rows of f1 and f2. Tr (S_1 S_2)^(1/2)
    is the sum of the square roots of the eigenvalues of S_1^(1/2) S_2 S_1^(1/2), a symmetric matrix
    similar to S_1 S_2."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(w.clip(0))) @ v.T  # S_1^(1/2)
    trace_root = np.sqrt(np.linalg.eigvalsh(root1 @ s2 @ root1).clip(0)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_root)


def same_class_mix(labels, shares, n, generator):
    """Indices of n digits, drawn by their true labels in the proportions `shares` (10,): real
    digits mixed like the samples. Their FLD is what perfect digits in the wrong proportions would
    score."""
    wanted = np.asarray(shares) * n  # (10,) digits per class, not whole numbers
    counts = np.floor(wanted + 1e-9).astype(int)
    left_out = n - counts.sum()  # dropped by rounding down: the largest remainders get them
    counts[np.argsort(counts - wanted, kind="stable")[:left_out]] += 1  # (10,), summing to n
    pools = [torch.nonzero(labels == k)[:, 0] for k in range(10)]
    check(all(len(pool) for pool, count in zip(pools, counts) if count),
          "the training labels lack a digit that the samples hold: their mix cannot be drawn")
    draws = [pool[torch.randint(len(pool), (count,), generator=generator)]
             for pool, count in zip(pools, counts) if count]  # randint fails on an empty pool
    return torch.cat(draws)  # (n,)


def disjoint_sets(images, n, generator):
    """All of `images` if there are n, else as many disjoint sets of n as they hold, drawn at
    random: samples in order of their class (lesson 13's) then give every set every class. The
    digits left over, fewer than n, are not scored. Each set's FLD is as noisy as one floor draw."""
    if len(images) == n:
        return [images]
    order = torch.randperm(len(images), generator=generator)[:len(images) // n * n]
    return list(images[order].split(n))


def load_samples(path):
    try:
        array = np.load(path)
    except OSError as error:
        fail(f"cannot read --samples {path}: {error.strerror or error}")
    except ValueError:  # numpy's own text here suggests unpickling, which we never do
        fail(f"cannot read --samples {path}: not a complete .npy array, as numpy.save writes")
    check(array.ndim == 3 and array.shape[1:] == (28, 28),
          f"--samples {path} has shape {array.shape}, not (n, 28, 28)")
    check(np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1,
          f"--samples {path} is not all in [0, 1]")
    check(len(array) >= 100, f"--samples {path} has {len(array)} images; an FLD needs hundreds")
    return torch.from_numpy(array).float()


def report(model, named_samples, cfg, labels=None, compared=()):
    """Print the floor, the ceiling and one FLD row per named sample set, with its ratio to the
    floor, its class mix and the FLD of real digits in that mix; with `labels` (the digit each
    sample was asked for), also the share that LeNet reads as that digit. The sets named in
    `compared` are shown for comparison, without the target. A set of k n digits scores the mean
    FLD of its k parts of n: the FLD at the floor's n, less noisy than one part. Return
    {name: FLD}."""
    (train_x, train_y), (test_x, _) = mnist(cfg, "train"), mnist(cfg, "t10k")
    reference = features(model, test_x)
    n = min(cfg.set_size, *(len(images) for images in named_samples.values()))
    generator = torch.Generator().manual_seed(cfg.seed)  # the same draws, trained LeNet or cached
    draws = [torch.randperm(len(train_x), generator=generator)[:n] for _ in range(cfg.floor_draws)]
    train_features = features(model, train_x)  # (60000, 84), once for every draw below
    floors = [frechet_distance(train_features[draw.numpy()], reference) for draw in draws]
    floor = float(np.mean(floors))
    noise = train_x.mean() + train_x.std() * torch.randn(n, 28, 28, generator=generator)
    noise = noise.clamp(0, 1)
    print(f"FLD against the {len(test_x)} test digits, n = {n}:")
    print(f"  {'real training digits (floor)':<32} {floor:9.2f}  (mean of {len(floors)} draws: "
          f"{min(floors):.2f} to {max(floors):.2f})")
    print(f"  {'noise with their pixel stats':<32} "
          f"{frechet_distance(features(model, noise), reference):9.2f}")
    scores = {}
    for name, images in named_samples.items():
        parts = disjoint_sets(images, n, torch.Generator().manual_seed(cfg.seed))
        sets = [frechet_distance(features(model, part), reference) for part in parts]
        scores[name] = float(np.mean(sets))
        with torch.no_grad():
            read = torch.cat([model(chunk) for chunk in images.split(1000)]).argmax(1)  # (len,)
        shares = np.bincount(read.numpy(), minlength=10) / len(images)
        ratio = scores[name] / floor
        target = "" if name in compared else " (target <= 3)"
        spread = f" (mean of {len(sets)} sets: {min(sets):.2f} to {max(sets):.2f})"
        spread = spread if len(sets) > 1 else ""
        print(f"  {name:<32} {scores[name]:9.2f}  = {ratio:.2f}x the floor{target}{spread}")
        print(f"  {'':<32} classes 0-9: {' '.join(f'{s:.0%}' for s in shares)} "
              f"(min {shares.min():.1%}, max {shares.max():.1%})")
        mix = train_features[same_class_mix(train_y, shares, n, generator).numpy()]
        mixed = frechet_distance(mix, reference)
        print(f"  {'':<32} real digits in these proportions score {mixed:.2f} = "
              f"{mixed / floor:.2f}x the floor (the class mix alone)")
        if labels is not None:
            agree = (read == labels).float().mean().item()
            print(f"  {'':<32} LeNet reads the requested digit in {agree:.1%} (target >= 99%)")
    return scores


def score(named_samples, cfg, labels=None, compared=()):
    """The report above, from a caller's run: this script's settings, the caller's data, --out and
    --seed. Every lesson, at every --seed, is scored by the very same LeNet."""
    settings = Namespace(data=cfg.data, mirror=cfg.mirror, out=cfg.out, seed=cfg.seed, lr=lr,
                         lenet_epochs=lenet_epochs, lenet_seed=lenet_seed, batch_size=batch_size,
                         set_size=set_size, floor_draws=floor_draws)
    model, accuracy = load_classifier(settings)
    print(f"LeNet test accuracy {accuracy:.2%}")
    return report(model, named_samples, settings, labels, compared)


if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    check(cfg.set_size >= 100, f"--set_size {cfg.set_size}: an FLD needs hundreds of digits")
    score({f"samples ({cfg.samples})": load_samples(cfg.samples)}, cfg)
