"""The reinjection lesson: its sigma recursion against an exact denoiser on Gaussian data, its DDPM step, its
denoiser's scalings and sigma-conditioning, its draw of sigma, its loss, and the checks of its flags. The smoke run
on tiny IDX files is in test_mnist.py."""
import math
from argparse import Namespace

import numpy as np
import pytest
import torch

import mnist_reinjection as lesson
from conftest import write_idx
from mnist_UNet import UNet, cosine_schedule
from test_cli import assert_clean_error

CFG = Namespace(sigma_min=0.02, sigma_max=20.0, device=torch.device("cpu"))


LADDER_CFG = Namespace(sigma_min=0.01, sigma_max=40.0)


@pytest.mark.parametrize("kind", ["tan", "geometric"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_each_step_carries_the_variance_the_recursion_predicts(kind, eta):
    """With the exact eps_hat = E[eps | x] = sigma (x - m) / (s^2 + sigma^2) of pixels x0 ~ N(m, s^2), one step
    maps Var(x) to (1 - alpha sigma^2 / (s^2 + sigma^2))^2 Var + beta^2 sigma^2, exactly; the sampled variance must
    follow that recursion at every step (to sampling noise), track s^2 + sigma^2, and end near s^2."""
    torch.manual_seed(0)
    m, s = 0.3, 0.5
    exact = lambda x, sigma: sigma[:, None] * (x - m) / (s ** 2 + sigma[:, None] ** 2)
    sigmas = lesson.noise_ladder(kind, 80, s, LADDER_CFG)
    trajectory, variance = [], 40.0 ** 2
    x = lesson.reinjection_sampler(exact, 40.0 * torch.randn(40_000, 1), sigmas, eta, trajectory)
    for (x_k, sigma_next), sigma in zip(trajectory, sigmas[:-1]):
        alpha, beta = lesson.step_sizes(sigma, sigma_next, eta)
        variance = (1 - alpha * sigma ** 2 / (s ** 2 + sigma ** 2)) ** 2 * variance + (beta * sigma) ** 2
        assert x_k.var().item() == pytest.approx(variance, rel=0.03)
        assert variance == pytest.approx(s ** 2 + sigma_next ** 2, rel=0.2)
    assert abs(x.mean().item() - m) < 0.02
    assert 0.85 < x.std().item() / s < 1.02


@pytest.mark.parametrize("eta, is_posterior", [(1.0, True), (0.5, False), (0.0, False)])
def test_eta_1_is_the_ddpm_posterior_step_and_eta_0_the_ddim_step(eta, is_posterior):
    """For data at one point x0, the exact eps_hat is the noise (x - x0) / sigma. The forward process makes
    x_t = x_s + independent noise, so Cov(x_s, x_t) = sigma_s^2 and Var(x_s) = sigma_s^2: the posterior
    q(x_s | x_t, x0), DDPM's step, has both. eta = 0, DDIM, keeps the noise: x_s - x0 = (sigma_s / sigma_t)(x_t - x0)."""
    torch.manual_seed(0)
    x0, sigma_t, sigma_s = 0.3, 2.0, 1.5
    x_t = x0 + sigma_t * torch.randn(200_000, 1)
    trajectory = []
    lesson.reinjection_sampler(lambda x, sigma: (x - x0) / sigma[:, None], x_t, [sigma_t, sigma_s], eta, trajectory)
    (x_s, level), = trajectory
    assert level == sigma_s and ((x_s - x0) ** 2).mean().item() == pytest.approx(sigma_s ** 2, rel=0.02)
    covariance = ((x_s - x0) * (x_t - x0)).mean().item()
    assert (abs(covariance / sigma_s ** 2 - 1) < 0.02) == is_posterior
    if eta == 0:
        assert torch.allclose(x_s - x0, sigma_s / sigma_t * (x_t - x0), atol=1e-5)


def test_the_ladders():
    """geometric: one factor per step, the tutorial's fixed alpha = 0.05 and beta = 0.218 with N = 270 and eta = 1;
    tan: u = atan(sigma / sigma_data) evenly spaced, like the training draws, from sigma_max to sigma_min."""
    cfg = Namespace(sigma_min=0.02, sigma_max=20.0)
    geometric = torch.tensor(lesson.noise_ladder("geometric", 270, 0.6, cfg))
    ratios = geometric[1:] / geometric[:-1]
    assert len(geometric) == 271 and torch.allclose(ratios, ratios[0])
    alpha, beta = lesson.step_sizes(geometric[0].item(), geometric[1].item(), 1.0)
    assert alpha == pytest.approx(0.05, abs=5e-4) and beta == pytest.approx(0.218, abs=5e-4)
    tan = torch.tensor(lesson.noise_ladder("tan", 50, 0.6, cfg), dtype=torch.float64)
    assert tan[0].item() == pytest.approx(20.0) and tan[-1].item() == pytest.approx(0.02)
    gaps = torch.atan(tan / 0.6).diff()
    assert torch.allclose(gaps, gaps[0]) and (gaps < 0).all()


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_every_step_asks_the_network_once_at_its_noise_level(eta):
    """What the run prints as the cost: N + 1 evaluations (N steps, then the final jump), at the ladder's sigmas,
    whatever eta is: the comparison of eta with 0 is at equal cost."""
    sigmas, asked = lesson.noise_ladder("tan", 30, 0.6, CFG), []
    eps_hat = lambda x, sigma: asked.append(sigma[0].item()) or torch.zeros_like(x)
    lesson.reinjection_sampler(eps_hat, torch.zeros(2, 1), sigmas, eta)
    assert asked == pytest.approx(sigmas, rel=1e-6)


class PointUNet(torch.nn.Module):
    """The exact UNet output F* for data at one image x0, behind the lesson's input scaling and sigma encoding: the
    F with c_skip x + c_out F = x0 (Karras et al. 2022, eq. 7), plus `error` everywhere. It records what it is told."""

    def __init__(self, x0, sigma_data, error=0.0):
        super().__init__()
        self.x0, self.sigma_data, self.error, self.seen = x0, sigma_data, error, []

    def forward(self, x_scaled, level):
        self.seen.append((x_scaled, level))
        sigma = torch.exp(math.log(CFG.sigma_min) + level / 1000 * math.log(CFG.sigma_max / CFG.sigma_min))
        s, sd = sigma.reshape(-1, 1, 1, 1), self.sigma_data
        x = x_scaled * (s ** 2 + sd ** 2).sqrt()
        return (self.x0 - sd ** 2 / (s ** 2 + sd ** 2) * x) / (s * sd / (s ** 2 + sd ** 2).sqrt()) + self.error


@pytest.mark.parametrize("u", [0.0, 0.3, 0.5, 1.0])
def test_an_error_of_the_unet_costs_its_square_at_every_sigma(monkeypatch, u):
    """The weight (sigma^2 + sigma_data^2) / sigma_data^2 turns |eps - eps_hat|^2 into |F - F*|^2: an error e of the
    UNet's output costs e^2 at every sigma, where the plain |eps - eps_hat|^2 would charge e^2 sigma_data^2 /
    (sigma^2 + sigma_data^2), 0.0009 e^2 at sigma = 20. Every sigma of the batch is the one a uniform u gives."""
    sigma_data = 0.6
    monkeypatch.setattr(torch, "rand", lambda n: torch.full((n,), u))
    torch.manual_seed(0)
    x0 = torch.linspace(-0.9, 0.9, 28 * 28).reshape(1, 1, 28, 28)
    batch = x0.expand(64, -1, -1, -1)
    assert lesson.reinjection_loss(PointUNet(x0, sigma_data), batch, sigma_data, CFG) < 1e-8
    loss = lesson.reinjection_loss(PointUNet(x0, sigma_data, error=0.3), batch, sigma_data, CFG)
    assert loss.item() == pytest.approx(0.09, rel=1e-4)


def test_sigma_is_drawn_like_lesson_10s_cosine_schedule():
    """Lesson 10 draws t uniformly; its noise level sigma_t = sqrt((1 - abar_t) / abar_t) is then about tan(pi t / 2T).
    With sigma_data = 1, the lesson's draw must give the same histogram of log sigma over [0.02, 20], bin by bin;
    for any sigma_data, the closed form. A log-uniform draw misses the cosine's histogram by 0.05 in a bin."""
    torch.manual_seed(0)
    abar = cosine_schedule(1000).double()
    edges = torch.linspace(math.log(0.02), math.log(20.0), 13, dtype=torch.float64)
    sigma_t = ((1 - abar) / abar).sqrt()
    cosine = torch.histogram(sigma_t[(sigma_t > 0.02) & (sigma_t < 20)].log(), edges).hist
    drawn = torch.histogram(lesson.draw_sigma(400_000, 1.0, CFG).double().log(), edges).hist
    assert (cosine / cosine.sum() - drawn / drawn.sum()).abs().max() < 0.01
    for sigma_data in (1.0, 0.5):  # in closed form: P(sigma < s) grows like atan(s / sigma_data)
        drawn = lesson.draw_sigma(400_000, sigma_data, CFG).double()
        assert drawn.min() >= 0.02 and drawn.max() <= 20.0
        cdf = torch.atan(edges.exp() / sigma_data)
        expected = (cdf[1:] - cdf[:-1]) / (cdf[-1] - cdf[0])
        assert (torch.histogram(drawn.log(), edges).hist / len(drawn) - expected).abs().max() < 0.003


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_generate_ends_on_the_data_after_its_final_jump(eta):
    """With the exact denoiser of one image, the sampler stops with about sigma_min of noise left (0.02 here, 0.01 in
    [0, 1] units); the final jump x - sigma eps_hat must remove it exactly, add the mean back and map to [0, 1]."""
    torch.manual_seed(0)
    x0 = torch.linspace(-0.9, 0.9, 28 * 28).reshape(1, 1, 28, 28)
    sigmas = lesson.noise_ladder("tan", 40, 0.6, CFG)
    digits = lesson.generate(PointUNet(x0, 0.6), 20.0 * torch.randn(6, 1, 28, 28), sigmas, eta, 0.6, -0.1, False, CFG)
    assert digits.shape == (6, 28, 28)
    assert (digits - (x0[0, 0] - 0.1 + 1) / 2).abs().max() < 1e-4


def test_centred_digits_reach_the_unet_at_unit_scale(tmp_path):
    """The docstring's claim: centred, and with sigma_data their std, the digits plus noise reach the UNet as
    c_in x with mean square 1 at every sigma. Here 30% of the pixels are white (mean -0.4, std 0.92): uncentred, or
    with MNIST's sigma_data 0.5 written in, the input would be off at small sigma."""
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", 255 * (rng.random((50, 28, 28)) < 0.3))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(50) % 10)
    torch.manual_seed(0)
    cfg = Namespace(**vars(CFG), data=tmp_path, mirror="", n_train=None)
    images, mean, sigma_data = lesson.centred_mnist(cfg)
    assert abs(images.mean().item()) < 1e-5 and mean == pytest.approx(-0.4, abs=0.02)
    assert sigma_data == pytest.approx(0.92, abs=0.02)
    for sigma in (0.02, 1.0, 20.0):
        unet = PointUNet(images[:1], sigma_data)
        lesson.predict_noise(unet, images + sigma * torch.randn_like(images), torch.full((len(images),), sigma),
                             sigma_data, cfg)
        assert (unet.seen[0][0] ** 2).mean().item() == pytest.approx(1.0, rel=0.03), sigma


def test_the_unet_is_told_sigma():
    """At the same scaled input c_in x, the UNet's output F must change with sigma: a predict_noise that passes a
    constant in place of log sigma would leave it unchanged (c_skip and c_out alone change with sigma)."""
    torch.manual_seed(0)
    model, u, sigma_data = UNet(8), torch.randn(2, 1, 28, 28), 0.6
    outputs = []
    for sigma in (0.05, 5.0):
        s = torch.full((2,), sigma)
        x = u * math.sqrt(sigma ** 2 + sigma_data ** 2)  # so that the UNet sees u
        eps = lesson.predict_noise(model, x, s, sigma_data, CFG)
        c_skip, c_out = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2), sigma * sigma_data / math.hypot(sigma, sigma_data)
        outputs.append((x - sigma * eps - c_skip * x) / c_out)  # F, recovered from eps_hat
    assert (outputs[0] - outputs[1]).abs().mean() > 1e-3


def test_the_unet_is_as_wide_at_7x7_as_channels_mid(tmp_path):
    """--channels_mid sets the width of the UNet's 7x7 blocks, where a digit's overall shape is settled; the
    28x28 and 14x14 blocks keep --channels and twice that. One short epoch of the lesson's own training."""
    torch.manual_seed(0)
    cfg = Namespace(**vars(CFG), channels=8, channels_mid=24, nb_epochs=1, batch_size=4, lr=1e-3, ema_decay=0.9,
                    seed=0, resume=False, out=tmp_path)
    ema = lesson.train(torch.rand(8, 1, 28, 28) * 2 - 1, 0.6, False, cfg)
    widths = [block.conv2.out_channels for block in (ema.down1, ema.down2, ema.mid1, ema.mid2, ema.up2, ema.up1)]
    assert widths == [8, 16, 24, 24, 16, 8]
    assert ema(torch.randn(2, 1, 28, 28), torch.tensor([0.0, 500.0])).shape == (2, 1, 28, 28)


def test_the_ema_gives_step_k_a_share_growing_like_k_squared():
    """Decays d_k = (1 + k) / (4 + k) leave step k's weights a share (1 - d_k) prod_{j > k} d_j of the average
    after S steps, which telescopes to 3 (k + 2)(k + 3) / ((S + 1)(S + 2)(S + 3)): on average the weights of the
    last quarter of the run. Past the step where it would exceed it, the decay is --ema_decay."""
    S = 1000
    decays = np.array([lesson.ema_decay_at(k, 0.9998) for k in range(S)])
    shares = (1 - decays) * np.append(np.cumprod(decays[::-1])[::-1][1:], 1.0)  # (S,)
    k = np.arange(S)
    assert shares == pytest.approx(3 * (k + 2) * (k + 3) / ((S + 1) * (S + 2) * (S + 3)), rel=1e-9)
    assert S - (shares * k).sum() / shares.sum() == pytest.approx(S / 4, rel=0.01)
    assert lesson.ema_decay_at(20_000, 0.9998) == 0.9998


def test_training_returns_the_average_of_its_weights_that_the_ema_decays_give(tmp_path, monkeypatch):
    """The EMA that train() returns is sum_k share_k w_k + (what is left) w_init over the weights w_k after each
    of its optimisation steps, with the shares of the decays lesson.ema_decay_at gives."""
    torch.manual_seed(0)
    cfg = Namespace(**vars(CFG), channels=8, channels_mid=8, nb_epochs=1, batch_size=2, lr=1.0, ema_decay=0.9998,
                    seed=0, resume=False, out=tmp_path)
    seen, loss = [], lesson.reinjection_loss  # the weights before each step: w_init, w_0, w_1, ...
    flat = lambda model: torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    monkeypatch.setattr(lesson, "reinjection_loss", lambda model, *args: (seen.append(flat(model)), loss(model, *args))[1])
    ema = lesson.train(torch.rand(12, 1, 28, 28) * 2 - 1, 0.6, False, cfg)
    final = lesson.UNet(8, 8)
    final.load_state_dict(torch.load(tmp_path / "model.pt")["model"])
    weights = seen + [flat(final)]  # w_init, w_0 .. w_5
    expected = weights[0]
    for step, w in enumerate(weights[1:]):
        decay = lesson.ema_decay_at(step, cfg.ema_decay)
        expected = decay * expected + (1 - decay) * w
    got = flat(ema)
    assert (weights[-1] - weights[0]).abs().max() > 0.05  # the steps moved the weights
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.02, 0.5, 20.0])
def test_bfloat16_moves_eps_hat_by_a_rounding_error_and_keeps_it_float32(sigma):
    """Where the chip has it, the lesson runs the UNet under torch.autocast in bfloat16 (8 bits of mantissa, steps of
    0.4%). eps_hat must come out float32, so that the sampler's x keeps full precision, and within 2% of float32's;
    that it differs at all shows that the convolutions did run in bfloat16."""
    torch.manual_seed(0)
    model, sigmas = UNet(8), torch.full((4,), sigma)
    x = torch.rand(4, 1, 28, 28) * 2 - 1 + sigma * torch.randn(4, 1, 28, 28)
    reference = lesson.predict_noise(model, x, sigmas, 0.6, CFG)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = lesson.predict_noise(model, x, sigmas, 0.6, CFG)
    assert fast.dtype == torch.float32
    assert 0 < ((fast - reference).norm() / reference.norm()).item() < 0.02


@pytest.mark.parametrize("args, words", [(["--eta", "0"], ["--eta"]), (["--eta", "1.5"], ["--eta"]),
                                         (["--ladder", "cosine"], ["--ladder", "cosine"]),
                                         (["--n_compared", "1"], ["--n_compared"])])
def test_bad_sampler_settings_are_refused(run_here, tmp_path, args, words):
    assert_clean_error(run_here("mnist_reinjection.py", *args, "--out", tmp_path), *words)
