"""Lesson 15 (samplers) against closed forms, with the exact denoiser of the mixture, no training:
each deterministic sampler converges at its order, Euler is lesson 6's DDIM, every sampler spends
the NFE it is charged and adds no noise at its last step."""
import types

import numpy as np
import pytest
import torch

import multimodal_DDPM
import samplers as lesson
from ground_truth import assert_modes, mixture_denoiser

MODES = lesson.MODES
CFG = types.SimpleNamespace(sigma_min=0.0005, sigma_max=20.0, rho=7.0, S_churn=40.0)


def exact(x, sigma):
    return lesson.exact_denoiser(x, sigma, 0.01)


def ladder(N):
    return lesson.karras_sigmas(CFG.sigma_min, CFG.sigma_max, N, CFG.rho).double()


@pytest.mark.parametrize("sigma", [0.0005, 0.01, 0.3, 1.0, 20.0])
def test_exact_denoiser_is_the_mixture_posterior_mean(sigma):
    torch.manual_seed(0)
    x = MODES.double()[torch.randint(0, 4, (1000,))] + sigma * torch.randn(1000, 2).double()
    expected = mixture_denoiser(MODES.double(), 0.01)(x, sigma)
    assert torch.allclose(exact(x, torch.tensor(sigma).double()), expected, atol=1e-10)


def runge_kutta(x, sigma_from, sigma_to, steps):
    """The ODE in s = log sigma, dx/ds = x - D(x, sigma), by classical fourth-order Runge-Kutta
    on an even grid in s: independent of the samplers under test."""
    s = torch.linspace(np.log(sigma_from), np.log(sigma_to), steps + 1, dtype=torch.float64)
    slope = lambda x, s: x - exact(x, s.exp())  # noqa: E731
    for a, b in zip(s[:-1], s[1:]):
        h, m = b - a, (a + b) / 2
        k1 = slope(x, a)
        k2 = slope(x + h / 2 * k1, m)
        k3 = slope(x + h / 2 * k2, m)
        k4 = slope(x + h * k3, b)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


@pytest.fixture(scope="module")
def fine_solve():
    """Starting noise and its exact sample: the ODE solved to sigma_min, then the last step every
    sampler takes, sigma_min -> 0, which lands on D(x, sigma_min)."""
    torch.manual_seed(0)
    noise = CFG.sigma_max * torch.randn(1000, 2).double()
    at_sigma_min = runge_kutta(noise, CFG.sigma_max, CFG.sigma_min, 500)
    coarse = runge_kutta(noise, CFG.sigma_max, CFG.sigma_min, 250)
    assert (coarse - at_sigma_min).norm(dim=1).median() < 1e-8  # 1000 times below any error tested
    return noise, exact(at_sigma_min, torch.tensor(CFG.sigma_min).double())


@pytest.mark.parametrize("name, order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_deterministic_samplers_converge_at_their_order(fine_solve, name, order):
    """Per sample, against the fine solve from the same noise: doubling the steps divides the
    median error by about 2^order (no sampling noise: the same starting points throughout)."""
    noise, reference = fine_solve
    errors = [(lesson.SAMPLERS[name](exact, ladder(N), noise) - reference).norm(dim=1).median()
              for N in (40, 80, 160)]
    ratios = [(errors[0] / errors[1]).item(), (errors[1] / errors[2]).item()]
    for ratio in ratios:
        assert 2 ** order * 0.8 < ratio < 2 ** order * 1.25, (name, ratios)


def test_euler_is_lesson_6_ddim():
    """On the same levels (abar = 1 / (1 + sigma^2), x_vp = sqrt(abar) x), lesson 6's DDIM with
    the exact eps = (x - D) / sigma takes the same steps as Euler in sigma."""
    torch.manual_seed(0)
    Sigmas = ladder(12)
    alpha_bar = (1 / (1 + Sigmas[:-1] ** 2)).flip(0)  # index 0: the smallest level

    def eps_model(x_vp, index):  # lesson 6 passes one step index for the whole batch
        sigma = Sigmas[:-1].flip(0)[index[0]]
        y = x_vp * (1 + sigma ** 2).sqrt()  # = x0 + sigma eps
        return (y - exact(y, sigma)) / sigma

    noise = CFG.sigma_max * torch.randn(2000, 2).double()
    ddim = multimodal_DDPM.sample(eps_model, alpha_bar, noise * alpha_bar[-1].sqrt(), "ddim", 12)
    assert torch.allclose(lesson.euler(exact, Sigmas, noise), ddim[-1], rtol=1e-9, atol=1e-11)


def test_dpm_solver_without_a_previous_step_is_euler():
    """With two steps, both first order (the first has no previous evaluation, the last lands on
    0), DPM-Solver++(2M) is Euler; with more, it is not."""
    noise = CFG.sigma_max * torch.randn(500, 2).double()
    for N, same in ((2, True), (6, False)):
        euler, dpm = (step(exact, ladder(N), noise) for step in (lesson.euler, lesson.dpmpp_2m))
        assert torch.allclose(euler, dpm, rtol=1e-9, atol=1e-11) == same


@pytest.mark.parametrize("name", sorted(lesson.SAMPLERS))
def test_no_sampler_adds_noise_at_its_last_step(name):
    """Every sampler's last evaluation is at the ladder's last level, on no churned-up sigma, and
    its output is that evaluation's D, with nothing added after it."""
    torch.manual_seed(0)
    calls, Sigmas = [], ladder(5)

    def recorded(x, sigma):
        calls.append((x, sigma))
        return exact(x, sigma)

    churn = {"S_churn": CFG.S_churn} if name == "edm" else {}
    output = lesson.SAMPLERS[name](recorded, Sigmas, CFG.sigma_max * torch.randn(500, 2).double(),
                                   **churn)
    x_last, sigma_last = calls[-1]
    assert sigma_last == Sigmas[-2]
    assert torch.allclose(output, exact(x_last, sigma_last), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(lesson.SAMPLERS))
def test_each_sampler_spends_the_nfe_it_is_charged(name):
    for nfe in range(1, 13):
        calls = []

        def counted(x, sigma):
            calls.append(sigma)
            return exact(x, sigma)

        lesson.generate(counted, name, nfe, CFG.sigma_max * torch.randn(10, 2), CFG)
        expected = nfe if name in ("euler", "dpmpp_2m", "ancestral") else 2 * ((nfe + 1) // 2) - 1
        assert len(calls) == expected <= nfe, (nfe, len(calls))
        assert all(sigma > 0 for sigma in calls)  # never evaluated at sigma = 0


def test_dpm_solver_2m_step_by_hand():
    """Lu et al.'s second-order step on an uneven ladder 8 -> 2 -> 1, with a D that returns a constant per level:
    x1 = (2/8) x + (6/8) D(8); then r = log(8/2) / log(2/1) = 2 and x2 = (1/2) x1 + (1/2) ((1 + 1/4) D(2) - (1/4) D(8)).
    r -> 1/r and r = 1 are both still second order on a smooth ladder, so the order test cannot see them."""
    values = {8.0: torch.tensor([3.0]), 2.0: torch.tensor([-1.0]), 1.0: torch.tensor([5.0])}
    D = lambda x, sigma: values[float(sigma)].expand_as(x)
    x = torch.tensor([[0.4]])
    x1 = 2 / 8 * x + 6 / 8 * 3.0
    expected = 1 / 2 * x1 + 1 / 2 * ((1 + 1 / 4) * -1.0 - 1 / 4 * 3.0)
    assert torch.allclose(lesson.dpmpp_2m(D, torch.tensor([8.0, 2.0, 1.0]), x), expected, atol=1e-6)


def test_edm_churn_raises_the_noise_to_sigma_hat_exactly():
    """With D = 0 (data at the origin) every Heun step maps N(0, s^2) at sigma = s to N(0, s'^2) at s', however large
    the churn, if the fresh noise raises sigma exactly to sigma_hat: std sqrt(sigma_hat^2 - sigma^2), not
    sigma_hat - sigma. And gamma is capped at sqrt(2) - 1: D is asked at sigma * sqrt(2), not S_churn / N higher."""
    torch.manual_seed(0)
    Sigmas, asked = torch.tensor([20.0, 6.0, 2.0, 0.7, 0.25]), []
    D = lambda x, sigma: asked.append(float(sigma)) or torch.zeros_like(x)
    x = lesson.heun(D, Sigmas, 20.0 * torch.randn(400_000, 1), S_churn=40.0)
    assert x.std().item() == pytest.approx(0.25, rel=0.01)
    assert asked[2] == pytest.approx(6.0 * 2 ** 0.5, rel=1e-5)  # the second step's first call, at sigma_hat


def test_ancestral_step_keeps_the_marginal_noise_level():
    """With D = 0, x ~ N(0, sigma^2) stepped to sigma' must be N(0, sigma'^2): sigma_down^2 +
    sigma_up^2 = sigma'^2."""
    torch.manual_seed(0)
    x = 2.0 * torch.randn(400000, 1)
    step = lesson.ancestral(lambda x, sigma: torch.zeros_like(x), torch.tensor([2.0, 1.0]), x)
    assert step.std().item() == pytest.approx(1.0, rel=0.01)
    assert (step * x).mean().item() == pytest.approx(2.0 * 0.5, rel=0.02)  # sigma_down / sigma


def test_edm_churn_adds_noise_that_heun_does_not():
    x, Sigmas = CFG.sigma_max * torch.randn(500, 2).double(), ladder(6)
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        runs.append((lesson.heun(exact, Sigmas, x), lesson.heun(exact, Sigmas, x, S_churn=40.0)))
    assert torch.equal(runs[0][0], runs[1][0]) and not torch.allclose(runs[0][1], runs[1][1])


def test_best_sampler_at_20_nfe_meets_the_target_with_the_exact_denoiser():
    """DPM-Solver++(2M) at 20 NFE: every mode's std within 10%, under 0.5% off-mode (the lesson's
    target), while Heun at the same cost is still 20% too wide."""
    torch.manual_seed(0)
    noise = CFG.sigma_max * torch.randn(20000, 2)
    x = lesson.generate(exact, "dpmpp_2m", 20, noise, CFG)
    assert_modes(x, MODES, 0.01, share_tolerance=0.02, max_off_mode=0.005, std_tolerance=0.10)
    stds = lesson.mode_report(lesson.generate(exact, "heun", 20, noise, CFG), 0.01)[2]
    assert min(stds) > 1.15 * 0.01, stds


def test_error_sees_shares_widths_and_shifted_modes():
    """Fresh data score near 0; widening the modes by 10% adds about 0.1, moving every mode by 0.3
    sigma_data adds about 0.3 (lesson 6's mode error alone is blind to the move)."""
    torch.manual_seed(0)
    cfg = types.SimpleNamespace(device="cpu", sigma_data=0.01)
    which = torch.randint(0, 4, (40000,))
    x, noise = MODES[which], 0.01 * torch.randn(40000, 2)
    base = lesson.error(x + noise, 0.01)
    assert base < 0.03
    assert lesson.error(x + 1.1 * noise, 0.01) - base == pytest.approx(0.1, abs=0.02)
    assert lesson.error(x + noise + 0.003 * torch.tensor([0.6, 0.8]), 0.01) - base == pytest.approx(
        0.3, abs=0.02)
    assert lesson.error((x + noise)[which > 0], 0.01) == float("inf")  # mode 0 is empty
    assert lesson.floor(40000, types.SimpleNamespace(**vars(cfg), n_floor=3))[0] < 0.03


def test_verdict_names_the_cheapest_budget_that_stays_below():
    table = {"a": [0.5, 0.1, 0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],  # dips, leaves, comes back at 14
             "b": [0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1]}
    assert lesson.verdict(table, 0.2).endswith("a at 14 NFE")
    assert lesson.verdict(table, 0.05).endswith("none within 100 NFE")
    assert lesson.verdict(table, 0.2).startswith("best at 20 NFE: a;")


def test_bad_sampler_gives_one_line(run, tmp_path):
    bad = run("samplers.py", "--sampler", "rk4", "--out", tmp_path)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
    assert "--sampler" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.quality
def test_default_run_meets_the_targets(run, tmp_path):
    result = run("samplers.py", "--seed", "0", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    samples = np.load(tmp_path / "samples.npy")  # the exact denoiser, DPM-Solver++(2M), 20 NFE
    assert_modes(samples, MODES, 0.01, share_tolerance=0.02, max_off_mode=0.005,
                 std_tolerance=0.10)
    assert "best at 20 NFE: dpmpp_2m" in result.stdout
    assert result.stdout.count("reach the floor") + result.stdout.count("reaches the floor") == 2
