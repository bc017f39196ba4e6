"""The naive-diffusion lessons against closed forms: the Sigmas ladder, the scalings, and the samplers driven by
the exact denoiser of the data (no training involved), so that any error in the sampler shows."""
import math

import pytest
import torch

import simple_1Diffusion
import simple_2Diffusion
import simple_multimodal
from ground_truth import assert_modes, mixture_denoiser, mode_statistics


def test_karras_ladder_matches_its_formula():
    Sigmas = simple_1Diffusion.karras_sigmas(0.002, 20.0, 41, 7.0)
    assert Sigmas.shape == (42,)
    assert Sigmas[0].item() == pytest.approx(20.0) and Sigmas[40].item() == pytest.approx(0.002)
    assert Sigmas[-1].item() == 0 and bool((Sigmas[1:] < Sigmas[:-1]).all())
    middle = ((20.0 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7  # i = (N-1)/2: halfway in sigma^(1/rho)
    assert Sigmas[20].item() == pytest.approx(middle, rel=1e-5)
    assert torch.allclose(simple_1Diffusion.karras_sigmas(1.0, 5.0, 5, 1.0), torch.tensor([5.0, 4, 3, 2, 1, 0]))


def test_denoiser_scalings_follow_karras_table_1():
    torch.manual_seed(0)
    denoiser = simple_1Diffusion.Denoiser(16, sigma_rms=2.0)
    torch.nn.init.zeros_(denoiser.net[-1].weight)
    torch.nn.init.zeros_(denoiser.net[-1].bias)  # network output F = 0 leaves D = c_skip x
    x, sigma = torch.randn(8, 1), torch.full((8, 1), 2.0)
    assert torch.allclose(denoiser(x, sigma), x * 4 / (4 + 4))  # c_skip = rms^2 / (sigma^2 + rms^2)


def test_denoiser_depends_on_sigma():
    """A network that ignores the noise level cannot denoise: its output must change with sigma alone."""
    torch.manual_seed(0)
    denoiser = simple_1Diffusion.Denoiser(16, sigma_rms=1.0)
    x = torch.randn(8, 1)
    inner = [denoiser.net(torch.cat([x, torch.full((8, 1), s).log() / 4], 1)) for s in (0.1, 1.0)]
    assert not torch.allclose(*inner)


@pytest.mark.parametrize("lesson, mu", [(simple_1Diffusion, [1.0]), (simple_2Diffusion, [-1.0, 1.0])])
def test_heun_sampler_with_the_exact_denoiser_reproduces_the_gaussian(lesson, mu):
    torch.manual_seed(0)
    Sigmas = lesson.karras_sigmas(0.002, 20.0, 40, 7.0)
    noise = 20.0 * torch.randn(40000, len(mu))
    x = lesson.sample(mixture_denoiser([mu], 0.01), Sigmas, noise)[-1]
    mean_error = (x.mean(0) - torch.tensor(mu)).abs() / 0.01
    std_ratio = x.std(0) / 0.01
    assert (mean_error < 0.15).all(), mean_error  # the prior N(0, 20^2) misses mu by mu / sigma_max = 0.05 std
    assert ((std_ratio > 0.97) & (std_ratio < 1.03)).all(), std_ratio


@pytest.mark.parametrize("gamma", [0.0, 0.41])
def test_churned_sampler_with_the_exact_denoiser_reproduces_the_four_modes(gamma):
    torch.manual_seed(0)
    Sigmas = simple_multimodal.karras_sigmas(0.002, 20.0, 40, 7.0)
    exact = mixture_denoiser(simple_multimodal.MODES, 0.01)
    x = simple_multimodal.sample(exact, Sigmas, 20.0 * torch.randn(20000, 2), gamma)[-1]
    assert_modes(x, simple_multimodal.MODES, 0.01, share_tolerance=0.015, max_off_mode=0.001, std_tolerance=0.08)


def test_mode_report_agrees_with_the_independent_statistics():
    torch.manual_seed(0)
    x = simple_multimodal.MODES[torch.randint(0, 4, (5000,))] + 0.01 * torch.randn(5000, 2)
    x[:50] = 0.0  # 1% of the points between the modes
    shares, off_mode, stds = simple_multimodal.mode_report(x, 0.01)
    expected_shares, expected_off, expected_stds = mode_statistics(x, simple_multimodal.MODES, 0.01)
    assert shares == pytest.approx(expected_shares.tolist()) and off_mode == pytest.approx(expected_off)
    assert stds == pytest.approx(expected_stds.tolist())
    assert off_mode == pytest.approx(0.01)


def test_mixture_denoiser_is_the_posterior_mean():
    """Check the ground truth itself: for one Gaussian, E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu)."""
    x = torch.linspace(-3, 3, 7)[:, None]
    expected = 1 + 0.25 / (0.25 + 4) * (x - 1)
    assert torch.allclose(mixture_denoiser([[1.0]], 0.5)(x, 2.0), expected)
    assert math.isclose(mixture_denoiser([[-1.0], [1.0]], 0.1)(torch.zeros(1, 1), 1.0).item(), 0.0, abs_tol=1e-7)
