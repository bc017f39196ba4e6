"""The DDPM lessons against closed forms (Ho et al. 2020): the forward marginal, the posterior, the schedule's end,
and both samplers driven by the exact noise predictor eps* of the Gaussian mixture, with no training involved."""
import math

import pytest
import torch

import detailed_DDPM
import multimodal_DDPM
import simple_DDPM
import single_DDPM
from ground_truth import assert_modes, gaussian_step_posterior, mixture_denoiser


def exact_eps(means, std, alpha_bar):
    """eps*(x_t, t) = -sqrt(1 - abar_t) grad log p_t(x_t). With y = x_t / sqrt(abar_t) = x0 + sigma_t eps and
    sigma_t^2 = (1 - abar_t) / abar_t, this equals (y - E[x0 | y]) / sigma_t: the mixture denoiser gives it."""
    denoiser = mixture_denoiser(means, std)

    def eps_model(x, t):
        a = alpha_bar[t].reshape(-1, 1)
        sigma = ((1 - a) / a).sqrt()
        y = x / a.sqrt()
        return (y - denoiser(y, sigma)) / sigma

    return eps_model


def test_closed_form_marginal_matches_iterating_one_step_at_a_time():
    torch.manual_seed(0)
    betas, alphas, alpha_bar = single_DDPM.noise_schedule(200, 0.01, 30.0)
    x0 = 1.0 + 0.3 * torch.randn(200000)
    x = x0.clone()
    for t in range(200):  # q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t)
        x = (1 - betas[t]).sqrt() * x + betas[t].sqrt() * torch.randn_like(x)
        if t in (0, 50, 120, 199):  # eq. 4: N(sqrt(abar_t) mu, abar_t 0.3^2 + 1 - abar_t)
            a = alpha_bar[t].item()
            assert x.mean().item() == pytest.approx(math.sqrt(a), abs=0.01)
            assert x.std().item() == pytest.approx(math.sqrt(a * 0.09 + 1 - a), rel=0.01)
    assert torch.allclose(alpha_bar, torch.cumprod(alphas, 0), rtol=1e-4)


def test_schedule_ends_at_pure_noise():
    for lesson in (single_DDPM, simple_DDPM):
        _, _, alpha_bar = lesson.noise_schedule(1000, 0.001, 100.0)
        assert alpha_bar[-1].item() < 2e-4  # x_T ~ N(sqrt(abar_T) x0, 1 - abar_T) is N(0, 1) to 1%
        assert alpha_bar[0].item() > 1 - 2e-6  # the first step adds noise of std 0.001, far below sigma_data
    assert torch.allclose(multimodal_DDPM.noise_schedule(1000, 0.001, 100.0), alpha_bar)
    lesson = multimodal_DDPM  # its defaults: abar_T = 1 / (1 + 20^2), so x_T is N(0, I) to 0.05 in mean
    assert lesson.noise_schedule(lesson.T, lesson.sigma_min, lesson.sigma_max)[-1].item() < 2.5e-3


def test_posterior_coefficients_match_bayes_rule():
    """q(x_{t-1} | x_t, x0) from Bayes for Gaussians: precision 1/abar-variance + alpha_t / beta_t, and the
    sampler's mean (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t), with eps from x0, equals its mean."""
    betas, alphas, alpha_bar = (v.double() for v in single_DDPM.noise_schedule(100, 0.01, 30.0))
    x0, x_t = torch.tensor(0.7, dtype=torch.float64), torch.tensor(-0.4, dtype=torch.float64)
    for t in (1, 10, 60, 99):
        mean, var = gaussian_step_posterior(alpha_bar[t - 1].sqrt() * x0, 1 - alpha_bar[t - 1], x_t, betas[t])
        eps = (x_t - alpha_bar[t].sqrt() * x0) / (1 - alpha_bar[t]).sqrt()
        sampler_mean = (x_t - betas[t] / (1 - alpha_bar[t]).sqrt() * eps) / alphas[t].sqrt()  # eq. 11
        assert sampler_mean.item() == pytest.approx(mean.item(), rel=1e-3)  # float32 schedule
        assert ((1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * betas[t]).item() == pytest.approx(var.item(), rel=1e-3)


def test_noise_is_scaled_by_sqrt_of_the_posterior_variance_and_absent_at_the_last_step():
    """A zero eps-model makes each step x <- x / sqrt(alpha_t) + sqrt(beta~_t) z: the spread added is measurable."""
    torch.manual_seed(0)
    betas, alphas, alpha_bar = single_DDPM.noise_schedule(3, 0.5, 2.0)
    zero = lambda x, t: torch.zeros_like(x)
    trajectory = single_DDPM.sample(zero, betas, alphas, alpha_bar, torch.zeros(200000, 1))
    posterior_var = (1 - alpha_bar[1]) / (1 - alpha_bar[2]) * betas[2]
    assert trajectory[1].std().item() == pytest.approx(posterior_var.sqrt().item(), rel=0.01)  # not beta~_t itself
    last_in = trajectory[-2]
    assert torch.allclose(trajectory[-1], last_in / alphas[0].sqrt())  # t = 1: mean only, no noise


@pytest.mark.parametrize("lesson, T, tolerance", [(single_DDPM, 1000, 0.03), (simple_DDPM, 100, 0.06)])
def test_ancestral_sampler_with_exact_eps_reproduces_the_gaussian(lesson, T, tolerance):
    torch.manual_seed(0)
    betas, alphas, alpha_bar = lesson.noise_schedule(T, 0.001, 100.0)
    eps = exact_eps([[1.0]], 0.01, alpha_bar)
    if lesson is simple_DDPM:  # its networks take one shared integer t
        shared = eps
        eps = lambda x, t: shared(x, torch.full((len(x),), t))
    x = lesson.sample(eps, betas, alphas, alpha_bar, torch.randn(20000, 1))[-1]
    assert abs(x.mean().item() - 1.0) < 0.1 * 0.01
    assert x.std().item() / 0.01 == pytest.approx(1.0, abs=tolerance)  # coarse steps lose some variance


@pytest.mark.parametrize("sampler, steps", [("ddpm", 500), ("ddpm", 100), ("ddim", 50), ("ddim", 500)])
def test_both_samplers_with_exact_eps_reproduce_the_four_modes(sampler, steps):
    """On the lesson's own schedule (T = 500, sigma from 0.002 to 20)."""
    torch.manual_seed(0)
    lesson = multimodal_DDPM
    alpha_bar = lesson.noise_schedule(lesson.T, lesson.sigma_min, lesson.sigma_max)
    eps = exact_eps(multimodal_DDPM.MODES, 0.01, alpha_bar)
    x = multimodal_DDPM.sample(eps, alpha_bar, torch.randn(8000, 2), sampler, steps)[-1]
    assert_modes(x, multimodal_DDPM.MODES, 0.01, share_tolerance=0.02, max_off_mode=0.002, std_tolerance=0.1)


def test_with_exact_eps_ddim_in_50_steps_is_within_the_ratio_target_of_ancestral_in_all():
    """The lesson's target for its curve (DDIM at 50 steps within 1.5x of ancestral at T on mode_error) holds for
    the exact eps* on 40,000 samples, so what a trained network misses is its own error; 10 steps do miss it."""
    torch.manual_seed(0)
    lesson = multimodal_DDPM
    alpha_bar = lesson.noise_schedule(lesson.T, lesson.sigma_min, lesson.sigma_max)
    eps, noise = exact_eps(lesson.MODES, 0.01, alpha_bar), torch.randn(40000, 2)
    error = {(sampler, steps): lesson.mode_error(lesson.sample(eps, alpha_bar, noise, sampler, steps)[-1], 0.01)
             for sampler, steps in [("ddpm", lesson.T), ("ddim", 50), ("ddim", 10)]}
    assert error["ddim", 50] <= 1.5 * error["ddpm", lesson.T], error
    assert error["ddim", 10] > 1.5 * error["ddpm", lesson.T], error


ALPHA_BAR = torch.linspace(0.999, 0.001, 1000)


@pytest.mark.parametrize("model, fixed_part", [
    (single_DDPM.EpsModel(1, 16, 1000), lambda x, t: 0),
    (multimodal_DDPM.EpsModel(1, 16, ALPHA_BAR, 3), lambda x, t: (1 - ALPHA_BAR[t, None]).sqrt() * x)])
def test_shared_networks_depend_on_t(model, fixed_part):
    """The learned part must see t; multimodal_DDPM's fixed linear term sqrt(1 - abar_t) x_t depends on t by itself."""
    torch.manual_seed(0)
    x = torch.randn(8, 1)
    learned = [model(x, t) - fixed_part(x, t) for t in (torch.full((8,), 10), torch.full((8,), 900))]
    assert not torch.allclose(*learned)


@pytest.mark.parametrize("step", [0, 250, 500, 750, 999])
def test_multimodal_network_starts_from_the_best_linear_guess(step):
    """With its MLP's output at zero, eps_theta(x_t, t) is E[eps | x_t] for unit-variance Gaussian data: what is left
    of eps is uncorrelated with x_t. (1 - abar) in place of its square root misses by 0.03 at t = 0, 0.2 at t = 500."""
    torch.manual_seed(0)
    model = multimodal_DDPM.EpsModel(2, 16, ALPHA_BAR, 3)
    torch.nn.init.zeros_(model.output.weight), torch.nn.init.zeros_(model.output.bias)
    t = torch.full((100000,), step)
    x0, eps = torch.randn(100000, 2), torch.randn(100000, 2)
    x = ALPHA_BAR[t, None].sqrt() * x0 + (1 - ALPHA_BAR[t, None]).sqrt() * eps  # eq. 4
    with torch.no_grad():
        residual = eps - model(x, t)
    assert (residual * x).mean().abs().item() < 0.01  # sampling error about 0.002


def test_wasserstein_to_gaussian_of_detailed_DDPM():
    torch.manual_seed(0)
    x = torch.randn(20000)
    assert detailed_DDPM.wasserstein_to_gaussian(x, 0.0, 1.0) < 0.02
    assert detailed_DDPM.wasserstein_to_gaussian(x + 0.5, 0.0, 1.0) == pytest.approx(0.5, abs=0.02)  # a shift
    assert detailed_DDPM.wasserstein_to_gaussian(2 * x, 0.0, 1.0) == pytest.approx(2 / math.sqrt(2 * math.pi), abs=0.02)
