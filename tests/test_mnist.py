"""The MNIST lessons, offline and small: the IDX reader, the checked download, the UNet, exact resuming, checkpoints
that no other lesson can load, the samplers against a closed form, the Frechet distance against closed forms, and
a smoke run of each script on tiny data."""
import functools
import gzip
import hashlib
import http.server
import re
import shutil
import socket
import threading
from argparse import Namespace

import numpy as np
import pytest
import torch

import mnist_guidance
import mnist_plumbing as plumbing
import mnist_reinjection
import mnist_UNet as lesson
from conftest import write_idx
from mnist_fid import (LeNet, disjoint_sets, features, frechet_distance, load_classifier, report,
                       same_class_mix)
from test_cli import assert_clean_error

MNIST_SCRIPTS = ("mnist_UNet.py", "mnist_UNet_video.py", "mnist_fid.py", "mnist_reinjection.py", "mnist_guidance.py",
                 "mnist_guidance_video.py", "mnist_plumbing.py")  # smoke-run (or, for the plumbing, used) here
TINY_UNET = ["--n_train", "64", "--channels", "8", "--T", "50", "--nb_epochs", "1", "--batch_size", "32",
             "--sampling_steps", "5"]


def config(tmp_path, **changes):
    """The lesson's defaults, made tiny, as parse_config would hand them over."""
    cfg = dict(channels=8, T=50, nb_epochs=2, batch_size=16, lr=1e-3, ema_decay=0.99, seed=0, resume=False,
               sampler="ddpm", sampling_steps=10, device=torch.device("cpu"), out=tmp_path, p_uncond=0.1)
    tmp_path.mkdir(exist_ok=True)
    return Namespace(**{**cfg, **changes})


# ----------------------------------------------------------------------------- the IDX reader
def test_read_idx_reads_what_was_written(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    write_idx(tmp_path / "images.gz", images)
    assert np.array_equal(plumbing.read_idx(tmp_path / "images.gz", (28, 28)).numpy(), images)


@pytest.mark.parametrize("damage, words", [
    (lambda path: write_idx(path, np.zeros((5, 28))), ["magic number"]),  # 2-D where 3-D is expected
    (lambda path: write_idx(path, np.zeros((5, 28, 27))), ["shape (28, 27)"]),
    (lambda path: path.write_bytes(path.read_bytes()[:-20]), ["not a complete gzip file"]),  # a cut download
    (lambda path: path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-9])), ["truncated"]),  # a complete gzip holding too few bytes
])
def test_damaged_idx_files_name_the_file(tmp_path, damage, words):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.zeros((5, 28, 28)))
    damage(path)
    with pytest.raises(SystemExit, match="error: .*train-images-idx3-ubyte.gz") as error:
        plumbing.read_idx(path, (28, 28))
    for word in words:
        assert word in str(error.value)


def test_label_count_must_match(tmp_path, tiny_mnist):
    folder = tmp_path / "mnist"
    shutil.copytree(tiny_mnist, folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(159))
    with pytest.raises(SystemExit, match="160 images but 159 labels"):
        plumbing.load_mnist(folder, "train", "http://127.0.0.1:9/")


# ----------------------------------------------------------------------------- the download
@pytest.fixture
def mirror(tiny_mnist):
    """An HTTP server on 127.0.0.1 serving the tiny MNIST files; yields its URL."""
    handler = functools.partial(QuietHandler, directory=str(tiny_mnist))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def checksums_of(folder):
    return {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in sorted(folder.glob("*.gz"))}


def test_download_fetches_and_verifies(tmp_path, tiny_mnist, mirror):
    plumbing.download(tmp_path / "data", mirror, checksums_of(tiny_mnist))
    for name in checksums_of(tiny_mnist):
        assert (tmp_path / "data" / name).read_bytes() == (tiny_mnist / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(checksums_of(tiny_mnist))


def test_checksum_mismatch_leaves_nothing(tmp_path, tiny_mnist, mirror):
    checksums = {name: "0" * 32 for name in checksums_of(tiny_mnist)}
    with pytest.raises(SystemExit, match="expected 0{32}; nothing was saved"):
        plumbing.download(tmp_path / "data", mirror, checksums)
    assert list((tmp_path / "data").iterdir()) == []  # no file, and no half-written .part either


def test_offline_gives_one_clear_line(run, tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    result = run("mnist_UNet.py", "--data", tmp_path / "data", "--mirror", closed, "--out", tmp_path / "out")
    assert_clean_error(result, "cannot download", "Offline?", "train-images-idx3-ubyte.gz", str(tmp_path / "data"))
    assert list((tmp_path / "data").iterdir()) == []


def test_unwritable_data_folder_gives_one_clear_line(run, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a folder cannot be made inside a file, even by root
    result = run("mnist_UNet.py", "--data", blocker / "MNIST", "--out", tmp_path / "out")
    assert_clean_error(result, "cannot write to --data")


# ----------------------------------------------------------------------------- schedule, UNet, training
def test_cosine_schedule_follows_its_formula():
    alpha_bar = lesson.cosine_schedule(1000).double()
    t = torch.arange(1, 1001, dtype=torch.float64)
    f = lambda t: torch.cos((t / 1000 + 0.008) / 1.008 * torch.pi / 2) ** 2  # Nichol & Dhariwal eq. 17
    unclipped = t < 1000  # only the last beta is clipped at 0.999
    assert torch.allclose(alpha_bar[unclipped], (f(t) / f(torch.zeros(1)))[unclipped], rtol=1e-5)
    assert alpha_bar[-1] < 1e-4  # x_T is N(0, I) to within 1e-2 of a std


def test_unet_keeps_the_shape_and_listens_to_t():
    model = lesson.UNet(8)
    x = torch.randn(3, 1, 28, 28)
    early, late = model(x, torch.full((3,), 5)), model(x, torch.full((3,), 900))
    assert early.shape == x.shape
    assert (early - late).abs().mean() > 1e-3


def test_bf16_training_computes_in_bfloat16_and_keeps_float32_weights(tmp_path, monkeypatch):
    """train(..., bf16=True) runs the forward and backward passes under autocast; the UNet's output is then bfloat16,
    while the weights that Adam updates and the EMA that samples stay float32."""
    dtypes = []

    class Recorder(lesson.UNet):
        def forward(self, x, t):
            out = super().forward(x, t)
            dtypes.append(out.dtype)
            return out

    monkeypatch.setattr(lesson, "UNet", Recorder)
    cfg = config(tmp_path, nb_epochs=1, batch_size=100, T=4)
    ema, losses = lesson.train(torch.rand(300, 1, 28, 28) * 2 - 1, lesson.cosine_schedule(4), True, cfg)
    assert dtypes == [torch.bfloat16] * 3
    assert all(p.dtype == torch.float32 for p in ema.parameters())
    assert np.isfinite(losses).all()


def test_training_sees_the_forward_marginal(tmp_path, monkeypatch):
    """With all-black images (x0 = -1), the network's input must be N(-sqrt(abar_t), 1 - abar_t) (eq. 4): the
    port's bug, noise scaled by sqrt(abar_t), would make it N(.., abar_t)."""
    seen = []

    class Recorder(lesson.UNet):
        def forward(self, x, t):
            seen.append((x.detach(), t))
            return super().forward(x, t)

    monkeypatch.setattr(lesson, "UNet", Recorder)
    cfg = config(tmp_path, nb_epochs=1, batch_size=250, T=4)
    alpha_bar = lesson.cosine_schedule(4)
    lesson.train(-torch.ones(1000, 1, 28, 28), alpha_bar, False, cfg)
    x, t = torch.cat([x for x, _ in seen]), torch.cat([t for _, t in seen])
    for step in range(4):
        pixels = x[t == step]
        assert abs(pixels.mean() + alpha_bar[step].sqrt()) < 0.01
        assert abs(pixels.var() / (1 - alpha_bar[step]) - 1) < 0.02


def test_training_lowers_the_lessons_own_loss(tmp_path):
    """The lesson's train() with its ddpm_loss, on 64 copies of one digit-like pattern: the loss history it returns
    must fall. A loop that never steps the optimizer, or steps it before the gradient exists, fails here."""
    torch.manual_seed(0)
    pattern = -torch.ones(1, 1, 28, 28)
    pattern[..., 6:22, 12:16] = 1.0  # a white bar
    cfg = config(tmp_path, nb_epochs=12, batch_size=16, lr=3e-3, T=50)
    _, losses = lesson.train(pattern.repeat(64, 1, 1, 1), lesson.cosine_schedule(50), False, cfg)
    assert len(losses) == 48
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), (losses[:8], losses[-8:])


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """Two epochs straight, against a run stopped (as by Ctrl-C) after its first epoch's checkpoint and then resumed:
    the same model, EMA, optimizer state and loss history."""
    images = torch.rand(48, 1, 28, 28) * 2 - 1
    alpha_bar = lesson.cosine_schedule(50)
    torch.manual_seed(0)
    lesson.train(images, alpha_bar, False, config(tmp_path / "straight"))

    def save_then_stop(path, tag, cfg, epoch, *rest, **parts):
        save(path, tag, cfg, epoch, *rest, **parts)
        if epoch == 1:
            raise KeyboardInterrupt

    save = lesson.save_checkpoint
    monkeypatch.setattr(lesson, "save_checkpoint", save_then_stop)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        lesson.train(images, alpha_bar, False, config(tmp_path / "resumed"))
    torch.manual_seed(123)  # a new process: the random state must come from the checkpoint
    lesson.train(images, alpha_bar, False, config(tmp_path / "resumed", resume=True))
    straight, resumed = (torch.load(tmp_path / name / "model.pt", weights_only=True) for name in ("straight", "resumed"))
    assert straight["epoch"] == resumed["epoch"] == 2
    for key in ("model", "ema"):
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, resumed[key][name]), (key, name)
    for moments, other in zip(straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert all(torch.equal(moments[k], other[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert torch.equal(straight["losses"], resumed["losses"])


def test_resume_refuses_a_damaged_checkpoint(run, tmp_path, tiny_mnist):
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    result = run("mnist_UNet.py", "--data", tiny_mnist, *TINY_UNET, "--resume", "--out", tmp_path)
    assert_clean_error(result, "cannot read the checkpoint", "model.pt")


# ----------------------------------------------------------------------------- checkpoints of one lesson only
LESSONS = {"mnist_UNet.py": lesson, "mnist_reinjection.py": mnist_reinjection, "mnist_guidance.py": mnist_guidance}
LOADERS = [("mnist_UNet.py", lesson), ("mnist_UNet_video.py", lesson), ("mnist_reinjection.py", mnist_reinjection),
           ("mnist_guidance.py", mnist_guidance), ("mnist_guidance_video.py", mnist_guidance)]


def checkpoint_of(writer, path):
    """A real checkpoint as the lesson `writer` saves it (its tag, tiny weights), or one of the old format, which had
    no lesson in it."""
    cfg = Namespace(channels=8, channels_mid=16, T=50, sigma_min=0.02, sigma_max=20.0)
    if writer == "old":
        weights = lesson.UNet(8).state_dict()
        torch.save({"model": weights, "ema": weights, "epoch": 1, "target": "v", "config": {"channels": 8}}, path)
    else:
        plumbing.save_checkpoint(path, LESSONS[writer].CHECKPOINT, cfg, 1, [0.5], model=lesson.UNet(8))
    return cfg


@pytest.mark.parametrize("writer", ["old", *LESSONS])
@pytest.mark.parametrize("loader, module", LOADERS)
def test_every_loader_refuses_another_lessons_checkpoint(tmp_path, writer, loader, module):
    """Same shapes, other meaning: lesson 11's UNet outputs EDM's F, lesson 13's takes a label. Each script that
    loads a checkpoint checks it with its lesson's tag and refuses any other lesson's in one line naming both."""
    cfg = checkpoint_of(writer, tmp_path / "model.pt")
    if writer == loader or LESSONS.get(writer) is module:
        assert plumbing.load_checkpoint(tmp_path / "model.pt", module.CHECKPOINT, cfg, "--resume")["epoch"] == 1
        return
    with pytest.raises(SystemExit) as stop:
        plumbing.load_checkpoint(tmp_path / "model.pt", module.CHECKPOINT, cfg, "--resume")
    message = str(stop.value)
    assert message.startswith("error: ") and "\n" not in message
    assert module.CHECKPOINT["lesson"] in message and (writer in message or "older version" in message)


@pytest.mark.parametrize("script, flag, writer", [("mnist_UNet.py", "--resume", "mnist_reinjection.py"),
                                                  ("mnist_UNet_video.py", "--checkpoint", "mnist_reinjection.py"),
                                                  ("mnist_reinjection.py", "--resume", "mnist_UNet.py"),
                                                  ("mnist_guidance.py", "--resume", "mnist_UNet.py"),
                                                  ("mnist_guidance_video.py", "--checkpoint", "mnist_UNet.py")])
def test_the_scripts_check_the_tag(run, tmp_path, tiny_mnist, script, flag, writer):
    """The same refusal, end to end: each script that loads a checkpoint calls the check with its own lesson's tag
    (a subprocess each, so one writer per script)."""
    checkpoint_of(writer, tmp_path / "model.pt")
    args = ["--checkpoint", tmp_path / "model.pt", "--assets", tmp_path] if flag == "--checkpoint" else ["--resume"]
    result = run(script, "--data", tiny_mnist, *TINY_UNET[:4], *args, "--out", tmp_path)
    assert_clean_error(result, f"written by {writer}", "model.pt")


@pytest.mark.parametrize("script, args", [("mnist_UNet.py", ["--channels", "12"]),
                                          ("mnist_reinjection.py", ["--channels", "8", "--channels_mid", "12"])])
def test_a_width_the_groupnorm_cannot_split_stops_with_one_line(run, tmp_path, tiny_mnist, script, args):
    result = run(script, "--data", tiny_mnist, "--n_train", "64", *args, "--out", tmp_path)
    assert_clean_error(result, "multiples of 8", "12")


# ----------------------------------------------------------------------------- samplers, with the exact denoiser
def exact_v(mean, std, alpha_bar):
    """v*(x_t, t) = E[v | x_t] = sqrt(abar_t) E[eps | x_t] - sqrt(1 - abar_t) E[x0 | x_t] for pixels x0 ~ N(mean, std^2)
    each, with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps: Gaussian conditioning, per pixel, with no division by
    sqrt(abar_t) (the eps-based x0_hat would divide by 5e-5 at t = T)."""
    def v(x, t):
        a = alpha_bar[t].reshape(-1, 1, 1, 1).double()
        residual = (x.double() - a.sqrt() * mean) / (a * std ** 2 + 1 - a)  # (x_t - E x_t) / Var x_t
        x0, eps = mean + a.sqrt() * std ** 2 * residual, (1 - a).sqrt() * residual  # E[x0 | x_t], E[eps | x_t]
        return (a.sqrt() * eps - (1 - a).sqrt() * x0).float()
    return v


@pytest.mark.parametrize("mean", [0.2, 0.8])
@pytest.mark.parametrize("sampler, steps, tolerance", [("ddpm", 1000, 0.03), ("ddpm", 300, 0.05), ("ddim", 1000, 0.03),
                                                       ("ddim", 50, 0.07)])
def test_samplers_with_the_exact_v_reach_the_data(sampler, steps, tolerance, mean):
    """With v* the samplers must end at N(mean, 0.3^2) per pixel. Noise scaled by beta instead of sqrt(beta) moves
    the std far outside the tolerance; so does a wrong posterior coefficient, reading the network's output as eps,
    or, on the lesson's 300 of 1000 steps, the one-step beta in place of the respaced 1 - abar_t / abar_s. At mean
    0.8, a quarter of the pixels lie above 1, where clipping x0_hat to [-1, 1] would pull the end darker."""
    torch.manual_seed(0)
    alpha_bar = lesson.cosine_schedule(1000)
    x, model = torch.randn(100, 1, 28, 28), exact_v(mean, 0.3, alpha_bar)
    visited = lesson.visited_steps(1000, steps)
    for t, s in zip(visited[:-1], visited[1:]):
        x = lesson.reverse_step(model, alpha_bar, x, t, s, sampler)
    assert abs(x.mean() - mean) < 0.01
    assert abs(x.std() / 0.3 - 1) < tolerance


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_the_last_step_adds_no_noise(sampler):
    """The step to s = -1 (abar = 1) returns x0_hat itself: with the same x and model, two draws of the random state
    give the same digits. Noise at the last step would be almost invisible in the std (1 - abar_1 = 4e-5)."""
    alpha_bar, x = lesson.cosine_schedule(1000), torch.randn(4, 1, 28, 28)
    model = exact_v(0.2, 0.3, alpha_bar)
    ends = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        ends.append(lesson.reverse_step(model, alpha_bar, x, 0, -1, sampler))
    assert torch.equal(*ends)
    a = alpha_bar[0]
    assert torch.allclose(ends[0], a.sqrt() * x - (1 - a).sqrt() * model(x, torch.zeros(4, dtype=torch.long)))


def test_sample_maps_the_pixels_to_0_1(tmp_path):
    """sample() draws from N(0, I) and returns (n, 28, 28) in [0, 1]: with the exact v of pixels N(-0.2, 0.3^2) in
    [-1, 1] its digits must have mean 0.4 and std 0.15, before any clamping matters (a sample() that forgets
    (x + 1) / 2 still lies in [0, 1] once clamped, and fails here)."""
    torch.manual_seed(0)
    alpha_bar = lesson.cosine_schedule(200)
    cfg = config(tmp_path, T=200, sampling_steps=200)
    digits = lesson.sample(exact_v(-0.2, 0.3, alpha_bar), alpha_bar, 30, False, cfg, chunk=16)
    assert digits.shape == (30, 28, 28)
    assert abs(digits.mean().item() - 0.4) < 0.01 and abs(digits.std().item() / 0.15 - 1) < 0.05


def test_the_loss_targets_v():
    """For digits that are all one image x0, eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t) is known from x_t, so a
    model that returns v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 must score 0, and one that returns eps must not."""
    alpha_bar = lesson.cosine_schedule(50)
    x0 = torch.rand(1, 1, 28, 28) * 2 - 1
    cfg = Namespace(T=50, device=torch.device("cpu"))

    def exact(kind):
        def model(x_t, t):
            a = alpha_bar[t].reshape(-1, 1, 1, 1)
            eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
            return a.sqrt() * eps - (1 - a).sqrt() * x0 if kind == "v" else eps
        return model

    batch = x0.expand(64, -1, -1, -1)
    assert lesson.ddpm_loss(exact("v"), batch, alpha_bar, cfg) < 1e-8
    assert lesson.ddpm_loss(exact("eps"), batch, alpha_bar, cfg) > 0.1


# ----------------------------------------------------------------------------- the Frechet distance
def test_frechet_distance_against_closed_forms():
    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(500, 2)) @ np.array([[1.0, 0.3], [0.0, 0.5]])
    f2 = rng.normal(size=(500, 2)) @ np.array([[0.4, -0.2], [0.1, 1.2]]) + [0.5, -1.0]
    assert abs(frechet_distance(f1, f1)) < 1e-9
    shift = np.array([0.3, -0.4])
    assert np.isclose(frechet_distance(f1, f1 + shift), (shift ** 2).sum())  # same covariance: |shift|^2
    # 2x2: Tr (S1 S2)^(1/2) = sqrt(Tr(S1 S2) + 2 sqrt(det(S1 S2))), from the two eigenvalues of S1 S2
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    product = s1 @ s2
    trace_root = np.sqrt(np.trace(product) + 2 * np.sqrt(np.linalg.det(product)))
    expected = ((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_root
    assert np.isclose(frechet_distance(f1, f2), expected)
    assert not np.isclose(expected, ((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * np.sqrt(np.abs(product))))


def test_same_class_mix_draws_the_asked_proportions():
    labels = torch.arange(600) % 10
    counts = np.array([160, 70, 120, 100, 120, 110, 70, 80, 90, 80])  # as bincount / n of 1000 samples gives them
    chosen = same_class_mix(labels, counts / 1000, 1000, torch.Generator().manual_seed(0))
    assert np.array_equal(np.bincount(labels[chosen].numpy(), minlength=10), counts)


def test_same_class_mix_draws_n_digits_even_when_n_is_small():
    """Shares of 1000 digits, a mix of n: always n digits, the largest remainders rounded up (with n = 5 rounding
    each class to the nearest whole number would give 4 digits, and with n = 2 none)."""
    labels = torch.arange(600) % 10
    shares = np.array([160, 70, 120, 100, 120, 110, 70, 80, 90, 80]) / 1000
    for n in (1, 2, 5, 999):
        assert len(same_class_mix(labels, shares, n, torch.Generator().manual_seed(0))) == n
    chosen = same_class_mix(labels, shares, 5, torch.Generator().manual_seed(0))
    assert np.array_equal(np.bincount(labels[chosen].numpy(), minlength=10), [1, 0, 1, 1, 1, 1, 0, 0, 0, 0])


def test_same_class_mix_skips_an_absent_digit_and_stops_clearly_when_the_samples_hold_it():
    labels = torch.arange(600) % 9  # no 9s among the real digits
    counts = np.array([100] * 9 + [0])
    chosen = same_class_mix(labels, counts / 900, 900, torch.Generator().manual_seed(0))
    assert np.array_equal(np.bincount(labels[chosen].numpy(), minlength=10), counts)
    with pytest.raises(SystemExit, match="lack a digit"):
        same_class_mix(labels, np.array([100] * 8 + [50, 50]) / 900, 900, torch.Generator().manual_seed(0))


def test_a_larger_sample_scores_the_mean_fld_of_its_sets_at_the_floors_n(tiny_mnist, capsys):
    """The floor is the FLD at n digits, which falls as n grows: 4n samples must score the mean of four FLDs at n, not
    one FLD at 4n; sorted by class, as lesson 13's are, each set must still hold every class; a sample of n scores
    one FLD, without a spread."""
    cfg = Namespace(data=tiny_mnist, mirror="", seed=0, set_size=30, floor_draws=4)
    torch.manual_seed(0)
    model = LeNet().eval()  # untrained: any fixed map of the digits to features will do
    model.features[-2].weight.data *= 100  # features of order 1, not 0.01: FLDs that print as more than 0.00
    test_x = (plumbing.load_mnist(tiny_mnist, "t10k", "")[0][:, 0] + 1) / 2
    train_x, train_y = plumbing.load_mnist(tiny_mnist, "train", "")
    train_x = (train_x[:, 0] + 1) / 2
    by_class = train_x[:120][train_y[:120].argsort(stable=True)]  # 12 of each digit, 0s first
    one = train_x[120:150].flip(-1)
    scores = report(model, {"by class": by_class, "one set": one}, cfg, compared=("one set",))
    reference = features(model, test_x)
    parts = disjoint_sets(by_class, 30, torch.Generator().manual_seed(cfg.seed))
    part_fids = [frechet_distance(features(model, part), reference) for part in parts]
    assert len(parts) == 4 and np.isclose(scores["by class"], np.mean(part_fids))
    assert not np.isclose(scores["by class"], frechet_distance(features(model, by_class), reference), rtol=0.2)
    in_order = [frechet_distance(features(model, part), reference) for part in by_class.split(30)]  # 3 digits each
    assert scores["by class"] < 0.7 * np.mean(in_order)
    assert np.isclose(scores["one set"], frechet_distance(features(model, one), reference))
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line for line in printed.splitlines() if "x the floor" in line}
    assert f"(mean of 4 sets: {min(part_fids):.2f} to {max(part_fids):.2f})" in rows["by"]
    assert "mean of" not in rows["one"] and "n = 30:" in printed and "mean of 4 draws" in printed


def test_disjoint_sets_hold_every_class_and_leave_out_fewer_than_n():
    labels = torch.arange(130) // 13  # sorted by class, 13 of each
    sets = disjoint_sets(torch.arange(130), 30, torch.Generator().manual_seed(0))
    assert [len(part) for part in sets] == [30] * 4 and len(torch.cat(sets).unique()) == 120
    assert all(len(labels[part].unique()) == 10 for part in sets)
    everything = torch.arange(30)
    assert disjoint_sets(everything, 30, torch.Generator().manual_seed(0))[0] is everything  # n digits: all, as given


def test_the_lenet_trains_from_its_own_seed_alone(tmp_path, tiny_mnist):
    """Lesson 11 trains its LeNet after sampling: neither a sampler that draws more random numbers nor the run's
    --seed may change the ruler that scores it, nor may training the LeNet change what the caller draws next."""
    weights, next_draws = [], []
    for earlier_draws, seed in ((0, 0), (1000, 3)):
        torch.manual_seed(5)
        torch.rand(earlier_draws)
        cfg = Namespace(data=tiny_mnist, mirror="", out=tmp_path / str(earlier_draws), seed=seed, lenet_epochs=1,
                        lenet_seed=0, batch_size=32, lr=1e-3)
        cfg.out.mkdir()
        weights.append(load_classifier(cfg)[0].state_dict())
        next_draws.append(torch.rand(3))
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    torch.manual_seed(5)
    assert torch.equal(next_draws[0], torch.rand(3))


def test_a_cached_lenet_of_other_settings_is_retrained_and_a_damaged_one_named(tmp_path, tiny_mnist, capsys):
    cfg = Namespace(data=tiny_mnist, mirror="", out=tmp_path, seed=0, lenet_epochs=1, lenet_seed=0, batch_size=32,
                    lr=1e-3)
    load_classifier(cfg)
    assert "trained the LeNet for 1 epochs" in capsys.readouterr().out
    load_classifier(cfg)  # the same settings: the cache serves
    assert "trained" not in capsys.readouterr().out
    cfg.lenet_seed = 1  # a ruler trained otherwise is not this run's ruler
    load_classifier(cfg)
    assert "trained the LeNet for 1 epochs" in capsys.readouterr().out
    cfg.lenet_epochs = 2
    retrained = load_classifier(cfg)[0].state_dict()
    assert "trained the LeNet for 2 epochs" in capsys.readouterr().out
    (tmp_path / "none").mkdir()
    fresh = load_classifier(Namespace(**{**vars(cfg), "out": tmp_path / "none"}))[0].state_dict()
    assert all(torch.equal(retrained[name], fresh[name]) for name in fresh)  # one seed, one ruler
    (tmp_path / "lenet.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="cannot read the classifier .*lenet.pt"):
        load_classifier(cfg)


# ----------------------------------------------------------------------------- the scripts, end to end
def test_scripts_end_to_end(run, tmp_path, tiny_mnist):
    out, assets = tmp_path / "out", tmp_path / "assets"
    result = run("mnist_UNet.py", "--data", tiny_mnist, *TINY_UNET, "--n_samples", "120", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "UNet of" in result.stdout and f"wrote {out / 'model.pt'} (epoch 1)" in result.stdout
    assert "x the floor" in result.stdout  # the lesson scores its own digits
    samples, data = np.load(out / "samples.npy"), np.load(out / "data.npy")
    assert samples.shape == data.shape == (120, 28, 28) and samples.min() >= 0 and samples.max() <= 1
    assert (out / "samples.png").stat().st_size > 0 and (out / "loss.png").stat().st_size > 0

    fid = run("mnist_fid.py", "--data", tiny_mnist, "--samples", out / "samples.npy", "--lenet_epochs", "1",
              "--out", tmp_path / "fid")
    assert fid.returncode == 0, fid.stderr
    for words in ("LeNet test accuracy", "floor", "x the floor", "classes 0-9", "real digits in these proportions"):
        assert words in fid.stdout
    floor_row = next(line for line in fid.stdout.splitlines() if "(floor)" in line)
    floor, lowest, highest = (float(number) for number in re.findall(r"\d+\.\d+", floor_row))
    assert "mean of 100 draws" in floor_row and lowest <= floor <= highest
    assert (tmp_path / "fid" / "lenet.pt").exists()

    video = run("mnist_UNet_video.py", "--data", tiny_mnist, "--channels", "8", "--T", "50", "--sampling_steps", "10",
                "--n_frames", "6", "--n_shown", "4", "--checkpoint", out / "model.pt", "--assets", assets, "--out", out)
    assert video.returncode == 0, video.stderr
    assert (assets / "mnist_UNet.gif").stat().st_size > 0 and (assets / "mnist_UNet_samples.png").exists()

    resumed = run("mnist_UNet.py", "--data", tiny_mnist, *TINY_UNET, "--n_samples", "100", "--resume", "--out", out)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr


def test_reinjection_end_to_end(run, tmp_path, tiny_mnist):
    result = run("mnist_reinjection.py", "--data", tiny_mnist, "--n_train", "64", "--channels", "8", "--nb_epochs", "1",
                 "--batch_size", "32", "--sigma_max", "2", "--N", "8", "--n_samples", "20", "--n_compared", "10",
                 "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    for words in ("eta = 0 ", "eta = 1 ", "x the floor", "sigma_data", "20 digits, 9 network evaluations each, tan",
                  "eta = 0: 10 digits, 9 network evaluations each", "n = 10:"):
        assert words in result.stdout
    rows = {line.split()[2]: line for line in result.stdout.splitlines() if line.startswith("  eta = ")}
    assert "(target <= 3)" in rows["1"] and "target" not in rows["0"]  # eta = 0 is the comparison
    assert "(mean of 2 sets" in rows["1"] and "mean of" not in rows["0"]  # scored at the n of the smaller set
    assert np.load(tmp_path / "samples.npy").shape == (20, 28, 28)
    assert (tmp_path / "mnist_reinjection.png").stat().st_size > 0  # into --out: assets/ only on request


def test_eta_0_starts_from_the_first_n_compared_of_etas_starting_noises(run, tmp_path, tiny_mnist):
    # an eta so small that its steps are DDIM's up to rounding: each eta = 0 digit must then be the eta digit drawn
    # from the same starting noise, the first --n_compared of them
    result = run("mnist_reinjection.py", "--data", tiny_mnist, "--n_train", "64", "--channels", "8", "--nb_epochs", "1",
                 "--batch_size", "32", "--sigma_max", "2", "--N", "8", "--n_samples", "20", "--n_compared", "10",
                 "--eta", "1e-9", "--bf16", "off", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "samples_eta0.npy: the digits of eta = 0" in result.stdout
    with_eta, without = np.load(tmp_path / "samples.npy"), np.load(tmp_path / "samples_eta0.npy")
    assert without.shape == (10, 28, 28) and np.abs(with_eta[:10] - without).max() < 1e-4
    assert np.abs(with_eta[10:] - without).max() > 0.1  # the check tells different noises apart


def test_guidance_end_to_end(run, tmp_path, tiny_mnist):
    out, assets = tmp_path / "out", tmp_path / "assets"
    result = run("mnist_guidance.py", "--data", tiny_mnist, *TINY_UNET, "--n_per_digit", "12", "--out", out)
    assert result.returncode == 0, result.stderr
    for words in ("w = 1 ", "w = 2 ", "LeNet reads the requested digit", "x the floor"):
        assert words in result.stdout
    samples, labels = np.load(out / "samples.npy"), np.load(out / "labels.npy")
    assert samples.shape == np.load(out / "data.npy").shape == (120, 28, 28) and 0 <= samples.min() <= samples.max() <= 1
    assert np.array_equal(labels, np.repeat(np.arange(10), 12)) and (out / "samples.png").exists()

    sevens = run("mnist_guidance.py", "--data", tiny_mnist, *TINY_UNET, "--resume", "--digit", "7", "--out", out)
    assert sevens.returncode == 0, sevens.stderr
    assert set(np.load(out / "labels.npy")) == {7} and "resumed from" in sevens.stdout

    video = run("mnist_guidance_video.py", "--data", tiny_mnist, *TINY_UNET[2:], "--n_frames", "4", "--n_columns", "2",
                "--checkpoint", out / "model.pt", "--assets", assets, "--out", out)
    assert video.returncode == 0, video.stderr
    assert (assets / "mnist_guidance.gif").stat().st_size > 0 and (assets / "mnist_guidance_samples.png").exists()


@pytest.mark.parametrize("args, words", [(["--digit", "12"], ["--digit", "12"]), (["--guidance", "-1"], ["w", "-1"]),
                                         (["--guidance", "nan"], ["--guidance"])])
def test_guidance_refuses_bad_flags(run, tmp_path, args, words):
    assert_clean_error(run("mnist_guidance.py", *args, "--out", tmp_path), *words)


@pytest.mark.parametrize("script", ["mnist_UNet_video.py", "mnist_guidance_video.py"])
def test_video_trains_a_quick_model_without_checkpoint(run, tmp_path, tiny_mnist, script):
    extra = ["--n_shown", "4"] if script == "mnist_UNet_video.py" else ["--n_columns", "1"]
    result = run(script, "--data", tiny_mnist, *TINY_UNET, "--n_frames", "4", *extra, "--assets", tmp_path,
                 "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / script.replace("_video.py", ".gif")).stat().st_size > 0


def test_fid_refuses_bad_samples(run, tmp_path, tiny_mnist):
    np.save(tmp_path / "wrong.npy", np.full((200, 28, 28), 2.0))
    result = run("mnist_fid.py", "--data", tiny_mnist, "--samples", tmp_path / "wrong.npy", "--out", tmp_path)
    assert_clean_error(result, "not all in [0, 1]")
    assert_clean_error(run("mnist_fid.py", "--samples", tmp_path / "none.npy", "--out", tmp_path), "cannot read")
    (tmp_path / "text.npy").write_text("not an array")
    result = run("mnist_fid.py", "--samples", tmp_path / "text.npy", "--out", tmp_path)
    assert_clean_error(result, "not a complete .npy")
    assert_clean_error(run("mnist_fid.py", "--set_size", "50", "--out", tmp_path), "--set_size 50")
