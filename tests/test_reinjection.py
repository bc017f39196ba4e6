"""The reinjection lesson: its sigma recursion against an exact denoiser on Gaussian data, its denoiser's shapes,
and the checks of its flags. The smoke run on tiny IDX files is in test_mnist.py."""
import math
from argparse import Namespace

import pytest
import torch

import mnist_reinjection as lesson
from mnist_UNet import UNet, cosine_schedule
from test_cli import assert_clean_error


@pytest.mark.parametrize("alpha, beta", [(0.15, 0.0), (0.15, 0.1), (0.3, 0.2)])
def test_sigma_recursion_tracks_the_noise_left(alpha, beta):
    """With the exact eps_hat = E[eps | x] = sigma (x - m) / (s^2 + sigma^2) of pixels x0 ~ N(m, s^2), the noise
    left in x must follow sigma_k = sigma_max ((1 - alpha)^2 + beta^2)^(k/2): std(x_k) = sqrt(s^2 + sigma_k^2).
    Bayes shrinks each step a little (Var drops by alpha^2 s^2 sigma^2 / (s^2 + sigma^2)), so the end is a few
    percent narrow: 4% for alpha = 0.15, 8% for alpha = 0.3, measured on the exact recursion."""
    torch.manual_seed(0)
    m, s, sigma_max = 0.3, 0.5, 40.0
    exact = lambda x, sigma: sigma[:, None] * (x - m) / (s ** 2 + sigma[:, None] ** 2)
    x = sigma_max * torch.randn(20_000, 1)
    rho = math.sqrt((1 - alpha) ** 2 + beta ** 2)
    for k, (x, sigma) in enumerate(lesson.reinjection_sampler(exact, x, alpha, beta, sigma_max, 0.01), start=1):
        assert sigma == pytest.approx(sigma_max * rho ** k)  # geometric
        assert x.std().item() == pytest.approx(math.sqrt(s ** 2 + sigma ** 2), rel=0.1)
    assert sigma <= 0.01 < sigma / rho  # it stops at the first sigma below sigma_min
    assert abs(x.mean().item() - m) < 0.02
    assert 0.88 < x.std().item() / s < 1.0


@pytest.mark.parametrize("alpha, beta, is_posterior", [(0.15, math.sqrt(0.15 * 0.85), True), (0.15, 0.3, False),
                                                       (0.15, 0.0, False), (lesson.alpha, lesson.beta, True)])
def test_beta_sqrt_alpha_one_minus_alpha_is_the_ddpm_posterior_step(alpha, beta, is_posterior):
    """For data at one point x0, the exact eps_hat is the noise (x - x0) / sigma. The forward process makes
    x_t = x_s + independent noise, so Cov(x_s, x_t) = sigma_s^2; one step of the sampler gives (1 - alpha) sigma_t^2.
    They agree only when sigma_s^2 = (1 - alpha) sigma_t^2, i.e. beta^2 = alpha (1 - alpha): that step is
    q(x_s | x_t, x0_hat), DDPM's ancestral step (and beta = 0 is DDIM's). The lesson's defaults are such a step."""
    torch.manual_seed(0)
    x0, sigma_t = 0.3, 2.0
    x_t = x0 + sigma_t * torch.randn(200_000, 1)
    x_s, sigma_s = next(lesson.reinjection_sampler(lambda x, sigma: (x - x0) / sigma[:, None], x_t, alpha, beta,
                                                   sigma_t, 0.01))
    covariance = ((x_s - x0) * (x_t - x0)).mean().item()
    assert covariance == pytest.approx((1 - alpha) * sigma_t ** 2, rel=0.02)  # what the step does
    assert (abs(covariance / sigma_s ** 2 - 1) < 0.02) == is_posterior  # what the forward process needs


class PointDenoiser(torch.nn.Module):
    """The exact UNet output F* for data at one image x0, behind the lesson's input scaling and sigma encoding: the
    F with c_skip x + c_out F = x0 (Karras et al. 2022, eq. 7), plus `error` everywhere."""

    def __init__(self, x0, cfg, error=0.0):
        super().__init__()
        self.x0, self.cfg, self.error = x0, cfg, error

    def forward(self, x_scaled, level):
        log_range = math.log(self.cfg.sigma_max / self.cfg.sigma_min)
        sigma = torch.exp(math.log(self.cfg.sigma_min) + level / 1000 * log_range).reshape(-1, 1, 1, 1)
        x = x_scaled * (sigma ** 2 + self.cfg.sigma_data ** 2).sqrt()
        s_data = self.cfg.sigma_data
        c_skip, c_out = s_data ** 2 / (sigma ** 2 + s_data ** 2), sigma * s_data / (sigma ** 2 + s_data ** 2).sqrt()
        return (self.x0 - c_skip * x) / c_out + self.error


def cosine_weight(sigma, sigma_data):
    """w = 2 sigma sigma_data / (sigma^2 + sigma_data^2), the weight the lesson's docstring gives."""
    return 2 * sigma * sigma_data / (sigma ** 2 + sigma_data ** 2)


@pytest.mark.parametrize("u", [0.0, 0.3, 0.5, 1.0])
def test_an_error_of_the_unet_costs_its_square_times_w(monkeypatch, u):
    """An error e in F costs w(sigma) e^2: the factor (sigma^2 + sigma_data^2) / sigma_data^2 undoes c_out^2 /
    sigma^2 and w does the rest. Plain |eps - eps_hat|^2 would charge e^2 sigma_data^2 / (sigma^2 + sigma_data^2),
    0.0006 e^2 at sigma 20. sigma_data is 0.5 here, so that a weight written for sigma_data = 1 fails too; every
    sigma of the batch is the one that a uniform draw u gives."""
    cfg = Namespace(sigma_min=0.02, sigma_max=20.0, sigma_data=0.5, device=torch.device("cpu"))
    sigma = cfg.sigma_min * (cfg.sigma_max / cfg.sigma_min) ** u
    monkeypatch.setattr(torch, "rand", lambda n: torch.full((n,), u))
    torch.manual_seed(0)
    x0 = torch.linspace(-0.9, 0.9, 32 * 32).reshape(1, 1, 32, 32)
    assert lesson.reinjection_loss(PointDenoiser(x0, cfg), x0.expand(64, -1, -1, -1), cfg) < 1e-8
    loss = lesson.reinjection_loss(PointDenoiser(x0, cfg, error=0.3), x0.expand(64, -1, -1, -1), cfg)
    assert loss.item() == pytest.approx(0.09 * cosine_weight(sigma, cfg.sigma_data), rel=1e-4)


def test_w_turns_the_log_uniform_draw_into_lesson_10s_cosine_schedule():
    """Lesson 10 draws t uniformly; its noise level sigma_t = sqrt((1 - abar_t) / abar_t) then has, per unit of
    log sigma, the density ~ sigma / (1 + sigma^2) (abar = cos^2(pi u / 2) gives sigma = tan(pi u / 2)). A log-uniform
    draw weighted by w with sigma_data = 1 must match it, bin by bin, over [0.02, 20]; w(sigma; sigma_data) is
    w(sigma / sigma_data; 1), so the lesson's 0.5 is the same curve at half the sigma."""
    abar = cosine_schedule(1000).double()
    edges = torch.linspace(math.log(0.02), math.log(20.0), 13, dtype=torch.float64)
    cosine = torch.histogram(0.5 * ((1 - abar) / abar).log(), edges).hist  # steps per bin of log sigma_t
    centres = ((edges[1:] + edges[:-1]) / 2).exp()
    weighted = cosine_weight(centres, 1.0)  # the log-uniform draw has the same mass in every bin
    assert (cosine / cosine.sum() - weighted / weighted.sum()).abs().max() < 0.01


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_generate_ends_on_the_data_after_its_final_denoising_jump(beta):
    """With the exact denoiser of one image, the sampler stops with about sigma_min of noise left (0.02 here, 0.01
    in [0, 1] units); the final jump x - sigma eps_hat must remove it exactly, crop 32x32 to 28x28 and map to [0, 1]."""
    torch.manual_seed(0)
    cfg = Namespace(sigma_min=0.02, sigma_max=20.0, sigma_data=1.0, alpha=0.15)
    x0 = torch.linspace(-0.9, 0.9, 32 * 32).reshape(1, 1, 32, 32)
    digits = lesson.generate(PointDenoiser(x0, cfg), cfg.sigma_max * torch.randn(6, 1, 32, 32), beta, cfg)
    assert digits.shape == (6, 28, 28)
    assert (digits - (x0[0, 0, 2:30, 2:30] + 1) / 2).abs().max() < 1e-4


def test_denoiser_sees_unit_scale_and_sigma():
    cfg = Namespace(sigma_min=0.01, sigma_max=40.0, sigma_data=1.0)
    model = UNet(8)
    x = torch.randn(2, 1, 32, 32)
    small, large = (lesson.predict_noise(model, x, torch.full((2,), sigma), cfg) for sigma in (0.05, 20.0))
    assert small.shape == x.shape
    assert (small - large).abs().mean() > 1e-3  # the network is told sigma


@pytest.mark.parametrize("sigma", [0.02, 0.5, 20.0])
def test_bfloat16_moves_eps_hat_by_a_rounding_error_and_keeps_it_float32(sigma):
    """Where the chip has it, the lesson runs the UNet under torch.autocast in bfloat16 (8 bits of mantissa, steps of
    0.4%). eps_hat must come out float32, so that the sampler's x keeps full precision, and within 2% of float32's;
    that it differs at all shows that the convolutions did run in bfloat16."""
    torch.manual_seed(0)
    cfg = Namespace(sigma_min=0.02, sigma_max=20.0, sigma_data=0.5)
    model, sigmas = UNet(8), torch.full((4,), sigma)
    x = torch.rand(4, 1, 32, 32) * 2 - 1 + sigma * torch.randn(4, 1, 32, 32)
    reference = lesson.predict_noise(model, x, sigmas, cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = lesson.predict_noise(model, x, sigmas, cfg)
    assert fast.dtype == torch.float32
    assert 0 < ((fast - reference).norm() / reference.norm()).item() < 0.02


@pytest.mark.parametrize("args, words", [(["--alpha", "0.05", "--beta", "0.5"], ["sigma never"]),
                                         (["--beta", "0"], ["--beta must be positive"])])
def test_bad_sampler_settings_are_refused(run, tmp_path, args, words):
    assert_clean_error(run("mnist_reinjection.py", *args, "--out", tmp_path), *words)
