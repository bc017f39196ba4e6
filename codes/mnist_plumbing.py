"""Plumbing of the MNIST lessons: data files, checkpoints, progress, bfloat16. No diffusion here.

Kept out of the lessons so that they read as data, network, loss, training loop and sampler.

- the data: the four IDX files of MNIST, downloaded once from a mirror and checked against their
  published MD5, read without torchvision, with a one-line error for a damaged file;
- checkpoints: written every epoch, atomically, tagged with the lesson that wrote them and what its
  network predicts, so that no lesson ever loads another's weights (same shapes, other meaning)
  without a word;
- a progress bar, and the choice of bfloat16 where the chip computes it natively.
"""
import gzip
import hashlib
import math
import os
import time
import urllib.request
from pathlib import Path

import torch

from common import check, fail, writable_folder

MNIST_MD5 = {  # the files as every public mirror serves them
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


# ----------------------------------------------------------------------------- data
def download(folder, mirror, checksums=MNIST_MD5):
    """Fetch each missing file (10 MB at most), check its MD5, write it to a temporary file, and
    only then rename it into place: an interrupted or corrupted download never leaves a file that
    looks complete."""
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
                 f"Put {', '.join(checksums)} in {folder}, or pass --data with the folder that "
                 "holds them")
        digest = hashlib.md5(payload).hexdigest()
        check(digest == md5,
              f"{name} from {mirror} has MD5 {digest}, expected {md5}; nothing was saved")
        (folder / f"{name}.part").write_bytes(payload)
        os.replace(folder / f"{name}.part", folder / name)


def read_idx(path, shape):
    """An IDX file (LeCun's MNIST format), gzipped: magic 0x0000080N (unsigned bytes, N dims), N
    big-endian sizes, then the bytes. `shape` gives the sizes after the first, which counts the
    items."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        fail(f"{path} is not a complete gzip file ({error}); delete it and run again to fetch it")
    ndim = len(shape) + 1
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    check(magic == 0x800 + ndim,
          f"{path} is not an IDX file of {ndim}-D unsigned bytes (magic number {magic})")
    sizes = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    check(tuple(sizes[1:]) == shape,
          f"{path} holds items of shape {tuple(sizes[1:])}, expected {shape}")
    check(len(raw) == 4 + 4 * ndim + math.prod(sizes), f"{path} is truncated or has trailing bytes")
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).reshape(sizes)


def load_mnist(folder, split, mirror, n=None):
    """Images (n, 1, 28, 28) as floats in [-1, 1] and labels (n,) of the split 'train' or 't10k'."""
    folder = Path(folder)
    download(folder, mirror)
    images = read_idx(folder / f"{split}-images-idx3-ubyte.gz", (28, 28))
    labels = read_idx(folder / f"{split}-labels-idx1-ubyte.gz", ())
    check(len(images) == len(labels),
          f"{split}: {len(images)} images but {len(labels)} labels in {folder}")
    return images[:n, None].float() / 127.5 - 1, labels[:n].long()


def image_grid(digits, side):
    """The first side * side digits of (n, 28, 28) as one (side * 28, side * 28) image."""
    rows = digits[:side * side].reshape(side, side, 28, 28).transpose(1, 2)  # (side, 28, side, 28)
    return rows.reshape(side * 28, side * 28)


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, tag, cfg, epoch, losses, **parts):
    """The weights of each module (and optimizer) in `parts`, the epoch, the loss history and the
    CPU's random state, plus `tag`: which lesson wrote it, what its network predicts, and the values
    of the settings that fix the network's shape. Written to a temporary file first, then renamed,
    so that an interruption never leaves half a checkpoint."""
    state = {name: part.state_dict() for name, part in parts.items()}
    state.update(lesson=tag["lesson"], predicts=tag["predicts"], epoch=epoch,
                 rng=torch.get_rng_state(), losses=torch.tensor(losses),
                 shape={name: getattr(cfg, name) for name in tag["shape"]})
    torch.save(state, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    print(f"wrote {path} (epoch {epoch})")


def load_checkpoint(path, tag, cfg, flag):
    """The checkpoint at `path`, refused with one line if it is damaged, was written by another
    lesson (or an older version of this one), or has another shape than cfg asks for."""
    path = Path(path)
    check(path.exists(), f"{flag}: there is no checkpoint {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors, numbers; no code
    except Exception as error:  # any damage: a truncated zip, a foreign pickle, a file not torch's
        fail(f"cannot read the checkpoint {path} ({type(error).__name__}); delete it to start over")
    check(isinstance(state, dict), f"{path} is not a checkpoint of these lessons; delete it")
    theirs = state.get("lesson", "an older version of these lessons")
    check(theirs == tag["lesson"] and state.get("predicts") == tag["predicts"],
          f"{path} was written by {theirs} (its network predicts {state.get('predicts', '?')}), "
          f"not by {tag['lesson']} (which predicts {tag['predicts']}): use its own, or delete it")
    for name in tag["shape"]:
        saved = state["shape"].get(name)
        check(saved == getattr(cfg, name), f"{path} was trained with --{name} {saved}")
    return state


def resume_training(path, tag, cfg, **parts):
    """Load each module (and optimizer) of `parts` from the checkpoint at `path`, and the CPU's
    random state, from which the lessons draw t and the noise; return (epochs done, loss
    history)."""
    state = load_checkpoint(path, tag, cfg, "--resume")
    for name, part in parts.items():
        part.load_state_dict(state[name])
    torch.set_rng_state(state["rng"])
    print(f"resumed from {path} after epoch {state['epoch']}")
    return state["epoch"], state["losses"].tolist()


# ----------------------------------------------------------------------------- progress, precision
class Progress:
    """`epoch 3/10 [#######             ] loss 0.1107 ETA 00:12:31` on one line, updated in
    place."""

    def __init__(self, nb_epochs, steps_per_epoch, start_epoch):
        self.nb_epochs, self.steps_per_epoch = nb_epochs, steps_per_epoch
        self.first_step, self.clock = start_epoch * steps_per_epoch, time.time()

    def show(self, epoch, i, loss):
        if (i + 1) % 10 and i + 1 != self.steps_per_epoch:
            return
        step = epoch * self.steps_per_epoch + i + 1
        left = (time.time() - self.clock) / (step - self.first_step)
        left *= self.nb_epochs * self.steps_per_epoch - step
        bar = "#" * (20 * (i + 1) // self.steps_per_epoch)
        print(f"\repoch {epoch + 1}/{self.nb_epochs} [{bar:20}] loss {loss:.4f} "
              f"ETA {time.strftime('%H:%M:%S', time.gmtime(left))}", end="", flush=True)
        if i + 1 == self.steps_per_epoch:
            print()


def use_bf16(choice, device):
    """Whether the network computes in bfloat16 (under torch.autocast; weights and optimizer stay
    float32): `on`, `off`, or `auto`, which means where the chip computes it natively (CUDA since
    Ampere, x86 CPUs with AVX512-BF16), since emulated bfloat16 can be slower than float32."""
    if choice != "auto":
        return choice == "on"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and torch.cpu._is_avx512_bf16_supported()


def autocast(device, bf16):
    """The context in which the network runs: bfloat16 autocast if bf16, plain float32 otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
