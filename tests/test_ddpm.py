"""The DDPM lessons (4-7) against closed forms (Ho et al. 2020): the forward marginal, the posterior
step, the schedule's end, and the samplers driven by the exact noise predictor eps* of the Gaussian
(mixture), with no training involved. For Gaussian data the ancestral chain driven by eps* is linear
and Gaussian, so its mean and variance after every step follow in closed form
(`ancestral_moments`)."""
import math
import runpy
import sys
import types

import numpy as np
import pytest
import torch

import detailed_DDPM
import multimodal_DDPM
import simple_DDPM
import single_DDPM
from conftest import ROOT
from ground_truth import gaussian_step_posterior, mixture_denoiser, mode_statistics

CPU = types.SimpleNamespace(device=torch.device("cpu"), sigma_data=0.01, mu_data=1.0)


def exact_eps(means, std, alpha_bar):
    """eps*(x_t, t) = -sqrt(1 - abar_t) grad log p_t(x_t). With y = x_t / sqrt(abar_t) = x0 +
    sigma_t eps and sigma_t^2 = (1 - abar_t) / abar_t, this is (y - E[x0 | y]) / sigma_t: the
    mixture denoiser's."""
    denoiser = mixture_denoiser(means, std)

    def eps_model(x, t):
        a = alpha_bar[t].reshape(-1, 1)
        sigma = ((1 - a) / a).sqrt()
        y = x / a.sqrt()
        return (y - denoiser(y, sigma)) / sigma

    return eps_model


def per_step(eps_model):
    """simple_DDPM's networks take one integer t shared by the batch."""
    return lambda x, t: eps_model(x, torch.full((len(x),), t))


def ancestral_moments(betas, alphas, alpha_bar, mu, s):
    """Mean and std of x_0 from Algorithm 2 driven by eps*, for data N(mu, s^2) and x_T ~ N(0, 1).
    eps*(x_t) = sqrt(1 - abar_t) (x_t - sqrt(abar_t) mu) / v_t with v_t = abar_t s^2 + 1 - abar_t,
    so each step is x <- k x + c + sqrt(beta~_t) z: the moments follow exactly (float64)."""
    b, al, a = (v.double() for v in (betas, alphas, alpha_bar))
    mean, var = 0.0, 1.0
    for t in reversed(range(len(b))):
        v = a[t] * s ** 2 + 1 - a[t]
        k = (1 - b[t] / v) / al[t].sqrt()
        c = b[t] * a[t].sqrt() * mu / (v * al[t].sqrt())
        noise = (1 - a[t - 1]) / (1 - a[t]) * b[t] if t > 0 else 0.0
        mean, var = k * mean + c, k ** 2 * var + noise
    return float(mean), math.sqrt(var)


@pytest.mark.parametrize("lesson", [single_DDPM, simple_DDPM])
def test_closed_form_marginal_matches_the_chain_of_single_steps(lesson):
    """Moments of x_t after t steps x <- sqrt(1 - beta_t) x + sqrt(beta_t) z, from x0 ~ N(1, 0.3^2),
    against eq. 4: N(sqrt(abar_t) mu, abar_t 0.3^2 + 1 - abar_t). Exact recursions, no sampling."""
    betas, alphas, alpha_bar = (v.double() for v in lesson.noise_schedule(200, 0.01, 30.0))
    mean, var = 1.0, 0.09
    for t in range(200):
        mean, var = (1 - betas[t]).sqrt() * mean, (1 - betas[t]) * var + betas[t]
        a = alpha_bar[t]
        assert mean.item() == pytest.approx(a.sqrt().item(), rel=1e-5)
        assert var.item() == pytest.approx((a * 0.09 + 1 - a).item(), rel=1e-5)
    assert torch.allclose(alphas, 1 - betas) and torch.allclose(alpha_bar, torch.cumprod(alphas, 0))


def test_schedule_ends_at_pure_noise():
    for lesson in (single_DDPM, simple_DDPM):
        _, _, alpha_bar = lesson.noise_schedule(1000, 0.001, 100.0)
        assert alpha_bar[-1].item() == pytest.approx(1 / (1 + 100.0 ** 2), rel=1e-4)
        assert alpha_bar[0].item() == pytest.approx(1 / (1 + 0.001 ** 2), rel=1e-6)
        for t in (250, 499, 900):  # sigma_t log-spaced: 10^(-3 + 5 t / 999)
            sigma = 10 ** (-3 + 5 * t / 999)
            assert alpha_bar[t].item() == pytest.approx(1 / (1 + sigma ** 2), rel=1e-5)
    assert torch.allclose(multimodal_DDPM.noise_schedule(1000, 0.001, 100.0), alpha_bar)
    lesson = multimodal_DDPM  # its defaults: abar_T = 1 / (1 + 20^2), x_T N(0, I) to 0.05 in mean
    end = lesson.noise_schedule(lesson.T, lesson.sigma_min, lesson.sigma_max)[-1].item()
    assert end == pytest.approx(1 / 401, rel=1e-4)


@pytest.mark.parametrize("lesson", [single_DDPM, simple_DDPM])
def test_one_sampler_step_draws_from_the_posterior(lesson):
    """The lesson's own step from x_t, with the eps that x0 implies, must draw x_{t-1} from
    q(x_{t-1} | x_t, x0) (Bayes' rule): the sampler's eq. 11 mean and its sqrt(beta~_t) noise."""
    torch.manual_seed(0)
    betas, alphas, alpha_bar = lesson.noise_schedule(100, 0.01, 30.0)
    x0, n = 0.7, 20000
    for t in (1, 10, 60, 99):
        x_t = torch.full((n, 1), -0.4)
        eps = (x_t - alpha_bar[t].sqrt() * x0) / (1 - alpha_bar[t]).sqrt()
        model = (lambda x, step: eps) if lesson is simple_DDPM else (lambda x, steps: eps)
        schedule = (betas[:t + 1], alphas[:t + 1], alpha_bar[:t + 1])  # the first step is t
        x = lesson.sample(model, *schedule, x_t)[1]
        mean, var = gaussian_step_posterior(alpha_bar[t - 1].sqrt() * x0, 1 - alpha_bar[t - 1],
                                            -0.4, betas[t])
        assert x.mean().item() == pytest.approx(mean.item(), abs=4 * math.sqrt(var / n))
        assert x.std().item() == pytest.approx(math.sqrt(var), rel=0.03)


def test_no_noise_at_the_last_step():
    """A zero eps-model makes each step x <- x / sqrt(alpha_t) + sqrt(beta~_t) z, and t = 1 adds
    none."""
    betas, alphas, alpha_bar = single_DDPM.noise_schedule(3, 0.5, 2.0)
    zero = lambda x, t: torch.zeros_like(x)
    trajectory = single_DDPM.sample(zero, betas, alphas, alpha_bar, torch.zeros(1000, 1))
    assert torch.allclose(trajectory[-1], trajectory[-2] / alphas[0].sqrt())  # mean only


@pytest.mark.parametrize("lesson, T", [(single_DDPM, 1000), (simple_DDPM, 100), (simple_DDPM, 50)])
def test_ancestral_sampler_with_exact_eps_has_the_closed_form_moments(lesson, T):
    """Fewer, coarser steps bias Algorithm 2 itself: driven by eps*, the std ends at 0.99 x
    sigma_data for T = 1000, 0.94 for T = 100 and 0.89 for T = 50 (closed form); the samples must
    agree."""
    torch.manual_seed(0)
    schedule = lesson.noise_schedule(T, 0.001, 100.0)
    eps = exact_eps([[1.0]], 0.01, schedule[2])
    x = lesson.sample(eps if lesson is single_DDPM else per_step(eps), *schedule,
                      torch.randn(4000, 1))[-1]
    mean, std = ancestral_moments(*schedule, 1.0, 0.01)
    assert mean == pytest.approx(1.0, abs=1e-4)
    assert std / 0.01 == pytest.approx({1000: 0.989, 100: 0.940, 50: 0.890}[T], abs=0.002)
    assert x.mean().item() == pytest.approx(mean, abs=4 * std / math.sqrt(4000))
    assert x.std().item() == pytest.approx(std, rel=0.035)  # 3 standard errors


def assert_mode_stds(x, ratio, tolerance, means=multimodal_DDPM.MODES, std=0.01):
    """Shares within 0.02 of 1/4, no sample off-mode, each mode's std within tolerance of ratio x
    std."""
    shares, off_mode, stds = mode_statistics(x, means, std)
    assert ((shares - 1 / len(means)).abs() <= 0.02).all(), shares
    assert off_mode <= 0.002, off_mode
    assert ((stds / std - ratio).abs() <= tolerance).all(), stds / std


@pytest.mark.parametrize("sampler, steps, ratio", [("ddpm", 500, 0.97), ("ddpm", 100, 0.945),
                                                   ("ddim", 50, 1.035), ("ddim", 500, 1.0)])
def test_both_samplers_with_exact_eps_reproduce_the_four_modes(sampler, steps, ratio):
    """On the lesson's own schedule (T = 500, sigma from 0.002 to 20), with eps*: ancestral steps
    narrow the modes a little (the noise-free last step from sigma 0.002 takes 2%), 50 DDIM steps
    widen them 3-5%. 4000 samples: each mode's std is known to 1.6%."""
    torch.manual_seed(0)
    lesson = multimodal_DDPM
    alpha_bar = lesson.noise_schedule(lesson.T, lesson.sigma_min, lesson.sigma_max)
    eps = exact_eps(multimodal_DDPM.MODES, 0.01, alpha_bar)
    x = multimodal_DDPM.sample(eps, alpha_bar, torch.randn(4000, 2), sampler, steps)[-1]
    assert_mode_stds(x, ratio, 0.05)


def test_multimodal_sampler_visits_each_step_once_from_T_down_to_1():
    """steps = T is Algorithm 2 exactly: t = T-1, ..., 0, once each; fewer steps keep both ends."""
    alpha_bar = multimodal_DDPM.noise_schedule(500, 0.002, 20.0)
    for steps, expected in ((500, list(range(499, -1, -1))), (5, [499, 374, 250, 125, 0])):
        visited = []

        def recording(x, t):
            visited.append(t[0].item())
            return torch.zeros_like(x)

        multimodal_DDPM.sample(recording, alpha_bar, torch.zeros(2, 2), "ddim", steps)
        assert visited == expected


def test_with_exact_eps_the_curve_resolves_what_the_lesson_claims():
    """The lesson's curve, 2000 samples per point, for eps* instead of its network: at 20 steps DDIM
    is ahead of ancestral sampling by more than 3 sqrt(2) floor stds, and at 50 steps ancestral
    sampling is still above the floor (mean + 3 std of fresh data): claims about the samplers."""
    torch.manual_seed(0)
    lesson = multimodal_DDPM
    alpha_bar = lesson.noise_schedule(lesson.T, lesson.sigma_min, lesson.sigma_max)
    eps, noise = exact_eps(lesson.MODES, 0.01, alpha_bar), torch.randn(2000, 2)
    error = {}
    for sampler, steps in [("ddpm", 20), ("ddim", 20), ("ddpm", 50)]:
        x = lesson.sample(eps, alpha_bar, noise, sampler, steps)[-1]
        error[sampler, steps] = lesson.mode_error(x, 0.01)
    fresh = torch.tensor([lesson.mode_error(lesson.sample_data(2000, CPU), 0.01)
                          for _ in range(20)])
    floor, spread = fresh.mean().item(), fresh.std().item()
    assert 0.03 < floor < 0.07 and 0.005 < spread < 0.03  # the measure's noise on 2000 points
    assert error["ddpm", 20] - error["ddim", 20] > 3 * math.sqrt(2) * spread, error
    assert error["ddpm", 50] > floor + 3 * spread, error


def points(counts, std):
    """counts[k] points at mode k, half at +d, half at -d on both axes, d chosen so that the sample
    std (torch's, which divides by n - 1) is exactly std."""
    signs = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    return torch.cat([mode + std * math.sqrt((n - 1) / n) * signs.repeat(n // 2, 1)
                      for mode, n in zip(multimodal_DDPM.MODES, counts)])


def test_mode_error_adds_the_weight_std_and_off_mode_errors():
    error = lambda x: multimodal_DDPM.mode_error(x, 0.01)
    assert error(points([250] * 4, 0.01)) == pytest.approx(0.0, abs=1e-4)
    assert error(points([250] * 4, 0.012)) == pytest.approx(0.2, abs=1e-4)  # 20% too wide
    assert error(points([500, 250, 250, 250], 0.01)) == pytest.approx(0.3, abs=1e-4)  # .4 .2 .2 .2
    off = torch.cat([points([250] * 4, 0.01), torch.zeros(10, 2)])  # 10 of 1010 between the modes
    share_error = (260 - 252.5) / 1010 + 3 * 2.5 / 1010  # the 10 count as nearest mode 0
    assert error(off) == pytest.approx(share_error + 10 / 1010, abs=1e-4)


ALPHA_BAR = torch.linspace(0.999, 0.001, 1000)


@pytest.mark.parametrize("model, fixed_part", [
    (single_DDPM.EpsModel(1, 16, 1000), lambda x, t: 0),
    (multimodal_DDPM.EpsModel(1, 16, ALPHA_BAR, 3),
     lambda x, t: (1 - ALPHA_BAR[t, None]).sqrt() * x)])
def test_shared_networks_depend_on_t(model, fixed_part):
    """The learned part must see t; multimodal_DDPM's fixed linear term sqrt(1 - abar_t) x_t depends
    on t by itself."""
    torch.manual_seed(0)
    x = torch.randn(8, 1)
    early, late = torch.full((8,), 10), torch.full((8,), 900)
    learned = [model(x, t) - fixed_part(x, t) for t in (early, late)]
    assert not torch.allclose(*learned)


@pytest.mark.parametrize("step", [0, 250, 500, 750, 999])
def test_multimodal_network_starts_from_the_best_linear_guess(step):
    """With its MLP's output at zero, eps_theta(x_t, t) is E[eps | x_t] for unit-variance Gaussian
    data: what is left of eps is uncorrelated with x_t. (1 - abar) for its square root misses by
    0.03 at t = 0, 0.2 at t = 500."""
    torch.manual_seed(0)
    model = multimodal_DDPM.EpsModel(2, 16, ALPHA_BAR, 3)
    torch.nn.init.zeros_(model.output.weight), torch.nn.init.zeros_(model.output.bias)
    t = torch.full((100000,), step)
    x0, eps = torch.randn(100000, 2), torch.randn(100000, 2)
    x = ALPHA_BAR[t, None].sqrt() * x0 + (1 - ALPHA_BAR[t, None]).sqrt() * eps  # eq. 4
    with torch.no_grad():
        residual = eps - model(x, t)
    assert (residual * x).mean().abs().item() < 0.01  # sampling error about 0.002


def test_each_per_step_network_trains_on_its_own_step():
    """simple_DDPM: network t's BatchNorm tracks the mean of the x_t it is shown, sqrt(abar_t)
    mu_data: network t is trained on step t, and on no other."""
    torch.manual_seed(0)
    _, _, alpha_bar = simple_DDPM.noise_schedule(10, 0.01, 30.0)
    cfg = types.SimpleNamespace(**vars(CPU), T=10, batch_size=256, nb_epochs=60, lr=1e-3)
    model = simple_DDPM.EpsModels(1, 8, 10)
    simple_DDPM.train(model, simple_DDPM.sample_data, alpha_bar, cfg)
    running = torch.stack([net[0].running_mean[0] for net in model.nets])  # (T,)
    assert torch.allclose(running, alpha_bar.sqrt(), atol=0.02), running


def test_wasserstein_to_gaussian_of_detailed_DDPM():
    torch.manual_seed(0)
    x = torch.randn(20000)
    assert detailed_DDPM.wasserstein_to_gaussian(x, 0.0, 1.0) < 0.02
    shifted = detailed_DDPM.wasserstein_to_gaussian(x + 0.5, 0.0, 1.0)
    assert shifted == pytest.approx(0.5, abs=0.02)  # a shift moves every point by 0.5
    wide = detailed_DDPM.wasserstein_to_gaussian(2 * x, 0.0, 1.0)
    assert wide == pytest.approx(2 / math.sqrt(2 * math.pi), abs=0.02)  # E|z| for the excess width


def test_exact_marginal_of_detailed_DDPM_is_eq_4():
    _, _, alpha_bar = single_DDPM.noise_schedule(100, 0.001, 100.0)
    for t in (0, 40, 99):
        a = alpha_bar[t].item()
        mean, std = detailed_DDPM.exact_marginal(t, alpha_bar, CPU)
        assert mean == pytest.approx(math.sqrt(a))
        assert std == pytest.approx(math.sqrt(a * 1e-4 + 1 - a))
    assert detailed_DDPM.exact_marginal(-1, alpha_bar, CPU) == pytest.approx((1.0, 0.01))  # data


TINY = ["--nb_epochs", "3", "--n_samples", "32", "--T", "8"]


def run_in_process(script, args, monkeypatch):
    """Run codes/<script> as `python codes/<script> args` from the repository's root, in this
    process (no second start of Python and torch)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    runpy.run_path(str(ROOT / "codes" / script), run_name="__main__")


@pytest.mark.parametrize("script, args, picture", [
    ("multimodal_DDPM.py", TINY + ["--sampling_steps", "8", "--n_curve", "32"],
     "ddpm_vs_ddim_steps.png"),
    ("detailed_DDPM.py", TINY + ["--n_frames", "3"], "detailed_DDPM.gif")])
def test_a_default_run_writes_its_picture_into_out_not_assets(monkeypatch, tmp_path, script, args,
                                                              picture):
    """assets/ holds the README's pictures: a lesson run without --assets must leave it alone."""
    readme_copy = ROOT / "assets" / picture
    before = readme_copy.stat().st_mtime_ns
    run_in_process(script, args + ["--out", tmp_path], monkeypatch)
    assert (tmp_path / picture).stat().st_size > 0
    assert readme_copy.stat().st_mtime_ns == before


@pytest.mark.quality
def test_simple_DDPM_default_run_hits_mean_and_std(run, tmp_path):
    """Lesson 5's targets, recomputed from its samples.npy: |mean error| <= 0.3 sigma_data, std
    ratio 0.90-1.10."""
    result = run("simple_DDPM.py", "--seed", "0", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    samples = np.load(tmp_path / "samples.npy")
    assert samples.shape == (5000, 1)
    assert abs(samples.mean() - 1.0) <= 0.3 * 0.01, samples.mean()
    assert abs(samples.std() / 0.01 - 1) <= 0.10, samples.std()


@pytest.mark.quality
def test_detailed_DDPM_default_run_ends_near_the_data(run, tmp_path):
    """Lesson 7's target, recomputed from its samples.npy: W1 to N(1, 0.01^2) at most 0.10
    sigma_data."""
    result = run("detailed_DDPM.py", "--seed", "0", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    samples = np.sort(np.load(tmp_path / "samples.npy")[:, 0])
    levels = (np.arange(len(samples)) + 0.5) / len(samples)
    quantiles = 1.0 + 0.01 * math.sqrt(2) * torch.erfinv(torch.from_numpy(2 * levels - 1)).numpy()
    assert len(samples) == 2000
    assert np.abs(samples - quantiles).mean() / 0.01 <= 0.10
