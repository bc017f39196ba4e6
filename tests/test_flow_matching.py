"""Lesson 14 (flow matching) against closed forms: the exact velocity against Bayes' rule for the
mixture, Euler on the straight path against lesson 6's DDIM step for step, the time grids, and the
sampler driven by the exact field (no training involved)."""
import types

import numpy as np
import pytest
import torch

import flow_matching as lesson
import multimodal_DDPM
from ground_truth import assert_modes, mixture_denoiser

MODES = lesson.MODES


def velocity_from_denoiser(x, t):
    """v* = (x - E[x0 | x_t]) / t, and x_t / (1 - t) = x0 + (t / (1 - t)) eps: E[x0 | x_t] is the
    mixture's denoiser at y = x / (1 - t), sigma = t / (1 - t)."""
    denoiser = mixture_denoiser(MODES.double(), 0.01)
    return (x - denoiser(x / (1 - t), t / (1 - t))) / t


@pytest.mark.parametrize("t", [0.001, 0.01, 0.05, 0.3, 0.7, 0.99])
def test_exact_velocity_is_the_posterior_mean_of_eps_minus_x0(t):
    torch.manual_seed(0)
    x0 = MODES.double()[torch.randint(0, 4, (2000,))] + 0.01 * torch.randn(2000, 2).double()
    x = (1 - t) * x0 + t * torch.randn_like(x0)  # points where x_t has mass
    x[:200] = 2 * torch.rand(200, 2).double() - 1  # and some between the modes
    expected = velocity_from_denoiser(x, t)
    assert torch.allclose(lesson.exact_velocity(x, t, 0.01), expected, rtol=1e-6, atol=1e-6)
    t_column = torch.full((2000, 1), t, dtype=torch.float64)  # the shape the samplers pass
    assert torch.allclose(lesson.exact_velocity(x, t_column, 0.01), expected, rtol=1e-6, atol=1e-6)


def test_exact_velocity_at_pure_noise_and_by_monte_carlo():
    """At t = 1, x_1 = eps, so E[eps - x0 | x_1] = x_1 - E[x0] = x_1. At t = 0.5, a Monte Carlo
    estimate: average eps - x0 over draws whose x_t falls in a small box around a point."""
    x = torch.randn(100, 2).double()
    assert torch.allclose(lesson.exact_velocity(x, 1.0, 0.01), x, atol=1e-12)
    torch.manual_seed(0)
    n, t, point = 4_000_000, 0.5, torch.tensor([0.3, -0.1])
    x0 = MODES[torch.randint(0, 4, (n,))] + 0.01 * torch.randn(n, 2)
    eps = torch.randn(n, 2)
    inside = (((1 - t) * x0 + t * eps - point).abs() < 0.02).all(1)  # about 3000 draws
    estimate = (eps - x0)[inside].mean(0)
    exact = lesson.exact_velocity(point[None], t, 0.01)[0]
    assert torch.allclose(estimate, exact, atol=0.05), (estimate, exact)  # MC error about 0.02


def lesson6_ddim_from(ts, x):
    """Lesson 6's DDIM on the noise levels of the grid ts (ending at 0), driven by the exact eps:
    abar = 1 / (1 + sigma^2) with sigma = t / (1 - t), x_vp = sqrt(abar) x / (1 - t)."""
    sigmas = ts[:-1] / (1 - ts[:-1])  # (K,), t_K = 0 is DDIM's x_0
    alpha_bar = (1 / (1 + sigmas ** 2)).flip(0)  # index 0 = the smallest noise level
    scale = (alpha_bar.sqrt() / (1 - ts[:-1].flip(0)))  # x_vp / x_flow at each index

    def eps_model(x_vp, index):  # E[eps | x_t] = x_t + (1 - t) v*(x_t, t) in the flow's coordinates
        t = ts[:-1].flip(0)[index][:, None]
        x_flow = x_vp / scale[index][:, None]
        return x_flow + (1 - t) * lesson.exact_velocity(x_flow, t, 0.01)

    steps = len(alpha_bar)  # visits every index, from steps - 1 down to 0
    trajectory = multimodal_DDPM.sample(eps_model, alpha_bar, x * scale[-1], "ddim", steps)
    return [x_vp / s for x_vp, s in zip(trajectory, list(scale.flip(0)) + [1.0])]


@pytest.mark.parametrize("spacing, steps", [("karras", 20), ("uniform", 10)])
def test_euler_on_the_path_is_lesson_6_ddim_step_for_step(spacing, steps):
    """DDIM cannot start at t = 1 (abar = 0: its x0_hat divides by sqrt(abar)), so both start at
    the grid's second time, from the same point, and agree after every step to float64 rounding."""
    torch.manual_seed(0)
    ts = lesson.time_grid(spacing, steps, 0.002, 7.0).double()[1:]
    x = torch.randn(500, 2).double() * ts[0]  # any starting point
    flow = lesson.euler(lambda x, t: lesson.exact_velocity(x, t, 0.01), ts, x)
    ddim = lesson6_ddim_from(ts, x)
    assert len(flow) == len(ddim) == len(ts)
    for a, b in zip(flow, ddim):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)
    assert torch.allclose(lesson.ddim(lambda x, t: lesson.exact_velocity(x, t, 0.01), ts, x),
                          flow[-1], rtol=1e-9, atol=1e-11)  # the lesson's own DDIM, in y


def test_time_grids():
    uniform = lesson.time_grid("uniform", 4, 0.002, 7.0)
    assert torch.allclose(uniform, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    karras = lesson.time_grid("karras", 21, 0.002, 7.0)
    assert karras.shape == (22,) and karras[0] == 1 and karras[-1] == 0
    assert karras[20].item() == pytest.approx(0.002) and bool((karras[1:] < karras[:-1]).all())
    assert karras[10].item() == pytest.approx(((1 + 0.002 ** (1 / 7)) / 2) ** 7, rel=1e-5)


def test_training_times_follow_their_distributions():
    torch.manual_seed(0)
    cfg = type("cfg", (), {"device": "cpu", "sigma_min": 0.002, "sigma_max": 20.0})
    cfg.t_sampling = "uniform"
    t = lesson.draw_times(100000, cfg)
    assert t.shape == (100000, 1) and t.mean().item() == pytest.approx(0.5, abs=0.01)
    cfg.t_sampling = "log_sigma"
    sigma = (lambda t: t / (1 - t))(lesson.draw_times(100000, cfg))  # t = sigma / (1 + sigma)
    assert sigma.min().item() >= 0.002 * 0.999 and sigma.max().item() <= 20.0 * 1.001
    assert sigma.log().median().item() == pytest.approx(np.log(0.2), abs=0.05)  # log-uniform


def test_training_regresses_the_velocity():
    """A short training run moves the network towards v* = E[eps - x0 | x_t], not away from it: at
    t = 0.5 its squared distance to v* falls well below that of predicting 0."""
    torch.manual_seed(0)
    cfg = types.SimpleNamespace(device="cpu", sigma_data=0.01, nb_epochs=300, batch_size=512,
                                lr=8e-3, t_sampling="uniform", sigma_min=0.002, sigma_max=20.0)
    model = lesson.VelocityModel(2, 32, 3)
    lesson.train(model, lesson.sample_data, cfg)
    x0 = lesson.sample_data(4000, cfg)
    x = 0.5 * x0 + 0.5 * torch.randn_like(x0)
    exact = lesson.exact_velocity(x, 0.5, 0.01)
    with torch.no_grad():
        learned = model(x, torch.full((4000, 1), 0.5))
    assert ((learned - exact) ** 2).mean() < 0.2 * (exact ** 2).mean()


def test_velocity_model_sees_the_time():
    torch.manual_seed(0)
    model = lesson.VelocityModel(2, 16, 3)
    x = torch.randn(8, 2)
    with torch.no_grad():
        near, far, end = (model(x, torch.full((8, 1), t)) for t in (0.001, 0.01, 1.0))
    assert not torch.allclose(near, far) and torch.isfinite(end).all()


def test_euler_with_the_exact_field_needs_the_karras_spacing():
    """100 Euler steps with the exact field: the karras spacing reproduces the modes; evenly spaced
    steps end with modes a third too narrow, as the last step from t = 0.01 denoises."""
    torch.manual_seed(0)
    field, noise = (lambda x, t: lesson.exact_velocity(x, t, 0.01)), torch.randn(8000, 2)
    karras = lesson.euler(field, lesson.time_grid("karras", 100, 0.002, 7.0), noise)[-1]
    assert_modes(karras, MODES, 0.01, share_tolerance=0.02, max_off_mode=0.001, std_tolerance=0.05)
    uniform = lesson.euler(field, lesson.time_grid("uniform", 100, 0.002, 7.0), noise)[-1]
    stds = lesson.mode_report(uniform, 0.01)[2]
    assert max(stds) < 0.75 * 0.01, stds


def test_bad_t_min_gives_one_line(run, tmp_path):
    result = run("flow_matching.py", "--t_min", "1.5", "--out", tmp_path)
    assert result.returncode != 0 and result.stderr.strip().startswith("error: --t_min")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.quality
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_run_meets_the_targets(run, tmp_path, seed):
    result = run("flow_matching.py", "--seed", seed, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    samples = np.load(tmp_path / "samples.npy")
    assert samples.shape == np.load(tmp_path / "data.npy").shape == (10000, 2)
    assert_modes(samples, MODES, 0.01, share_tolerance=0.03, max_off_mode=0.0099,
                 std_tolerance=0.20)
