"""Closed forms for Gaussian-mixture data, used as ground truth by the tests.

For x = x0 + sigma * n with x0 ~ sum_k w_k N(mu_k, s^2 I), the optimal denoiser E[x0 | x] is the posterior
weight of each component times that component's posterior mean mu_k + s^2 / (s^2 + sigma^2) (x - mu_k).
"""
import torch


def mixture_denoiser(means, std, weights=None):
    """The exact D(x, sigma) = E[x0 | x] for the mixture; sigma may be a scalar or shaped (n, 1)."""
    means = torch.as_tensor(means, dtype=torch.float32).reshape(len(means), -1)  # (K, d)
    weights = torch.full((len(means),), 1 / len(means)) if weights is None else torch.as_tensor(weights)

    def denoiser(x, sigma):  # x: (n, d)
        var = (std ** 2 + torch.as_tensor(sigma, dtype=x.dtype) ** 2).reshape(-1, 1)  # (n or 1, 1)
        offsets = x[:, None, :] - means.to(x)  # (n, K, d)
        logits = weights.log().to(x) - (offsets ** 2).sum(-1) / (2 * var)  # (n, K); equal stds: same constants
        component_means = means.to(x) + (std ** 2 / var)[:, :, None] * offsets  # (n, K, d)
        return (logits.softmax(-1)[..., None] * component_means).sum(1)  # (n, d)

    return denoiser


def mode_statistics(x, means, std):
    """Shares of samples nearest each mean, share farther than 5 std from all, and the RMS std of each mode."""
    x, means = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(means, dtype=torch.float32)
    distance = torch.cdist(x, means)
    nearest, near = distance.argmin(1), distance.min(1).values <= 5 * std
    shares = torch.stack([(nearest == k).float().mean() for k in range(len(means))])
    stds = torch.stack([x[(nearest == k) & near].var(0).mean().sqrt() for k in range(len(means))])
    return shares, 1 - near.float().mean().item(), stds


def assert_modes(x, means, std, share_tolerance, max_off_mode, std_tolerance):
    """Each mode holds 1/K of the samples to within share_tolerance, at most max_off_mode of them lie farther than
    5 std from every mode, and each mode's std is within std_tolerance (relative) of std."""
    shares, off_mode, stds = mode_statistics(x, means, std)
    assert ((shares - 1 / len(means)).abs() <= share_tolerance).all(), shares
    assert off_mode <= max_off_mode, off_mode
    assert ((stds / std - 1).abs() <= std_tolerance).all(), stds


def gaussian_step_posterior(prior_mean, prior_var, x_t, beta):
    """Bayes' rule for x_{t-1} ~ N(prior_mean, prior_var) and x_t | x_{t-1} ~ N(sqrt(1 - beta) x_{t-1}, beta):
    the mean and variance of x_{t-1} | x_t. With prior N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}) it is q(x_{t-1} | x_t, x0);
    with the marginal of Gaussian data it is the exact reverse step."""
    var = 1 / (1 / prior_var + (1 - beta) / beta)
    return var * (prior_mean / prior_var + (1 - beta) ** 0.5 * x_t / beta), var
