"""The spiral lesson against closed forms: the forward marginal (its noise coefficient is
sqrt(1 - abar_t), never sqrt(abar_t)), x0_hat, both schedules' defining formulas, the posterior
against Bayes' rule, the samplers with the exact noise predictor eps* of one Gaussian (closed-form
moments) and of a mixture, and the quality of a default run, measured here independently."""
import math

import numpy as np
import pytest
import torch

import spiral_DDPM
from ground_truth import assert_modes, gaussian_step_posterior
from test_ddpm import ancestral_moments, exact_eps


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_forward_marginal_has_the_closed_form_moments(name):
    torch.manual_seed(0)
    _, _, alpha_bar = spiral_DDPM.make_schedule(name, 1000)
    x0 = torch.tensor([[0.6, -0.3]]).repeat(100000, 1)
    for t in (0, 100, 500, 999):
        x_t = spiral_DDPM.q_sample(x0, torch.full((len(x0),), t), torch.randn_like(x0), alpha_bar)
        a = alpha_bar[t].item()
        assert torch.allclose(x_t.mean(0), math.sqrt(a) * x0[0], atol=0.01)
        assert torch.allclose(x_t.std(0), torch.full((2,), math.sqrt(1 - a)), rtol=0.01)
    assert x_t.std(0).min().item() > 0.99 and x_t.mean(0).abs().max().item() < 0.01  # t = T: N(0,I)


def test_predict_x0_inverts_the_forward_process():
    _, _, alpha_bar = spiral_DDPM.make_schedule("linear", 1000)
    x0, eps, t = torch.randn(64, 2), torch.randn(64, 2), torch.randint(0, 1000, (64,))
    x_t = spiral_DDPM.q_sample(x0, t, eps, alpha_bar)
    assert torch.allclose(spiral_DDPM.predict_x0(x_t, t, eps, alpha_bar), x0, atol=1e-3)


def test_linear_schedule_matches_ho_et_al():
    betas, alphas, alpha_bar = spiral_DDPM.make_schedule("linear", 1000)
    assert torch.allclose(betas, torch.linspace(1e-4, 0.02, 1000))
    assert torch.allclose(alphas, 1 - betas)
    assert torch.allclose(alpha_bar, torch.cumprod(1 - betas.double(), 0).float(), rtol=1e-5)
    assert alpha_bar[-1].item() < 1e-4  # x_T is N(0, I) to within sqrt(abar_T) < 1%


def test_cosine_schedule_matches_nichol_and_dhariwal():
    betas, _, alpha_bar = spiral_DDPM.make_schedule("cosine", 1000)
    t = np.arange(1001)
    f = np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
    expected = f[1:] / f[0]  # abar_t = f(t) / f(0), eq. 17
    unclipped = betas.numpy() < 0.999
    assert np.allclose(alpha_bar.numpy()[unclipped], expected[unclipped], rtol=1e-4, atol=1e-7)
    assert betas.max().item() == pytest.approx(0.999)
    assert (~unclipped).sum() <= 1  # only the last step is clipped
    assert alpha_bar[-1].item() < 1e-6
    # as ddpm_coefficients.py says: the clip leaves abar_T = 0.001 abar_{T-1}, tiny but not 0
    assert 0 < alpha_bar[-1].item() == pytest.approx(0.001 * alpha_bar[-2].item(), rel=1e-3)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_matches_bayes_rule(name):
    betas, alphas, alpha_bar = (v.double() for v in spiral_DDPM.make_schedule(name, 1000))
    x0, x_t = 0.8, -0.2
    for t in (1, 10, 300, 998):
        prior_mean, prior_var = alpha_bar[t - 1].sqrt() * x0, 1 - alpha_bar[t - 1]
        mean, var = gaussian_step_posterior(prior_mean, prior_var, x_t, betas[t])
        coef_x0, coef_xt, variance = spiral_DDPM.posterior(t, betas, alphas, alpha_bar)
        posterior_mean = coef_x0 * x0 + coef_xt * x_t
        assert posterior_mean.item() == pytest.approx(mean.item(), rel=1e-3)  # float32 schedule
        assert variance.item() == pytest.approx(var.item(), rel=1e-3)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ancestral_sampler_with_exact_eps_has_the_closed_form_moments(name):
    """For one Gaussian, Algorithm 2 driven by eps* is linear: its end moments are known exactly
    (test_ddpm.ancestral_moments). Its variance beta~_t ignores what x_t leaves unknown about x0, so
    each step loses a little spread: std 0.963 x the data's on the linear schedule, 0.980 on the
    cosine one. The samples must land there."""
    torch.manual_seed(0)
    mu = torch.tensor([0.5, -0.3])
    schedule = spiral_DDPM.make_schedule(name, 1000)
    eps = exact_eps(mu[None], 0.1, schedule[2])
    x = spiral_DDPM.sample(eps, *schedule, torch.randn(2000, 2), "ddpm", 1000)[-1]
    for axis in range(2):
        mean, std = ancestral_moments(*schedule, mu[axis].item(), 0.1)
        assert std / 0.1 == pytest.approx({"linear": 0.963, "cosine": 0.980}[name], abs=0.002)
        assert x[:, axis].mean().item() == pytest.approx(mean, abs=4 * std / math.sqrt(2000))
        assert x[:, axis].std().item() == pytest.approx(std, rel=0.035)  # 3 standard errors


@pytest.mark.parametrize("name, sampler, steps", [
    ("linear", "ddpm", 1000), ("linear", "ddim", 1000), ("cosine", "ddim", 100)])
def test_samplers_with_exact_eps_reproduce_a_mixture(name, sampler, steps):
    """Two Gaussians at +-(0.5, 0.5), std 0.1, with eps*. Each mode's std: ancestral on the linear
    schedule 4% narrow (as for one Gaussian), DDIM in 1000 steps within 2%, DDIM in 100 steps on the
    cosine schedule 5% narrow (on the linear one, 9%: its noise level changes too fast at small t
    for strides of 10). 2000 samples: each std is known to 1.6%."""
    torch.manual_seed(0)
    means = torch.tensor([[0.5, 0.5], [-0.5, -0.5]])
    betas, alphas, alpha_bar = spiral_DDPM.make_schedule(name, 1000)
    eps = exact_eps(means, 0.1, alpha_bar)
    x = spiral_DDPM.sample(eps, betas, alphas, alpha_bar, torch.randn(2000, 2), sampler, steps)[-1]
    assert_modes(x, means, 0.1, share_tolerance=0.03, max_off_mode=0.002, std_tolerance=0.08)


def test_no_noise_at_the_last_ancestral_step():
    betas, alphas, alpha_bar = spiral_DDPM.make_schedule("linear", 5)
    zero = lambda x, t: torch.zeros_like(x)
    trajectory = spiral_DDPM.sample(zero, betas, alphas, alpha_bar, torch.randn(100, 2), "ddpm", 5)
    assert torch.equal(trajectory[-1], trajectory[-2] / alpha_bar[0].sqrt())  # x0_hat of x_1 only


def curve_distance(x):
    """Distance of each point of x to the spiral (s cos s, s sin s) / (4.5 pi), s in 1.5-4.5 pi,
    computed with numpy alone."""
    s = np.linspace(1.5 * np.pi, 4.5 * np.pi, 30000)
    curve = np.stack([s * np.cos(s), s * np.sin(s)], 1) / (4.5 * np.pi)
    chunks = np.array_split(x, 40)
    distance = [np.sqrt(((c[:, None] - curve[None]) ** 2).sum(-1)).min(1) for c in chunks]
    return np.concatenate(distance)


def sliced_w1(x, y, rng):
    directions = rng.normal(size=(2, 1000))
    directions /= np.linalg.norm(directions, axis=0)
    return np.abs(np.sort(x @ directions, 0) - np.sort(y @ directions, 0)).mean()


@pytest.mark.quality
def test_default_run_meets_the_targets(run, tmp_path):
    """Lesson 8's targets, recomputed from its samples.npy and data.npy."""
    result = run("spiral_DDPM.py", "--seed", "0", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    samples, data = np.load(tmp_path / "samples.npy"), np.load(tmp_path / "data.npy")
    assert curve_distance(samples).mean() <= 1.5 * curve_distance(data).mean()
    half, rng = len(data) // 2, np.random.default_rng(0)
    floor = sliced_w1(data[:half], data[half:2 * half], rng)
    assert sliced_w1(samples[:half], data[:half], rng) <= 2.5 * floor
