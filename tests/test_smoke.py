"""Every script in codes/ runs end to end with tiny settings and writes its outputs: inside the test process, which
spares a fresh import of torch per script, and, for one lesson, as the real subprocess a user starts."""
from pathlib import Path

import numpy as np
import pytest

from conftest import CODES
from test_mnist import MNIST_SCRIPTS

TINY_TOY = ["--nb_epochs", "5", "--test_size", "64", "--N", "6"]
TINY_FM = ["--nb_epochs", "5", "--n_samples", "64", "--n_curve", "64", "--sampling_steps", "8"]
TINY_DDPM = ["--nb_epochs", "5", "--n_samples", "64", "--T", "8"]  # T < 10 and T < 50: edge cases of the printing
# script: (extra arguments, files expected in --out, files expected in --assets)
SCRIPTS = {
    "simple_1Diffusion.py": (TINY_TOY, ["training_and_sampling.png"], []),
    "simple_1Diffusion_video.py": (TINY_TOY, [], ["pdf_diffusion_gif.gif", "noise_scales.png"]),
    "simple_2Diffusion.py": (TINY_TOY, ["simple_2Diffusion.png"], ["simple_2Diffusion.png"]),
    "simple_multimodal.py": (TINY_TOY, ["training_and_sampling.png"], []),
    "simple_multimodal_video.py": (TINY_TOY + ["--n_shown", "50"], [], ["denoising_4.gif"]),
    "single_DDPM.py": (TINY_DDPM, ["single_DDPM.png"], ["single_DDPM.png"]),
    "simple_DDPM.py": (TINY_DDPM, ["simple_DDPM.png"], ["simple_DDPM.png"]),
    "multimodal_DDPM.py": (TINY_DDPM + ["--sampling_steps", "8"], ["multimodal_DDPM.png", "ddpm_vs_ddim_steps.png"],
                           ["ddpm_vs_ddim_steps.png"]),
    "detailed_DDPM.py": (TINY_DDPM + ["--n_frames", "5"], ["detailed_DDPM.gif"], ["detailed_DDPM.gif"]),
    "multimodal_DDPM_video.py": (TINY_DDPM + ["--sampling_steps", "8", "--n_shown", "50"], [], ["multimodal_DDPM.gif"]),
    "spiral_DDPM.py": (TINY_DDPM + ["--sampling_steps", "8"], ["spiral_DDPM.png"], []),
    "spiral_DDPM_video.py": (TINY_DDPM + ["--n_frames", "4", "--n_shown", "50"], [], ["spiral_DDPM.gif", "spiral_forward.png"]),
    "ddpm_coefficients.py": (["--T", "50"], [], ["ddpm_coefficients.png"]),
    "nonequilibrium_2015.py": (TINY_DDPM, ["bound.png", "nonequilibrium_2015.png"], ["nonequilibrium_2015.png"]),
    "guidance_multimodal.py": (TINY_TOY + ["--exact_size", "64"], ["guidance_multimodal.png"],
                               ["guidance_multimodal.png"]),
    "flow_matching.py": (TINY_FM, ["flow_matching.png"], []),
    "flow_matching_video.py": (TINY_FM + ["--n_frames", "5", "--n_shown", "50"], [], ["flow_matching.gif"]),
    "samplers.py": (["--nb_epochs", "5", "--n_exact", "500", "--n_network", "200", "--n_floor", "2", "--sampler",
                     "ancestral", "--nfe", "7"], ["samplers.png"], ["samplers.png"]),
}
NO_SAMPLES = {"ddpm_coefficients.py"}  # it plots the schedule; nothing is sampled
NOT_LESSONS = {"common.py"}  # the plumbing; mnist_plumbing.py is among the MNIST_SCRIPTS


def test_every_script_has_a_smoke_run():
    assert {p.name for p in CODES.glob("*.py")} - NOT_LESSONS == set(SCRIPTS) | set(MNIST_SCRIPTS)


def check_outputs(result, script, out, assets):
    _, out_files, asset_files = SCRIPTS[script]
    assert result.returncode == 0, result.stderr
    for name in out_files:
        assert (out / name).stat().st_size > 0, name
    for name in asset_files:
        assert (assets / name).stat().st_size > 0, name
    if script not in NO_SAMPLES:
        samples, data = np.load(out / "samples.npy"), np.load(out / "data.npy")
        assert samples.shape == data.shape and np.isfinite(samples).all()
        assert f"wrote {Path(out) / 'samples.npy'}" in result.stdout


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_smoke(run_here, tmp_path, script):
    args, _, asset_files = SCRIPTS[script]
    out, assets = tmp_path / "out", tmp_path / "assets"
    extra = ["--assets", assets] if asset_files else []
    check_outputs(run_here(script, *args, *extra, "--out", out), script, out, assets)


def test_smoke_as_a_subprocess(run, tmp_path):
    check_outputs(run("simple_1Diffusion.py", *TINY_TOY, "--out", tmp_path), "simple_1Diffusion.py", tmp_path, None)


def test_same_seed_same_numbers_other_seed_other_numbers(run_here, tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert run_here("simple_1Diffusion.py", *TINY_TOY, "--seed", seed, "--out", tmp_path / name).returncode == 0
    a, b, c = (np.load(tmp_path / name / "samples.npy") for name in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
