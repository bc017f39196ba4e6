"""The 2015 lesson against closed forms: its Gaussian KL against Monte Carlo, its posterior
q(x_{t-1} | x_t, x0) against Bayes' rule, and, for Gaussian data, its bound and its sampler driven
by the exact reverse steps.

For data N(m, s^2) every marginal q(x_t) = N(sqrt(abar_t) m, abar_t s^2 + 1 - abar_t) is Gaussian,
so the best reverse step p(x_{t-1} | x_t) is the exact posterior q(x_{t-1} | x_t) of the marginals
(Bayes' rule), Gaussian too, of variance r_t. Plugged into the bound, each expected step term is
closed form: E KL(q(x_{t-1} | x_t, x0) || q(x_{t-1} | x_t)) = log(r_t / beta~_t) / 2 per dimension
(the means differ by a variance r_t - beta~_t on average, the law of total variance), and at t = 1
E[-log q(x0 | x1)] = log(2 pi e r_1) / 2. And the whole bound telescopes: with p = q at every step,
-ELBO = E[-log q(x0)] + KL(q(x_T) || N(0, I)), the data's entropy plus the prior's mismatch."""
import math

import numpy as np
import pytest
import torch

import nonequilibrium_2015 as lesson
from conftest import ROOT
from ground_truth import gaussian_step_posterior
from test_ddpm import run_in_process

M, S = torch.tensor([0.5, -1.0]), torch.tensor([0.2, 0.6])  # Gaussian data, one (m, s) per axis
SCHEDULES = [(40, 1e-4, 0.3), (10, 1e-3, 0.1)]  # the lesson's, and a short one: abar_T = 0.6


def exact_reverse(alpha_bar):
    """p(x_{t-1} | x_t) = q(x_{t-1} | x_t) for data N(M, S^2): Bayes' rule with the prior q(x_{t-1})
    = N(sqrt(abar_{t-1}) M, abar_{t-1} S^2 + 1 - abar_{t-1}); at t = 1 the prior is the data."""
    def model(x, t, betas):
        a_prev = torch.where(t > 0, alpha_bar[(t - 1).clamp(min=0)], torch.ones_like(alpha_bar[t]))
        a_prev = a_prev[:, None]
        return gaussian_step_posterior(a_prev.sqrt() * M, a_prev * S ** 2 + 1 - a_prev, x,
                                       betas[t, None])
    return model


def closed_form(betas, alpha_bar):
    """The expected step terms, t = 1..T, the expected prior term, and H(q(x0)) + KL(q(x_T) || N(0,
    I)), in nats summed over the two axes (float64)."""
    b, a, m, s = betas.double(), alpha_bar.double(), M.double(), S.double()
    terms = []
    for t in range(len(b)):
        prior_var = a[t - 1] * s ** 2 + 1 - a[t - 1] if t > 0 else s ** 2  # of x_{t-1}
        r = 1 / (1 / prior_var + (1 - b[t]) / b[t])  # Var(x_{t-1} | x_t), Bayes' rule
        if t == 0:
            terms.append((0.5 * torch.log(2 * math.pi * math.e * r)).sum().item())
        else:
            beta_tilde = (1 - a[t - 1]) / (1 - a[t]) * b[t]  # Var(x_{t-1} | x_t, x0)
            terms.append((0.5 * torch.log(r / beta_tilde)).sum().item())
    a_T = a[-1]
    # E_x0 KL(q(x_T | x0) || N(0, 1)), and q(x_T) itself:
    prior = 0.5 * (-torch.log(1 - a_T) + 1 - a_T + a_T * (m ** 2 + s ** 2) - 1)
    var_T, mean_T = a_T * s ** 2 + 1 - a_T, a_T.sqrt() * m
    entropy = 0.5 * torch.log(2 * math.pi * math.e * s ** 2)
    mismatch = 0.5 * (var_T + mean_T ** 2 - 1 - torch.log(var_T))
    return terms, prior.sum().item(), (entropy + mismatch).sum().item()


def test_gaussian_kl_matches_monte_carlo():
    torch.manual_seed(0)
    m1, v1 = torch.tensor([0.3, -1.0]), torch.tensor([0.5, 2.0])
    m2, v2 = torch.tensor([-0.2, 0.4]), torch.tensor([1.5, 0.7])
    x = m1 + v1.sqrt() * torch.randn(400_000, 2)
    log_density = lambda x, m, v: (-torch.log(2 * math.pi * v) / 2 - (x - m) ** 2 / (2 * v)).sum(1)
    monte_carlo = (log_density(x, m1, v1) - log_density(x, m2, v2)).mean()
    assert lesson.gaussian_kl(m1, v1, m2, v2).item() == pytest.approx(monte_carlo.item(), rel=0.01)


def test_posterior_matches_bayes_rule():
    betas, alpha_bar = (v.double() for v in lesson.sigmoid_schedule(40, 1e-4, 0.3))
    x0 = torch.tensor([[0.8, -0.3]], dtype=torch.float64)
    x_t = torch.tensor([[-0.2, 1.1]], dtype=torch.float64)
    for t in (1, 5, 20, 39):
        mean, var = lesson.posterior(x0, x_t, torch.tensor([t]), betas, alpha_bar)
        prior_mean, prior_var = alpha_bar[t - 1].sqrt() * x0, 1 - alpha_bar[t - 1]
        bayes_mean, bayes_var = gaussian_step_posterior(prior_mean, prior_var, x_t, betas[t])
        assert torch.allclose(mean, bayes_mean, rtol=1e-4)
        assert torch.allclose(var, bayes_var, rtol=1e-4)


def test_schedule_follows_its_sigmoid_and_ends_near_pure_noise():
    betas, alpha_bar = lesson.sigmoid_schedule(40, 1e-4, 0.3)
    sigmoid = lambda u: 1 / (1 + math.exp(-u))
    assert betas[0].item() == pytest.approx(1e-4 + (0.3 - 1e-4) * sigmoid(-6), rel=1e-5)
    assert betas[-1].item() == pytest.approx(1e-4 + (0.3 - 1e-4) * sigmoid(6), rel=1e-5)
    assert len(betas) == 40 and (betas[1:] > betas[:-1]).all()  # rising along the sigmoid
    assert torch.allclose(alpha_bar, torch.cumprod(1 - betas.double(), 0).float())
    assert alpha_bar[-1] < 2e-3  # x_T = sqrt(abar_T) x0 + ...: under 0.05 of the data's scale left


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_closed_form_step_terms_add_up_to_entropy_plus_prior_mismatch(schedule):
    """The derivation itself: the expected terms, summed, telescope to H(q(x0)) + KL(q(x_T) || N(0,
    I))."""
    terms, prior, total = closed_form(*lesson.sigmoid_schedule(*schedule))
    assert sum(terms) + prior == pytest.approx(total, rel=1e-4)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_step_losses_with_the_exact_reverse_steps_match_the_closed_form(schedule):
    torch.manual_seed(0)
    betas, alpha_bar = lesson.sigmoid_schedule(*schedule)
    terms, _, _ = closed_form(betas, alpha_bar)
    n, model = 20000, exact_reverse(alpha_bar)
    x0 = M + S * torch.randn(n, 2)
    for t in sorted({0, 1, 2, len(betas) // 2, len(betas) - 1}):
        with torch.no_grad():
            losses = lesson.step_losses(model, x0, torch.full((n,), t), betas, alpha_bar)
        error = 4 * losses.std().item() / math.sqrt(n) + 1e-6  # 4 standard errors
        assert losses.mean().item() == pytest.approx(terms[t], abs=error), t


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_bound_with_the_exact_reverse_steps_is_entropy_plus_prior_mismatch(schedule):
    """The lesson's negative ELBO, every reverse step exact: H(q(x0)) + KL(q(x_T) || N(0, I)), 0.718
    nats on the lesson's schedule (its prior term is 8e-4), 1.269 on the short one (prior term
    0.79). The bound's Monte Carlo noise on 20,000 points is about 0.007."""
    torch.manual_seed(0)
    betas, alpha_bar = lesson.sigmoid_schedule(*schedule)
    _, _, total = closed_form(betas, alpha_bar)
    x0 = M + S * torch.randn(20000, 2)
    assert total == pytest.approx({40: 0.718, 10: 1.269}[schedule[0]], abs=1e-3)
    bound = lesson.bound(exact_reverse(alpha_bar), x0, betas, alpha_bar)
    assert bound == pytest.approx(total, abs=0.03)


def test_sampler_with_the_exact_reverse_steps_reaches_the_data():
    """For data N(m, s^2) the sampler driven by the exact reverse steps must end at N(m, s^2).
    Taking var for the std, or an off-by-one in t, breaks this."""
    betas, alpha_bar = lesson.sigmoid_schedule(40, 1e-4, 0.3)
    torch.manual_seed(0)
    x0 = lesson.sample(exact_reverse(alpha_bar), betas, 20_000)[-1]
    assert torch.allclose(x0.mean(0), M, atol=0.01)
    assert torch.allclose(x0.std(0), S, rtol=0.03)


def test_reverse_starts_from_the_forward_steps_own_variance():
    """The paper's parametrisation: with its readout at 0, p(x_{t-1} | x_t) has mean sqrt(1 -
    beta_t) x_t and variance beta_t."""
    betas, _ = lesson.sigmoid_schedule(40, 1e-4, 0.3)
    model = lesson.Reverse(16, 40, 2)
    torch.nn.init.zeros_(model.readout), torch.nn.init.zeros_(model.readout_bias)
    x, t = torch.randn(5, 2), torch.tensor([0, 5, 20, 30, 39])
    mean, var = model(x, t, betas)
    assert torch.allclose(mean, (1 - betas[t, None]).sqrt() * x)
    assert torch.allclose(var, betas[t, None].expand(5, 2), rtol=1e-5)


def test_a_default_run_writes_its_picture_into_out_not_assets(monkeypatch, tmp_path):
    readme_copy = ROOT / "assets" / "nonequilibrium_2015.png"
    before = readme_copy.stat().st_mtime_ns
    tiny = ["--nb_epochs", "6", "--n_samples", "32", "--T", "8", "--out", tmp_path]
    run_in_process("nonequilibrium_2015.py", tiny, monkeypatch)
    assert (tmp_path / "nonequilibrium_2015.png").stat().st_size > 0
    assert readme_copy.stat().st_mtime_ns == before


def sliced_w1(x, y, rng):
    directions = rng.normal(size=(2, 1000))
    directions /= np.linalg.norm(directions, axis=0)
    return np.abs(np.sort(x @ directions, 0) - np.sort(y @ directions, 0)).mean()


@pytest.mark.quality
def test_default_run_meets_the_sliced_wasserstein_target(run, tmp_path):
    """Lesson 9's target, recomputed from its samples.npy and data.npy: the samples are at most 2.5
    times as far from fresh data as one half of the data is from the other."""
    result = run("nonequilibrium_2015.py", "--seed", "0", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    samples, data = np.load(tmp_path / "samples.npy"), np.load(tmp_path / "data.npy")
    assert samples.shape == data.shape == (4000, 2)
    half, rng = len(data) // 2, np.random.default_rng(0)
    floor = sliced_w1(data[:half], data[half:2 * half], rng)
    assert sliced_w1(samples[:half], data[:half], rng) <= 2.5 * floor
