"""Flow matching on lessons 3 and 6's four Gaussians: learn a velocity, not a denoiser; it is DDIM.

Conditional flow matching (Lipman et al. 2023, eq. 23, t reversed): mix data and noise on x_t =
(1 - t) x0 + t eps, train v(x_t, t) to predict its velocity eps - x0, sample with Euler steps of
dx/dt = v from t = 1 (noise) to 0, with the network and with the exact field E[eps - x0 | x_t]. As
x_t / (1 - t) = x0 + sigma eps, sigma = t / (1 - t), each Euler step is a DDIM step (Song et al.
2021, eq. 12, eta = 0) in sigma: one ODE (Gao et al. 2024, "Diffusion meets flow matching").

    python codes/flow_matching.py          # about 25 s on a 2-core CPU; -h lists every flag
"""
import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from common import check, check_finite, parse_config, save_figure, save_results, show_figures
from multimodal_DDPM import mode_error  # lesson 6's one number for quality
from simple_multimodal import MODES, mode_report, sample_data  # lesson 3's data and statistics

sigma_data = 0.01  # std of each of the four Gaussians at (+-1, +-1)
hidden = 96  # width of the network's hidden layers
n_frequencies = 7  # Fourier features of the input at frequencies 2^k pi, k < n_frequencies
nb_epochs = 2000  # training iterations, each on a fresh batch
batch_size = 1536  # samples per training iteration
lr = 8e-3  # Adam learning rate, annealed to 0 along a cosine
t_sampling = "uniform"  # uniform|log_sigma: training t ~ U(0, 1), or lesson 3's log-uniform sigma
sigma_min = 0.002  # with --t_sampling log_sigma: smallest sigma = t / (1 - t) drawn
sigma_max = 20.0  # with --t_sampling log_sigma: largest sigma drawn
spacing = "karras"  # uniform|karras: Euler steps evenly spaced in t, or in t^(1/rho) (EDM eq. 5)
t_min = 0.002  # last time before t = 0 of the karras spacing
rho = 7.0  # curvature of the karras spacing: a larger rho spends more steps near t = 0
sampling_steps = 100  # Euler steps from t = 1 to t = 0
n_samples = 10000  # samples generated at the end
n_curve = 4000  # samples per point of the quality-against-steps curves


# ---------------------------------------------------------------------- data and path
def exact_velocity(x, t, sigma_data):
    """v*(x, t) = E[eps - x0 | x_t = x] by Bayes' rule: given its mode mu, x_t ~ N((1-t) mu,
    ((1-t)^2 s^2 + t^2) I) is jointly Gaussian with x0 and eps (s = sigma_data)."""
    mu, t = MODES.to(x), torch.as_tensor(t).to(x).reshape(-1, 1, 1)  # (4, 2), (n or 1, 1, 1)
    var = (1 - t) ** 2 * sigma_data ** 2 + t ** 2  # Var(x_t | mode), per coordinate
    offset = x[:, None, :] - (1 - t) * mu  # (n, 4, 2): x_t minus its mean under each mode
    posterior = (-(offset ** 2).sum(-1, keepdim=True) / (2 * var)).softmax(1)  # (n, 4, 1)
    eps_hat = t / var * offset  # E[eps | x_t, mode], as Cov(eps, x_t) = t
    x0_hat = mu + (1 - t) * sigma_data ** 2 / var * offset  # Cov(x0, x_t) = (1 - t) s^2
    return (posterior * (eps_hat - x0_hat)).sum(1)  # (n, 2)


# ---------------------------------------------------------------------- network
class VelocityModel(nn.Module):
    """v_theta(x_t, t): an MLP on Fourier features of x_t (Tancik et al. 2020), FiLM by the time
    (lesson 6's network), told log(t / (1 - t)) = log sigma: t = 0.001 and 0.01 must differ."""

    def __init__(self, dim, hidden, n_frequencies):
        super().__init__()
        self.register_buffer("frequencies", 2.0 ** torch.arange(n_frequencies) * torch.pi)  # (K,)
        self.register_buffer("time_frequencies", torch.arange(1, 9) * torch.pi / 8)  # (8,)
        self.input = nn.Linear(dim * (1 + 2 * n_frequencies) + 1, hidden)
        self.film = nn.Linear(17, 4 * hidden)  # time -> scale and shift of both hidden layers
        self.hidden = nn.ModuleList([nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)])
        self.output = nn.Linear(hidden, dim)

    def forward(self, x, t):  # x: (n, dim), t: (n, 1) in (0, 1]
        angles = (x[:, :, None] * self.frequencies).flatten(1)  # (n, dim * K)
        s = (t / (1 - t).clamp(min=1e-6)).log() / 4  # (n, 1): log sigma, scaled
        waves = s * self.time_frequencies  # (n, 8)
        film = self.film(torch.cat([s, waves.sin(), waves.cos()], 1)).chunk(4, dim=1)
        h = nn.functional.silu(self.input(torch.cat([x, angles.sin(), angles.cos(), s], 1)))
        for layer, scale, shift in zip(self.hidden, film[::2], film[1::2]):
            h = nn.functional.silu(layer(h) * (1 + scale) + shift)
        return self.output(h)  # (n, dim)


# ---------------------------------------------------------------------- training
def draw_times(n, cfg):
    """t ~ U(0, 1), or t = sigma / (1 + sigma) with log sigma uniform (lesson 3's draw)."""
    u = torch.rand(n, 1, device=cfg.device).clamp(min=1e-5)  # (n, 1)
    sigma = cfg.sigma_min * (cfg.sigma_max / cfg.sigma_min) ** u
    return u if cfg.t_sampling == "uniform" else sigma / (1 + sigma)


def train(model, sample_data, cfg):
    """Regress each sample's velocity eps - x0; the minimiser is E[eps - x0 | x_t] (Theorem 2)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.nb_epochs)
    for epoch in range(cfg.nb_epochs):
        x0 = sample_data(cfg.batch_size, cfg)  # (B, 2)
        eps = torch.randn_like(x0)
        t = draw_times(cfg.batch_size, cfg)  # (B, 1)
        x_t = (1 - t) * x0 + t * eps
        loss = ((model(x_t, t) - (eps - x0)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        check_finite(loss.item(), epoch)


# ---------------------------------------------------------------------- samplers
def time_grid(spacing, steps, t_min, rho):
    """1 = t_0 > ... > t_steps = 0, evenly in t, or in t^(1/rho) from 1 to t_min (Karras eq. 5)."""
    if spacing == "uniform":
        return torch.linspace(1, 0, steps + 1)
    ramp = torch.linspace(0, 1, steps)
    return torch.cat([(1 + ramp * (t_min ** (1 / rho) - 1)) ** rho, torch.zeros(1)])


@torch.no_grad()
def euler(velocity, ts, x):
    """x <- x + (t' - t) v(x, t) for each pair t > t' of the grid; returns [x_1, ..., x_0]."""
    trajectory = [x]
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * velocity(x, t.expand(len(x), 1))
        trajectory.append(x)
    return trajectory


@torch.no_grad()
def ddim(velocity, ts, x):
    """DDIM's eq. 12 (eta = 0) in y = x / (1 - t) = x0 + sigma eps: keep the predicted noise, at
    the next sigma. The field predicts both: x = (1-t) x0_hat + t eps_hat, v = eps_hat - x0_hat."""
    for t, t_next in zip(ts[:-1], ts[1:]):
        v = velocity(x, t.expand(len(x), 1))
        x0_hat, eps_hat = x - t * v, x + (1 - t) * v
        y_next = x0_hat + t_next / (1 - t_next) * eps_hat  # eq. 12 divided by sqrt(abar')
        x = (1 - t_next) * y_next
    return x


def run(cfg):
    check(0 < cfg.t_min < 1, f"--t_min must lie between 0 and 1, got {cfg.t_min}")
    model = VelocityModel(2, cfg.hidden, cfg.n_frequencies).to(cfg.device)
    train(model, sample_data, cfg)
    ts = time_grid(cfg.spacing, cfg.sampling_steps, cfg.t_min, cfg.rho).to(cfg.device)
    noise = torch.randn(cfg.n_samples, 2, device=cfg.device)  # x_1 = eps
    return model, ts, euler(model, ts, noise)


# ---------------------------------------------------------------------- results
if __name__ == "__main__":
    cfg = parse_config(__doc__, __file__)
    model, ts, trajectory = run(cfg)
    samples, data, noise = trajectory[-1], sample_data(cfg.n_samples, cfg), trajectory[0]
    save_results(cfg.out, samples, data)
    exact = lambda x, t: exact_velocity(x, t, cfg.sigma_data)  # the closed form: no training

    gap = (euler(exact, ts, noise)[-1] - ddim(exact, ts, noise)).abs().max().item()
    print(f"exact field: Euler in t against DDIM in sigma = t / (1 - t), same grid and noise: max "
          f"|difference| {gap:.1e} (float32 rounding: the same steps)")
    start = noise[:cfg.n_curve]  # the same noise for every curve: they differ by field and grid
    floor, curves = mode_error(data[:cfg.n_curve], cfg.sigma_data), {}
    step_counts = [5, 10, 20, 50, 100]
    for name, field in (("network", model), ("exact field", exact)):
        for kind in ("uniform", "karras"):
            grids = [time_grid(kind, k, cfg.t_min, cfg.rho).to(noise) for k in step_counts]
            curve = [mode_error(euler(field, g, start)[-1], cfg.sigma_data) for g in grids]
            curves[f"{name}, {kind} spacing"] = curve
            print(f"{name:11s} {kind:7s} spacing: mode error at {step_counts} steps: "
                  + " ".join(f"{e:.4f}" for e in curve) + f" (fresh data {floor:.4f})")

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    paths = torch.stack(trajectory)[:, :300].cpu()  # (steps + 1, 300, 2)
    axes[0].plot(paths[..., 0], paths[..., 1], lw=0.4, alpha=0.5)
    axes[0].set(title=f"the network's {cfg.sampling_steps} Euler steps, t = 1 to 0", aspect="equal")
    for label, curve in curves.items():
        axes[1].loglog(step_counts, curve, "o-" if "karras" in label else "o--", label=label)
    axes[1].axhline(floor, color="k", ls=":", label="fresh data (sampling noise)")
    axes[1].set(title="quality against steps", xlabel="Euler steps", ylabel="mode error")
    axes[1].legend()
    save_figure(fig, cfg.out / "flow_matching.png")

    shares, off_mode, stds = mode_report(samples, cfg.sigma_data)
    for mode, share, std in zip(MODES.tolist(), shares, stds):
        print(f"mode ({mode[0]:+.0f}, {mode[1]:+.0f}): share {share:.3f} (target 0.22-0.28)  "
              f"std {std:.4f} (target {0.8 * cfg.sigma_data:.4f}-{1.2 * cfg.sigma_data:.4f})")
    print(f"off-mode (farther than 5 std from every mode): {off_mode:.4f} (target < 0.01)")
    show_figures()
