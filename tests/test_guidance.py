"""Lesson 12 (classifier-free guidance on four Gaussians) against closed forms: the exact denoisers
against Bayes' rule, the guided combination against its docstring and against the score of
p_sigma(x | c)^w p_sigma(x)^(1-w), the sampler on the exact denoisers at w = 0 and w = 1, the
sharpened law's weights by numerical integration, and label dropout."""
import math

import numpy as np
import pytest
import torch

import guidance_multimodal as lesson
from ground_truth import mixture_denoiser, mode_statistics

STD = 0.01
CLASSES = lesson.CLASS_WEIGHTS.double()  # (2, 4)
PRIOR = CLASSES.mean(0)  # p(x)'s mode weights with p(c) = 1/2


def config(*argv):
    argv = ["--device", "cpu", "--out", "/tmp", *argv]
    return lesson.parse_config("", lesson.__file__, argv=argv)


def ladder(cfg):
    return lesson.karras_sigmas(cfg.sigma_min, cfg.sigma_max, cfg.N, cfg.rho)


def log_density(x, weights, var):
    """log sum_k weights_k N(x; mu_k, var I) in 2D, written out independently of the lesson."""
    squares = ((x[:, None, :] - lesson.MODES.to(x)) ** 2).sum(-1)  # (n, 4)
    return torch.logsumexp(weights.log() - squares / (2 * var) - math.log(2 * math.pi * var), dim=1)


def exact(x, sigma, labels):
    return lesson.exact_denoiser(x, sigma, labels, STD)


def test_exact_denoisers_follow_bayes_rule():
    """Per class, E[x0 | x, c] is the mixture denoiser with the class's weights; for NULL, E[x0 | x]
    is the class denoisers averaged with p(c | x) = p(c) p_sigma(x | c) / p_sigma(x), by Bayes."""
    torch.manual_seed(0)
    x = 1.5 * torch.randn(200, 2, dtype=torch.float64)
    for s in (0.05, 0.5, 2.0):
        sigma = torch.full((200, 1), s, dtype=torch.float64)
        by_class = [exact(x, sigma, torch.full((200,), c)) for c in (0, 1)]
        for c in (0, 1):
            expected = mixture_denoiser(lesson.MODES, STD, CLASSES[c])(x, s)
            assert torch.allclose(by_class[c], expected, atol=1e-9), (c, s)
        var = STD ** 2 + s ** 2
        log_joint = torch.stack([log_density(x, CLASSES[c], var) for c in (0, 1)], 1)  # p(c) = 1/2
        posterior = log_joint.softmax(1)  # (n, 2): p(c | x)
        mixed = posterior[:, :1] * by_class[0] + posterior[:, 1:] * by_class[1]
        assert torch.allclose(exact(x, sigma, torch.full((200,), lesson.NULL)), mixed, atol=1e-9), s


def test_guided_denoiser_is_the_docstrings_combination():
    """guided(D, w, c) = D(NULL) + w (D(c) - D(NULL)) for any D, here one that names its label."""
    def fake(x, sigma, labels):
        return x * sigma + labels[:, None].to(x) * torch.tensor([1.0, 10.0])  # (n, 2)

    x, sigma, labels = torch.randn(6, 2), torch.full((6, 1), 0.7), torch.tensor([0, 1, 0, 1, 1, 0])
    null = torch.full_like(labels, lesson.NULL)
    for w in (0.0, 1.0, 2.5, -1.0):
        expected = fake(x, sigma, null) + w * (fake(x, sigma, labels) - fake(x, sigma, null))
        assert torch.allclose(lesson.guided(fake, w, labels)(x, sigma), expected), w
    assert torch.allclose(lesson.guided(fake, 1.0, labels)(x, sigma), fake(x, sigma, labels))
    assert torch.allclose(lesson.guided(fake, 0.0, labels)(x, sigma), fake(x, sigma, null))


def test_guided_exact_denoiser_is_x_plus_sigma2_times_the_guided_score():
    """The docstring's claim: on the exact D, the guided D is x + sigma^2 grad log [p_sigma(x | c)^w
    p_sigma(x)^(1-w)], the noisy laws being the mixtures with variance sigma_data^2 + sigma^2."""
    torch.manual_seed(0)
    x = (1.5 * torch.randn(100, 2, dtype=torch.float64)).requires_grad_()
    s, w = 0.8, 3.0
    var = STD ** 2 + s ** 2
    for c in (0, 1):
        log_law = w * log_density(x, CLASSES[c], var) + (1 - w) * log_density(x, PRIOR, var)
        score = torch.autograd.grad(log_law.sum(), x)[0]
        labels = torch.full((100,), c)
        guided = lesson.guided(exact, w, labels)(x.detach(), torch.full((100, 1), s, dtype=x.dtype))
        assert torch.allclose(guided, x.detach() + s ** 2 * score, atol=1e-9), c


@pytest.mark.parametrize("w", [0.0, 1.0])
def test_exact_guided_sampling_gives_p_x_at_w0_and_p_x_given_c_at_w1(w):
    """w = 1 is plain conditional sampling: each class gets its weights; w = 0 ignores the class:
    both get p(x)'s equal weights. Shares within 0.02 (4 sampling stds at 10000 per class)."""
    torch.manual_seed(0)
    cfg = config()
    x, labels = lesson.guided_samples(exact, w, 10000, ladder(cfg), cfg)
    assert x.shape == (20000, 2) and labels.tolist() == [0] * 10000 + [1] * 10000
    for c in (0, 1):
        shares, off_mode, stds = mode_statistics(x[labels == c], lesson.MODES, STD)
        expected = CLASSES[c] if w == 1.0 else PRIOR
        assert (shares.double() - expected).abs().max() <= 0.02, (c, shares)
        assert off_mode <= 0.001, off_mode
        assert ((stds / STD - 1).abs() <= 0.08).all(), stds  # the churn sampler's own width: +4%


@pytest.mark.parametrize("classes", [CLASSES, torch.tensor([[0.5, 0.3, 0.15, 0.05],
                                                             [0.05, 0.15, 0.3, 0.5]])])
def test_sharpened_weights_match_a_numerical_integral(monkeypatch, classes):
    """The mass of p(x | c)^w p(x)^(1-w) near each mode, summed on a fine grid; each mode keeps std
    sigma_data. The second set of class weights makes p(x) non-uniform, so that its power counts."""
    prior = classes.double().mean(0)
    monkeypatch.setattr(lesson, "WEIGHTS", torch.cat([classes, classes.mean(0, keepdim=True)]))
    offsets = torch.linspace(-0.08, 0.08, 161, dtype=torch.float64)
    grid = torch.cartesian_prod(offsets, offsets)  # (161^2, 2), around a mode
    for c, w in ((0, 2.0), (1, 4.0), (0, 1.0), (1, 0.0), (0, 0.5)):
        masses, stds = [], []
        for mode in lesson.MODES.double():
            law = (w * log_density(mode + grid, classes[c].double(), STD ** 2)
                   + (1 - w) * log_density(mode + grid, prior, STD ** 2)).exp()  # unnormalised
            masses.append(law.sum())
            stds.append(((law[:, None] * grid ** 2).sum(0) / law.sum()).mean().sqrt())
        expected = torch.stack(masses) / sum(masses)
        assert torch.allclose(torch.tensor(lesson.sharpened_weights(c, w)).double(), expected,
                              atol=1e-6), (c, w)
        assert torch.allclose(torch.stack(stds), torch.full_like(expected, STD), rtol=1e-3)


def test_sample_data_draws_each_label_with_its_weights():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, lesson.NULL]).repeat_interleave(20000)
    x = lesson.sample_data(labels, config())
    for c, expected in zip((0, 1, lesson.NULL), (CLASSES[0], CLASSES[1], PRIOR)):
        shares, off_mode, stds = mode_statistics(x[labels == c], lesson.MODES, STD)
        assert (shares.double() - expected).abs().max() <= 0.015, (c, shares)
        assert off_mode < 0.001 and ((stds / STD - 1).abs() <= 0.03).all(), stds


class Recorder(lesson.Denoiser):
    """The lesson's network, keeping the labels it is trained on."""

    def __init__(self):
        super().__init__(2, 16, math.sqrt(1 + STD ** 2), 2)
        self.seen = []

    def forward(self, x, sigma, labels):
        self.seen.append(labels.clone())
        return super().forward(x, sigma, labels)


def test_label_dropout_trains_the_null_class():
    """A share p_uncond of the training labels is NULL, the rest split evenly between the classes,
    and the null class's vector is trained."""
    torch.manual_seed(0)
    denoiser = Recorder()
    start = denoiser.classes.weight.detach().clone()
    lesson.train(denoiser, config("--p_uncond", "0.3", "--nb_epochs", "40"))
    seen = torch.cat(denoiser.seen)  # 40 * 512 labels: a share's sampling std is about 0.003
    assert (seen == lesson.NULL).float().mean().item() == pytest.approx(0.3, abs=0.015)
    assert (seen == 0).float().mean().item() == pytest.approx(0.35, abs=0.015)
    assert (seen == 1).float().mean().item() == pytest.approx(0.35, abs=0.015)
    assert (denoiser.classes.weight[lesson.NULL] - start[lesson.NULL]).abs().max() > 1e-3


def test_the_null_class_learns_the_unconditional_denoiser():
    """After a short training, D(x, sigma, NULL) is much nearer the exact E[x0 | x] than the exact
    class denoisers are, at sigma = 1 where the classes disagree (each points to its heavy side)."""
    torch.manual_seed(0)
    denoiser = lesson.Denoiser(2, 64, math.sqrt(1 + STD ** 2), 2)
    lesson.train(denoiser, config("--nb_epochs", "600"))
    x, sigma = 0.5 * torch.randn(500, 2), torch.ones(500, 1)
    null = torch.full((500,), lesson.NULL)
    with torch.no_grad():
        error = (denoiser(x, sigma, null) - exact(x, sigma, null)).norm(dim=1).mean()
    for c in (0, 1):
        gap = (exact(x, sigma, torch.full((500,), c)) - exact(x, sigma, null)).norm(dim=1).mean()
        assert error < gap / 3, (error, gap)


@pytest.mark.parametrize("value", ["0", "1"])
def test_p_uncond_outside_zero_one_gives_one_line(run, tmp_path, value):
    result = run("guidance_multimodal.py", "--p_uncond", value, "--out", tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: --p_uncond") and "Traceback" not in result.stderr


def test_tiny_run_writes_labels_and_a_draw_of_each_class(run, tmp_path):
    """labels.npy holds the class of each row of samples.npy; data.npy is a fresh draw of p(x | c)
    for those labels, at a --guidance outside the printed list."""
    result = run("guidance_multimodal.py", "--nb_epochs", "5", "--N", "6", "--test_size", "1500",
                 "--exact_size", "64", "--guidance", "3", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    samples, data = np.load(tmp_path / "samples.npy"), np.load(tmp_path / "data.npy")
    labels = np.load(tmp_path / "labels.npy")
    assert samples.shape == data.shape == (3000, 2) and labels.shape == (3000,)
    assert (labels[:1500] == 0).all() and (labels[1500:] == 1).all()
    for c in (0, 1):  # a share's sampling std is at most 0.013
        shares, _, _ = mode_statistics(data[labels == c], lesson.MODES, STD)
        assert (shares.double() - CLASSES[c]).abs().max() <= 0.05, (c, shares)
    assert (tmp_path / "guidance_multimodal.png").stat().st_size > 0
    assert "w 3 class 1 network:" in result.stdout  # the saved w is printed too


def largest_network_gap(stdout):
    line = next(line for line in stdout.splitlines() if line.startswith("largest |network"))
    return float(line.split(":")[1].split()[0])


@pytest.mark.quality
def test_default_run_hits_the_targets_at_w1(run, tmp_path):
    """Default settings, seed 0: per class, shares within 0.03 of its weights, < 1% off-mode, stds
    within 20%, recomputed from samples.npy and labels.npy; the printed network gap <= 0.05."""
    result = run("guidance_multimodal.py", "--seed", "0", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    samples, labels = np.load(tmp_path / "samples.npy"), np.load(tmp_path / "labels.npy")
    for c in (0, 1):
        shares, off_mode, stds = mode_statistics(samples[labels == c], lesson.MODES, STD)
        assert (shares.double() - CLASSES[c]).abs().max() <= 0.03, (c, shares)
        assert off_mode < 0.01, off_mode
        assert ((stds / STD - 1).abs() <= 0.20).all(), stds
    assert largest_network_gap(result.stdout) <= 0.05


@pytest.mark.quality
def test_guided_network_matches_the_exact_guided_sampler_at_w2(run, tmp_path):
    """--guidance 2, seed 1: the saved network samples' shares are within 0.05 of those of the exact
    guided sampler, drawn here (20000 per class)."""
    result = run("guidance_multimodal.py", "--seed", "1", "--guidance", "2", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    samples, labels = np.load(tmp_path / "samples.npy"), np.load(tmp_path / "labels.npy")
    torch.manual_seed(0)
    cfg = config()
    reference, reference_labels = lesson.guided_samples(exact, 2.0, 20000, ladder(cfg), cfg)
    for c in (0, 1):
        shares, _, _ = mode_statistics(samples[labels == c], lesson.MODES, STD)
        expected, _, _ = mode_statistics(reference[reference_labels == c], lesson.MODES, STD)
        assert (shares - expected).abs().max() <= 0.05, (c, shares, expected)
