"""Bad input ends a lesson with one clear line on stderr and a non-zero exit, never a traceback; the flags are the
lesson's constants, and a constant that cannot be a flag stops the run naming its file and line."""
import pytest
import torch

from common import parse_config
from conftest import CODES, ROOT


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
    (["--method", "blog"], ["--method", "blog"]),
    (["--no_such_flag", "1"], ["--no_such_flag"]),
])
def test_bad_values_give_one_line(run_here, tmp_path, args, words):
    assert_clean_error(run_here("simple_1Diffusion.py", *args, "--out", tmp_path), *words)


@pytest.mark.parametrize("script", ["mnist_UNet.py", "mnist_reinjection.py", "mnist_guidance.py"])
@pytest.mark.parametrize("value", ["-1", "1", "1.5"])
def test_an_ema_decay_outside_0_to_1_gives_one_line(run_here, tmp_path, script, value):
    # no data and a mirror that refuses: a run that does not stop at the flag stops at the download
    result = run_here(script, "--ema_decay", value, "--out", tmp_path, "--data", tmp_path / "none",
                      "--mirror", "http://127.0.0.1:9/")
    assert_clean_error(result, "--ema_decay must lie in [0, 1)")


def test_unwritable_out_gives_one_line(run_here, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a folder cannot be made inside a file, even by root
    assert_clean_error(run_here("simple_1Diffusion.py", "--out", blocker / "results"), "--out")


@pytest.mark.parametrize("device, available", [("cuda", torch.cuda.is_available()),
                                               ("mps", torch.backends.mps.is_available())])
def test_unavailable_device_gives_one_line(run_here, tmp_path, device, available):
    if available:
        pytest.skip(f"{device} is available here")
    assert_clean_error(run_here("simple_1Diffusion.py", "--device", device, "--out", tmp_path), "not available")


def test_nan_loss_stops_the_run(run, tmp_path):
    """As a real subprocess: what a user sees on the terminal is one line, and no samples are written."""
    result = run("simple_1Diffusion.py", "--lr", "1e30", "--nb_epochs", "50", "--out", tmp_path)
    assert_clean_error(result, "loss became", "--lr")
    assert not (tmp_path / "samples.npy").exists()  # no silent wrong result


def test_help_lists_every_constant(run_here):
    result = run_here("simple_multimodal.py", "-h")
    assert result.returncode == 0
    for flag in ("--sigma_data", "--nb_epochs", "--lr", "--batch_size", "--gamma", "--seed", "--device", "--out"):
        assert flag in result.stdout


@pytest.mark.parametrize("script", sorted(path.name for path in (ROOT / "codes").glob("*.py")))
def test_help_prints_for_every_script(capsys, script):
    """argparse reads a % in a help text as a format: a comment "24-30% higher" once crashed -h."""
    with pytest.raises(SystemExit) as stop:
        parse_config("", ROOT / "codes" / script, argv=["-h"])
    assert stop.value.code == 0
    assert "--seed" in capsys.readouterr().out


@pytest.mark.parametrize("line, words", [
    ("lr = 6e-3 / 2  # the learning rate", ["line 3", "lr", "plain value"]),
    ("lr = 6e-3", ["line 3", "lr", "help"]),
    ("check = 3  # a flag that would hide the imported check()", ["line 3", "check", "hides"]),
    ("lr: float = 6e-3  # annotated", ["line 3", "own `name = value  # help` line"]),
    ("lr = width = 6e-3  # chained", ["line 3", "own `name = value  # help` line"]),
    ("lr, width = 6e-3, 8  # unpacked", ["line 3", "own `name = value  # help` line"]),
    ("lr = {[1]: 2}  # an unhashable key", ["line 3", "lr", "plain value"]),
])
def test_a_constant_that_cannot_be_a_flag_names_its_file_and_line(tmp_path, line, words):
    """Every top-level lowercase name of a lesson becomes a flag; one that cannot must stop the run with one line,
    not end in an AttributeError when the lesson reads cfg.lr."""
    lesson = tmp_path / "lesson.py"
    lesson.write_text(f"from common import check\nMODES = [1, 2]  # a constant: not a flag\n{line}\n")
    with pytest.raises(SystemExit) as stop:
        parse_config("", lesson, argv=[])
    message = str(stop.value)
    assert message.startswith("error: lesson.py, ") and "\n" not in message
    for word in words:
        assert word in message


def test_tutorial_method_sets_the_blog_posts_constants_unless_a_flag_says_otherwise(tmp_path):
    import simple_1Diffusion as lesson
    presets = {"method": {"tutorial": lesson.TUTORIAL}}
    edm = parse_config("", CODES / "simple_1Diffusion.py", argv=["--out", str(tmp_path)], presets=presets)
    blog = parse_config("", CODES / "simple_1Diffusion.py", argv=["--method", "tutorial", "--out", str(tmp_path)],
                        presets=presets)
    mixed = parse_config("", CODES / "simple_1Diffusion.py", argv=["--method", "tutorial", "--N", "20", "--out",
                                                                   str(tmp_path)], presets=presets)
    assert (edm.N, edm.sigma_max, edm.lr, edm.batch_size) == (40, 20.0, 3e-3, 512)
    assert (blog.N, blog.sigma_max, blog.sigma_min, blog.lr, blog.batch_size, blog.nb_epochs, blog.width,
            blog.test_size) == (10, 1.0, 0.001, 1e-3, 32, 1000, 32, 1000)
    assert (mixed.N, mixed.sigma_max) == (20, 1.0)


@pytest.mark.parametrize("script", ["simple_multimodal.py", "guidance_multimodal.py", "samplers.py"])
def test_a_ladder_upside_down_stops_before_training(run_here, tmp_path, script):
    assert_clean_error(run_here(script, "--sigma_min", "30", "--out", tmp_path), "--sigma_min must be smaller")


def test_a_tuple_flag_takes_as_many_values_as_given(tmp_path):
    argv = ["--guidances", "0", "1", "2", "4", "--out", str(tmp_path)]  # the README's example
    assert parse_config("", CODES / "guidance_multimodal.py", argv=argv).guidances == (0.0, 1.0, 2.0, 4.0)


def test_a_tuple_flag_of_fixed_length_says_so(run_here, tmp_path):
    result = run_here("simple_2Diffusion.py", "--mu_data", "1", "2", "3", "--out", tmp_path)
    assert_clean_error(result, "--mu_data takes two coordinates")


@pytest.mark.parametrize("steps", [["5"], ["800", "700"], ["0", "500", "750"]])
def test_guided_steps_take_a_first_and_a_last(run_here, tmp_path, steps):
    assert_clean_error(run_here("mnist_guidance.py", "--guided_steps", *steps, "--out", tmp_path), "--guided_steps")


@pytest.mark.parametrize("args, words", [
    (["--sampler", "euler"], ["--sampler", "euler"]),
    (["--sampling_steps", "2000"], ["--sampling_steps", "--T"]),
])
def test_bad_sampler_settings_give_one_line(run_here, tmp_path, args, words):
    assert_clean_error(run_here("multimodal_DDPM.py", *args, "--out", tmp_path), *words)


@pytest.mark.parametrize("args, words", [
    (["--schedule", "quadratic"], ["--schedule", "quadratic"]),
    (["--sampler", "ddim", "--T", "50"], ["--sampling_steps", "--T"]),  # DDIM's default 100 steps > T
])
def test_bad_spiral_settings_give_one_line(run_here, tmp_path, args, words):
    assert_clean_error(run_here("spiral_DDPM.py", *args, "--out", tmp_path), *words)


def test_per_step_batchnorm_needs_two_samples(run_here, tmp_path):
    assert_clean_error(run_here("simple_DDPM.py", "--batch_size", "1", "--out", tmp_path), "--batch_size", "BatchNorm")


def test_assets_may_be_the_output_folder_itself(tmp_path):
    from argparse import Namespace
    from common import copy_to_assets
    picture = tmp_path / "figure.png"
    picture.write_bytes(b"png")
    copy_to_assets(picture, Namespace(assets=str(tmp_path)))  # the same file: nothing to copy
    copy_to_assets(picture, Namespace(assets=str(tmp_path / "assets")))
    assert (tmp_path / "assets" / "figure.png").read_bytes() == b"png"
