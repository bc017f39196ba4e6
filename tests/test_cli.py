"""Bad input ends a lesson with one clear line on stderr and a non-zero exit, never a traceback."""
import pytest
import torch

from common import parse_config
from conftest import ROOT


def assert_clean_error(result, *words):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("args, words", [
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--nb_epochs", "-5"], ["--nb_epochs", "-5"]),
    (["--nb_epochs", "many"], ["--nb_epochs"]),
    (["--lr", "nan"], ["--lr"]),
    (["--lr", "0"], ["--lr must be positive"]),
    (["--sigma_min", "50"], ["--sigma_min"]),
    (["--no_such_flag", "1"], ["--no_such_flag"]),
])
def test_bad_values_give_one_line(run, tmp_path, args, words):
    assert_clean_error(run("simple_1Diffusion.py", *args, "--out", tmp_path), *words)


def test_unwritable_out_gives_one_line(run, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a folder cannot be made inside a file, even by root
    assert_clean_error(run("simple_1Diffusion.py", "--out", blocker / "results"), "--out")


@pytest.mark.parametrize("device, available", [("cuda", torch.cuda.is_available()),
                                               ("mps", torch.backends.mps.is_available())])
def test_unavailable_device_gives_one_line(run, tmp_path, device, available):
    if available:
        pytest.skip(f"{device} is available here")
    assert_clean_error(run("simple_1Diffusion.py", "--device", device, "--out", tmp_path), "not available")


def test_nan_loss_stops_the_run(run, tmp_path):
    result = run("simple_1Diffusion.py", "--lr", "1e30", "--nb_epochs", "50", "--out", tmp_path)
    assert_clean_error(result, "loss became", "--lr")
    assert not (tmp_path / "samples.npy").exists()  # no silent wrong result


def test_help_lists_every_constant(run):
    result = run("simple_multimodal.py", "-h")
    assert result.returncode == 0
    for flag in ("--sigma_data", "--nb_epochs", "--lr", "--batch_size", "--gamma", "--seed", "--device", "--out"):
        assert flag in result.stdout


@pytest.mark.parametrize("script", sorted(path.name for path in (ROOT / "codes").glob("*.py")))
def test_help_prints_for_every_script(capsys, script):
    """argparse reads a % in a help text as a format: the comment "FLD 24-30% higher" once crashed -h."""
    with pytest.raises(SystemExit) as stop:
        parse_config("", ROOT / "codes" / script, argv=["-h"])
    assert stop.value.code == 0
    assert "--seed" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["--sampler", "euler"], ["--sampler", "euler"]),
    (["--sampling_steps", "2000"], ["--sampling_steps", "--T"]),
])
def test_bad_sampler_settings_give_one_line(run, tmp_path, args, words):
    assert_clean_error(run("multimodal_DDPM.py", *args, "--out", tmp_path), *words)


@pytest.mark.parametrize("args, words", [
    (["--schedule", "quadratic"], ["--schedule", "quadratic"]),
    (["--sampler", "ddim", "--T", "50"], ["--sampling_steps", "--T"]),  # DDIM's default 100 steps > T
])
def test_bad_spiral_settings_give_one_line(run, tmp_path, args, words):
    assert_clean_error(run("spiral_DDPM.py", *args, "--out", tmp_path), *words)


def test_per_step_batchnorm_needs_two_samples(run, tmp_path):
    assert_clean_error(run("simple_DDPM.py", "--batch_size", "1", "--out", tmp_path), "--batch_size", "BatchNorm")
