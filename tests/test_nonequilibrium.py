"""The 2015 lesson against closed forms: its Gaussian KL against Monte Carlo, its posterior q(x_{t-1} | x_t, x0)
against Bayes' rule, and its ancestral sampler, driven by the exact reverse steps of Gaussian data, against the data."""
import math

import pytest
import torch

import nonequilibrium_2015 as lesson
from ground_truth import gaussian_step_posterior


def test_gaussian_kl_matches_monte_carlo():
    torch.manual_seed(0)
    m1, v1 = torch.tensor([0.3, -1.0]), torch.tensor([0.5, 2.0])
    m2, v2 = torch.tensor([-0.2, 0.4]), torch.tensor([1.5, 0.7])
    x = m1 + v1.sqrt() * torch.randn(400_000, 2)
    log_density = lambda x, m, v: (-0.5 * torch.log(2 * math.pi * v) - (x - m) ** 2 / (2 * v)).sum(-1)
    monte_carlo = (log_density(x, m1, v1) - log_density(x, m2, v2)).mean()
    assert lesson.gaussian_kl(m1, v1, m2, v2).item() == pytest.approx(monte_carlo.item(), rel=0.01)


def test_posterior_matches_bayes_rule():
    betas, alpha_bar = (v.double() for v in lesson.sigmoid_schedule(40, 1e-4, 0.3))
    x0, x_t = torch.tensor([[0.8, -0.3]], dtype=torch.float64), torch.tensor([[-0.2, 1.1]], dtype=torch.float64)
    for t in (1, 5, 20, 39):
        mean, var = lesson.posterior(x0, x_t, torch.tensor([t]), betas, alpha_bar)
        bayes_mean, bayes_var = gaussian_step_posterior(alpha_bar[t - 1].sqrt() * x0, 1 - alpha_bar[t - 1], x_t, betas[t])
        assert torch.allclose(mean, bayes_mean, rtol=1e-4) and torch.allclose(var, bayes_var, rtol=1e-4)


def test_schedule_ends_near_pure_noise():
    betas, alpha_bar = lesson.sigmoid_schedule(40, 1e-4, 0.3)
    assert len(betas) == 40 and (betas[1:] > betas[:-1]).all()  # rising along the sigmoid
    assert alpha_bar[-1] < 2e-3  # x_T = sqrt(abar_T) x0 + ...: under 0.05 of the data's scale is left


def test_sampler_with_the_exact_reverse_steps_reaches_the_data():
    """For data N(m, s^2) every reverse step is Gaussian and known (Bayes' rule on the marginals), so the sampler
    driven by it must end at N(m, s^2). Taking var for the std, or an off-by-one in t, breaks this."""
    m, s = torch.tensor([0.5, -1.0]), torch.tensor([0.2, 0.6])
    betas, alpha_bar = lesson.sigmoid_schedule(40, 1e-4, 0.3)

    def exact_reverse(x, t, betas):
        a_prev = torch.where(t > 0, alpha_bar[(t - 1).clamp(min=0)], torch.ones_like(alpha_bar[t]))[:, None]
        return gaussian_step_posterior(a_prev.sqrt() * m, a_prev * s ** 2 + 1 - a_prev, x, betas[t, None])

    torch.manual_seed(0)
    x0 = lesson.sample(exact_reverse, betas, 50_000)[-1]
    assert torch.allclose(x0.mean(0), m, atol=0.01)
    assert torch.allclose(x0.std(0), s, rtol=0.03)
