"""The naive-diffusion lessons (1-3) against closed forms: the Sigmas ladder, the scalings of
Karras et al. 2022 (Table 1), and the samplers driven by the exact denoiser of the data (no training
involved), so that any error in a sampler shows.

For Gaussian data N(mu, s^2) and the exact denoiser D(x, sigma) = mu + s^2 / (s^2 + sigma^2)
(x - mu), every sampler step is an affine map of x. Noise standardised to sample mean 0 and std 1
therefore gives sample statistics with no sampling error: a few hundred points measure a step."""
import math

import pytest
import torch

import simple_1Diffusion
import simple_2Diffusion
import simple_multimodal
from ground_truth import assert_modes, mixture_denoiser, mode_statistics

LESSONS = [simple_1Diffusion, simple_2Diffusion, simple_multimodal]
S = 0.01  # the lessons' sigma_data


def make_denoiser(lesson, dim, width, sigma_rms):
    if lesson is simple_1Diffusion:  # lesson 1 keeps the blog post's Denoiser(width): one dimension
        return lesson.Denoiser(width, sigma_rms)
    return lesson.Denoiser(dim, width, sigma_rms)


def standard_normal(n, dim):
    """n points whose sample mean is exactly 0 and sample std exactly 1 per coordinate (float64)."""
    z = torch.randn(n, dim, dtype=torch.float64)
    return (z - z.mean(0)) / z.std(0)


def gaussian_at(sigma, mu, n=500):
    """Exactly standardised samples of the noised data N(mu, S^2 + sigma^2), one row per point."""
    mu = torch.tensor(mu, dtype=torch.float64)
    return mu + math.sqrt(S ** 2 + sigma ** 2) * standard_normal(n, len(mu))


@pytest.mark.parametrize("lesson", LESSONS)
def test_karras_ladder_matches_its_formula(lesson):
    Sigmas = lesson.karras_sigmas(0.002, 20.0, 41, 7.0)
    assert Sigmas.shape == (42,)
    assert Sigmas[0].item() == pytest.approx(20.0) and Sigmas[40].item() == pytest.approx(0.002)
    assert Sigmas[-1].item() == 0 and bool((Sigmas[1:] < Sigmas[:-1]).all())
    middle = ((20.0 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7  # i = (N-1)/2: halfway in sigma^(1/7)
    assert Sigmas[20].item() == pytest.approx(middle, rel=1e-5)
    linear = lesson.karras_sigmas(1.0, 5.0, 5, 1.0)  # rho = 1: evenly spaced
    assert torch.allclose(linear, torch.tensor([5.0, 4, 3, 2, 1, 0]))


class Recorder(torch.nn.Module):
    """Stands in for the network F inside a Denoiser: records its input, returns a fixed output."""

    def __init__(self, output):
        super().__init__()
        self.output, self.seen = output, None

    def forward(self, h):
        self.seen = h
        return self.output


@pytest.mark.parametrize("lesson, dim", [(simple_1Diffusion, 1), (simple_2Diffusion, 2),
                                         (simple_multimodal, 2)])
def test_denoiser_scalings_follow_karras_table_1(lesson, dim):
    """D = c_skip x + c_out F(c_in x, c_noise), Table 1 with sigma_data = sigma_rms: a network that
    records its input and returns a random F checks all four scalings, at sigma from 0.002 to 20."""
    torch.manual_seed(0)
    rms = 1.5
    denoiser = make_denoiser(lesson, dim, 16, rms)
    sigma = torch.tensor([[0.002], [0.1], [0.5], [1.5], [4.0], [20.0]])
    x, F = torch.randn(6, dim), torch.randn(6, dim)
    denoiser.net = Recorder(F)
    D = denoiser(x, sigma)
    total = sigma ** 2 + rms ** 2
    c_skip = rms ** 2 / total
    c_out = sigma * rms / total.sqrt()
    c_in = 1 / total.sqrt()
    c_noise = sigma.log() / 4
    assert torch.allclose(denoiser.net.seen, torch.cat([c_in * x, c_noise], dim=1))
    assert torch.allclose(D, c_skip * x + c_out * F)


@pytest.mark.parametrize("lesson, dim", [(simple_1Diffusion, 1), (simple_2Diffusion, 2),
                                         (simple_multimodal, 2)])
def test_denoiser_network_is_told_sigma(lesson, dim):
    """A network that ignores the noise level cannot denoise. Through forward(): x = u / c_in(sigma)
    shows the network the same u at two sigmas; its output F = (D - c_skip x) / c_out must
    differ."""
    torch.manual_seed(0)
    rms = 1.0
    denoiser = make_denoiser(lesson, dim, 16, rms)
    u = torch.randn(8, dim)
    outputs = []
    for level in (0.1, 2.0):
        sigma = torch.full((8, 1), level)
        total = sigma ** 2 + rms ** 2
        x = u * total.sqrt()  # c_in x = u
        with torch.no_grad():
            D = denoiser(x, sigma)
        outputs.append((D - rms ** 2 / total * x) / (sigma * rms / total.sqrt()))
    assert (outputs[0] - outputs[1]).abs().max().item() > 1e-3


def euler_step(x, sigma, sigma_next, mu):
    """The plain Euler step x <- D + (sigma_next / sigma)(x - D) with the exact denoiser. D is
    lesson 1's own last step: on the ladder [sigma, 0] its sampler takes one Euler step, to D(x)."""
    ladder = torch.tensor([sigma, 0.0]).double()
    D = simple_1Diffusion.sample(mixture_denoiser([mu], S), ladder, x)[-1]
    return D + sigma_next / sigma * (x - D)


def test_the_lessons_last_step_is_the_exact_denoiser():
    """Sigmas = [sigma, 0]: one Euler step, to the posterior mean D(x), of variance
    s^4 / (s^2 + sigma^2)."""
    x = gaussian_at(0.02, [1.0])
    ladder = torch.tensor([0.02, 0.0]).double()
    D = simple_1Diffusion.sample(mixture_denoiser([[1.0]], S), ladder, x)[-1]
    assert D.mean().item() == pytest.approx(1.0)
    assert D.std().item() == pytest.approx(S ** 2 / math.sqrt(S ** 2 + 0.02 ** 2), rel=1e-6)


def test_euler_step_with_the_exact_denoiser_lands_below_the_target():
    """From N(mu, s^2 + sigma^2) the Euler step reaches the variance (s^2 + sigma sigma_next)^2 /
    (s^2 + sigma^2), not s^2 + sigma_next^2: below it for every step, 0.95 x the target std for
    s = 0.01 and a step 0.02 -> 0.01, on target only in the small-step limit (error ~ step^2)."""
    sigma = 0.02
    errors = []
    for sigma_next in (0.015, 0.01, 0.005, 0.001, 0.0199, 0.018, 0.019):
        x = euler_step(gaussian_at(sigma, [1.0]), sigma, sigma_next, [1.0])
        variance = (S ** 2 + sigma * sigma_next) ** 2 / (S ** 2 + sigma ** 2)
        assert x.var().item() == pytest.approx(variance, rel=1e-6)
        assert x.mean().item() == pytest.approx(1.0)
        assert x.var().item() < S ** 2 + sigma_next ** 2
        errors.append(1 - x.var().item() / (S ** 2 + sigma_next ** 2))
    x = euler_step(gaussian_at(0.02, [1.0]), 0.02, 0.01, [1.0])
    ratio = x.std().item() / math.sqrt(S ** 2 + 0.01 ** 2)
    assert ratio == pytest.approx(0.949, abs=0.001)
    assert 3.5 < errors[-2] / errors[-1] < 4.5  # half the step, a quarter of the error: first order
    assert errors[4] < 1e-4  # a step of 0.5%: on target to within 0.01%


def test_heun_step_with_the_exact_denoiser_lands_on_the_target_to_second_order():
    """Lesson 1's sampler on the ladder [sigma, sigma_next]: one Heun step. From 0.02 to 0.01 it
    lands 2.8% above the target std (Euler: 5.1% below), and its variance error falls like the cube
    of the step, so that the error summed over a ladder falls like its square: second order."""
    exact = mixture_denoiser([[1.0]], S)
    errors = []
    for h in (0.5, 0.1, 0.05, 0.025):  # the step, as a fraction of sigma
        sigma, sigma_next = 0.02, 0.02 * (1 - h)
        ladder = torch.tensor([sigma, sigma_next]).double()
        x = simple_1Diffusion.sample(exact, ladder, gaussian_at(sigma, [1.0]))[-1]
        assert x.mean().item() == pytest.approx(1.0)
        errors.append(x.var().item() / (S ** 2 + sigma_next ** 2) - 1)
    assert math.sqrt(1 + errors[0]) == pytest.approx(1.028, abs=0.001)
    assert 7 < errors[1] / errors[2] < 10 and 7 < errors[2] / errors[3] < 9.5  # 8 = 2^3


@pytest.mark.parametrize("lesson, mu", [(simple_1Diffusion, [1.0]),
                                       (simple_2Diffusion, [-1.0, 1.0])])
def test_heun_sampler_with_the_exact_denoiser_reproduces_the_gaussian(lesson, mu):
    """The lessons' default ladder (40 levels from 20 to 0.002). Every step is affine, so
    standardised noise measures the sampler exactly: only Heun's and the prior's errors are left."""
    torch.manual_seed(0)
    Sigmas = lesson.karras_sigmas(0.002, 20.0, 40, 7.0).double()
    noise = 20.0 * standard_normal(1000, len(mu))
    x = lesson.sample(mixture_denoiser([mu], S), Sigmas, noise)[-1]
    mu = torch.tensor(mu, dtype=torch.float64)
    mean_error = (x.mean(0) - mu) / S
    std_ratio = x.std(0) / S
    # the prior N(0, 20^2) misses the noised data's mean by mu / 20 of their std: 0.05 sigma_data
    assert torch.allclose(mean_error, -0.05 * mu, atol=0.002), mean_error
    assert ((std_ratio - 1).abs() < 0.004).all(), std_ratio


@pytest.mark.parametrize("gamma, std_tolerance", [(0.0, 0.03), (0.41, 0.08)])
def test_churned_sampler_with_the_exact_denoiser_reproduces_the_four_modes(gamma, std_tolerance):
    """Plain Heun (gamma = 0) is within 2% of each mode's std; the churn's longer steps from
    sigma_hat overshoot it by 2-7% on 40 levels (sampling error of the std estimate: 1.1%)."""
    torch.manual_seed(0)
    Sigmas = simple_multimodal.karras_sigmas(0.002, 20.0, 40, 7.0)
    exact = mixture_denoiser(simple_multimodal.MODES, S)
    x = simple_multimodal.sample(exact, Sigmas, 20.0 * torch.randn(8000, 2), gamma)[-1]
    assert_modes(x, simple_multimodal.MODES, S, share_tolerance=0.015, max_off_mode=0.001,
                 std_tolerance=std_tolerance)


def test_churn_stays_inside_the_trained_range_of_sigma():
    """The network was trained for sigma <= sigma_max = Sigmas[0]: the churn never climbs above it,
    and it adds no noise before the last step, which lands on sigma = 0."""
    Sigmas = simple_multimodal.karras_sigmas(0.002, 20.0, 10, 7.0)
    exact, levels = mixture_denoiser(simple_multimodal.MODES, S), []

    def recording(x, sigma):
        levels.append(sigma.max().item())
        return exact(x, sigma)

    x = simple_multimodal.sample(recording, Sigmas, 20.0 * torch.randn(100, 2), 0.41)
    assert max(levels) == pytest.approx(20.0)
    assert levels[-1] == pytest.approx(0.002)  # the last step: Euler from sigma_min, no churn
    assert len(x) == 11


def test_mode_report_agrees_with_the_independent_statistics():
    torch.manual_seed(0)
    extra = torch.zeros(1000, dtype=torch.long)
    which = torch.cat([torch.arange(4).repeat(1000), extra])  # 40% of the points at mode 0
    x = simple_multimodal.MODES[which] + S * torch.randn(5000, 2) * torch.tensor([1.0, 1.2])
    x[-50:] = 0.0  # 1% of the points between the modes, taken from the extra ones at mode 0
    shares, off_mode, stds = simple_multimodal.mode_report(x, S)
    expected_shares, expected_off, expected_stds = mode_statistics(x, simple_multimodal.MODES, S)
    assert shares == pytest.approx(expected_shares.tolist())
    assert off_mode == pytest.approx(expected_off)
    assert stds == pytest.approx(expected_stds.tolist())
    assert off_mode == pytest.approx(0.01, abs=5e-4) and shares[0] == pytest.approx(0.4, abs=0.001)
    assert stds == pytest.approx([S * math.sqrt((1 + 1.44) / 2)] * 4, rel=0.05)  # RMS over the axes


def test_mixture_denoiser_is_the_posterior_mean():
    """The ground truth itself: for one Gaussian E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu)."""
    x = torch.linspace(-3, 3, 7)[:, None]
    expected = 1 + 0.25 / (0.25 + 4) * (x - 1)
    assert torch.allclose(mixture_denoiser([[1.0]], 0.5)(x, 2.0), expected)
    two = mixture_denoiser([[-1.0], [1.0]], 0.1)
    assert math.isclose(two(torch.zeros(1, 1), 1.0).item(), 0.0, abs_tol=1e-7)
    assert two(torch.full((1, 1), 3.0), 0.1).item() == pytest.approx(1 + 0.5 * 2, abs=1e-4)
